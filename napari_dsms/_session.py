"""The state of one review, without a screen: what the Review dock's panels work on.

A :class:`ReviewSession` holds the chosen CT and labels as canonical arrays (axis 0 = axial
slices towards Superior, as the napari layers hold them, see :mod:`src_models.io.orientation`),
the model's stored prediction, the slices the user edited and reviewed, and the slice shown. Its
methods are the review's operations that are not drawing: which slices were edited, where to go
next, volumes, comparing two segmentations, the clean-up's changes, an export's side-car and the
inputs of a fine-tuning run. Everything computes through :mod:`src_models` (mainly
:mod:`src_models.corrections` and :mod:`src_models.metrics`).

No Qt and no napari: the state is plain (numpy arrays, a set of ints, a dict), so tests build a
session from arrays, and a journal can write it down and read it back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from src_models import autosave, corrections
from src_models.inference.postprocess import keep_largest_components
from src_models.io.volume import voxel_volume_mm3
from src_models.metrics import StructureMetrics, case_metrics
from src_models.models.checkpoints import HELD_OUT_TOLERANCE
from src_models.refine import learns
from src_models.training.fine_tune import MIN_SLICES_FOR_HOLDOUT, split_holdout
from src_models.version import __version__

#: A held-out slice with less pancreas than this share of the corrected slices' median area
#: looks unfinished (partly painted), so its held-out Dice is doubtful.
UNFINISHED_SHARE = 0.5

#: Held-out Dice changes smaller than this are "about the same" (two slices are few).
DICE_TOLERANCE = HELD_OUT_TOLERANCE

#: Navigation targets of :meth:`ReviewSession.neighbour`.
SLICE_KINDS = ("edited", "foreground", "foreground changes", "reviewed")


def foreground_changes(labels: np.ndarray) -> list[int]:
    """Slices where the foreground starts, changes or ends, along axis 0.

    Each slice holds nothing, pancreas only, or pancreas with tumour. The stops are the first
    slice of every run of slices that hold the same (non-empty) thing, and the last slice before
    the foreground ends: where a reader's attention is needed, instead of every slice in between.

    Parameters
    ----------
    labels : numpy.ndarray
        (S, Y, X) labels, values 0, 1, 2.

    Returns
    -------
    list of int
        Sorted slice indices.
    """
    flat = np.asarray(labels).reshape(labels.shape[0], -1)
    state = flat.any(axis=1).astype(np.int8) + (flat == 2).any(axis=1).astype(np.int8)
    before = np.concatenate([[0], state[:-1]])
    after = np.concatenate([state[1:], [0]])
    stops = (state > 0) & ((state != before) | (after == 0))
    return [int(k) for k in np.flatnonzero(stops)]


@dataclass(frozen=True)
class RegionOfInterest:
    """Where the pancreas is, as the user says: a slice range and optionally an in-plane box.

    Outside it labels are cleared and nothing is learnt. Canonical indices throughout.

    Attributes
    ----------
    first, last
        First and last axial slice inside (inclusive).
    box
        ``(row_start, row_stop, column_start, column_stop)`` in pixels (stops exclusive), or
        ``None`` for whole slices.
    """

    first: int
    last: int
    box: tuple[int, int, int, int] | None = None

    def mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """Boolean (S, Y, X) array, ``True`` inside the region."""
        inside = np.zeros(shape, dtype=bool)
        rows, columns = (slice(None), slice(None))
        if self.box is not None:
            rows, columns = slice(self.box[0], self.box[1]), slice(self.box[2], self.box[3])
        inside[max(self.first, 0) : self.last + 1, rows, columns] = True
        return inside

    def contains_slice(self, index: int) -> bool:
        """Whether axial slice ``index`` lies in the slice range."""
        return self.first <= int(index) <= self.last

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, for layer metadata and side-cars."""
        return {
            "first_slice": int(self.first),
            "last_slice": int(self.last),
            "box_rows_columns": None if self.box is None else [int(v) for v in self.box],
        }

    @classmethod
    def from_dict(cls, content: dict[str, Any] | None) -> RegionOfInterest | None:
        """The region :meth:`as_dict` wrote, or ``None``."""
        if not content:
            return None
        box = content.get("box_rows_columns")
        return cls(
            int(content["first_slice"]),
            int(content["last_slice"]),
            None if box is None else tuple(int(v) for v in box),
        )


@dataclass(frozen=True)
class FineTuneInputs:
    """What one fine-tuning run learns from, cut from a session.

    Attributes
    ----------
    train, holdout
        Canonical slice indices trained on and held out to measure on (disjoint, sorted).
    images, labels
        (N, Y, X) CT slices in HU and corrected labels of ``train``.
    holdout_images, holdout_labels
        The same for ``holdout``.
    spacing_yx
        In-plane voxel size in mm.
    source
        The CT's file (or layer name when it has none), recorded in the new checkpoint.
    source_digest
        :func:`src_models.autosave.content_key` of the CT ("" without its file affine): ``dsms
        evaluate`` knows the CT by it under any name, axis order or dtype.
    """

    train: list[int]
    holdout: list[int]
    images: np.ndarray
    labels: np.ndarray
    holdout_images: np.ndarray
    holdout_labels: np.ndarray
    spacing_yx: tuple[float, float]
    source: str
    source_digest: str = ""

    def unfinished_holdout(self) -> list[int]:
        """Held-out slices that look unfinished: pancreas (incl. tumour) on less than
        :data:`UNFINISHED_SHARE` of the median area of all the corrected slices, as a partly
        painted slice has. A held-out Dice measured there says little."""
        areas = [int(np.count_nonzero(s)) for s in (*self.labels, *self.holdout_labels)]
        if not self.holdout or not areas:
            return []
        least = UNFINISHED_SHARE * float(np.median(areas))
        held = [int(np.count_nonzero(s)) for s in self.holdout_labels]
        return [k for k, area in zip(self.holdout, held, strict=True) if area < least]

    def report(self, before: dict[str, float], after: dict[str, float]) -> list[str]:
        """What a fine-tuning round's held-out figures mean, and whether to keep the model.

        Parameters
        ----------
        before, after
            Held-out figures (``dice_pancreas``) of the model before and after the round; empty
            when nothing was held out.

        Returns
        -------
        list of str
            Sentences for the user: what was measured, on which slices, doubts about those
            slices, and advice.
        """
        if not self.holdout or "dice_pancreas" not in before or "dice_pancreas" not in after:
            return [
                "Nothing was measured: with fewer than 3 corrected slices none is held out. "
                "Re-segment and compare with your corrections before you keep the new model."
            ]
        slices = ", ".join(str(k) for k in self.holdout)
        lines = [
            f"The held-out Dice compares each model with your own labels on {len(self.holdout)} "
            f"corrected slice(s) it did not train on (slice {slices}), segmented as Segment "
            "would label them (cropped to the body, on the CT's grid)."
        ]
        doubtful = self.unfinished_holdout()
        if doubtful:
            lines.append(
                f"Slice {', '.join(str(k) for k in doubtful)} looks unfinished (much less "
                "pancreas than your other corrected slices): the figure is only as good as your "
                "labels there; finish it and fine-tune again for a fair measure."
            )
        change = after["dice_pancreas"] - before["dice_pancreas"]
        if change > DICE_TOLERANCE:
            lines.append("Keep the new model: it agrees better with your corrections.")
        elif change < -DICE_TOLERANCE:
            lines.append(
                "The new model agrees less with your corrections on the held-out slices: keep "
                "the previous one" + (", unless those slices are unfinished." if doubtful else ".")
            )
        else:
            lines.append(
                "About the same on the held-out slices: re-segment and look before keeping it."
            )
        return lines

    def provenance(self) -> dict[str, Any]:
        """Facts about the corrections, stored in the checkpoint under ``fine_tune``."""
        return {
            "source_image": self.source,
            "source_digest": self.source_digest,
            "slices": list(self.train),
            "holdout_slices": list(self.holdout),
            "slice_index_convention": "canonical axial index (axis 0, towards superior)",
        }


#: A tool's change to the labels: voxels, labels before, baseline before, values written.
ToolChange = tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray, np.ndarray]


@dataclass
class ReviewSession:
    """One CT and the labels being corrected for it.

    Parameters
    ----------
    image : numpy.ndarray
        (S, Y, X) canonical CT in HU.
    labels : numpy.ndarray
        (S, Y, X) canonical labels (0 background, 1 pancreas, 2 tumour); the array the viewer
        paints into, so the session sees edits without copying.
    spacing : tuple of float
        Voxel size in mm along (S, Y, X).
    prediction : numpy.ndarray, optional
        The model's labels before any correction, same shape; without it no slice counts as
        edited and nothing can be learnt.
    reviewed : set of int
        Canonical slices the user marked as reviewed.
    model : dict, optional
        The model that made ``prediction`` (``arch``, ``checkpoint``, ...).
    source : str
        The CT's file or DICOM folder ("" when unknown).
    name : str
        The CT's display name.
    affine : numpy.ndarray, optional
        The CT file's 4 x 4 affine, needed to write side-cars in file slice numbers.
    source_shape : tuple of int, optional
        The CT file's own array shape.
    instance_numbers : list, optional
        For a DICOM series, each source slice's InstanceNumber, which side-cars list beside
        the slice numbers (what a PACS viewer shows).
    current : int
        The canonical slice shown.
    roi : RegionOfInterest, optional
        Where the pancreas is; outside it labels are cleared and nothing is learnt.

    Attributes
    ----------
    edited : list of int
        Slices where the labels differ from the model's output (after :meth:`refresh`). Changes
        made by a tool rather than by the user (the clean-up, see :meth:`add_tool_changes`) do
        not count: they are folded into ``baseline``, what edits are measured against.
    baseline : numpy.ndarray or None
        The model's output plus the tools' changes; ``None`` while it equals ``prediction``.
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    prediction: np.ndarray | None = None
    reviewed: set[int] = field(default_factory=set)
    model: dict[str, Any] | None = None
    source: str = ""
    name: str = "ct"
    affine: np.ndarray | None = None
    source_shape: tuple[int, ...] | None = None
    instance_numbers: list[int | None] | None = None
    current: int = 0
    roi: RegionOfInterest | None = None
    edited: list[int] = field(default_factory=list)
    baseline: np.ndarray | None = None
    edits: list[tuple[float, int]] = field(default_factory=list)
    #: A tool recorded its change and is about to write it: the next paint is not the user's.
    tool_write_pending: bool = False
    # Tool changes still in effect, newest last: (voxels, labels before, baseline before, values
    # written); and those undone (Ctrl+Z), newest undone last, which a redo brings back.
    _tool_changes: list[ToolChange] = field(default_factory=list, repr=False)
    _undone_tool_changes: list[ToolChange] = field(default_factory=list, repr=False)
    # content_key() of the CT (image and affine stay those of the session): 0.2 s to hash a
    # 240-slice CT, asked for by each Fine-tune click twice and by each refine round.
    _content_key: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.reviewed = {int(s) for s in self.reviewed}
        if self.prediction is not None and np.shape(self.prediction) != self.labels.shape:
            self.prediction = None  # a stored prediction of another grid says nothing here
        if self.prediction is None or np.shape(self.baseline) != self.labels.shape:
            self.baseline = None  # tools' changes are only kept on top of a fitting prediction
        self.refresh()

    # ------------------------------------------------------------------ state

    @property
    def fits_image(self) -> bool:
        """Whether the labels lie on the CT's grid (same canonical shape)."""
        return self.labels.shape == self.image.shape

    @property
    def n_slices(self) -> int:
        """Number of axial slices."""
        return int(self.labels.shape[0])

    @property
    def voxel_mm3(self) -> float:
        """One voxel's volume in mm³: ``|det|`` of the file's affine (exact on tilted gantries),
        else the product of the spacing."""
        if self.affine is not None:
            return voxel_volume_mm3(self.affine)
        return float(np.prod(self.spacing))

    def set_prediction(self, prediction: np.ndarray | None) -> None:
        """Follow the stored model output (a new run replaced it); tool changes start afresh."""
        if prediction is not None and np.shape(prediction) != self.labels.shape:
            prediction = None
        if prediction is not self.prediction:
            self.prediction, self.baseline = prediction, None
            self._tool_changes, self._undone_tool_changes = [], []

    def _edit_reference(self) -> np.ndarray | None:
        return self.baseline if self.baseline is not None else self.prediction

    def add_tool_changes(self, voxels: tuple[np.ndarray, ...], values: np.ndarray) -> None:
        """Record that a tool (not the user) is about to set ``labels[voxels] = values``.

        Such changes are not corrections: a clean-up that removes islands on 100 slices must
        not make a following fine-tuning learn the model's own output there. Call it before
        writing the values; undoing them later (napari's Ctrl+Z) is noticed by :meth:`refresh`.
        """
        self.tool_write_pending = True  # its paint event is no time spent by the user
        if self.prediction is None:
            return
        if self.baseline is None:
            self.baseline = np.array(self.prediction, copy=True)
        labels = np.asarray(self.labels)
        values = np.array(values, copy=True)
        before = (labels[voxels].copy(), self.baseline[voxels].copy())
        self._tool_changes.append((voxels, *before, values))
        self._undone_tool_changes.clear()  # a new change ends what napari can redo
        self.baseline[voxels] = values

    def _follow_undo_and_redo(self) -> None:
        """Fold tool changes the user undid out of the baseline, and those redone back in.

        Without the second half, Ctrl+Shift+Z after Ctrl+Z turned a fill between or a refine
        round into corrections: fine-tuning then learnt the tool's guesses as the user's. The
        session sees labels, not napari's history: a user who puts back by hand exactly what
        an undone tool wrote is taken for a redo too (rarer, and only costs that correction).
        """
        labels = np.asarray(self.labels)
        while self._tool_changes:
            voxels, labels_before, baseline_before, _ = self._tool_changes[-1]
            if not np.array_equal(labels[voxels], labels_before):
                break
            self.baseline[voxels] = baseline_before  # the tool's change was undone
            self._undone_tool_changes.append(self._tool_changes.pop())
        while self._undone_tool_changes:
            voxels, _, _, values = self._undone_tool_changes[-1]
            if not np.array_equal(labels[voxels], values):
                break
            self.baseline[voxels] = values  # ... and redone
            self._tool_changes.append(self._undone_tool_changes.pop())

    def refresh(self) -> list[int]:
        """Recompute the edited slices from the labels as they are now, and return them."""
        self._follow_undo_and_redo()
        reference = self._edit_reference()
        if reference is None:
            self.edited = []
        else:
            self.edited = corrections.edited_slices(np.asarray(self.labels), reference)
        return list(self.edited)

    def go_to(self, index: int) -> int:
        """Make ``index`` (clipped to the volume) the current slice, and return it."""
        self.current = int(np.clip(int(index), 0, max(self.n_slices - 1, 0)))
        return self.current

    def toggle_reviewed(self, index: int | None = None) -> bool:
        """Mark slice ``index`` (default: the current one) reviewed, or unmark it.

        Returns whether it is reviewed now.
        """
        index = self.current if index is None else int(index)
        self.reviewed.symmetric_difference_update({index})
        return index in self.reviewed

    # ------------------------------------------------------------------ looking

    def volumes(self) -> dict[str, float]:
        """Volume in mL of pancreas (including tumour) and tumour."""
        return corrections.structure_volumes(np.asarray(self.labels), self.voxel_mm3)

    def slices(self, kind: str) -> list[int]:
        """The sorted slices of ``kind`` (one of :data:`SLICE_KINDS`)."""
        if kind == "edited":
            return list(self.edited)
        if kind == "foreground":
            return corrections.foreground_slices(np.asarray(self.labels))
        if kind == "foreground changes":
            return foreground_changes(np.asarray(self.labels))
        if kind == "reviewed":
            return sorted(self.reviewed)
        raise KeyError(f"unknown kind of slice {kind!r}; choose one of {SLICE_KINDS}")

    def neighbour(self, kind: str, step: int) -> int | None:
        """The next (``step`` > 0) or previous slice of ``kind`` from the current one, if any."""
        return corrections.neighbour_slice(self.slices(kind), self.current, step)

    def compare(
        self, prediction: np.ndarray, reference: np.ndarray
    ) -> dict[str, dict[str, StructureMetrics]]:
        """Dice, PPV and sensitivity of two segmentations of this CT, whole and on this slice.

        Returns
        -------
        dict
            ``{"volume": ..., "slice": ...}``, each :func:`src_models.metrics.case_metrics`.

        Raises
        ------
        ValueError
            The two do not have the same shape (they belong to different images).
        """
        prediction, reference = np.asarray(prediction), np.asarray(reference)
        if prediction.shape != reference.shape:
            raise ValueError(
                f"the two segmentations have different shapes {prediction.shape} and "
                f"{reference.shape}: they belong to different images"
            )
        current = int(np.clip(self.current, 0, prediction.shape[0] - 1))
        return {
            "volume": case_metrics(prediction, reference, self.voxel_mm3),
            "slice": case_metrics(prediction[current], reference[current], self.spacing[1:]),
        }

    # ------------------------------------------------------------------ changing

    def cleanup_changes(self) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Voxels the clean-up (largest component per structure) changes, and their new values.

        The user's edited and reviewed slices stay as they are, and every piece that reaches
        into them is kept: a missed tail painted apart from the model's pancreas is the user's
        correction, not an island. Returned rather than applied, so the viewer writes them as
        one undoable step.
        """
        data = np.asarray(self.labels)
        confirmed = sorted(set(self.refresh()) | self.reviewed)
        keep = np.zeros(data.shape, dtype=bool)
        keep[confirmed] = data[confirmed] > 0
        cleaned = keep_largest_components(data, keep=keep)
        cleaned[confirmed] = data[confirmed]
        changed = np.nonzero(cleaned != data)
        return changed, cleaned[changed]

    def outside_roi_changes(self) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Labelled voxels outside the region of interest, and the background they become.

        Returned rather than applied, so the viewer writes them as one undoable step; record
        them with :meth:`add_tool_changes` first (clearing outside is not a correction).
        """
        if self.roi is None:
            empty = tuple(np.zeros(0, dtype=np.intp) for _ in self.labels.shape)
            return empty, np.zeros(0, dtype=np.uint8)
        data = np.asarray(self.labels)
        voxels = np.nonzero((data != 0) & ~self.roi.mask(data.shape))
        return voxels, np.zeros(len(voxels[0]), dtype=data.dtype)

    # ------------------------------------------------------------------ leaving

    def effort(self) -> dict[str, Any] | None:
        """The effort record of the side-car (:func:`src_models.corrections.effort_record`):
        per edited or reviewed slice its seconds of editing (from :attr:`edits`), voxels changed
        and Dice between the model's prediction and the labels now; ``None`` without a stored
        prediction to measure against."""
        if self.prediction is None or not self.fits_image:
            return None
        return corrections.effort_record(
            np.asarray(self.prediction),
            np.asarray(self.labels),
            self.edited,
            self.reviewed,
            corrections.seconds_per_slice(self.edits),
        )

    def tool_slices(self) -> list[int]:
        """Slices a tool wrote into (the baseline differs from the model's output there) that
        the user neither edited nor marked reviewed afterwards: nobody checked them."""
        if self.baseline is None or self.prediction is None:
            return []
        differs = np.asarray(self.baseline != self.prediction)
        changed = np.flatnonzero(differs.reshape(len(differs), -1).any(axis=1))
        return sorted(set(changed.tolist()) - set(self.edited) - self.reviewed)

    def sidecar(
        self,
        export_path: str | Path,
        kind: str,
        with_labels: bool = True,
        model: dict[str, Any] | None = None,
    ) -> dict:
        """The JSON side-car of an export (:func:`src_models.corrections.sidecar`).

        ``model`` names the model that made the exported file when it is not the one that made
        the labels (a reconstruction records its own model).

        Raises
        ------
        ValueError
            The session does not know the CT file's affine and shape.
        """
        if self.affine is None or self.source_shape is None:
            raise ValueError(f"{self.name}: the CT has no file geometry to number slices by")
        content = corrections.sidecar(
            export_path=export_path,
            kind=kind,
            source=self.source,
            affine=self.affine,
            source_shape=self.source_shape,
            labels=np.asarray(self.labels) if with_labels and self.fits_image else None,
            spacing=self.voxel_mm3,
            model=model if model is not None else self.model,
            edited=self.edited,
            reviewed=self.reviewed,
            plugin_version=__version__,
            effort=self.effort() if with_labels else None,
            tool_slices=self.tool_slices(),
            instance_numbers=self.instance_numbers,
        )
        if self.roi is not None:
            content["region_of_interest"] = {
                **self.roi.as_dict(),
                "convention": "canonical slices, first and last included; box_rows_columns "
                "[first row, row after the last, first column, column after the last] of the "
                "layer shown in napari (the dock shows the last row and column); outside it "
                "labels were cleared and nothing was learnt",
            }
        return content

    def fine_tune_inputs(
        self, include_reviewed: bool = False, learnt: Iterable[int] = ()
    ) -> FineTuneInputs:
        """The corrected slices to learn from, split into training and held-out slices.

        ``learnt`` are slices the base model learnt from in an earlier round
        (:func:`src_models.training.fine_tune.learnt_slices`): never held out, since the model
        would score them from memory.

        Raises
        ------
        src_models.corrections.CorrectionsError
            The labels belong to another image, keep no model output, hold no correction
            with pancreas, too few corrections to check the model
            (:func:`src_models.refine.learns`), or corrected slices with values other than
            0, 1, 2; the message tells the user what to do.
        """
        if not self.fits_image:
            raise corrections.CorrectionsError(
                f"the labels (shape {self.labels.shape}) belong to another image than "
                f"{self.name!r} (shape {self.image.shape})"
            )
        if self.prediction is None:
            raise corrections.CorrectionsError(
                "these labels keep no model output to compare with, so corrections cannot be "
                "told apart; correct the Segment widget's result layer"
            )
        data = np.asarray(self.labels)
        chosen = corrections.training_slices(
            data, self._edit_reference(), self.reviewed, include_reviewed
        )
        if self.roi is not None:
            chosen = [k for k in chosen if self.roi.contains_slice(k)]
            if not chosen:
                raise corrections.CorrectionsError(
                    "no corrected slice lies inside the region of interest "
                    f"(slices {self.roi.first} to {self.roi.last}): nothing is learnt outside it"
                )
        odd = [k for k in chosen if data[k].min() < 0 or data[k].max() > 2]
        if odd:  # Fill between, Refine round and Export refuse them too (a tester's label 3)
            raise corrections.CorrectionsError(
                f"corrected slice{'s' * (len(odd) > 1)} {', '.join(map(str, odd))} "
                f"{'hold' if len(odd) > 1 else 'holds'} values "
                "other than 0 (background), 1 (pancreas) or 2 (tumour): repaint them first"
            )
        edited = set(corrections.edited_slices(data, self._edit_reference()))
        accepted = [k for k in chosen if k not in edited]
        if not learns(None, chosen, accepted):  # the rule of a refine round's fine-tuning
            raise corrections.CorrectionsError(
                f"fine-tuning needs at least {MIN_SLICES_FOR_HOLDOUT} corrected slices, 2 of "
                f"them edited (now {len(chosen)}, {len(chosen) - len(accepted)} edited): one is "
                "held out to check the model, and a model fine-tuned on two slices at the "
                "organ's ends, with nothing to check it, lost most of the organ"
            )
        train, holdout = split_holdout(chosen, accepted=accepted, learnt=learnt)
        if not holdout:
            raise corrections.CorrectionsError(
                "the base model has learnt from every edited slice already (an earlier round): "
                "correct more slices for it to learn more, or choose a base model that has not "
                "seen them"
            )
        hu = np.asarray(self.image)
        if self.roi is not None and self.roi.box is not None:  # learn inside the box only
            r0, r1, c0, c1 = self.roi.box
            hu, data = hu[:, r0:r1, c0:c1], data[:, r0:r1, c0:c1]
        return FineTuneInputs(
            train=train,
            holdout=holdout,
            images=hu[train],
            labels=data[train],
            holdout_images=hu[holdout],
            holdout_labels=data[holdout],
            spacing_yx=(self.spacing[1], self.spacing[2]),
            source=self.source or self.name,
            source_digest=self.content_key(),
        )

    def content_key(self) -> str:
        """:func:`src_models.autosave.content_key` of the CT, "" without its file affine."""
        if self.affine is None:
            return ""
        if self._content_key is None:
            self._content_key = autosave.content_key(np.asarray(self.image), self.affine)
        return self._content_key

    def digest(self) -> str:
        """:func:`src_models.autosave.ct_digest` of the CT, "" without its file affine."""
        if self.affine is None:
            return ""
        return autosave.ct_digest(np.asarray(self.image), self.affine)
