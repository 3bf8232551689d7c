"""What counts as a user's correction, and the side-car that explains an export.

Learning from corrections is :mod:`src_models.training.fine_tune`.

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
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from .io.atomic import write_text_atomic
from .io.orientation import head_feet_axis
from .metrics import STRUCTURES, structure_dice, volume_ml
from .version import __version__


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


def structure_volumes(labels: np.ndarray, spacing: Sequence[float] | float) -> dict[str, float]:
    """Volume in mL of every structure of :data:`src_models.metrics.STRUCTURES`.

    ``spacing``: voxel size in mm per axis, or one voxel's volume in mm³ (exact on sheared
    grids; see :func:`src_models.metrics.volume_ml`).

    One ``bincount`` pass, cheap enough to refresh while the user paints.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=3)
    return {
        name: volume_ml(int(sum(int(counts[v]) for v in values)), spacing)
        for name, values in STRUCTURES.items()
    }


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
    axis, flipped = head_feet_axis(affine)
    length = int(shape[axis])
    return axis, [length - 1 - int(s) if flipped else int(s) for s in slices]


#: A pause longer than this (seconds) between two edits is not counted as time on a slice.
IDLE_S = 60.0


def seconds_per_slice(
    edits: Iterable[tuple[float, int | None]], idle_s: float = IDLE_S
) -> dict[int, float]:
    """Seconds a user spent on each slice, from the time stamps of their edits.

    The time between two consecutive edits counts for the slice of the later one (the user was
    working towards it), unless it exceeds ``idle_s`` (a coffee break, another task); the first
    edit of a session counts nothing. An entry with slice ``None`` marks a pause: a tool ran
    (a refine round, fine-tuning, scoring), and the time up to it is the tool's, not the
    user's (a tester's wait for a round was charged to the next stroke).

    Parameters
    ----------
    edits
        ``(time stamp in seconds, canonical slice or None)`` of every edit (a brush stroke) and
        pause, in any order.
    idle_s
        Longest pause that still counts as work.

    Returns
    -------
    dict
        Canonical slice -> seconds, for every slice that was edited.
    """
    events = sorted(((float(t), -1 if k is None else int(k)) for t, k in edits), key=lambda e: e[0])
    seconds = {k: 0.0 for _, k in events if k >= 0}
    for (before, _), (now, k) in pairwise(events):
        if k >= 0 and now - before <= idle_s:
            seconds[k] += now - before
    return seconds


def effort_record(
    prediction: np.ndarray,
    final: np.ndarray,
    edited: Iterable[int],
    reviewed: Iterable[int],
    seconds: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """What the corrections cost and changed, per slice and in total (the side-car's effort).

    Parameters
    ----------
    prediction, final
        (S, P, L) canonical labels: the model's prediction and the labels the user ends with.
    edited, reviewed
        Canonical slices the user edited, and those accepted unchanged.
    seconds
        Canonical slice -> seconds spent on it (:func:`seconds_per_slice`); missing: 0.

    Returns
    -------
    dict
        ``"slices"``: one entry per edited or reviewed slice with ``slice`` (canonical),
        ``status`` (``"edited"`` or ``"reviewed"``), ``seconds``, ``voxels_changed`` (voxels
        whose label differs from the prediction) and ``dice_prediction_final`` (pancreas Dice
        between the two, 1 when both are empty); ``"totals"``: ``slices_edited``,
        ``slices_reviewed``, ``minutes``, ``voxels_changed``.
    """
    _check_same_shape(final, prediction)
    seconds = seconds or {}
    edited_set = {int(k) for k in edited}
    status = {int(k): "reviewed" for k in reviewed} | {k: "edited" for k in edited_set}
    entries = []
    for k in sorted(status):
        changed = int(np.count_nonzero(prediction[k] != final[k]))
        entries.append(
            {
                "slice": k,
                "status": status[k],
                "seconds": round(float(seconds.get(k, 0.0)), 1),
                "voxels_changed": changed,
                "dice_prediction_final": round(structure_dice(prediction[k], final[k]), 4),
            }
        )
    return {
        "slices": entries,
        "totals": {
            "slices_edited": sum(e["status"] == "edited" for e in entries),
            "slices_reviewed": sum(e["status"] == "reviewed" for e in entries),
            # the slices listed: a stroke undone since left its slice, and its time with it
            # (a tester's totals did not add up to the rows)
            "minutes": round(sum(e["seconds"] for e in entries) / 60.0, 2),
            "voxels_changed": sum(e["voxels_changed"] for e in entries),
        },
    }


def sidecar(
    *,
    export_path: str | Path,
    kind: str,
    source: str,
    affine: np.ndarray,
    source_shape: Sequence[int],
    labels: np.ndarray | None,
    spacing: Sequence[float] | float,
    model: Mapping[str, Any] | None,
    edited: Iterable[int],
    reviewed: Iterable[int],
    plugin_version: str,
    now: _dt.datetime | None = None,
    effort: Mapping[str, Any] | None = None,
    tool_slices: Iterable[int] = (),
    instance_numbers: Sequence[int | None] | None = None,
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
        Canonical voxel spacing in mm, or one voxel's volume in mm³ (exact on sheared grids).
    model
        What produced the prediction: ``arch`` and ``checkpoint`` at least.
    edited, reviewed
        Canonical slice indices.
    plugin_version
        Version of the napari plugin that wrote the export.
    now
        Time stamp; the current UTC time when omitted.
    effort
        :func:`effort_record` of the session, stored under ``"effort"`` with each slice's
        source index added; ``None`` leaves it out.
    tool_slices
        Canonical slices that neither the model nor the user drew as they are: a tool wrote
        into them (fill between slices, a refine round, the clean-up, clearing outside the
        region of interest) and nobody edited or reviewed them after. Without them a reader
        took every slice that was not edited for the model's own output.
    instance_numbers
        For a DICOM series, the InstanceNumber (0020,0013) of each source slice, in source
        order (``Volume.info["instance_numbers"]``): every slice list then gives them too, as
        ``instance_number``, the number a PACS viewer shows.

    Returns
    -------
    dict
        JSON-able; slice lists are given in both conventions with their definition.
    """
    edited = sorted(int(s) for s in edited)
    reviewed = sorted(int(s) for s in reviewed)
    axis, edited_source = source_slice_indices(edited, affine, source_shape)
    _, reviewed_source = source_slice_indices(reviewed, affine, source_shape)
    tool_slices = sorted(int(s) for s in tool_slices)
    _, tool_source = source_slice_indices(tool_slices, affine, source_shape)
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
        "tool_slices": {
            "canonical": tool_slices,
            "source": tool_source,
            "meaning": "neither edited nor reviewed, and written by a tool (fill between "
            "slices, a refine round, clean-up, region of interest) rather than by the model "
            "that made the labels",
        },
        "label_values": {"0": "background", "1": "pancreas", "2": "tumour"},
        **_instance_numbers_of(
            instance_numbers,
            {
                "edited_slices": edited_source,
                "reviewed_slices": reviewed_source,
                "tool_slices": tool_source,
            },
        ),
        "date": stamp,
        "plugin_version": plugin_version,
        "engine_version": __version__,
    }
    if labels is not None:
        volumes = structure_volumes(labels, spacing)
        content["volumes_ml"] = {name: round(value, 3) for name, value in volumes.items()}
        # What a PACS measures on a DICOM-SEG's Pancreas segment (label 1 only, as in MSD
        # Task07): the "pancreas" above includes the tumour (a tester found them apart by the
        # tumour's volume and could not tell why).
        content["volumes_ml"]["pancreas_without_tumour"] = round(
            volumes["pancreas"] - volumes["tumour"], 3
        )
    if effort is not None:
        slices = [dict(entry) for entry in effort["slices"]]
        _, source = source_slice_indices([e["slice"] for e in slices], affine, source_shape)
        for entry, index in zip(slices, source, strict=True):
            entry["source_slice"] = index
            if instance_numbers is not None and 0 <= index < len(instance_numbers):
                entry["instance_number"] = instance_numbers[index]
        content["effort"] = {"slices": slices, "totals": dict(effort["totals"])}
    return content


def _instance_numbers_of(
    numbers: Sequence[int | None] | None, lists: Mapping[str, list[int]]
) -> dict[str, Any]:
    """The DICOM InstanceNumbers of the side-car's slice lists (by source index), as one
    entry to merge into it; nothing without numbers."""
    if not numbers:
        return {}
    return {
        "instance_numbers": {
            "meaning": "DICOM InstanceNumber (0020,0013) of each listed slice, as a PACS "
            "viewer shows it",
            **{name: [numbers[k] for k in source] for name, source in lists.items()},
        }
    }


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


def slug(text: str) -> str:
    """``text`` as a lower-case file-name-safe word: ``"CT scan 1"`` -> ``"ct-scan-1"``."""
    word = re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-").lower()
    return word or "image"


def image_stem(name: str) -> str:
    """A short file-name-safe name for an image: ``"/x/ct.nii.gz"`` -> ``"ct"``."""
    base = Path(name).name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    return slug(base)
