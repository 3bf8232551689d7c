"""What the inference engine hands back: labels (and optional outputs) with their statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..io.orientation import from_canonical
from ..io.volume import format_ml


class VolumeLike(Protocol):
    """What :func:`segment` needs of a volume (:class:`~src_models.io.Volume` has it)."""

    array: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class SegmentationStats:
    """Figures a radiologist reads off a run.

    Attributes
    ----------
    pancreas_ml
        Volume of pancreas *including* tumour (labels 1 and 2), the paper's target, in mL.
    tumour_ml
        Volume of tumour (label 2) in mL.
    foreground_slices
        Axial slices holding any pancreas or tumour.
    total_slices
        Axial slices in the volume.
    seconds
        Wall time from the first batch to the result, preprocessing and copies included.
    device
        Device the model ran on, e.g. ``"cpu"`` or ``"cuda:0"``.
    batch_size
        Slices per batch at the end of the run (smaller than asked after out-of-memory errors).
    precision
        ``"float32"``, ``"bfloat16"`` or ``"float16"``: the autocast precision of the model.
    """

    pancreas_ml: float
    tumour_ml: float
    foreground_slices: int
    total_slices: int
    seconds: float
    device: str
    batch_size: int
    precision: str

    @property
    def slices_per_second(self) -> float:
        """Throughput of the whole run."""
        return self.total_slices / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        """One line for the terminal and the widget's readout."""
        return (
            f"pancreas {format_ml(self.pancreas_ml)}, tumour {format_ml(self.tumour_ml)}, "
            f"{self.foreground_slices}/{self.total_slices} slices with foreground, "
            f"{self.seconds:.1f} s on {self.device} ({self.precision}, batch {self.batch_size})"
        )


@dataclass(frozen=True)
class SegmentationResult:
    """Everything :func:`~src_models.inference.engine.segment` returns.

    The outputs are computed in the canonical layout, which is what napari layers hold; the
    properties :attr:`labels`, :attr:`reconstruction` and :attr:`probabilities` give the same
    memory on the source volume's grid (exact views, no copies), which is what files store.

    Attributes
    ----------
    canonical_labels
        uint8 (slices, rows, columns): 0 background, 1 pancreas, 2 tumour.
    canonical_reconstruction
        For models with a restoration decoder (and ``reconstruct=True``): the restored input in
        the model's [0, 1] window scale, float16, else ``None``. float16 halves the memory of
        float32 (126 MB instead of 252 MB at 512 x 512 x 240) at a resolution of 2**-11 near
        1.0, about 0.1 HU of a 255 HU window: finer than the model's own bf16 arithmetic and far
        below what a display shows.
    canonical_probabilities
        With ``probabilities=True``: float16 (slices, rows, columns, 2), the sigmoid of channel 0
        (pancreas including tumour) and channel 1 (tumour); else ``None``.
    affine
        The source volume's affine (file index order to RAS mm).
    stats
        Volumes, slice counts, timing and device.
    """

    canonical_labels: np.ndarray
    canonical_reconstruction: np.ndarray | None
    canonical_probabilities: np.ndarray | None
    affine: np.ndarray
    stats: SegmentationStats

    def _source(self, array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else from_canonical(array, self.affine)

    @property
    def labels(self) -> np.ndarray:
        """Labels on the source grid (the file's shape and index order), uint8 0/1/2."""
        return self._source(self.canonical_labels)

    @property
    def reconstruction(self) -> np.ndarray | None:
        """Reconstruction on the source grid, float16 in [0, 1], or ``None``."""
        return self._source(self.canonical_reconstruction)

    @property
    def probabilities(self) -> np.ndarray | None:
        """Probabilities on the source grid with a trailing axis of 2, float16, or ``None``."""
        return self._source(self.canonical_probabilities)
