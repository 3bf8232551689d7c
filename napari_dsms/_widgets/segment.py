"""Segment dock widget: run a model on a CT image layer and get editable pancreas / tumour labels.

The widget holds no science: the run is :class:`._worker.SegmentationRun` (the engine's
:func:`src_models.inference.engine.segment` in a worker thread), and the layers come from
:mod:`napari_dsms._results`, which documents what they hold. What it adds is the workflow a
radiologist needs: choose image, architecture, checkpoint, device; watch progress; cancel; get a
Labels layer ready to paint on; never lose manual edits to a second run. Models that appear in
the user model folder (a fine-tuning run, ``dsms train``) are listed, and selected, at once.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.layers import Image, Labels
from napari.utils.notifications import show_info
from qtpy.QtCore import QFileSystemWatcher, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from src_models.inference.devices import available_devices
from src_models.inference.engine import DEFAULT_BATCH_SIZES
from src_models.models.checkpoints import (
    CheckpointError,
    fell_on_held_out,
    fine_tuned_images,
    model_card,
    read_metadata,
)
from src_models.models.store import ENSEMBLE, ensemble_metadata, list_checkpoints, user_model_dir
from src_models.nets.registry import ARCHITECTURES, DESCRIPTIONS

from .._autosave import attach as attach_autosave
from .._layers import ASSUMED_LAYOUT, SOURCE, has_file_geometry, is_ct_layer
from .._orientation import attach as attach_orientation
from .._results import ERROR_EXPLANATION, import_layer_dependencies, summary
from ._pickers import choose, layer_picker, of_kind, same_layer
from ._scroll import ScrollingDock
from ._worker import SegmentationRun, report_error

if TYPE_CHECKING:
    import napari

#: Item data of the "Browse…" entry of the checkpoint menu.
BROWSE = "\0browse"

#: What the architecture menu says of the ensemble (``--model ensemble`` on the command line).
ENSEMBLE_DESCRIPTION = (
    "Mean probability of the five bundled models: five times the time of one, and on the "
    "held-out CT no better than the best of them (docs/models.md)."
)


class SegmentWidget(ScrollingDock):
    """Segment pancreas and tumour in a CT image layer with one of the paper's five models.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose image layers are offered and which receives the result layers.

    Signals
    -------
    segmented(Labels)
        Emitted with the labels layer when a run has finished and its layers are added.
    """

    segmented = Signal(object)

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._run: SegmentationRun | None = None
        #: The labels layer the readout's figures describe, and its CT.
        self._described: tuple[Image, Labels] | None = None
        #: A fine-tuned model the dock chose by itself when it appeared, and the checkpoint
        #: chosen before it: the dock goes back to that one for other CTs than it was tuned on.
        self._auto: tuple[str, str | None] | None = None
        attach_autosave(napari_viewer)  # journals corrections, offers to restore them
        attach_orientation(napari_viewer)  # slider names, A/P and R/L on the canvas
        self._browsed: dict[str, str] = {}  # path -> arch, for files chosen with Browse…
        self._last_checkpoint_index = 0
        self._known_checkpoints: set[str] = set()
        import_layer_dependencies()

        self.image_combo = layer_picker(
            self.viewer,
            of_kind(lambda layer: is_ct_layer(layer, slices=True)),
            tooltip="CT image layer to segment (a 3D volume or a 2D slice)",
        )
        self.arch_combo = QComboBox()
        self.arch_combo.addItems([*ARCHITECTURES, ENSEMBLE])
        self.arch_combo.setCurrentText("dsmsc_unet")
        self.arch_label = QLabel()
        self.arch_label.setWordWrap(True)
        self.checkpoint_combo = QComboBox()
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        self.device_combo.setToolTip("Devices found on this machine, fastest first")
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 1024)
        self.batch_spin.setToolTip("Slices per batch; halved automatically if a GPU runs out")
        self.probabilities_check = QCheckBox("Add probability layers")
        self.probabilities_check.setToolTip(
            "Per-voxel probabilities of pancreas (including tumour) and tumour, 4 bytes a voxel"
        )
        self.run_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.readout = QLabel("")
        self.readout.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Image", self.image_combo.native)
        form.addRow("Architecture", self.arch_combo)
        form.addRow("", self.arch_label)
        form.addRow("Checkpoint", self.checkpoint_combo)
        device = QHBoxLayout()  # one row: the dock must fit a laptop screen beside two others
        device.addWidget(self.device_combo, 1)
        device.addWidget(QLabel("Batch"))
        device.addWidget(self.batch_spin)
        form.addRow("Device", device)
        form.addRow("", self.probabilities_check)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self.content)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.readout)
        layout.addStretch(1)

        self.image_combo.changed.connect(self._on_image_changed)
        self.arch_combo.currentTextChanged.connect(self._on_arch_changed)
        self.checkpoint_combo.activated.connect(self._on_checkpoint_activated)
        self.checkpoint_combo.currentIndexChanged.connect(self._show_model_card)
        self.device_combo.currentTextChanged.connect(self._on_device_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self._watcher = QFileSystemWatcher(self)
        folder = user_model_dir()
        # Made now if need be: a folder that did not exist yet could not be watched, so on a
        # fresh install the first fine-tuned model never reached the menu, and Segment ran
        # the bundled model again without a word (a tester).
        with contextlib.suppress(OSError):  # read-only home: models are then saved elsewhere
            folder.mkdir(parents=True, exist_ok=True)
        if folder.is_dir():
            self._watcher.addPath(str(folder))
        self._watcher.directoryChanged.connect(self._on_model_folder_changed)
        self._on_device_changed(self.device_combo.currentText())
        self._on_arch_changed(self.arch_combo.currentText())
        self._known_checkpoints = {str(entry.path.resolve()) for entry in list_checkpoints()}
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        # after the picker's own handler (connected when it was made): the new CT is listed
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)

    # ------------------------------------------------------------------ choices

    @property
    def image_layer(self) -> Image | None:
        """The image layer chosen in the menu."""
        return self.image_combo.value

    @property
    def checkpoint(self) -> str | None:
        """Path of the chosen checkpoint, or ``None`` when there is none for the architecture."""
        data = self.checkpoint_combo.currentData()
        return data if data and data != BROWSE else None

    def _on_arch_changed(self, arch: str) -> None:
        # The registry's descriptions already say whether there is a restoration decoder.
        self.arch_label.setText(ENSEMBLE_DESCRIPTION if arch == ENSEMBLE else DESCRIPTIONS[arch])
        self.refresh_checkpoints()

    def _show_model_card(self, *_: Any) -> None:
        """The chosen model's card (data, recipe, validation, tumour) as the menu's tooltip.

        A tooltip, not a label: at 1366 x 768 every line the Segment dock grows is taken from
        the Review dock below it.
        """
        checkpoint = self.checkpoint
        try:
            if checkpoint is None:
                card = ""
            elif checkpoint == ENSEMBLE:
                card = model_card(ensemble_metadata())
            else:
                card = model_card(read_metadata(checkpoint))
        except CheckpointError as error:
            card = str(error)
        self.checkpoint_combo.setToolTip(
            card or "Bundled models, your fine-tuned models (user model folder) or a file"
        )

    def _on_device_changed(self, device: str) -> None:
        self.batch_spin.setValue(DEFAULT_BATCH_SIZES.get(device.split(":")[0], 4))

    def refresh_checkpoints(self) -> None:
        """Re-read the bundled and user model folders into the checkpoint menu.

        Lists the checkpoints of the chosen architecture, plus files chosen with Browse….
        """
        arch = self.arch_combo.currentText()
        current = self.checkpoint
        self.checkpoint_combo.clear()
        if arch == ENSEMBLE:
            self.checkpoint_combo.addItem("the five bundled models", ENSEMBLE)
        for entry in list_checkpoints():
            if entry.arch == arch:
                where = "bundled" if entry.bundled else "yours"
                self.checkpoint_combo.addItem(f"{entry.name} ({where})", str(entry.path))
        for path, path_arch in self._browsed.items():
            if path_arch == arch and self.checkpoint_combo.findData(path) < 0:
                self.checkpoint_combo.addItem(Path(path).name, path)
        if self.checkpoint_combo.count() == 0:
            self.checkpoint_combo.addItem(f"(no {arch} checkpoint: train one or browse)", None)
        self.checkpoint_combo.addItem("Browse…", BROWSE)
        index = self.checkpoint_combo.findData(current) if current else -1
        self.checkpoint_combo.setCurrentIndex(max(index, 0))
        self._last_checkpoint_index = self.checkpoint_combo.currentIndex()
        self._show_model_card()
        self._update_run_button()

    def _on_model_folder_changed(self, folder: str = "") -> None:
        """List models that appeared in the user model folder, and choose the newest of them.

        A fine-tuning run (the Review dock's, or ``dsms train`` in a terminal) saves its model
        there: the user wants to segment with it next, unless its own held-out check found it
        worse than the model it came from (it is listed, not chosen: a tester's next Segment
        used such a model without a word).
        """
        entries = {str(entry.path.resolve()): entry for entry in list_checkpoints()}
        new = [entries[path] for path in entries if path not in self._known_checkpoints]
        self._known_checkpoints = set(entries)
        new = [entry for entry in new if entry.path.is_file() and not _advised_against(entry.path)]
        if new:
            newest = max(new, key=lambda entry: entry.path.stat().st_mtime)
            previous = self.checkpoint
            if self.select_checkpoint(newest.path):
                self._auto = (str(newest.path.resolve()), previous)
        else:
            self.refresh_checkpoints()

    def select_checkpoint(self, path: str | os.PathLike[str]) -> bool:
        """Choose checkpoint file ``path`` (and its architecture).

        Returns ``False``, with a notification, when the file is not a usable checkpoint.
        """
        path = str(Path(path).resolve())
        try:
            arch = read_metadata(path)["arch"]
        except CheckpointError as error:
            report_error(error, "Segment")
            return False
        listed = {str(entry.path.resolve()) for entry in list_checkpoints()}
        if path not in listed:
            self._browsed[path] = arch
        self.arch_combo.blockSignals(True)
        self.arch_combo.setCurrentText(arch)
        self.arch_combo.blockSignals(False)
        self._on_arch_changed(arch)
        for i in range(self.checkpoint_combo.count()):
            data = self.checkpoint_combo.itemData(i)
            if data and data != BROWSE and str(Path(data).resolve()) == path:
                self.checkpoint_combo.setCurrentIndex(i)
                self._last_checkpoint_index = i
                break
        self._update_run_button()
        return True

    def _on_image_changed(self, *_: Any) -> None:
        """Follow the chosen CT with a model the dock chose by itself after fine-tuning.

        A model fine-tuned on one patient's corrections is for that patient: a tester's next
        patient was segmented with it by default. For another CT the dock goes back to the
        model chosen before, and says so; back on the CT it was tuned on, it is chosen again.
        A model the user chose in the menu stays, whatever the CT.
        """
        self._update_run_button()
        image = self.image_layer
        if self._auto is None or image is None or self.running:
            return
        tuned_path, previous = self._auto
        source = str(image.metadata.get(SOURCE, ""))
        if not previous:
            return
        try:
            tuned_on = fine_tuned_images(read_metadata(tuned_path))
        except CheckpointError:
            self._auto = None  # the file went away: nothing to follow
            return
        current = str(Path(self.checkpoint).resolve()) if self.checkpoint else None
        # a CT without a file (the sample, another reader's layer) is not the one tuned on
        own = bool(source) and str(Path(source).resolve()) in tuned_on
        if own and current == str(Path(previous).resolve()):
            self.select_checkpoint(tuned_path)
            self.readout.setText(
                f"{Path(tuned_path).stem} chosen again: it was fine-tuned on {image.name}"
            )
        elif not own and current == tuned_path:
            self.select_checkpoint(previous)
            names = ", ".join(sorted(Path(p).name for p in tuned_on)) or "another CT"
            self.readout.setText(
                f"{Path(previous).stem} chosen for {image.name}: {Path(tuned_path).stem} was "
                f"fine-tuned on {names}, another patient's corrections (choose it in the menu "
                "to use it here)"
            )

    def _on_checkpoint_activated(self, index: int) -> None:
        if self._auto is not None and "fine-tuned on" in self.readout.text():
            self.readout.setText("")  # the dock's own choice, which that note told of, is over
        self._auto = None  # the user's own choice: kept whatever the CT
        if self.checkpoint_combo.itemData(index) != BROWSE:
            self._last_checkpoint_index = index
            self._update_run_button()
            return
        self.checkpoint_combo.setCurrentIndex(self._last_checkpoint_index)
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a checkpoint", str(user_model_dir()), "Checkpoints (*.pt);;All (*)"
        )
        if path:
            self.select_checkpoint(path)

    def _update_run_button(self, *_: Any) -> None:
        ready = not self.running and self.image_layer is not None and bool(self.checkpoint)
        self.run_button.setEnabled(ready)

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        """Whether a segmentation is in progress (computing, or adding its layers)."""
        return self._run is not None

    @property
    def worker(self) -> Any:
        """The running job's worker (its ``yielded`` signal reports progress), or ``None``."""
        return self._run.worker if self._run is not None else None

    def run(self) -> None:
        """Segment the chosen image with the chosen checkpoint in a worker thread."""
        if self.running:
            return
        image, checkpoint = self.image_layer, self.checkpoint
        if image is None or checkpoint is None:
            report_error(ValueError("choose an image layer and a checkpoint first"), "Segment")
            return
        run = SegmentationRun(self.viewer, image, parent=self)
        run.progressed.connect(self._on_progress)
        run.segmented.connect(self._on_segmented)
        run.ended.connect(self._on_ended)
        started = run.start(
            checkpoint,
            self.device_combo.currentText(),
            self.batch_spin.value(),
            self.probabilities_check.isChecked(),
        )
        if not started:
            return
        self._run, self._described = run, None
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(True)
        self.readout.setText(f"Segmenting {image.name}…")

    def cancel(self) -> None:
        """Stop the run after the current batch; nothing is added to the viewer."""
        if self._run is not None:
            self.cancel_button.setEnabled(False)
            self.readout.setText("Cancelling after the current batch…")
            self._run.cancel()

    def _on_progress(self, value: tuple[int, int]) -> None:
        done, total = value
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)

    def _on_segmented(self, labels: Labels) -> None:
        image, output = self._run.image, self._run.output
        text = summary(image.name, output)
        if not has_file_geometry(image):  # a tester's upside-down slice got wrong labels silently
            text += (
                f"\nGeometry assumed: {image.name} came from another reader, so it was taken as "
                f"{ASSUMED_LAYOUT}; if it shows otherwise, the labels are wrong: open the file "
                "with the Load CT dock"
            )
        if output.error is not None:
            text += "\n" + ERROR_EXPLANATION
        self.readout.setText(text)
        self.readout.setToolTip(ERROR_EXPLANATION if output.error is not None else "")
        self._described = (image, labels)
        show_info(f"{labels.name}: {output.result.stats.summary()}")
        self.segmented.emit(labels)

    def _on_layer_inserted(self, event: Any) -> None:
        """Segment the CT just opened: a tester opened a DICOM series after a NIfTI CT, pressed
        Segment, and the NIfTI CT was segmented again. Not while a run goes on."""
        if is_ct_layer(event.value) and self._run is None:
            choose(self.image_combo, event.value)

    def _on_layer_removed(self, event: Any) -> None:
        """Withdraw the readout's figures once their labels or CT left the viewer.

        A tester removed both and the dock still gave their volumes, as if they were on screen.
        """
        if self._described is None or self._run is not None:
            return
        removed = event.value
        if any(same_layer(removed, layer) for layer in self._described):
            self._described = None
            self.readout.setText(f"{removed.name!r} was removed; segment again to see figures.")
            self.readout.setToolTip("")

    def _on_ended(self) -> None:
        run, self._run = self._run, None
        if run.cancelled:
            removed = not run.image_present
            self.readout.setText(
                f"Cancelled: {run.image.name!r} was removed; no layer added."
                if removed
                else "Cancelled: no layer added."
            )
        elif run.output is None:
            self.readout.setText("Segmentation failed: no layer added (see the notification).")
        self.progress_bar.setVisible(False)
        self.cancel_button.setEnabled(False)
        self._update_run_button()


def _advised_against(path: Path) -> bool:
    """Whether checkpoint ``path`` scored worse than its base on its own held-out slices."""
    try:
        return fell_on_held_out(read_metadata(path))
    except CheckpointError:
        return False  # listed or refused by the menu's own reading
