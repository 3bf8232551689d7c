"""Segment dock widget: run a model on a CT image layer and get editable pancreas / tumour labels.

The widget holds no science: the run is :func:`src_models.inference.engine.segment` in a worker
thread
(:mod:`._worker`), layers come from :mod:`napari_dsms._layers`. What it adds is the workflow a
radiologist needs: choose image, architecture, checkpoint, device; watch progress; cancel; get a
Labels layer ready to paint on; never lose manual edits to a second run.

Layer contract (read by the Review and fine-tune widget)
------------------------------------------------------
``"<image> pancreas/tumour"`` (Labels, canonical uint8) with ``metadata["prediction"]``, an
unedited copy of the model's labels, and ``metadata["model"]``, a dict with ``arch``,
``checkpoint`` (file path), ``name``, ``device`` and ``precision``. DRS models add
``"<image> reconstruction"`` and ``"<image> reconstruction error"`` (Image layers on the CT's
geometry, with its ``metadata`` affine / shape / source).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Generator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer, Signal
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
from src_models.inference.engine import (
    DEFAULT_BATCH_SIZES,
    SegmentationResult,
    reconstruction_error,
    segment,
)
from src_models.io import Volume, VolumeError
from src_models.io.orientation import to_canonical
from src_models.models.checkpoints import CheckpointError, read_metadata
from src_models.models.store import list_checkpoints, load_checkpoint, user_model_dir
from src_models.nets.registry import ARCHITECTURES, DESCRIPTIONS, has_restoration

from .._autosave import attach as attach_autosave
from .._layers import geometry_metadata, labels_layer_data, layer_to_volume
from ._worker import JobWorker, report_error, start_job

if TYPE_CHECKING:
    import napari

#: Item data of the "Browse…" entry of the checkpoint menu.
BROWSE = "\0browse"

#: Contrast limits of the reconstruction error layer, in window units: errors above a quarter of
#: the window are already gross, and a narrow range shows where the decoder struggles.
ERROR_CONTRAST = (0.0, 0.25)


def _labels_name(image_name: str) -> str:
    return f"{image_name} pancreas/tumour"


def volume_of_layer(layer: Image) -> Volume:
    """The image layer as a :class:`Volume` on its file grid.

    Layers opened by napari-dsms carry the file's affine (:func:`layer_to_volume`, exact). Any
    other 3D layer is taken as axial slices already in the radiological layout (slices towards
    Superior, rows towards Posterior, columns towards the patient's Left) with ``scale`` as voxel
    size in mm and ``translate`` as the position of voxel 0, which is how napari-dsms lays
    out its own layers.
    """
    if "affine" in layer.metadata and "shape" in layer.metadata:
        return layer_to_volume(layer)
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise VolumeError(f"{layer.name}: segmentation needs a 3D image, this one is {data.ndim}D")
    s, p, lft = (float(v) for v in layer.scale[-3:])
    t_s, t_p, t_l = (float(v) for v in layer.translate[-3:])
    affine = np.array(
        [
            [0.0, 0.0, -lft, -t_l],  # R = -L
            [0.0, -p, 0.0, -t_p],  # A = -P
            [s, 0.0, 0.0, t_s],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return Volume(data, affine, source="", description=layer.name)


#: Modules napari imports the first time a Labels layer is made (its features table and brush):
#: 0.3 s. Imported when the widget opens, so that the first result does not freeze the viewer
#: (imported in the worker they hold the GIL and freeze it at the start of the run instead).
_LAYER_DEPENDENCIES = ("pandas", "skimage.color", "skimage.exposure")


def _import_layer_dependencies() -> None:
    for name in _LAYER_DEPENDENCIES:
        try:
            importlib.import_module(name)
        except ImportError:  # a napari that no longer needs it
            continue


def _segment_job(
    volume: Volume,
    checkpoint: str,
    device: str,
    batch_size: int,
    probabilities: bool,
) -> Generator[tuple[int, int], None, tuple[SegmentationResult, dict[str, Any], Any]]:
    """Load the checkpoint and segment, in the worker thread; returns what the layers need."""
    model, meta = load_checkpoint(checkpoint)
    result = yield from segment(
        volume, model, meta, device=device, batch_size=batch_size, probabilities=probabilities
    )
    error = None
    if result.canonical_reconstruction is not None:
        canonical_hu = to_canonical(volume.array, volume.affine)[0]
        error = reconstruction_error(
            canonical_hu, result.canonical_reconstruction, meta["preprocessing"]["hu_window"]
        )
    return result, meta, error


class SegmentWidget(QWidget):
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
        self.worker: JobWorker | None = None
        attach_autosave(napari_viewer)  # journals corrections, offers to restore them
        self._run_image: Image | None = None
        self._browsed: dict[str, str] = {}  # path -> arch, for files chosen with Browse…
        self._last_checkpoint_index = 0
        self._steps: list[Callable[[], Any]] = []  # result layers still to add
        self._result_labels: Labels | None = None
        _import_layer_dependencies()

        self.image_combo = QComboBox()
        self.image_combo.setToolTip("CT image layer to segment")
        self.arch_combo = QComboBox()
        self.arch_combo.addItems(list(ARCHITECTURES))
        self.arch_combo.setCurrentText("dsmsc_unet")
        self.arch_label = QLabel()
        self.arch_label.setWordWrap(True)
        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.setToolTip(
            "Bundled models, your fine-tuned models (user model folder) or a file"
        )
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
        form.addRow("Image", self.image_combo)
        form.addRow("Architecture", self.arch_combo)
        form.addRow("", self.arch_label)
        form.addRow("Checkpoint", self.checkpoint_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("", self.probabilities_check)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.readout)
        layout.addStretch(1)

        self.arch_combo.currentTextChanged.connect(self._on_arch_changed)
        self.checkpoint_combo.activated.connect(self._on_checkpoint_activated)
        self.device_combo.currentTextChanged.connect(self._on_device_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        for event in (
            self.viewer.layers.events.inserted,
            self.viewer.layers.events.removed,
            self.viewer.layers.events.moved,
        ):
            event.connect(self._refresh_images)
        self.viewer.layers.events.inserted.connect(self._watch_name)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_images)
        self._on_device_changed(self.device_combo.currentText())
        self._on_arch_changed(self.arch_combo.currentText())
        self._refresh_images()

    # ------------------------------------------------------------------ choices

    @property
    def image_layer(self) -> Image | None:
        """The image layer chosen in the menu."""
        name = self.image_combo.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        return layer if isinstance(layer, Image) else None

    @property
    def checkpoint(self) -> str | None:
        """Path of the chosen checkpoint, or ``None`` when there is none for the architecture."""
        data = self.checkpoint_combo.currentData()
        return data if data and data != BROWSE else None

    def _watch_name(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh_images)

    def _refresh_images(self, event: Any = None) -> None:
        """Keep the image menu equal to the viewer's 3D image layers, keeping the choice."""
        current = self.image_combo.currentText()
        names = [
            layer.name
            for layer in self.viewer.layers
            if isinstance(layer, Image)
            and layer.ndim == 3
            and not layer.rgb
            and "dsms_role" not in layer.metadata  # our own result layers
        ]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        self._update_run_button()

    def _on_arch_changed(self, arch: str) -> None:
        decoder = "has a restoration decoder" if has_restoration(arch) else "no restoration decoder"
        self.arch_label.setText(f"{DESCRIPTIONS[arch]} ({decoder})")
        self.refresh_checkpoints()

    def _on_device_changed(self, device: str) -> None:
        self.batch_spin.setValue(DEFAULT_BATCH_SIZES.get(device.split(":")[0], 4))

    def refresh_checkpoints(self) -> None:
        """Re-read the bundled and user model folders into the checkpoint menu.

        Lists the checkpoints of the chosen architecture, plus files chosen with Browse…; the
        fine-tune widget calls this after saving a model.
        """
        arch = self.arch_combo.currentText()
        current = self.checkpoint
        self.checkpoint_combo.clear()
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
        self._update_run_button()

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

    def _on_checkpoint_activated(self, index: int) -> None:
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

    def _update_run_button(self) -> None:
        ready = not self.running and self.image_layer is not None and bool(self.checkpoint)
        self.run_button.setEnabled(ready)

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        """Whether a segmentation is in progress (computing, or adding its layers)."""
        return self.worker is not None or bool(self._steps)

    def run(self) -> None:
        """Segment the chosen image with the chosen checkpoint in a worker thread."""
        if self.running:
            return
        image, checkpoint = self.image_layer, self.checkpoint
        if image is None or checkpoint is None:
            report_error(ValueError("choose an image layer and a checkpoint first"), "Segment")
            return
        try:
            volume = volume_of_layer(image)
        except VolumeError as error:
            report_error(error, "Segment")
            return
        self._run_image = image
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(True)
        self.readout.setText(f"Segmenting {image.name}…")
        self.worker = start_job(
            _segment_job,
            volume,
            checkpoint,
            self.device_combo.currentText(),
            self.batch_spin.value(),
            self.probabilities_check.isChecked(),
            description=f"Segmenting {image.name}",
            on_yield=self._on_progress,
            on_result=self._on_result,
            on_finished=self._on_finished,
            error_context="Segment",
        )
        self.worker.aborted.connect(lambda: self.readout.setText("Cancelled: no layer added."))

    def cancel(self) -> None:
        """Stop the run after the current batch; nothing is added to the viewer."""
        if self.worker is not None:
            self.cancel_button.setEnabled(False)
            self.readout.setText("Cancelling after the current batch…")
            self.worker.quit()

    def _on_progress(self, value: tuple[int, int]) -> None:
        done, total = value
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)

    def _on_finished(self) -> None:
        self.worker = None
        if not self._steps:
            self._run_image = None
        self.progress_bar.setVisible(False)
        self.cancel_button.setEnabled(False)
        self._update_run_button()

    # ------------------------------------------------------------------ results

    def _on_result(self, returned: tuple[SegmentationResult, dict[str, Any], Any]) -> None:
        """Queue the result layers, one per turn of the event loop.

        Creating a napari layer costs about 0.1 s in the GUI thread (vispy visual, controls);
        adding the three or five layers of a run one turn apart keeps every stall that short,
        and the labels come last, on top and selected.
        """
        result, meta, error = returned
        image = self._run_image
        stats = result.stats
        model = {
            "arch": meta["arch"],
            "checkpoint": str(meta["path"]),
            "name": Path(meta["path"]).stem,
            "device": stats.device,
            "precision": stats.precision,
        }
        if image is None or image not in self.viewer.layers:
            report_error(ValueError("the image layer was removed during the run"), "Segment")
            return
        geometry = self._geometry(image)
        steps: list[Callable[[], Any]] = []
        if error is not None:
            steps.append(
                partial(
                    self._put_image,
                    f"{image.name} reconstruction error",
                    error,
                    geometry,
                    role="reconstruction error",
                    colormap="inferno",
                    contrast_limits=ERROR_CONTRAST,
                    visible=False,
                )
            )
            steps.append(
                partial(
                    self._put_image,
                    f"{image.name} reconstruction",
                    result.canonical_reconstruction,
                    geometry,
                    role="reconstruction",
                    colormap="gray",
                    contrast_limits=(0.0, 1.0),
                    visible=False,
                )
            )
        if result.canonical_probabilities is not None:
            for channel, what in enumerate(("pancreas", "tumour")):
                steps.append(
                    partial(
                        self._put_image,
                        f"{image.name} {what} probability",
                        result.canonical_probabilities[..., channel],
                        geometry,
                        role=f"{what} probability",
                        colormap="magma",
                        contrast_limits=(0.0, 1.0),
                        blending="additive",
                    )
                )
        steps.append(partial(self._put_labels, image, result.canonical_labels, model))
        steps.append(partial(self._finish_result, image, result, model))
        self._steps = steps
        QTimer.singleShot(0, self._next_step)

    def _next_step(self) -> None:
        if not self._steps:
            return
        image = self._run_image
        if image is None or image not in self.viewer.layers:
            self._steps = []
            self._update_run_button()
            report_error(ValueError("the image layer was removed during the run"), "Segment")
            return
        self._steps.pop(0)()
        if self._steps:
            QTimer.singleShot(0, self._next_step)
        else:
            self._run_image = None
            self._update_run_button()

    def _finish_result(
        self, image: Image, result: SegmentationResult, model: dict[str, Any]
    ) -> None:
        """Select the new labels for painting (label 1, paint mode) and report the figures."""
        labels = self._result_labels
        self.viewer.layers.selection.active = labels
        labels.selected_label = 1
        labels.mode = "paint"
        stats = result.stats
        self.readout.setText(
            f"{image.name} with {model['name']} ({model['arch']}):\n"
            f"pancreas {stats.pancreas_ml:.1f} mL, tumour {stats.tumour_ml:.1f} mL\n"
            f"{stats.foreground_slices} of {stats.total_slices} slices with foreground\n"
            f"{stats.seconds:.1f} s on {stats.device} ({stats.precision}, "
            f"batch {stats.batch_size})"
        )
        show_info(f"{labels.name}: {stats.summary()}")
        self._result_labels = None
        self.segmented.emit(labels)

    @staticmethod
    def _geometry(image: Image) -> dict[str, Any]:
        metadata = {
            key: image.metadata[key]
            for key in ("affine", "shape", "source", "description", "volume_info")
            if key in image.metadata
        }
        if "affine" not in metadata:
            metadata = geometry_metadata(volume_of_layer(image))
        return {
            "scale": tuple(image.scale[-3:]),
            "translate": tuple(image.translate[-3:]),
            "metadata": metadata,
        }

    def _put_image(
        self, name: str, data: np.ndarray, geometry: dict[str, Any], role: str, **kwargs: Any
    ) -> Image:
        """Add an image layer, or refresh the data of the one a previous run made."""
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        metadata = {**geometry["metadata"], "dsms_role": role}
        if isinstance(existing, Image) and existing.data.shape == data.shape:
            existing.data = data
            existing.metadata.update(metadata)
            return existing
        return self.viewer.add_image(
            data,
            name=name,
            scale=geometry["scale"],
            translate=geometry["translate"],
            metadata=metadata,
            **kwargs,
        )

    def _put_labels(self, image: Image, labels: np.ndarray, model: dict[str, Any]) -> None:
        """Add the labels layer, or replace an earlier prediction the user has not edited.

        A layer whose data differ from its stored prediction holds manual work: it is left
        alone and the new result goes into a new layer with a numbered name.
        """
        base = _labels_name(image.name)
        reference = volume_of_layer(image) if "affine" not in image.metadata else image
        data, kwargs, _ = labels_layer_data(labels, reference, name=base)
        kwargs["metadata"].update(prediction=data.copy(), model=model)
        existing = self.viewer.layers[base] if base in self.viewer.layers else None
        if isinstance(existing, Labels) and self._unedited(existing, data.shape):
            existing.data = data
            existing.metadata.update(kwargs["metadata"])
            layer = existing
        else:
            if existing is not None:
                kwargs["name"] = self._free_name(base)
            layer = self.viewer.add_labels(data, **kwargs)
        self._result_labels = layer

    @staticmethod
    def _unedited(layer: Labels, shape: tuple[int, ...]) -> bool:
        prediction = layer.metadata.get("prediction")
        return (
            prediction is not None
            and np.shape(prediction) == tuple(shape) == layer.data.shape
            and np.array_equal(np.asarray(layer.data), prediction)
        )

    def _free_name(self, base: str) -> str:
        number = 2
        while f"{base} ({number})" in self.viewer.layers:
            number += 1
        return f"{base} ({number})"
