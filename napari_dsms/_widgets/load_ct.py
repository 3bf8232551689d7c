"""Load CT dock widget: open a NIfTI file or DICOM folder, pick a CT window, open labels.

The widget holds no science: reading is :func:`src_models.read_volume` /
:func:`src_models.read_labels`, layers come from :mod:`napari_dsms._layers`. Reading a 512 x 512 x
240 series takes seconds, so it runs as a job of the shared runner (:mod:`._worker`) while a busy
bar shows; any failure ends as a notification that names the file and the problem, never as a
crash.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from src_models.corrections import structure_volumes
from src_models.io import (
    Volume,
    describe,
    label_array,
    looks_like_labels,
    read_labels,
    read_volume,
)
from src_models.io.volume import format_ml
from src_models.io.windows import CT_WINDOWS, DEFAULT_WINDOW

from .._autosave import attach as attach_autosave
from .._layers import (
    ASSUMED_LAYOUT,
    REFERENCE,
    ROLE,
    SHAPE,
    LayerDataTuple,
    has_file_geometry,
    image_layer_data,
    is_ct_layer,
    labels_layer_data,
    layer_to_volume,
    reference_volume,
    style_labels,
)
from .._orientation import attach as attach_orientation
from ._scroll import ScrollingDock
from ._worker import report_error, start_job

if TYPE_CHECKING:
    import napari

NIFTI_FILTER = "NIfTI (*.nii *.nii.gz);;All files (*)"


#: What a read yields: one step of one, so the activity panel shows the file being read.
_ONE_STEP = (0, 1)

ReadJob = Generator[tuple[int, int], None, tuple[LayerDataTuple, str]]


def _read_image(path: str, window: str) -> ReadJob:
    yield _ONE_STEP
    volume = read_volume(path)
    if looks_like_labels(volume):  # a label file opened as a CT: a reference, not HU
        volume.array = label_array(volume.array, volume.source)
        name = Path(volume.source).name.split(".nii")[0]
        data = labels_layer_data(volume, volume, name=name, role=REFERENCE)
        return data, _describe_labels(volume)
    return image_layer_data(volume, window=window), describe(volume)


def _describe_labels(labels: Volume) -> str:
    """What a label file holds, in words and mL (``describe`` speaks of HU, which labels lack)."""
    volumes = structure_volumes(labels.array, labels.voxel_volume_mm3)
    return "\n".join(
        [
            f"source:      {labels.source}",
            f"shape:       {' x '.join(str(n) for n in labels.shape)} (the CT's grid"
            + (
                f"; the file stores it in {''.join(labels.info['reoriented_from'])} order)"
                if labels.info.get("reoriented_from")
                else ")"
            ),
            f"labels:      pancreas (incl. tumour) {format_ml(volumes['pancreas'])}, "
            f"tumour {format_ml(volumes['tumour'])}",
        ]
    )


def _read_labels(path: str, reference: Volume, image_layer: Any) -> ReadJob:
    yield _ONE_STEP
    labels = read_labels(path, reference=reference)
    name = Path(path).name.split(".nii")[0]
    data = labels_layer_data(labels, image_layer, name=name, role=REFERENCE)
    return data, _describe_labels(labels)


class LoadCTWidget(ScrollingDock):
    """Open CT volumes and labels with exact geometry and set the CT window.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer to add layers to (npe2 passes it by this name).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._jobs = 0  # reads in progress
        attach_autosave(napari_viewer)  # journals corrections, offers to restore them
        attach_orientation(napari_viewer)  # slider names, A/P and R/L on the canvas

        self.open_nifti_button = QPushButton("Open NIfTI file…")
        self.open_dicom_button = QPushButton("Open DICOM folder…")
        self.open_labels_button = QPushButton("Open labels…")
        self.open_labels_button.setToolTip(
            "Open a label NIfTI (0 background, 1 pancreas, 2 tumour) on the selected CT's grid"
        )
        self.window_combo = QComboBox()
        self.window_combo.addItems(list(CT_WINDOWS))
        self.window_combo.setCurrentText(DEFAULT_WINDOW)
        self.window_combo.setToolTip("CT window applied to the selected CT image layer")
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy indicator: reading has no meaningful percentage
        self.progress.setVisible(False)
        self.info = QLabel("No CT loaded.")
        self.info.setWordWrap(True)
        self.info.setStyleSheet("font-family: monospace")

        buttons = QHBoxLayout()
        buttons.addWidget(self.open_nifti_button)
        buttons.addWidget(self.open_dicom_button)
        form = QFormLayout()
        form.addRow("Window", self.window_combo)
        layout = QVBoxLayout(self.content)
        layout.addLayout(buttons)
        layout.addWidget(self.open_labels_button)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.info)
        layout.addStretch(1)

        self.open_nifti_button.clicked.connect(self._open_nifti_dialog)
        self.open_dicom_button.clicked.connect(self._open_dicom_dialog)
        self.open_labels_button.clicked.connect(self._open_labels_dialog)
        self.window_combo.currentTextChanged.connect(self.set_window)
        # A CT opened another way (drag and drop, File > Open) is described here too.
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        # ... and the CT selected in the layer list, which Open labels checks against (a tester
        # read the last CT opened described while another one was selected).
        self.viewer.layers.selection.events.active.connect(self._on_active_changed)
        ct = self.current_ct_layer()
        if ct is not None:
            self._describe(ct)

    def _on_layer_inserted(self, event: Any) -> None:
        if is_ct_layer(event.value) and not self.busy:  # our own reads describe themselves
            self._describe(event.value)

    def _on_active_changed(self, event: Any) -> None:
        if is_ct_layer(event.value) and not self.busy:
            self._describe(event.value)

    def _describe(self, layer: Image) -> None:
        """The Load CT panel's description of a CT layer on its file grid.

        A layer from another reader (napari's own, ``viewer.add_image``) has none: raising
        here, in napari's layer-inserted event, made ``viewer.add_image`` itself fail (a
        tester); it is described as what the docks take it for.
        """
        if not has_file_geometry(layer):
            shape = " x ".join(str(n) for n in np.shape(layer.data))
            self.info.setText(
                f"layer:       {layer.name} ({shape}, from another reader)\n"
                "geometry:    unknown (no file affine): the docks take it as "
                f"{ASSUMED_LAYOUT}, with the layer's scale as voxel size in mm; open the file "
                "here for exact geometry, volumes and exports"
            )
            return
        self.info.setText(describe(layer_to_volume(layer)))

    # --- dialogs (kept small so tests call load / load_labels directly) -----------------------

    def _open_nifti_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open CT (NIfTI)", "", NIFTI_FILTER)
        if path:
            self.load(path)

    def _open_dicom_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open DICOM series folder")
        if path:
            self.load(path)

    def _open_labels_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open labels (NIfTI)", "", NIFTI_FILTER)
        if path:
            self.load_labels(path)

    # --- actions ------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a file is being read."""
        return self._jobs > 0

    def current_ct_layer(self) -> Image | None:
        """The selected CT image layer, else the most recently added one."""
        active = self.viewer.layers.selection.active
        if is_ct_layer(active):
            return active
        candidates = [layer for layer in self.viewer.layers if is_ct_layer(layer)]
        return candidates[-1] if candidates else None

    def load(self, path: str | Path):
        """Read a NIfTI file or DICOM folder in a worker and add it as a CT image layer."""
        return self._start(_read_image, str(path), self.window_combo.currentText())

    def load_labels(self, path: str | Path):
        """Read a label file, check it against the current CT's grid, add it as labels."""
        image = self.current_ct_layer()
        if image is None:
            show_error("Open labels: open the CT first; the labels are checked against its grid")
            return None
        try:
            reference = reference_volume(image)
        except ValueError as error:  # VolumeError: a CT from another reader, no file grid
            show_error(f"Open labels: {error}")
            return None
        return self._start(_read_labels, str(path), reference, image)

    def set_window(self, name: str) -> None:
        """Apply the CT window ``name`` to the current CT image layer."""
        layer = self.current_ct_layer()
        if layer is not None and name in CT_WINDOWS:
            layer.contrast_limits = CT_WINDOWS[name]

    # --- worker plumbing ----------------------------------------------------------------------

    def _start(self, function, *args):
        worker = start_job(
            function,
            *args,
            description=f"Reading {Path(str(args[0])).name}",
            on_result=self._add_layer,
            on_finished=self._finish,
            error_context="Open",
        )
        self._jobs += 1
        self.progress.setVisible(True)
        self._set_buttons_enabled(False)
        return worker

    def _finish(self) -> None:
        self._jobs -= 1
        if not self._jobs:
            self.progress.setVisible(False)
            self._set_buttons_enabled(True)

    def _set_buttons_enabled(self, enabled: bool) -> None:
        for button in (self.open_nifti_button, self.open_dicom_button, self.open_labels_button):
            button.setEnabled(enabled)

    def _add_layer(self, result: tuple[LayerDataTuple, str]) -> None:
        (data, kwargs, kind), text = result
        previous = self.viewer.layers.selection.active
        try:
            layer = self.viewer.add_layer(Layer.create(data, kwargs, kind))
        except Exception as exc:  # a layer napari refuses must not take the viewer down
            report_error(exc, "Open")
            return
        style_labels(layer)
        # A reference opened beside the labels being corrected does not take the brush: a
        # tester's next stroke went into the manual reference (napari selects a new layer).
        keeps_brush = (
            layer.metadata.get(ROLE) == REFERENCE
            and isinstance(previous, Labels)
            and previous.metadata.get(ROLE) != REFERENCE
        )
        self.viewer.layers.selection.active = previous if keeps_brush else layer
        if keeps_brush:
            text += f"\nOpened as a reference (outlined); painting stays on {previous.name!r}"
        if kind == "image":
            self.viewer.reset_view()
        self.info.setText(text)
        shape = layer.metadata.get(SHAPE, data.shape)  # the file's order, as the panel says
        show_info(f"Opened {layer.name}: {' x '.join(str(n) for n in shape)} voxels")
