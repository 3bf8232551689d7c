"""The paper's three figures (Dice, PPV, sensitivity) and structure volumes in mL.

Everything here is plain numpy on label arrays (0 background, 1 pancreas, 2 tumour), so the
Review widget, ``dsms evaluate`` and validation during training compute the same numbers.

Structures
----------
``"pancreas"`` is pancreas *including* tumour (``labels > 0``), the paper's target and the
model's channel 0; ``"tumour"`` is ``labels == 2``.

Empty structures
----------------
Each figure is a ratio, and a ratio whose denominator is zero takes the value 1: there was
nothing it could get wrong. So a structure absent from both prediction and reference scores
Dice = PPV = sensitivity = 1 (the tumour of a tumour-free patient correctly left empty); a
reference without the structure gives sensitivity 1 whatever is predicted (nothing to miss),
while Dice and PPV fall to 0 as soon as anything is predicted; an empty prediction gives PPV 1
(no false voxel) with Dice and sensitivity 0 when the reference has the structure. The rule is
the same for all three figures and keeps every case in the mean, which :class:`Summary` reports
together with how many cases actually contained the structure, so that a tumour figure measured
on tumour-free data is recognisable as a false-positive check.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Structure name -> the label values it covers.
STRUCTURES: dict[str, tuple[int, ...]] = {"pancreas": (1, 2), "tumour": (2,)}

#: The paper's Table 1 rows, in order.
METRICS: tuple[str, ...] = ("dice", "ppv", "sensitivity")


@dataclass(frozen=True)
class Counts:
    """Voxel counts of one structure: true positives, false positives, false negatives."""

    tp: int
    fp: int
    fn: int

    @property
    def predicted(self) -> int:
        """Voxels predicted as the structure."""
        return self.tp + self.fp

    @property
    def reference(self) -> int:
        """Voxels of the structure in the reference."""
        return self.tp + self.fn


def _ratio(numerator: int, denominator: int) -> float:
    """``numerator / denominator``, 1.0 when the denominator is empty (see the module doc)."""
    return 1.0 if denominator == 0 else numerator / denominator


def dice(counts: Counts) -> float:
    """Dice similarity coefficient ``2 TP / (2 TP + FP + FN)``."""
    return _ratio(2 * counts.tp, 2 * counts.tp + counts.fp + counts.fn)


def ppv(counts: Counts) -> float:
    """Positive predictive value (precision) ``TP / (TP + FP)``."""
    return _ratio(counts.tp, counts.tp + counts.fp)


def sensitivity(counts: Counts) -> float:
    """Sensitivity (recall) ``TP / (TP + FN)``."""
    return _ratio(counts.tp, counts.tp + counts.fn)


def _check_pair(prediction: np.ndarray, reference: np.ndarray) -> None:
    if prediction.shape != reference.shape:
        raise ValueError(
            f"prediction shape {prediction.shape} differs from reference shape {reference.shape}"
        )


def confusion(prediction: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """3 x 3 matrix ``m[p, r]``: voxels with predicted label ``p`` and reference label ``r``.

    One pass with ``np.bincount`` over the voxels; label values outside 0..2 are an error
    because they would silently land in the wrong bin.
    """
    _check_pair(prediction, reference)
    p = np.asarray(prediction)
    r = np.asarray(reference)
    for name, array in (("prediction", p), ("reference", r)):
        if array.size and (array.min() < 0 or array.max() > 2):
            raise ValueError(
                f"{name} labels must be 0, 1 or 2, got range {array.min()}..{array.max()}"
            )
        # Probabilities in [0, 1] would pass the range check and be truncated to 0: Dice 0
        # for a tester who passed a probability map, without a word.
        if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
            raise ValueError(
                f"{name} holds fractional values (a probability map?): labels must be 0, 1 or "
                "2; threshold it first"
            )
    codes = (
        p.astype(np.uint8, copy=False).ravel() * np.uint8(3)
        + r.astype(np.uint8, copy=False).ravel()
    )
    return np.bincount(codes, minlength=9).reshape(3, 3)


def structure_counts(matrix: np.ndarray, structure: str) -> Counts:
    """TP, FP, FN of ``structure`` (a key of :data:`STRUCTURES`) from a :func:`confusion` matrix."""
    values = list(STRUCTURES[structure])
    inside = np.zeros(3, dtype=bool)
    inside[values] = True
    tp = int(matrix[np.ix_(inside, inside)].sum())
    fp = int(matrix[np.ix_(inside, ~inside)].sum())
    fn = int(matrix[np.ix_(~inside, inside)].sum())
    return Counts(tp, fp, fn)


def structure_dice(
    prediction: np.ndarray, reference: np.ndarray, structure: str = "pancreas"
) -> float:
    """Dice of one structure between two label arrays (or boolean masks) of one shape."""
    return dice(structure_counts(confusion(prediction, reference), structure))


def volume_ml(mask_or_count: np.ndarray | int, spacing: Sequence[float] | float) -> float:
    """Volume in millilitres of a boolean mask (any shape) or a voxel count (an integer,
    Python's or numpy's).

    ``spacing`` is the voxel size in mm along each axis (signs, the axes' directions in an
    affine's diagonal, are ignored), or the volume of one voxel in mm³ as one number. Give
    the latter, ``|det|`` of the affine's 3 x 3 part
    (:func:`src_models.io.volume.voxel_volume_mm3`), whenever the affine is known: on a
    sheared grid (gantry tilt) the product of the axis spacings overstates every volume
    (by 6 % at 20 degrees).

    Raises
    ------
    ValueError
        As many spacings as axes are needed for a mask.
    TypeError
        A count that is not a whole number.
    """
    # A count as numpy gives it (mask.sum(), np.int64) is a number too: counting its nonzero
    # "voxels" gave 1 voxel for any count (0.001 mL for 1,000 voxels of 1 mm³, a tester).
    if isinstance(mask_or_count, numbers.Integral):
        count = int(mask_or_count)
    elif np.ndim(mask_or_count) == 0:
        raise TypeError(f"a voxel count must be a whole number, got {mask_or_count!r}")
    else:
        count = int(np.count_nonzero(mask_or_count))
    sizes = np.abs(np.asarray(spacing, dtype=np.float64))  # np.diag(affine) of an LAS file
    # holds -0.86 mm: a direction, not a negative size (a tester got -57.8 mL)
    if sizes.ndim == 1 and np.ndim(mask_or_count) > 0 and len(sizes) != np.ndim(mask_or_count):
        raise ValueError(
            f"{len(sizes)} voxel spacings given for a {np.ndim(mask_or_count)}D mask; give one "
            "per axis, or the voxel volume in mm³ as one number"
        )
    return count * float(np.prod(sizes)) / 1000.0


@dataclass(frozen=True)
class StructureMetrics:
    """The three figures and the volumes of one structure in one case."""

    dice: float
    ppv: float
    sensitivity: float
    predicted_ml: float
    reference_ml: float
    in_reference: bool

    def as_dict(self) -> dict[str, float | bool]:
        """Plain dict for JSON and CSV output."""
        return asdict(self)


def case_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float] | float = (1.0, 1.0, 1.0),
) -> dict[str, StructureMetrics]:
    """Dice, PPV, sensitivity and volumes of every structure for one case (a volume or slices).

    Parameters
    ----------
    prediction, reference
        Label arrays of the same shape (any dimension), values 0, 1, 2.
    spacing
        Voxel size in mm along each axis, or one voxel's volume in mm³ (see :func:`volume_ml`),
        for the volumes; (1, 1, 1) gives voxel counts / 1000.

    Returns
    -------
    dict
        Structure name (:data:`STRUCTURES`) -> :class:`StructureMetrics`.
    """
    matrix = confusion(prediction, reference)
    result = {}
    for structure in STRUCTURES:
        counts = structure_counts(matrix, structure)
        result[structure] = StructureMetrics(
            dice=dice(counts),
            ppv=ppv(counts),
            sensitivity=sensitivity(counts),
            predicted_ml=volume_ml(counts.predicted, spacing),
            reference_ml=volume_ml(counts.reference, spacing),
            in_reference=counts.reference > 0,
        )
    return result


@dataclass(frozen=True)
class Summary:
    """Mean and standard deviation of one figure of one structure over cases."""

    mean: float
    std: float
    cases: int
    cases_with_structure: int


def summarise(
    per_case: Iterable[Mapping[str, StructureMetrics]],
) -> dict[str, dict[str, Summary]]:
    """Average the per-case figures (each case weighs the same, as in the paper's Table 1).

    Returns
    -------
    dict
        ``result[structure][metric]`` -> :class:`Summary`; ``mean`` is NaN when there are no cases.
    """
    cases = list(per_case)
    result: dict[str, dict[str, Summary]] = {}
    for structure in STRUCTURES:
        present = sum(1 for case in cases if case[structure].in_reference)
        result[structure] = {}
        for metric in METRICS:
            values = np.array([getattr(case[structure], metric) for case in cases], dtype=float)
            result[structure][metric] = Summary(
                mean=float(values.mean()) if len(values) else math.nan,
                std=float(values.std()) if len(values) else math.nan,
                cases=len(values),
                cases_with_structure=present,
            )
    return result
