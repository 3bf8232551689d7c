"""Refine round: the whole correction loop in one button, as ``dsms refine`` runs it.

:func:`src_models.refine.refine` in a worker, on the slices the user edited or marked reviewed:
guarded fine-tuning of the latest model (the quick round: 200 steps or 40 s), fill between the
corrected slices, the model beyond them, then the result written into the labels layer as one
napari undo step. It never writes into a corrected slice, nor into a slice the user touched
while the round ran; outside the region of interest nothing changes. The round's model is saved
as a new version in the user model folder, and the next round starts from it
(:data:`LATEST_MODEL` on the labels layer).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from src_models.models.store import load_checkpoint
from src_models.refine import RefineResult, check_corrections, refine
from src_models.training.loop import TrainEvent

from ..._layers import AUTOSAVE_KEY, LATEST_MODEL, MODEL
from .._pickers import same_layer
from .._worker import JobWorker, start_job
from ._common import UndoWatch, cancel_after_step, canonical_volume, new_model_path, refuse

if TYPE_CHECKING:
    from . import ReviewWidget

BUTTON_TEXT = "Refine round"

#: Clicks this soon after starting a round do not cancel it: the button turns into Cancel
#: round, and a double click started the round and cancelled it at once (a tester).
DOUBLE_CLICK_S = 1.0


def _round_progress(value: Any) -> tuple[int, int] | None:
    """Steps while fine-tuning, then slices while segmenting, for napari's activity panel."""
    if isinstance(value, TrainEvent):
        return (value.step, value.total_steps) if value.kind == "step" else None
    return value if isinstance(value, tuple) else None


def changed_slices(slices: np.ndarray) -> str:
    """``"12-15, 20"``: sorted slice numbers as ranges; beyond four ranges, the count and span."""
    runs: list[list[int]] = []
    for k in sorted(int(s) for s in slices):
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    if len(runs) > 4:
        return f"{len(slices)} slices from {runs[0][0]} to {runs[-1][-1]}"
    return "slices " + ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)


def model_line(result: RefineResult) -> str:
    """What became of the model in a round, in a sentence for the status line."""
    tuned = result.fine_tune
    if tuned is None:
        reason = result.note or "the model did not learn (no fine-tuning)"
        return reason[0].upper() + reason[1:] + "."
    steps = f"{tuned.steps} steps in {tuned.elapsed_s:.0f} s"
    if tuned.stopped_by_time and tuned.steps < 0.9 * tuned.planned_steps:  # not 297 of 299
        steps += f" (the time limit stopped it before {tuned.planned_steps})"
    measured = ""
    if tuned.metrics_before and tuned.metrics_after:
        held = ", ".join(map(str, result.holdout))  # canonical: the slider's numbers
        measured = (
            f", held-out corrected slice{'s' * (len(result.holdout) != 1)} {held}: Dice "
            f"{tuned.metrics_before['dice_pancreas']:.3f} -> "
            f"{tuned.metrics_after['dice_pancreas']:.3f}"
        )
    if tuned.too_few_steps:
        return (
            f"Too few steps to trust what the model learnt: {steps}{measured}; the previous "
            "one stays. Free the CPU or allow more time."
        )
    if tuned.kept_previous:
        return f"The model learnt nothing useful: {steps}{measured}; the previous one stays."
    then = (
        f"; then {tuned.held_out_steps} steps on every corrected slice, the held-out ones too"
        if tuned.held_out_steps
        else ""
    )
    return f"The model learnt from them: {steps}{measured}{then}; the next round starts from it."


def _outside_note(slices: list[int]) -> str:
    """The corrected slices a round left out because they lie outside the region of interest."""
    if not slices:
        return ""
    many = len(slices) > 1
    return (
        f" Slice{'s' * many} {', '.join(map(str, slices))} {'lie' if many else 'lies'} outside "
        "the region of interest: not used."
    )


class RefineRoundPanel(QWidget):
    """The Refine round button (Cancel while it runs) and its status line.

    Parameters
    ----------
    review : ReviewWidget
        The dock whose session, labels layer and viewer the round works on.
    """

    def __init__(self, review: ReviewWidget) -> None:
        super().__init__()
        self.review = review
        self._worker: JobWorker | None = None
        self._started: dict[str, Any] = {}
        self._started_at = 0.0
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.button = QPushButton(BUTTON_TEXT)
        self.button.setToolTip(
            "Learn from the edited and reviewed slices (keeping the previous model if that makes "
            "held-out corrections worse), fill between them, re-segment the rest: under a minute "
            "on a laptop CPU, one undo step; corrected slices are never changed"
        )
        self.button.clicked.connect(self._on_clicked)
        review.session_changed.connect(self._on_session_changed)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self._undo = UndoWatch(
            self.status, "the last round was undone: the labels are as before it"
        )
        review.refreshed.connect(lambda: self._undo.check(self.review.labels_layer))
        layout.addWidget(self.button)
        layout.addWidget(self.status)

    @property
    def is_running(self) -> bool:
        return self._worker is not None

    def _on_clicked(self) -> None:
        if self._worker is not None:
            if time.monotonic() - self._started_at < DOUBLE_CLICK_S:
                return  # the second click of a double click, not a Cancel (a tester's round)
            self.cancel()
        else:
            self.start()

    def cancel(self) -> bool:
        """Stop the running round after its current step; whether one was running."""
        return cancel_after_step(self._worker, self.button, self.status)

    def latest_checkpoint(self) -> str | None:
        """The model a round starts from: the last round's, else the one that made the labels."""
        layer, session = self.review.labels_layer, self.review.session
        latest = layer.metadata.get(LATEST_MODEL) if layer is not None else None
        if latest and Path(latest).is_file():
            return str(latest)
        return (session.model or {}).get("checkpoint") if session is not None else None

    def start(self) -> JobWorker | None:
        """Run one round in a worker; returns it, or ``None`` (and the status says why)."""
        layer, session = self.review.labels_layer, self.review.session
        if layer is None or session is None or not session.fits_image:
            refuse(self.status, "choose a CT and its labels layer (on the CT's grid) first")
            return None
        if self.review.fine_tune.is_busy:
            refuse(self.status, "fine-tuning is running: wait for it or cancel it first")
            return None
        self.review.refresh_status()
        known = sorted(set(session.edited) | session.reviewed)
        outside = []  # named in the report: a tester's slice 90 was dropped without a word
        if session.roi is not None:
            outside = [k for k in known if not session.roi.contains_slice(k)]
            known = [k for k in known if session.roi.contains_slice(k)]
        volume = canonical_volume(session.image, session.spacing, session.source or session.name)
        labels = np.array(session.labels, copy=True)  # what the round reads: a snapshot
        try:
            check_corrections(volume, labels, known)
        except ValueError as error:
            refuse(self.status, f"{error} (edit slices or mark them reviewed)")
            return None
        checkpoint = self.latest_checkpoint()
        if not checkpoint:
            refuse(self.status, "the labels keep no model to learn from: segment the CT first")
            return None
        image = session.source or session.name
        output = new_model_path(self.status, checkpoint, image, "the round's model")
        if output is None:
            return None
        model, meta = load_checkpoint(checkpoint)
        reviewed = sorted(set(known) - set(session.edited))  # accepted unchanged
        self._started = {
            "labels": labels, "known": known, "reviewed": reviewed, "layer": layer,
            "session": session, "model_path": output, "outside": outside,
        }  # fmt: skip
        self.review.note_pause()  # the wait for the round is not editing time
        self.button.setText("Cancel round")
        self._started_at = time.monotonic()
        self.status.setText(
            f"learning from {len(known)} corrected slices with {Path(checkpoint).name}, then "
            f"filling and re-segmenting…{_outside_note(outside)}"
        )
        self._worker = start_job(
            refine,
            volume,
            labels,
            known,
            model,
            meta,
            out=str(output),
            reviewed=reviewed,
            source_digest=session.content_key() or None,
            description="Refine round",
            on_result=self._on_done,
            on_finished=self._on_finished,
            on_aborted=self._on_cancelled,
            progress_of=_round_progress,
            error_context="Refine round",
        )
        return self._worker

    def _on_done(self, result: RefineResult) -> None:
        started, self._started = self._started, {}
        layer, session = started["layer"], started["session"]
        tuned = result.fine_tune
        if layer is not self.review.labels_layer or session is not self.review.session:
            # Its model goes too: a tester found such rounds' models listed in the menus, one of
            # them the base weights again under a card that told of what it had learnt.
            if tuned is not None and tuned.checkpoint is not None:
                tuned.checkpoint.unlink(missing_ok=True)
            self.status.setText("the labels layer changed during the round: nothing was written")
            return
        self.review.refresh_status()
        current = np.asarray(layer.data)
        # Slices the user edited, reviewed or touched while the round ran stay as they are.
        keep = set(session.edited) | session.reviewed | set(started["known"])
        touched = (current != started["labels"]).reshape(len(current), -1).any(axis=1)
        meanwhile = {int(k) for k in np.flatnonzero(touched)} - set(started["known"])
        keep |= meanwhile
        writable = np.ones(len(current), dtype=bool)
        writable[sorted(keep)] = False
        differs = (result.canonical_labels != current) & writable[:, None, None]
        if session.roi is not None:
            differs &= session.roi.mask(current.shape)
        changed = np.nonzero(differs)
        values = result.canonical_labels[changed]
        if tuned is not None and tuned.checkpoint is not None:
            if tuned.kept_previous:  # the previous weights again: no new version to keep
                tuned.checkpoint.unlink(missing_ok=True)
            else:
                layer.metadata[LATEST_MODEL] = str(tuned.checkpoint)
                # It re-segmented the slices beyond the corrections: exports name it beside the
                # model that made the labels (a tester's side-car named only the bundled one).
                model = dict(layer.metadata.get(MODEL) or {})
                model["refine_rounds"] = [*model.get("refine_rounds", []), str(tuned.checkpoint)]
                layer.metadata[MODEL] = session.model = model
        slices = np.unique(changed[0])
        if changed[0].size:
            # The round's labels are a tool's guess, not corrections: fine-tuning never learns
            # from them until the user edits them or marks them reviewed.
            self._undo.wrote(layer, changed, current[changed], values)
            session.add_tool_changes(changed, values)
            layer.data_setitem(changed, values)
        where = changed_slices(slices) if len(slices) else "no other slice"
        painted = f" and {len(meanwhile)} painted meanwhile" if meanwhile else ""
        reviewed = len(started["reviewed"])
        kept = f"{len(started['known']) - reviewed} edited" + (
            f" and {reviewed} reviewed" if reviewed else ""
        )  # a tester read "8 corrected slices" for 5 edited and 3 only reviewed
        # No write, no undo step: Ctrl+Z would undo the user's last stroke (a tester lost a
        # correction to the hint after a round that changed nothing).
        reverts = f"{changed[0].size} voxels; Ctrl+Z reverts them" if len(slices) else "0 voxels"
        self.status.setText(
            f"{kept} slices{painted} kept; {where} changed ({reverts}). {model_line(result)}"
            f"{_outside_note(started['outside'])}"
        )
        show_info(
            f"Refine round: {len(slices)} slices changed (Ctrl+Z)"
            if len(slices)
            else "Refine round: no slice changed"
        )
        self.review.refresh_status()
        self.review.reveal(self.status)

    def _on_session_changed(self) -> None:
        """Stop a round whose labels layer went away or is no longer the one reviewed."""
        layer = self._started.get("layer")
        if self._worker is not None and layer is not None and layer is not self.review.labels_layer:
            self._started["why"] = _left_layer_note(layer, self.review.viewer)
            self._worker.quit()

    def _on_cancelled(self) -> None:
        # Cancelled while re-segmenting, the round had already saved its model: it goes too.
        started, self._started = self._started, {}
        if started.get("model_path") is not None:
            Path(started["model_path"]).unlink(missing_ok=True)
        why = started.get("why")
        self.status.setText(why or "round cancelled: the labels and the model are unchanged")

    def _on_finished(self) -> None:
        if self._started:  # neither result nor abort came: Cancel landed as the round ended,
            self._on_cancelled()  # and napari then reports neither (CI caught it in a test)
        self._worker, self._started = None, {}
        self.review.note_pause()  # the next stroke's time starts now
        self.button.setText(BUTTON_TEXT)
        self.button.setEnabled(True)


def _left_layer_note(layer: Any, viewer: Any) -> str:
    """Why a round stopped when its labels layer was no longer the one reviewed, and where
    the corrections are when it left the viewer (a tester read "the labels and the model are
    unchanged" about a layer just deleted)."""
    if any(same_layer(layer, other) for other in viewer.layers):
        return f"round stopped: another labels layer than {layer.name!r} is reviewed now"
    kept = (
        " Its corrections are in the autosave journal: reopen the CT to be offered them, or "
        "run dsms recover --list."
        if layer.metadata.get(AUTOSAVE_KEY)
        else ""
    )
    return f"round stopped: its labels layer {layer.name!r} was removed.{kept}"
