"""Review and fine-tune: walk through a segmentation, correct it, export it, learn from it.

The dock widget binds one CT image layer and one labels layer (normally the Segment widget's
result). napari's own paint, erase, fill and undo stay the editing tools; this widget only
helps: it jumps between slices worth looking at, sets up the brush, shows volumes and which
slices differ from the model's output, cleans up islands (undoable with napari's undo), measures
two label layers against each other, exports with a side-car, and fine-tunes the model on the
corrected slices in a worker thread.

Everything that computes lives in :mod:`src_models` (mainly :mod:`src_models.corrections`); no
action here changes the labels except the painting helpers and the clean-up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from src_models import corrections
from src_models.io import VolumeError, write_image, write_labels
from src_models.io.volume import voxel_volume_mm3
from src_models.metrics import case_metrics
from src_models.models.checkpoints import CheckpointError, read_metadata
from src_models.models.store import list_checkpoints, user_model_dir
from src_models.training import fine_tune as tuning
from src_models.training.loop import TrainEvent

from .. import __version__
from .._layers import LABEL_COLOURS, layer_to_volume, reference_volume
from ._worker import start_job
from .loss_plot import LossPlot

#: Brush diameter in mm set by the paint buttons: about a third of the pancreas' thickness,
#: fine enough for its borders, large enough to fill a missed slice in a few strokes.
BRUSH_MM = 6.0

#: Quiet time after the last edit before volumes and edited slices are recomputed: a brush
#: stroke fires many events and a full-volume comparison takes tens of milliseconds.
REFRESH_DELAY_MS = 250

#: Fine-tuning defaults of the training engine, measured on a 2-core CPU: about 10 corrected
#: slices learnt in about 3 minutes.
DEFAULT_STEPS = tuning.FINE_TUNE_DEFAULTS.steps
DEFAULT_TIME_BUDGET_S = int(tuning.FINE_TUNE_DEFAULTS.time_budget_s or 0)

_TRANSPARENT = (0.0, 0.0, 0.0, 0.0)


def _same(a: Any, b: Any) -> bool:
    """Whether two references point to the same layer.

    napari hands plugin widgets a viewer whose layers come wrapped in a fresh proxy at every
    access, so ``is`` would tell two views of one layer apart.
    """
    return getattr(a, "__wrapped__", a) is getattr(b, "__wrapped__", b)


def _labels_layers(viewer: napari.Viewer) -> list[Labels]:
    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def _ct_layers(viewer: napari.Viewer) -> list[Image]:
    """3D image layers that are CTs, not the Segment widget's derived images."""
    return [
        layer
        for layer in viewer.layers
        if isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb
        and not layer.metadata.get("dsms_role")
    ]


def _step_progress(event: TrainEvent) -> tuple[int, int] | None:
    """(done, total) for napari's activity panel from a training step event."""
    return (event.step, event.total_steps) if event.kind == "step" else None


class _LayerCombo(QComboBox):
    """A combo box of viewer layers that follows additions, removals and renames.

    Each entry's data is ``(layer, variant)``; ``variant`` lets one layer appear twice (a labels
    layer and the model output stored in its metadata).
    """

    def __init__(
        self,
        viewer: napari.Viewer,
        entries: Callable[[napari.Viewer], list[tuple[str, Layer, str]]],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._entries = entries
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the list, keeping the current entry when it still exists."""
        current = self.currentData()
        self.blockSignals(True)
        self.clear()
        for text, layer, variant in self._entries(self._viewer):
            self.addItem(text, (layer, variant))
        index = self._index_of(current)
        self.setCurrentIndex(index if index >= 0 else (0 if self.count() else -1))
        self.blockSignals(False)
        if self.currentData() != current:
            self.currentIndexChanged.emit(self.currentIndex())

    def _index_of(self, data: tuple[Layer, str] | None) -> int:
        if data is None:
            return -1
        for i in range(self.count()):
            layer, variant = self.itemData(i)
            if _same(layer, data[0]) and variant == data[1]:
                return i
        return -1

    def layer(self) -> Layer | None:
        """The chosen layer, or ``None`` when the viewer has none of the right kind."""
        data = self.currentData()
        return None if data is None else data[0]

    def variant(self) -> str:
        """The chosen entry's variant (``""`` for the layer itself)."""
        data = self.currentData()
        return "" if data is None else data[1]

    def select(self, layer: Layer, variant: str = "") -> None:
        """Choose ``layer`` (and ``variant``) if listed."""
        index = self._index_of((layer, variant))
        if index >= 0:
            self.setCurrentIndex(index)


class ReviewWidget(QWidget):
    """Dock widget to review, correct, export and fine-tune from a segmentation.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose layers are reviewed (napari passes it in).
    """

    #: Emitted with the new checkpoint's path when a fine-tuned model has been saved.
    fine_tuned = Signal(object)

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._watched: Labels | None = None
        self._edited: list[int] = []
        # The labels layer whose newest undo step is this widget's clean-up, else None.
        self._cleanup_on_top: Labels | None = None
        self._worker: Any = None
        self._last_checkpoint: Path | None = None
        # Checkpoint files outside the model folders that produced a labels layer: path -> arch.
        self._other_checkpoints: dict[str, str] = {}
        self._last_point = tuple(self.viewer.dims.point)
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_DELAY_MS)
        self._refresh_timer.timeout.connect(self.refresh_status)

        # The panel is taller than a laptop screen: it scrolls instead of stretching the window.
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self._build_layers_box())
        layout.addWidget(self._build_navigate_box())
        layout.addWidget(self._build_edit_box())
        layout.addWidget(self._build_metrics_box())
        layout.addWidget(self._build_export_box())
        layout.addWidget(self._build_fine_tune_box())
        layout.addStretch(1)
        self._scroll = QScrollArea()
        self._scroll.setWidgetResizable(True)
        self._scroll.setFrameShape(QFrame.Shape.NoFrame)
        self._scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self._scroll)

        events = self.viewer.layers.events
        events.inserted.connect(self._on_layer_inserted)
        events.removed.connect(self._on_layer_removed)
        events.moved.connect(self._on_layers_changed)
        self.viewer.dims.events.point.connect(self._on_slice_changed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._on_layers_changed)
        self.refresh_checkpoints()
        self._on_labels_changed()

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        """Make the dock as wide as the panel once napari's style sets its real size.

        Only scrolling up and down is meant: a panel cut off on the right hides buttons.
        """
        scroll = self._scroll
        margins = scroll.verticalScrollBar().sizeHint().width() + 2 * scroll.frameWidth() + 4
        scroll.setMinimumWidth(scroll.widget().minimumSizeHint().width() + margins)
        super().showEvent(event)

    # ------------------------------------------------------------------ building the panel

    def _build_layers_box(self) -> QGroupBox:
        box = QGroupBox("Layers")
        form = QFormLayout(box)
        self.image_combo = _LayerCombo(
            self.viewer,
            lambda v: [(layer.name, layer, "") for layer in _ct_layers(v)],
        )
        self.labels_combo = _LayerCombo(
            self.viewer, lambda v: [(layer.name, layer, "") for layer in _labels_layers(v)]
        )
        self.image_combo.setToolTip("The CT the labels belong to")
        self.labels_combo.setToolTip(
            "The labels you correct: normally the Segment widget's result, which keeps the "
            "model's output to tell which slices you edited"
        )
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.labels_combo.currentIndexChanged.connect(self._on_labels_changed)
        self.volumes_label = QLabel("")
        self.volumes_label.setWordWrap(True)
        form.addRow("Volumes", self.volumes_label)
        return box

    def _build_navigate_box(self) -> QGroupBox:
        box = QGroupBox("Navigate")
        grid = QGridLayout(box)
        buttons = (
            ("◀ Foreground", "Previous slice with pancreas or tumour", self.previous_foreground),
            ("Foreground ▶", "Next slice with pancreas or tumour", self.next_foreground),
            ("◀ Edited", "Previous slice you changed", self.previous_edited),
            ("Edited ▶", "Next slice you changed", self.next_edited),
        )
        for i, (text, tip, slot) in enumerate(buttons):
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            grid.addWidget(button, i // 2, i % 2)
        self.show_pancreas = QCheckBox("Show pancreas")
        self.show_tumour = QCheckBox("Show tumour")
        for checkbox in (self.show_pancreas, self.show_tumour):
            checkbox.setChecked(True)
            checkbox.toggled.connect(self._apply_visibility)
        grid.addWidget(self.show_pancreas, 2, 0)
        grid.addWidget(self.show_tumour, 2, 1)
        self.slice_label = QLabel("")
        grid.addWidget(self.slice_label, 3, 0, 1, 2)
        self.edited_list = QListWidget()
        self.edited_list.setMaximumHeight(80)
        self.edited_list.setToolTip(
            "Slices that differ from the model's output (found by comparing, so undoing an "
            "edit removes the slice again); click one to go there"
        )
        self.reviewed_list = QListWidget()
        self.reviewed_list.setMaximumHeight(80)
        self.reviewed_list.setToolTip("Slices you marked as reviewed; click one to go there")
        for widget in (self.edited_list, self.reviewed_list):
            widget.itemClicked.connect(self._on_list_clicked)
        grid.addWidget(QLabel("Edited slices"), 4, 0)
        grid.addWidget(QLabel("Reviewed slices"), 4, 1)
        grid.addWidget(self.edited_list, 5, 0)
        grid.addWidget(self.reviewed_list, 5, 1)
        self.review_button = QPushButton("Mark slice reviewed")
        self.review_button.setToolTip(
            "Record that you checked the current slice (toggles); stored with the labels layer "
            "and written into export side-cars"
        )
        self.review_button.clicked.connect(self.toggle_reviewed)
        grid.addWidget(self.review_button, 6, 0, 1, 2)
        return box

    def _build_edit_box(self) -> QGroupBox:
        box = QGroupBox("Correct")
        grid = QGridLayout(box)
        self.paint_pancreas_button = QPushButton("Paint pancreas")
        self.paint_tumour_button = QPushButton("Paint tumour")
        self.erase_button = QPushButton("Erase")
        self.paint_pancreas_button.clicked.connect(self.paint_pancreas)
        self.paint_tumour_button.clicked.connect(self.paint_tumour)
        self.erase_button.clicked.connect(self.erase)
        tip = "napari's brush on the current slice; Ctrl+Z undoes, [ and ] change the size"
        for i, button in enumerate(
            (self.paint_pancreas_button, self.paint_tumour_button, self.erase_button)
        ):
            button.setToolTip(tip)
            grid.addWidget(button, 0, i)
        self.cleanup_button = QPushButton("Keep largest component")
        self.cleanup_button.setToolTip(
            "Remove islands: keep the largest 3D connected pancreas (tumour included) and the "
            "largest tumour inside it. One undo step (Ctrl+Z or the button beside)."
        )
        self.cleanup_button.clicked.connect(self.clean_up)
        self.undo_cleanup_button = QPushButton("Undo clean-up")
        self.undo_cleanup_button.setEnabled(False)
        self.undo_cleanup_button.clicked.connect(self.undo_clean_up)
        grid.addWidget(self.cleanup_button, 1, 0, 1, 2)
        grid.addWidget(self.undo_cleanup_button, 1, 2)
        return box

    def _build_metrics_box(self) -> QGroupBox:
        box = QGroupBox("Compare two segmentations")
        form = QFormLayout(box)
        self.prediction_combo = _LayerCombo(self.viewer, self._prediction_entries)
        self.reference_combo = _LayerCombo(
            self.viewer, lambda v: [(layer.name, layer, "") for layer in _labels_layers(v)]
        )
        self.prediction_combo.setToolTip(
            "Segmentation to score; '(model output)' is the prediction kept in a labels layer "
            "before your corrections"
        )
        self.reference_combo.setToolTip(
            "Segmentation taken as correct (e.g. your corrected labels)"
        )
        form.addRow("Prediction", self.prediction_combo)
        form.addRow("Reference", self.reference_combo)
        button = QPushButton("Compute Dice, PPV, sensitivity")
        button.clicked.connect(self.compute_metrics)
        form.addRow(button)
        self.metrics_label = QLabel("")
        self.metrics_label.setWordWrap(True)
        form.addRow(self.metrics_label)
        return box

    def _build_export_box(self) -> QGroupBox:
        box = QGroupBox("Export")
        column = QVBoxLayout(box)
        row = QHBoxLayout()
        self.export_labels_button = QPushButton("Export labels…")
        self.export_labels_button.setToolTip(
            "NIfTI on the source CT's grid and affine, with a JSON side-car (model, edited and "
            "reviewed slices, volumes)"
        )
        self.export_labels_button.clicked.connect(lambda: self.export_labels())
        self.export_reconstruction_button = QPushButton("Export reconstruction…")
        self.export_reconstruction_button.setToolTip(
            "The restoration decoder's output of DRS models ('<image> reconstruction' layer)"
        )
        self.export_reconstruction_button.clicked.connect(lambda: self.export_reconstruction())
        row.addWidget(self.export_labels_button)
        row.addWidget(self.export_reconstruction_button)
        self.export_label = QLabel("")
        self.export_label.setWordWrap(True)
        column.addLayout(row)
        column.addWidget(self.export_label)
        return box

    def _build_fine_tune_box(self) -> QGroupBox:
        box = QGroupBox("Fine-tune on corrections")
        form = QFormLayout(box)
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
        self.fine_tune_label = QLabel("")
        self.fine_tune_label.setWordWrap(True)
        form.addRow(self.fine_tune_label)
        self.resegment_button = QPushButton("Re-segment with fine-tuned model")
        self.resegment_button.setEnabled(False)
        self.resegment_button.clicked.connect(self.resegment)
        form.addRow(self.resegment_button)
        return box

    def _prediction_entries(self, viewer: napari.Viewer) -> list[tuple[str, Layer, str]]:
        entries = []
        for layer in _labels_layers(viewer):
            if "prediction" in layer.metadata:
                entries.append((f"{layer.name} (model output)", layer, "prediction"))
            entries.append((layer.name, layer, ""))
        return entries

    # ------------------------------------------------------------------ layer bookkeeping

    @property
    def image_layer(self) -> Image | None:
        """The CT image layer under review."""
        return self.image_combo.layer()

    @property
    def labels_layer(self) -> Labels | None:
        """The labels layer under review."""
        return self.labels_combo.layer()

    def _on_layer_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self._on_layers_changed)
        self._on_layers_changed()

    def _on_layer_removed(self, event: Any) -> None:
        event.value.events.name.disconnect(self._on_layers_changed)
        self._on_layers_changed()

    def _on_layers_changed(self, event: Any = None) -> None:
        for combo in (
            self.image_combo,
            self.labels_combo,
            self.prediction_combo,
            self.reference_combo,
        ):
            combo.refresh()

    def _on_image_changed(self, index: int = -1) -> None:
        """Pick the labels layer that belongs to the chosen image (same name prefix)."""
        image = self.image_layer
        if image is None:
            return
        current = self.labels_layer
        if current is not None and current.name.startswith(image.name):
            return
        for layer in _labels_layers(self.viewer):
            if layer.name.startswith(image.name) and layer.data.shape == image.data.shape:
                self.labels_combo.select(layer)
                return

    def _on_labels_changed(self, index: int = -1) -> None:
        layer = self.labels_layer
        if self._watched is not None and not _same(self._watched, layer):
            self._watched.events.paint.disconnect(self._schedule_refresh)
            self._watched.events.data.disconnect(self._schedule_refresh)
            self._watched.events.set_data.disconnect(self._on_set_data)
            self._forget_cleanup()
        if layer is not None and not _same(layer, self._watched):
            # paint: brush strokes and clean-up; data: a new array; set_data: undo / redo.
            layer.events.paint.connect(self._schedule_refresh)
            layer.events.data.connect(self._schedule_refresh)
            layer.events.set_data.connect(self._on_set_data)
            self._select_base_checkpoint(layer)
            self.prediction_combo.select(layer, "prediction")
            self.reference_combo.select(layer)
        self._watched = layer
        self.refresh_status()

    def _schedule_refresh(self, event: Any = None) -> None:
        self._forget_cleanup()
        self._refresh_timer.start()

    def _on_set_data(self, event: Any = None) -> None:
        """Refresh after undo / redo, but not when the layer merely shows another slice.

        napari signals both with ``set_data``; moving through slices changes the viewer's point,
        undo does not. Recomputing the whole volume on every slice change would make scrolling
        through a long series stutter.
        """
        point = tuple(self.viewer.dims.point)
        if point != self._last_point:
            self._last_point = point
            return
        self._schedule_refresh()  # undo or redo (or a display change, harmlessly)

    def _prediction(self, layer: Labels | None = None) -> np.ndarray | None:
        layer = layer if layer is not None else self.labels_layer
        if layer is None:
            return None
        prediction = layer.metadata.get("prediction")
        if prediction is None or np.shape(prediction) != layer.data.shape:
            return None
        return np.asarray(prediction)

    def _spacing(self) -> tuple[float, float, float]:
        layer = self.labels_layer if self.labels_layer is not None else self.image_layer
        return tuple(float(s) for s in layer.scale[-3:]) if layer is not None else (1.0,) * 3

    def _voxel_mm3(self) -> float:
        """One voxel's volume in mm³: ``|det|`` of the file's affine (exact on tilted gantries)."""
        layer = self.labels_layer if self.labels_layer is not None else self.image_layer
        if layer is not None and "affine" in layer.metadata:
            return voxel_volume_mm3(layer.metadata["affine"])
        return float(np.prod(self._spacing()))

    # ------------------------------------------------------------------ status and navigation

    def edited_slices(self) -> list[int]:
        """Canonical slices of the labels that differ from the stored model output."""
        return list(self._edited)

    def reviewed_slices(self) -> list[int]:
        """Canonical slices marked as reviewed (``labels.metadata["reviewed"]``)."""
        layer = self.labels_layer
        return sorted(int(s) for s in layer.metadata.get("reviewed", ())) if layer else []

    def refresh_status(self) -> None:
        """Recompute volumes and edited slices from the labels as they are now."""
        self._refresh_timer.stop()
        layer = self.labels_layer
        self._edited = []
        if layer is None:
            self.volumes_label.setText("no labels layer")
        else:
            data = np.asarray(layer.data)
            volumes = corrections.structure_volumes(data, self._voxel_mm3())
            self.volumes_label.setText(
                f"pancreas (incl. tumour) {volumes['pancreas']:.1f} mL, "
                f"tumour {volumes['tumour']:.1f} mL"
            )
            prediction = self._prediction(layer)
            if prediction is not None:
                self._edited = corrections.edited_slices(data, prediction)
        self._fill_list(self.edited_list, self._edited)
        if layer is not None and self._prediction(layer) is None:
            self.edited_list.addItem("(no stored model output)")
        self._fill_list(self.reviewed_list, self.reviewed_slices())
        self._on_slice_changed()

    @staticmethod
    def _fill_list(widget: QListWidget, slices: list[int]) -> None:
        widget.clear()
        for s in slices:
            item = QListWidgetItem(f"slice {s}")
            item.setData(Qt.ItemDataRole.UserRole, s)
            widget.addItem(item)

    def _on_list_clicked(self, item: QListWidgetItem) -> None:
        target = item.data(Qt.ItemDataRole.UserRole)
        if target is not None:
            self.go_to_slice(int(target))

    def _reference_layer(self) -> Layer | None:
        return self.labels_layer if self.labels_layer is not None else self.image_layer

    def current_slice(self) -> int:
        """Canonical axial slice shown in the viewer (of the labels layer's data)."""
        layer = self._reference_layer()
        if layer is None:
            return 0
        position = layer.world_to_data(self.viewer.dims.point)
        return int(np.clip(round(float(position[-3])), 0, layer.data.shape[-3] - 1))

    def go_to_slice(self, index: int) -> None:
        """Show canonical axial slice ``index``."""
        layer = self._reference_layer()
        if layer is None:
            return
        world = layer.data_to_world((int(index), 0, 0))
        axis = self.viewer.dims.ndim - 3
        self.viewer.dims.set_point(axis, float(world[-3]))

    def _jump(self, slices: list[int], step: int, what: str) -> int | None:
        target = corrections.neighbour_slice(slices, self.current_slice(), step)
        if target is None:
            direction = "after" if step > 0 else "before"
            self.slice_label.setText(f"no {what} slice {direction} slice {self.current_slice()}")
            return None
        self.go_to_slice(target)
        return target

    def next_foreground(self) -> int | None:
        """Jump to the next slice with pancreas or tumour; returns it, or ``None``."""
        layer = self.labels_layer
        slices = corrections.foreground_slices(np.asarray(layer.data)) if layer else []
        return self._jump(slices, +1, "foreground")

    def previous_foreground(self) -> int | None:
        """Jump to the previous slice with pancreas or tumour; returns it, or ``None``."""
        layer = self.labels_layer
        slices = corrections.foreground_slices(np.asarray(layer.data)) if layer else []
        return self._jump(slices, -1, "foreground")

    def next_edited(self) -> int | None:
        """Jump to the next slice that differs from the model's output."""
        self.refresh_status()
        return self._jump(self._edited, +1, "edited")

    def previous_edited(self) -> int | None:
        """Jump to the previous slice that differs from the model's output."""
        self.refresh_status()
        return self._jump(self._edited, -1, "edited")

    def _on_slice_changed(self, event: Any = None) -> None:
        if self._reference_layer() is None:
            self.slice_label.setText("")
            return
        current = self.current_slice()
        notes = []
        if current in self._edited:
            notes.append("edited")
        reviewed = current in self.reviewed_slices()
        if reviewed:
            notes.append("reviewed")
        self.slice_label.setText(
            f"slice {current}" + (f" ({', '.join(notes)})" if notes else "")
        )
        self.review_button.setText("Unmark reviewed" if reviewed else "Mark slice reviewed")

    def toggle_reviewed(self) -> None:
        """Mark the current slice as reviewed, or unmark it if it already is."""
        layer = self.labels_layer
        if layer is None:
            self._refuse("choose a labels layer first", self.slice_label)
            return
        current = self.current_slice()
        reviewed = set(self.reviewed_slices())
        reviewed.symmetric_difference_update({current})
        layer.metadata["reviewed"] = sorted(reviewed)
        self._fill_list(self.reviewed_list, sorted(reviewed))
        self._on_slice_changed()

    # ------------------------------------------------------------------ editing helpers

    def _apply_visibility(self, checked: bool = True) -> None:
        """Hide or show pancreas and tumour by making their colours transparent.

        A colour change, not a data change: the labels stay as they are, and painting still
        works on a hidden structure.
        """
        layer = self.labels_layer
        if layer is None:
            return
        shown = {1: self.show_pancreas.isChecked(), 2: self.show_tumour.isChecked()}
        colour_dict = dict(LABEL_COLOURS)
        for value, visible in shown.items():
            if not visible:
                colour_dict[value] = _TRANSPARENT
        layer.colormap = DirectLabelColormap(color_dict=colour_dict)

    def _prepare_brush(self, label: int, mode: str) -> Labels | None:
        layer = self.labels_layer
        if layer is None:
            self._refuse("choose a labels layer first", self.slice_label)
            return None
        self.viewer.layers.selection.active = layer
        layer.visible = True
        layer.n_edit_dimensions = 2
        layer.preserve_labels = False
        in_plane = min(float(s) for s in layer.scale[-2:])
        layer.brush_size = max(3, round(BRUSH_MM / in_plane))
        if label:
            layer.selected_label = label
            if label == 1 and not self.show_pancreas.isChecked():
                self.show_pancreas.setChecked(True)
            if label == 2 and not self.show_tumour.isChecked():
                self.show_tumour.setChecked(True)
        layer.mode = mode
        return layer

    def paint_pancreas(self) -> None:
        """napari's brush with label 1 (pancreas) on the current slice."""
        self._prepare_brush(1, "paint")

    def paint_tumour(self) -> None:
        """napari's brush with label 2 (tumour) on the current slice."""
        self._prepare_brush(2, "paint")

    def erase(self) -> None:
        """napari's eraser on the current slice."""
        self._prepare_brush(0, "erase")

    def clean_up(self) -> int:
        """Keep the largest component per structure, as one napari undo step.

        The change goes through ``Labels.data_setitem`` with only the changed voxels, so napari
        records it in its undo history like a brush stroke: Ctrl+Z reverts it.

        Returns
        -------
        int
            Number of voxels changed.
        """
        layer = self.labels_layer
        if layer is None:
            self._refuse("choose a labels layer first", self.slice_label)
            return 0
        data = np.asarray(layer.data)
        cleaned = corrections.keep_largest_components(data)
        changed = np.nonzero(cleaned != data)
        if changed[0].size == 0:
            self.fine_tune_label.setText("")
            show_info("Clean-up: nothing to remove, the labels are already one piece")
            return 0
        layer.data_setitem(changed, cleaned[changed])
        # Set after the call: the clean-up's own events must not count as a later edit.
        self._cleanup_on_top = layer
        self.undo_cleanup_button.setEnabled(True)
        count = int(changed[0].size)
        show_info(f"Clean-up changed {count} voxels; Ctrl+Z or 'Undo clean-up' reverts it")
        self.refresh_status()
        return count

    def undo_clean_up(self) -> bool:
        """Revert the last clean-up if it is still the newest step of napari's undo history.

        Any edit, undo or redo of the labels after the clean-up ends this button's say: it would
        otherwise undo something else. Returns ``False`` (and says why) then; napari's own undo
        (Ctrl+Z) still steps back through everything.
        """
        layer = self._cleanup_on_top
        if layer is None or not _same(layer, self.labels_layer):
            self._refuse(
                "the clean-up is no longer the last edit; use napari's undo (Ctrl+Z)",
                self.slice_label,
            )
            self.undo_cleanup_button.setEnabled(False)
            return False
        layer.undo()
        self._forget_cleanup()
        self.refresh_status()
        return True

    def _forget_cleanup(self) -> None:
        """The clean-up is no longer the newest undo step (something happened after it)."""
        self._cleanup_on_top = None
        self.undo_cleanup_button.setEnabled(False)

    # ------------------------------------------------------------------ metrics

    def _metric_array(self, combo: _LayerCombo) -> np.ndarray | None:
        layer = combo.layer()
        if layer is None:
            return None
        if combo.variant() == "prediction":
            return self._prediction(layer)
        return np.asarray(layer.data)

    def compute_metrics(self) -> dict[str, dict[str, Any]] | None:
        """Dice, PPV and sensitivity of the two chosen segmentations, volume and current slice.

        Returns
        -------
        dict or None
            ``{"volume": {...}, "slice": {...}}`` of :func:`src_models.metrics.case_metrics`
            results, or ``None`` when the pair cannot be compared (a message says why).
        """
        prediction = self._metric_array(self.prediction_combo)
        reference = self._metric_array(self.reference_combo)
        if prediction is None or reference is None:
            self._refuse("choose two segmentations to compare", self.metrics_label)
            return None
        if prediction.shape != reference.shape:
            self._refuse(
                f"the two segmentations have different shapes {prediction.shape} and "
                f"{reference.shape}: they belong to different images",
                self.metrics_label,
            )
            return None
        spacing = self._spacing()
        current = int(np.clip(self.current_slice(), 0, prediction.shape[0] - 1))
        result = {
            "volume": case_metrics(prediction, reference, self._voxel_mm3()),
            "slice": case_metrics(prediction[current], reference[current], spacing[1:]),
        }
        lines = []
        for scope, title in (("volume", "volume"), ("slice", f"slice {current}")):
            for structure, m in result[scope].items():
                lines.append(
                    f"{title}, {structure}: Dice {m.dice:.3f}  PPV {m.ppv:.3f}  "
                    f"sens. {m.sensitivity:.3f}"
                )
        self.metrics_label.setText("\n".join(lines))
        return result

    # ------------------------------------------------------------------ export

    def _ask_save_path(self, title: str, suggested: str) -> str | None:
        """File dialog for an export target (tests replace this method)."""
        path, _ = QFileDialog.getSaveFileName(
            self,
            title,
            suggested,
            "NIfTI (*.nii.gz *.nii)",
            options=QFileDialog.Option.DontConfirmOverwrite,
        )
        return path or None

    def _confirm_replace(self, path: Path) -> bool:
        """Ask before replacing an existing file (tests replace this method)."""
        answer = QMessageBox.question(
            self,
            "Replace file?",
            f"{path} already exists. Replace it (and its side-car {path.stem}.json)?",
        )
        return answer == QMessageBox.StandardButton.Yes

    def _export_target(
        self, path: str | os.PathLike[str] | None, title: str, kind: str
    ) -> Path | None:
        """The file to write: ``path``, or one chosen in a dialog next to the source CT."""
        image = self.image_layer
        folder = Path(str(image.metadata.get("source", ""))).parent if image else Path.home()
        if path is None:
            stem = corrections.image_stem(image.name if image else "ct")
            suggested = folder / f"{stem}_{kind}.nii.gz"
            chosen = self._ask_save_path(title, str(suggested))
            if not chosen:
                return None
            path = chosen
        target = Path(path)
        if not target.name.lower().endswith((".nii", ".nii.gz")):
            target = target.with_name(target.name + ".nii.gz")
        source = str(image.metadata.get("source", "")) if image else ""
        if source and (target.resolve() == Path(source).resolve()
                       or Path(source).resolve() in target.resolve().parents):
            self._refuse(f"{target} is the source CT; choose another file name", self.export_label)
            return None
        if target.exists() and not self._confirm_replace(target):
            return None
        return target

    def _model_record(self) -> dict[str, Any] | None:
        layer = self.labels_layer
        model = layer.metadata.get("model") if layer is not None else None
        return dict(model) if isinstance(model, dict) else None

    def _write_sidecar(self, target: Path, kind: str, labels: np.ndarray | None) -> Path:
        image = self.image_layer
        reference = reference_volume(image)
        content = corrections.sidecar(
            export_path=target,
            kind=kind,
            source=reference.source,
            affine=reference.affine,
            source_shape=reference.shape,
            labels=labels,
            spacing=self._voxel_mm3(),
            model=self._model_record(),
            edited=self._edited,
            reviewed=self.reviewed_slices(),
            plugin_version=__version__,
        )
        return corrections.write_sidecar(target, content)

    def export_labels(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Write the labels as NIfTI on the source CT's grid and affine, plus a JSON side-car.

        Parameters
        ----------
        path
            Target file; ``None`` asks with a file dialog. An existing file is replaced only
            after the user agrees; the source CT is never overwritten.

        Returns
        -------
        Path or None
            The written NIfTI, or ``None`` when cancelled or refused.
        """
        image, labels = self.image_layer, self.labels_layer
        if image is None or labels is None:
            self._refuse("choose the image and its labels layer first", self.export_label)
            return None
        if labels.data.shape != image.data.shape:
            self._refuse(
                f"the labels layer {labels.name!r} does not fit image {image.name!r}",
                self.export_label,
            )
            return None
        target = self._export_target(path, "Export labels", "labels")
        if target is None:
            return None
        self.refresh_status()
        try:
            volume = layer_to_volume(labels)
            written = write_labels(target, volume.array, reference_volume(image))
        except VolumeError as error:
            self._refuse(str(error), self.export_label)
            return None
        sidecar = self._write_sidecar(written, "labels", np.asarray(labels.data))
        self.export_label.setText(f"labels written to {written}, side-car {sidecar.name}")
        show_info(f"Labels written to {written}")
        return written

    def reconstruction_layer(self) -> Image | None:
        """The '<image> reconstruction' layer of the chosen image, if the model made one."""
        image = self.image_layer
        if image is None:
            return None
        name = f"{image.name} reconstruction"
        for layer in self.viewer.layers:
            if isinstance(layer, Image) and layer.name == name:
                return layer
        return None

    def export_reconstruction(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Write the DRS restoration decoder's output on the source grid, plus a side-car."""
        layer = self.reconstruction_layer()
        if layer is None:
            self._refuse(
                "no reconstruction layer: segment with a DRS model (drs_unet, kcmdrs_unet, "
                "dsmsc_unet) to get one",
                self.export_label,
            )
            return None
        image = self.image_layer
        target = self._export_target(path, "Export reconstruction", "reconstruction")
        if target is None:
            return None
        try:
            volume = layer_to_volume(layer)
            written = write_image(target, volume.array, reference_volume(image))
        except VolumeError as error:
            self._refuse(str(error), self.export_label)
            return None
        labels = self.labels_layer
        fits = labels is not None and labels.data.shape == image.data.shape
        self._write_sidecar(written, "reconstruction", np.asarray(labels.data) if fits else None)
        self.export_label.setText(f"reconstruction written to {written}")
        show_info(f"Reconstruction written to {written}")
        return written

    # ------------------------------------------------------------------ fine-tuning

    def refresh_checkpoints(self) -> None:
        """Re-read the bundled and user checkpoints into the base-model combo."""
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

    def _select_base_checkpoint(self, layer: Labels) -> None:
        """Default the base model to the one that produced the labels (even a browsed file)."""
        model = layer.metadata.get("model")
        checkpoint = model.get("checkpoint") if isinstance(model, dict) else None
        if not checkpoint or self.select_checkpoint(checkpoint):
            return
        try:
            self._other_checkpoints[str(checkpoint)] = read_metadata(checkpoint)["arch"]
        except CheckpointError:
            return  # moved or damaged since segmenting: the user picks another base model
        self.refresh_checkpoints()
        self.select_checkpoint(checkpoint)

    @property
    def is_busy(self) -> bool:
        """Whether a fine-tuning run is in progress."""
        return self._worker is not None

    @property
    def last_checkpoint(self) -> Path | None:
        """The checkpoint saved by the last completed fine-tuning run."""
        return self._last_checkpoint

    def _refuse(self, message: str, label: QLabel | None = None) -> None:
        (label or self.fine_tune_label).setText(message)
        show_warning(message)

    def _collect_training_data(self) -> dict[str, Any] | None:
        image, labels = self.image_layer, self.labels_layer
        if image is None or labels is None:
            self._refuse("choose the image and its corrected labels layer first")
            return None
        if labels.data.shape != image.data.shape:
            self._refuse(
                f"the labels {labels.name!r} (shape {labels.data.shape}) belong to another "
                f"image than {image.name!r} (shape {image.data.shape})"
            )
            return None
        prediction = self._prediction(labels)
        if prediction is None:
            self._refuse(
                f"{labels.name!r} keeps no model output to compare with, so corrections cannot "
                "be told apart; correct the Segment widget's result layer"
            )
            return None
        checkpoint = self.checkpoint_combo.currentData()
        if not checkpoint:
            self._refuse("no base model: no checkpoint is installed or chosen")
            return None
        data = np.asarray(labels.data)
        try:
            slices = corrections.training_slices(
                data, prediction, self.reviewed_slices(), self.include_reviewed.isChecked()
            )
        except corrections.CorrectionsError as error:
            self._refuse(str(error))
            return None
        train, holdout = tuning.split_holdout(slices)
        hu = np.asarray(image.data)
        source = str(image.metadata.get("source", "")) or image.name
        return {
            "checkpoint": checkpoint,
            "train": train,
            "holdout": holdout,
            "images": hu[train],
            "labels": data[train],
            "holdout_images": hu[holdout],
            "holdout_labels": data[holdout],
            "spacing_yx": tuple(float(s) for s in image.scale[-2:]),
            "source": source,
            "output": tuning.fine_tuned_path(user_model_dir(), checkpoint, source),
        }

    def fine_tune(self) -> Any:
        """Fine-tune the base model on the corrected slices in a worker thread.

        Returns
        -------
        napari worker or None
            The running worker, or ``None`` when there is nothing to learn from (the label
            and a notification say why) or a run is already going.
        """
        if self.is_busy:
            self._refuse("fine-tuning is already running")
            return None
        job = self._collect_training_data()
        if job is None:
            return None
        steps = int(self.steps_spin.value())
        budget = float(self.budget_spin.value()) or None
        self.loss_plot.clear()
        self.progress.setRange(0, steps)
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.fine_tune_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.resegment_button.setEnabled(False)
        self.fine_tune_label.setText(
            f"fine-tuning on {len(job['train'])} slices, {len(job['holdout'])} held out "
            f"(slices {', '.join(str(s) for s in job['holdout']) or 'none'})…"
        )
        worker = start_job(
            tuning.learn_from_corrections,
            job["checkpoint"],
            job["images"],
            job["labels"],
            job["spacing_yx"],
            holdout_images=job["holdout_images"],
            holdout_labels=job["holdout_labels"],
            output=job["output"],
            provenance={
                "source_image": job["source"],
                "slices": job["train"],
                "holdout_slices": job["holdout"],
                "slice_index_convention": "canonical axial index (axis 0, towards superior)",
            },
            steps=steps,
            time_budget_s=budget,
            description="Fine-tuning on corrections",
            on_result=self._on_fine_tune_done,
            on_yield=self._on_fine_tune_event,
            on_finished=self._on_worker_finished,
            progress_of=_step_progress,
            error_context="Fine-tune",
        )
        worker.errored.connect(self._on_fine_tune_error)
        worker.aborted.connect(self._on_fine_tune_cancelled)
        self._worker = worker
        return worker

    def cancel_fine_tune(self) -> None:
        """Stop fine-tuning after the current step; nothing is saved, the base model stays."""
        if self._worker is not None:
            self.cancel_button.setEnabled(False)
            self.fine_tune_label.setText("cancelling after the current step…")
            self._worker.quit()

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
        self._last_checkpoint = report.checkpoint
        self.fine_tune_label.setText(report.summary())
        show_info(f"Fine-tuned model saved: {report.checkpoint}")
        self.refresh_checkpoints()
        segment = self.segment_widget()
        if segment is not None:
            segment.refresh_checkpoints()
            segment.select_checkpoint(report.checkpoint)
        self.resegment_button.setEnabled(segment is not None)
        self.fine_tuned.emit(report.checkpoint)

    def _on_fine_tune_error(self, error: BaseException) -> None:
        self.fine_tune_label.setText(f"fine-tuning failed: {error}; the base model is unchanged")

    def _on_fine_tune_cancelled(self) -> None:
        self.fine_tune_label.setText(
            "fine-tuning cancelled: nothing was saved, the base model is unchanged and in use"
        )

    def _on_worker_finished(self) -> None:
        self._worker = None
        self.progress.setVisible(False)
        self.fine_tune_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def segment_widget(self) -> Any:
        """The Segment dock widget of this viewer, if it is open."""
        from .segment import SegmentWidget

        for widget in self.viewer.window.dock_widgets.values():
            if isinstance(widget, SegmentWidget):
                return widget
        return None

    def resegment(self) -> None:
        """Run the Segment widget again with the fine-tuned model on the same image.

        The corrected labels are kept: the Segment widget puts a new result beside an edited
        layer. When it arrives, the comparison combos are set to new result vs. corrections.
        """
        segment = self.segment_widget()
        if segment is None or self._last_checkpoint is None:
            self._refuse("open the Segment widget (Plugins menu) to re-segment")
            return
        image, corrected = self.image_layer, self.labels_layer
        if image is not None:
            segment.image_combo.setCurrentText(image.name)
        if not segment.select_checkpoint(self._last_checkpoint):
            return

        def compare(new_labels: Labels) -> None:
            segment.segmented.disconnect(compare)
            self.prediction_combo.select(new_labels)
            if corrected is not None:
                self.reference_combo.select(corrected)
            self.fine_tune_label.setText(
                f"re-segmented into {new_labels.name!r}; compare it with your corrections "
                "below (slices you trained on flatter the figures)"
            )

        segment.segmented.connect(compare)
        segment.run()
        if not segment.running:  # refused before starting: no result will come
            segment.segmented.disconnect(compare)
