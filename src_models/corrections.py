"""What counts as a user's correction, and how to learn from it (the Review widget's engine).

A radiologist fixes a predicted segmentation slice by slice. Whether a slice was corrected is
decided here by comparing the labels with the model's own output kept beside them (a per-slice
difference), never by trusting a flag that a paint tool might forget to set: undoing an edit
makes the slice unedited again, and an edit made with any tool counts.

Everything works on arrays in the canonical layout of :mod:`src_models.io.orientation` (axis 0 =
axial slices towards Superior), which is what the napari layers hold; :func:`source_slice_indices`
translates slice numbers back to the file's own index order for export side-cars.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.orientations import io_orientation
from scipy import ndimage

from .io.atomic import write_text_atomic
from .metrics import STRUCTURES, volume_ml
from .models.checkpoints import save_checkpoint
from .models.store import load_checkpoint
from .training.loop import TrainEvent, fine_tune
from .version import __version__

#: Share of the corrected slices kept out of fine-tuning to measure Dice before and after.
HOLDOUT_FRACTION = 0.2

#: Fewest corrected slices from which one is held out; below it every slice is needed to train.
MIN_SLICES_FOR_HOLDOUT = 3

#: 26-connectivity: predictions are made slice by slice, so a structure that shifts by a voxel
#: between slices still touches itself diagonally and must count as one component.
_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


class CorrectionsError(ValueError):
    """Nothing can be learnt from these labels; the message tells the user what to do."""


def _check_same_shape(labels: np.ndarray, prediction: np.ndarray) -> None:
    if labels.shape != prediction.shape:
        raise CorrectionsError(
            f"the labels (shape {labels.shape}) and the model's prediction (shape "
            f"{prediction.shape}) are not on the same grid: they belong to different images"
        )


def edited_slices(labels: np.ndarray, prediction: np.ndarray) -> list[int]:
    """Axial slices (canonical axis 0) where ``labels`` differ from the model's ``prediction``.

    Parameters
    ----------
    labels, prediction : numpy.ndarray
        Label volumes (S, P, L) of the same shape.

    Returns
    -------
    list of int
        Sorted slice indices with at least one differing voxel.
    """
    _check_same_shape(labels, prediction)
    if labels.ndim < 2:
        raise CorrectionsError(f"expected a volume of slices, got shape {labels.shape}")
    differs = np.not_equal(labels, prediction).reshape(labels.shape[0], -1).any(axis=1)
    return [int(i) for i in np.flatnonzero(differs)]


def foreground_slices(labels: np.ndarray) -> list[int]:
    """Axial slices holding any pancreas or tumour voxel, sorted."""
    return [int(i) for i in np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))]


def neighbour_slice(slices: Iterable[int], current: int, step: int) -> int | None:
    """The next (``step`` > 0) or previous (``step`` < 0) entry of ``slices`` after ``current``.

    Returns ``None`` when there is none in that direction, so the caller can say so instead of
    jumping around the volume.
    """
    ordered = sorted(set(int(s) for s in slices))
    if step > 0:
        after = [s for s in ordered if s > current]
        return after[0] if after else None
    before = [s for s in ordered if s < current]
    return before[-1] if before else None


def structure_volumes(labels: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Volume in mL of every structure of :data:`src_models.metrics.STRUCTURES`.

    One ``bincount`` pass, cheap enough to refresh while the user paints.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=3)
    return {
        name: volume_ml(int(sum(int(counts[v]) for v in values)), spacing)
        for name, values in STRUCTURES.items()
    }


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask, structure=_CONNECTIVITY)
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def keep_largest_components(labels: np.ndarray) -> np.ndarray:
    """Keep the largest connected component of the pancreas and of the tumour inside it.

    The pancreas including tumour is one structure (the paper's target), so its largest 3D
    component is kept first and everything outside it becomes background. Within that, the
    largest tumour component stays tumour and smaller tumour islands become pancreas: they lie
    inside the kept pancreas, which the model's pancreas channel vouches for, so erasing them
    would punch holes in it.

    Parameters
    ----------
    labels : numpy.ndarray
        Label volume (values 0, 1, 2); not modified.

    Returns
    -------
    numpy.ndarray
        A new uint8 array of the same shape.
    """
    labels = np.asarray(labels)
    pancreas = _largest_component(labels > 0)
    tumour = _largest_component((labels == 2) & pancreas)
    out = pancreas.astype(np.uint8)
    out[tumour] = 2
    return out


def split_holdout(
    slices: Sequence[int],
    fraction: float = HOLDOUT_FRACTION,
    min_slices: int = MIN_SLICES_FOR_HOLDOUT,
) -> tuple[list[int], list[int]]:
    """Split corrected slices into those to fine-tune on and those to measure on.

    The held-out slices are spread evenly over the sorted list rather than drawn at random, so
    the before/after Dice covers the pancreas from head to tail and the split is the same each
    time the user presses the button.

    Parameters
    ----------
    slices
        Corrected slice indices.
    fraction
        Share to hold out, rounded, at least one when there are ``min_slices`` or more.
    min_slices
        Below this many slices nothing is held out: every slice is needed to learn from.

    Returns
    -------
    train, holdout : list of int
        Disjoint sorted lists whose union is ``slices``.
    """
    ordered = sorted(set(int(s) for s in slices))
    n = len(ordered)
    if n < max(min_slices, 2):
        return ordered, []
    count = min(n - 1, max(1, round(n * fraction)))
    # The centre of each of ``count`` equal bins over the sorted list.
    positions = {int((k + 0.5) * n / count) for k in range(count)}
    holdout = [ordered[p] for p in sorted(positions)]
    held = set(holdout)
    return [s for s in ordered if s not in held], holdout


def training_slices(
    labels: np.ndarray,
    prediction: np.ndarray,
    reviewed: Iterable[int] = (),
    include_reviewed: bool = False,
) -> list[int]:
    """The slices to fine-tune on: the edited ones, plus the reviewed ones when asked.

    A reviewed but unedited slice is one where the user agreed with the model, which is a valid
    (if less informative) training example.

    Raises
    ------
    CorrectionsError
        The labels belong to another image (shape differs), no slice qualifies, or the chosen
        slices hold no pancreas at all (the model would only learn to predict nothing).
    """
    slices = set(edited_slices(labels, prediction))
    if include_reviewed:
        slices.update(int(s) for s in reviewed if 0 <= int(s) < labels.shape[0])
    if not slices:
        raise CorrectionsError(
            "no corrected slices: edit the labels where the model is wrong "
            "(or mark slices as reviewed and include them) before fine-tuning"
        )
    chosen = sorted(slices)
    if not np.any(labels[chosen]):
        raise CorrectionsError(
            "the corrected slices contain no pancreas: paint the pancreas in at least one "
            "slice so the model has something to learn"
        )
    return chosen


def source_slice_indices(
    slices: Iterable[int], affine: np.ndarray, shape: Sequence[int]
) -> tuple[int, list[int]]:
    """Translate canonical axial slice indices to the source file's index order.

    Parameters
    ----------
    slices
        Canonical slice indices (axis 0, increasing towards Superior).
    affine
        The source file's 4 x 4 affine (its index order -> RAS mm).
    shape
        The source array's shape.

    Returns
    -------
    axis : int
        The source array axis that runs inferior-superior.
    indices : list of int
        The same slices as indices along ``axis`` of the source array.
    """
    ornt = io_orientation(np.asarray(affine, dtype=float))
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    length = int(shape[axis])
    flipped = ornt[axis, 1] < 0
    return axis, [length - 1 - int(s) if flipped else int(s) for s in slices]


def sidecar(
    *,
    export_path: str | Path,
    kind: str,
    source: str,
    affine: np.ndarray,
    source_shape: Sequence[int],
    labels: np.ndarray | None,
    spacing: Sequence[float],
    model: Mapping[str, Any] | None,
    edited: Iterable[int],
    reviewed: Iterable[int],
    plugin_version: str,
    now: _dt.datetime | None = None,
) -> dict[str, Any]:
    """Content of the JSON file written beside an export, so the file explains itself later.

    Parameters
    ----------
    export_path
        The exported NIfTI file.
    kind
        ``"labels"`` or ``"reconstruction"``.
    source
        Path of the CT the export belongs to.
    affine, source_shape
        The source file's affine and array shape, to translate slice numbers.
    labels
        Canonical labels for the volumes in mL; ``None`` for a reconstruction without labels.
    spacing
        Canonical voxel spacing in mm.
    model
        What produced the prediction: ``arch`` and ``checkpoint`` at least.
    edited, reviewed
        Canonical slice indices.
    plugin_version
        Version of the napari plugin that wrote the export.
    now
        Time stamp; the current UTC time when omitted.

    Returns
    -------
    dict
        JSON-able; slice lists are given in both conventions with their definition.
    """
    edited = sorted(int(s) for s in edited)
    reviewed = sorted(int(s) for s in reviewed)
    axis, edited_source = source_slice_indices(edited, affine, source_shape)
    _, reviewed_source = source_slice_indices(reviewed, affine, source_shape)
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds")
    content: dict[str, Any] = {
        "file": Path(export_path).name,
        "kind": kind,
        "source_image": str(source),
        "model": dict(model) if model else None,
        "slice_index_conventions": {
            "canonical": "axial slice index along axis 0 of the layer shown in napari, "
            "0 = most inferior slice, increasing towards superior",
            "source": f"index along axis {axis} of the source file's voxel array "
            "(as nibabel or the DICOM series order gives it), 0-based",
        },
        "edited_slices": {"canonical": edited, "source": edited_source},
        "reviewed_slices": {"canonical": reviewed, "source": reviewed_source},
        "label_values": {"0": "background", "1": "pancreas", "2": "tumour"},
        "date": stamp,
        "plugin_version": plugin_version,
        "engine_version": __version__,
    }
    if labels is not None:
        content["volumes_ml"] = {
            name: round(value, 3) for name, value in structure_volumes(labels, spacing).items()
        }
    return content


def _compact_number_lists(text: str) -> str:
    """Put JSON lists of plain numbers on one line, so slice lists read at a glance."""
    return re.sub(
        r"\[\s*([-0-9.,\s]*?)\s*\]",
        lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",") if v.strip()) + "]",
        text,
    )


def write_sidecar(export_path: str | Path, content: Mapping[str, Any]) -> Path:
    """Write :func:`sidecar` content beside ``export_path`` (temporary file, then rename).

    Returns
    -------
    Path
        The JSON file, :func:`sidecar_path` of ``export_path``.
    """
    text = _compact_number_lists(json.dumps(content, indent=2)) + "\n"
    return write_text_atomic(sidecar_path(export_path), text)


def sidecar_path(export_path: str | Path) -> Path:
    """``<name>.json`` beside ``export_path``, with ``.nii`` / ``.nii.gz`` dropped."""
    path = Path(export_path)
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}.json")


_VERSIONED = re.compile(r"^(?P<base>.+?)-ft-.+-v\d+$")


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-").lower()
    return slug or "image"


def image_stem(name: str) -> str:
    """A short file-name-safe name for an image: ``"/x/ct.nii.gz"`` -> ``"ct"``."""
    base = Path(name).name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    return _slug(base)


def fine_tuned_path(model_dir: str | Path, base_checkpoint: str | Path, image: str) -> Path:
    """A new, never existing ``<base>-ft-<image>-v<N>.pt`` in ``model_dir``.

    Fine-tuning a fine-tuned model keeps the original base name and counts on, so versions of
    one patient's model line up as v1, v2, ... instead of growing ever longer names.
    """
    model_dir = Path(model_dir)
    base = Path(str(base_checkpoint)).name
    if base.endswith(".pt"):
        base = base[:-3]
    match = _VERSIONED.match(base)
    base = _slug(match.group("base") if match else base)
    stem = f"{base}-ft-{image_stem(image)}-v"
    taken = [
        int(p.name[len(stem) : -3])
        for p in model_dir.glob(f"{stem}*.pt")
        if p.name[len(stem) : -3].isdigit()
    ]
    return model_dir / f"{stem}{max(taken, default=0) + 1}.pt"


#: Keys :func:`~src_models.models.checkpoints.save_checkpoint` stamps itself; a base checkpoint's
#: values must not pass for the fine-tuned model's own.
_STAMP_KEYS = ("date", "code_version", "torch_version")


@dataclass(frozen=True)
class FineTuneReport:
    """Outcome of :func:`learn_from_corrections`.

    Attributes
    ----------
    checkpoint
        The new checkpoint.
    base_checkpoint
        The checkpoint fine-tuned from; never modified.
    steps, elapsed_s
        Optimiser steps done and seconds spent.
    metrics_before, metrics_after
        Figures on the held-out slices (``dice_pancreas``, ``dice_tumour``, ...) before and
        after, at model resolution; empty without held-out slices.
    planned_steps
        Steps asked for; more than ``steps`` when the time budget ended the run first.
    """

    checkpoint: Path
    base_checkpoint: Path
    steps: int
    elapsed_s: float
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    planned_steps: int = 0

    @property
    def stopped_by_time(self) -> bool:
        """Whether the time budget ended the run before the planned steps."""
        return self.steps < self.planned_steps

    def summary(self) -> str:
        """A line or two for the widget and the log."""
        text = f"saved {self.checkpoint.name}: {self.steps} steps in {self.elapsed_s:.0f} s"
        if self.metrics_before and self.metrics_after:
            text += (
                f"; held-out pancreas Dice {self.metrics_before['dice_pancreas']:.3f} -> "
                f"{self.metrics_after['dice_pancreas']:.3f}"
            )
        if self.stopped_by_time:
            text += (
                f". The time limit stopped it at {self.steps} of {self.planned_steps} steps: "
                "allow more time (or use a GPU) for a better model"
            )
        return text


def learn_from_corrections(
    checkpoint: str | Path,
    images_hu: np.ndarray,
    labels: np.ndarray,
    spacing_yx: Sequence[float] | None,
    *,
    output: str | Path,
    holdout_images: np.ndarray | None = None,
    holdout_labels: np.ndarray | None = None,
    provenance: Mapping[str, Any] | None = None,
    steps: int | None = None,
    time_budget_s: float | None = None,
    device: str = "auto",
    seed: int = 0,
) -> Generator[TrainEvent, None, FineTuneReport]:
    """Fine-tune a copy of ``checkpoint`` on corrected slices and save it as a new file.

    A generator for a worker thread: it yields the training events of
    :func:`~src_models.training.loop.fine_tune` (loss per step, held-out figures before and after)
    and returns a :class:`FineTuneReport`. Closing it (Cancel) stops between two steps and saves
    nothing. The base checkpoint is loaded afresh, so the model the viewer is using is never
    touched, and it is never overwritten: the result goes to ``output`` (atomically), which
    must not exist.

    Parameters
    ----------
    checkpoint
        Base checkpoint file or model name.
    images_hu, labels
        (N, H, W) canonical slices in HU and their corrected labels.
    spacing_yx
        In-plane spacing in mm.
    output
        New checkpoint file (:func:`fine_tuned_path` gives a free versioned name).
    holdout_images, holdout_labels
        Held-out corrected slices, measured before and after.
    provenance
        Facts about the corrections (source image, slice indices) stored in the checkpoint
        under ``provenance["fine_tune"]``.
    steps, time_budget_s
        Stop after this many steps or seconds, whichever first (training's defaults if both
        are ``None``).
    device, seed
        As for :func:`~src_models.training.loop.fine_tune`.

    Raises
    ------
    FileExistsError
        ``output`` exists (it could be a model someone relies on).
    """
    output = Path(output)
    if output.exists():
        raise FileExistsError(f"{output}: already exists; fine-tuned models never replace one")
    model, meta = load_checkpoint(checkpoint)
    base_path = Path(meta["path"])
    events = fine_tune(
        model,
        meta,
        images_hu,
        labels,
        spacing_yx,
        steps=steps,
        time_budget_s=time_budget_s,
        device=device,
        seed=seed,
        val_images_hu=holdout_images,
        val_labels=holdout_labels,
    )
    planned = 0
    try:
        while True:
            try:
                event = next(events)
            except StopIteration as stop:
                result = stop.value
                break
            planned = event.total_steps
            yield event
    finally:
        events.close()  # on cancel: fine_tune's own clean-up releases accelerator memory
    base = {k: v for k, v in result.meta.get("provenance", {}).items() if k not in _STAMP_KEYS}
    record = {**base.get("fine_tune", {}), **dict(provenance or {})}
    record["base_checkpoint"] = str(base_path)
    saved = save_checkpoint(
        output,
        result.model,
        preprocessing=result.meta["preprocessing"],
        provenance={**base, "fine_tune": record},
        metrics=result.metrics_after or dict(meta.get("metrics", {})),
    )
    return FineTuneReport(
        saved,
        base_path,
        result.steps,
        result.elapsed_s,
        dict(result.metrics_before),
        dict(result.metrics_after),
        planned_steps=planned,
    )
