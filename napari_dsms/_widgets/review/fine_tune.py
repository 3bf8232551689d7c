"""Fine-tune panel: learn from the corrected slices, then re-segment with the new model.

The inputs come from :meth:`~napari_dsms._session.ReviewSession.fine_tune_inputs`; the run is
:func:`src_models.training.fine_tune.learn_from_corrections` in a worker (loss chart, progress,
cancel), which saves a new versioned checkpoint in the user model folder and never touches the base
model. Re-segmenting runs the same job the Segment dock runs (:class:`.._worker.SegmentationRun`),
so its layers look the same, and the user's corrected layer is kept beside the new result.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from src_models import corrections
from src_models.models.checkpoints import CheckpointError, fell_on_held_out, read_metadata
from src_models.models.store import list_checkpoints
from src_models.training import fine_tune as tuning
from src_models.training.loop import TrainEvent

from ..._layers import CONTOUR_WIDTH, MODEL, PREDICTION, ROI
from ..._session import FineTuneInputs, RegionOfInterest
from .._worker import JobWorker, SegmentationRun, start_job
from ..loss_plot import LossPlot
from ._common import cancel_after_step, new_model_path, refuse

if TYPE_CHECKING:
    from . import ReviewWidget

#: Fine-tuning defaults of the training engine, measured on a 2-core CPU: about 10 corrected
#: slices learnt in about 3 minutes.
DEFAULT_STEPS = tuning.FINE_TUNE_DEFAULTS.steps
DEFAULT_TIME_BUDGET_S = int(tuning.FINE_TUNE_DEFAULTS.time_budget_s or 0)


def _step_progress(event: TrainEvent) -> tuple[int, int] | None:
    """(done, total) for napari's activity panel from a training step event."""
    return (event.step, event.total_steps) if event.kind == "step" else None


class FineTunePanel(QGroupBox):
    """Base model, limits, Fine-tune / Cancel, loss chart, report, Re-segment.

    Parameters
    ----------
    review : ReviewWidget
        The dock whose session provides the corrected slices.

    Signals
    -------
    fine_tuned(Path)
        A fine-tuned model was saved at this path.
    resegmented(Labels, Labels)
        The new model's labels layer and the corrected labels layer it should be compared with.
    """

    fine_tuned = Signal(object)
    resegmented = Signal(object, object)

    def __init__(self, review: ReviewWidget) -> None:
        super().__init__("Fine-tune on corrections")
        self.review = review
        self._worker: JobWorker | None = None
        self._run: SegmentationRun | None = None
        self._last_checkpoint: Path | None = None
        # The held-out figures of the last fine-tuned model when they fell, else "".
        self._advised_against = ""
        self._inputs: FineTuneInputs | None = None  # of the run in progress or the last one
        # Checkpoint files outside the model folders that produced a labels layer: path -> arch.
        self._other_checkpoints: dict[str, str] = {}

        column = QVBoxLayout(self)
        form = QFormLayout()
        column.addLayout(form)
        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.setToolTip(
            "Model to fine-tune; it is never changed: the result is saved as a new version in "
            "your model folder"
        )
        form.addRow("Base model", self.checkpoint_combo)
        self.include_reviewed = QCheckBox("Also learn from reviewed, unedited slices")
        form.addRow(self.include_reviewed)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 100_000)
        self.steps_spin.setValue(DEFAULT_STEPS)
        self.steps_spin.setToolTip("Most optimiser steps")
        self.budget_spin = QSpinBox()
        self.budget_spin.setRange(0, 24 * 3600)
        self.budget_spin.setSuffix(" s")
        self.budget_spin.setSpecialValueText("no limit")
        self.budget_spin.setValue(DEFAULT_TIME_BUDGET_S)
        self.budget_spin.setToolTip("Stop after this long even if steps remain (0: no limit)")
        limits = QHBoxLayout()
        limits.addWidget(QLabel("Steps"))
        limits.addWidget(self.steps_spin)
        limits.addWidget(QLabel("Time"))
        limits.addWidget(self.budget_spin)
        form.addRow(limits)
        buttons = QHBoxLayout()
        self.fine_tune_button = QPushButton("Fine-tune on corrections")
        self.fine_tune_button.clicked.connect(lambda: self.fine_tune())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop after the current step; the previous model stays")
        self.cancel_button.clicked.connect(self.cancel_fine_tune)
        buttons.addWidget(self.fine_tune_button)
        buttons.addWidget(self.cancel_button)
        form.addRow(buttons)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        form.addRow(self.progress)
        self.loss_plot = LossPlot()
        form.addRow(self.loss_plot)
        # Below the form, not in it: a QFormLayout row gave the wrapped report the height of
        # its width-free hint, and the real report was cut at both ends at 1366 x 768.
        self.fine_tune_label = QLabel("")
        self.fine_tune_label.setWordWrap(True)
        column.addWidget(self.fine_tune_label)
        self.resegment_button = QPushButton("Re-segment with fine-tuned model")
        self.resegment_button.setEnabled(False)
        self.resegment_button.clicked.connect(self.resegment)
        column.addWidget(self.resegment_button)
        self.refresh_checkpoints()
        review.session_changed.connect(self._select_base_checkpoint)

    # ------------------------------------------------------------------ base model

    def refresh_checkpoints(self) -> None:
        """Re-read the bundled and user checkpoints into the base-model menu."""
        current = self.checkpoint_combo.currentData()
        self.checkpoint_combo.clear()
        listed = set()
        for entry in list_checkpoints():
            where = "bundled" if entry.bundled else "yours"
            self.checkpoint_combo.addItem(f"{entry.name} ({entry.arch}, {where})", str(entry.path))
            listed.add(entry.path.resolve())
        for path, arch in self._other_checkpoints.items():
            if Path(path).is_file() and Path(path).resolve() not in listed:
                self.checkpoint_combo.addItem(f"{Path(path).name} ({arch}, file)", path)
        if current is not None:
            self.select_checkpoint(current)

    def select_checkpoint(self, path: str | os.PathLike[str]) -> bool:
        """Choose checkpoint ``path`` as the base model; ``False`` when it is not listed."""
        wanted = Path(path).resolve()
        for i in range(self.checkpoint_combo.count()):
            if Path(self.checkpoint_combo.itemData(i)).resolve() == wanted:
                self.checkpoint_combo.setCurrentIndex(i)
                return True
        return False

    def _select_base_checkpoint(self) -> None:
        """Default the base model to the one that produced the labels (even a browsed file)."""
        layer = self.review.labels_layer
        model = layer.metadata.get(MODEL) if layer is not None else None
        checkpoint = model.get("checkpoint") if isinstance(model, dict) else None
        if not checkpoint or self.select_checkpoint(checkpoint):
            return
        try:
            self._other_checkpoints[str(checkpoint)] = read_metadata(checkpoint)["arch"]
        except CheckpointError:
            return  # moved or damaged since segmenting: the user picks another base model
        self.refresh_checkpoints()
        self.select_checkpoint(checkpoint)

    # ------------------------------------------------------------------ fine-tuning

    @property
    def is_busy(self) -> bool:
        """Whether a fine-tuning run (or the re-segmentation after it) is in progress."""
        return self._worker is not None or self._run is not None

    @property
    def last_checkpoint(self) -> Path | None:
        """The checkpoint saved by the last completed fine-tuning run."""
        return self._last_checkpoint

    def fine_tune(self) -> JobWorker | None:
        """Fine-tune the base model on the corrected slices in a worker thread.

        Returns
        -------
        JobWorker or None
            The running worker, or ``None`` when there is nothing to learn from (the label
            and a notification say why) or a run is already going.
        """
        if self.is_busy:
            refuse(self.fine_tune_label, "fine-tuning is already running")
            return None
        if self.review.triage.refine_round.is_running:
            refuse(self.fine_tune_label, "a refine round is running: wait for it or cancel it")
            return None
        session = self.review.session
        if session is None:
            refuse(self.fine_tune_label, "choose the image and its corrected labels layer first")
            return None
        checkpoint = self.checkpoint_combo.currentData()
        if not checkpoint:
            refuse(self.fine_tune_label, "no base model: no checkpoint is installed or chosen")
            return None
        try:
            learnt = tuning.learnt_slices(read_metadata(checkpoint), session.content_key())
            inputs = session.fine_tune_inputs(self.include_reviewed.isChecked(), learnt)
        except (corrections.CorrectionsError, CheckpointError) as error:
            refuse(self.fine_tune_label, str(error))
            return None
        output = new_model_path(
            self.fine_tune_label, checkpoint, inputs.source, "the fine-tuned model"
        )
        if output is None:
            return None
        self._inputs = inputs
        steps = int(self.steps_spin.value())
        self.loss_plot.clear()
        self.progress.setRange(0, steps)
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.fine_tune_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.resegment_button.setEnabled(False)
        held = inputs.holdout
        self.fine_tune_label.setText(
            f"fine-tuning on {len(inputs.train)} slices, {len(held)} held out "
            f"({'slice' if len(held) == 1 else 'slices'} "
            f"{', '.join(str(s) for s in held) or 'none'})…"
        )
        self.review.note_pause()  # the wait for training is not editing time
        worker = start_job(
            tuning.learn_from_corrections,
            checkpoint,
            inputs.images,
            inputs.labels,
            inputs.spacing_yx,
            holdout_images=inputs.holdout_images,
            holdout_labels=inputs.holdout_labels,
            output=output,
            provenance=inputs.provenance(),
            steps=steps,
            time_budget_s=float(self.budget_spin.value()) or None,
            description="Fine-tuning on corrections",
            on_result=self._on_fine_tune_done,
            on_yield=self._on_fine_tune_event,
            on_finished=self._on_worker_finished,
            on_aborted=self._on_fine_tune_cancelled,
            on_error=self._on_fine_tune_error,
            progress_of=_step_progress,
            error_context="Fine-tune",
        )
        self._worker = worker
        return worker

    def cancel_fine_tune(self) -> bool:
        """Stop fine-tuning after the current step; nothing is saved, the base model stays.

        Returns whether a run was going on.
        """
        return cancel_after_step(self._worker, self.cancel_button, self.fine_tune_label)

    def _on_fine_tune_event(self, event: TrainEvent) -> None:
        if event.kind == "step":
            self.loss_plot.add(event.step, event.losses.get("loss", float("nan")))
            self.progress.setMaximum(event.total_steps)
            self.progress.setValue(event.step)
            self.progress.setFormat(f"step %v/%m, {event.elapsed_s:.0f} s")
        elif event.kind == "validation" and "dice_pancreas" in event.metrics:
            when = "before" if event.step == 0 else "after"
            self.fine_tune_label.setText(
                f"held-out pancreas Dice {when}: {event.metrics['dice_pancreas']:.3f}"
            )

    def _on_fine_tune_done(self, report: tuning.FineTuneResult) -> None:
        inputs = self._inputs
        lines = [report.summary()]
        if inputs is not None:
            lines += inputs.report(report.metrics_before, report.metrics_after)
        self.fine_tune_label.setText("\n".join(lines))
        self.review.reveal(self.resegment_button)  # the whole report and what to do next
        self._advised_against = (
            f" (held-out Dice {report.metrics_before['dice_pancreas']:.3f} -> "
            f"{report.metrics_after['dice_pancreas']:.3f})"
            if fell_on_held_out(report.meta)
            else ""
        )
        if report.checkpoint is None:
            return
        self._last_checkpoint = report.checkpoint
        show_info(f"Fine-tuned model saved: {report.checkpoint}")
        self.refresh_checkpoints()
        self.resegment_button.setEnabled(True)
        self.fine_tuned.emit(report.checkpoint)

    def _on_fine_tune_error(self, error: BaseException) -> None:
        self.fine_tune_label.setText(f"fine-tuning failed: {error}; the base model is unchanged")

    def _on_fine_tune_cancelled(self) -> None:
        self.fine_tune_label.setText(
            "fine-tuning cancelled: nothing was saved, the base model is unchanged and in use"
        )

    def _on_worker_finished(self) -> None:
        self._worker = None
        if self.fine_tune_label.text().startswith("cancelling"):  # Cancel landed as the run
            self.fine_tune_label.setText(  # ended: napari reports neither result nor abort
                "fine-tuning ended as it was cancelled: its model may have been saved (see the "
                "Segment dock's model menu); the base model is unchanged"
            )
        self.review.note_pause()  # the next stroke's time starts now
        self.progress.setVisible(False)
        self.fine_tune_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    # ------------------------------------------------------------------ re-segmenting

    def resegment(self) -> SegmentationRun | None:
        """Segment the image again with the fine-tuned model, beside the corrected labels.

        The corrected layer is kept (a new result never replaces edited labels); when the new
        layer arrives, ``resegmented`` pairs it with the corrections for the Compare panel.
        """
        image, corrected = self.review.image_layer, self.review.labels_layer
        if image is None or self._last_checkpoint is None or self.is_busy:
            refuse(self.fine_tune_label, "fine-tune first, then re-segment the chosen image")
            return None
        run = SegmentationRun(self.review.viewer, image, parent=self)
        run.segmented.connect(lambda labels: self._on_resegmented(labels, corrected))
        run.ended.connect(self._on_resegment_ended)
        if not run.start(str(self._last_checkpoint), context="Re-segment"):
            return None
        self._run = run
        self.resegment_button.setEnabled(False)
        self.fine_tune_button.setEnabled(False)
        self.fine_tune_label.setText(
            f"re-segmenting {image.name} with {self._last_checkpoint.name}…"
        )
        return run

    def _on_resegmented(self, labels: Labels, corrected: Labels | None) -> None:
        labels.contour = CONTOUR_WIDTH  # a comparison: outlines over the corrected labels
        # Not for painting: napari made the new layer the active one, in paint mode, and the
        # next stroke went into it instead of into the corrections the next round learns from.
        labels.mode = "pan_zoom"
        if corrected is not None:
            self.review.select_labels(corrected)
            if corrected in self.review.viewer.layers:
                self.review.viewer.layers.selection.active = corrected
        session = self.review.session
        if session is not None and session.roi is not None:
            _keep_inside(labels, session.roi)
        warning = (
            "; this model agreed less with your corrections on the held-out slices than the "
            f"one it came from{self._advised_against}, and Segment keeps the model it had"
            if self._advised_against
            else ""
        )  # the report said so before re-segmenting; a tester saw the advice replaced
        self.fine_tune_label.setText(
            f"re-segmented into {labels.name!r}{warning}; compare it with your corrections "
            "under Compare two segmentations (slices you trained on flatter the figures)"
        )
        self.resegmented.emit(labels, corrected)

    def _on_resegment_ended(self) -> None:
        self._run = None
        self.fine_tune_button.setEnabled(True)
        self.resegment_button.setEnabled(self._last_checkpoint is not None)


def _keep_inside(labels: Labels, roi: RegionOfInterest) -> None:
    """The model re-segments inside the region of interest only: its result and stored output
    are background outside it, and the region goes with the new layer."""
    if labels.data.shape[0] <= roi.last:
        return  # another grid: the region does not apply
    outside = ~roi.mask(labels.data.shape)
    data = np.array(labels.data)
    data[outside] = 0
    prediction = labels.metadata.get(PREDICTION)
    if prediction is not None and np.shape(prediction) == data.shape:
        prediction = np.array(prediction)
        prediction[outside] = 0
        labels.metadata[PREDICTION] = prediction
    labels.metadata[ROI] = roi.as_dict()
    labels.data = data
