"""Load CT widget in a real viewer: real CT, DICOM, labels, windows, and errors as notifications."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from napari.layers import Labels
from test_dicom import pattern, write_series, write_slice

from napari_dsms._layers import REFERENCE_COLOURS
from napari_dsms._widgets.load_ct import LoadCTWidget
from src_models.io.windows import CT_WINDOWS

NIH_SCALE = (1.0, 0.859375, 0.859375)
TIMEOUT_MS = 60_000


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = LoadCTWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def wait(widget, qtbot) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


def test_load_nifti_then_labels_and_windows(widget, qtbot, nih_ct, nih_label):
    viewer = widget.viewer
    widget.load(nih_ct)
    wait(widget, qtbot)
    [image] = viewer.layers
    assert image.data.shape == (101, 512, 512)
    assert tuple(image.scale) == pytest.approx(NIH_SCALE)
    assert tuple(image.translate) == pytest.approx((-184.0, -439.140625, 0.0))
    assert tuple(image.contrast_limits) == CT_WINDOWS["abdomen"]
    assert np.asarray(image.metadata["affine"])[0, 0] == pytest.approx(-0.859375)
    # with the Load CT dock alone the slider is named too (it read "-3", a tester)
    assert tuple(viewer.dims.axis_labels) == ("axial", "coronal", "sagittal")
    assert "512 x 512 x 101" in widget.info.text() and "LAS" in widget.info.text()

    widget.load_labels(nih_label)
    wait(widget, qtbot)
    labels = viewer.layers[-1]
    assert labels.data.shape == image.data.shape
    assert tuple(labels.scale) == tuple(image.scale)
    assert tuple(labels.translate) == tuple(image.translate)
    assert np.count_nonzero(labels.data == 1) == 78329
    # a label file is a reference: drawn as contours in its own colours, and described in mL
    assert labels.contour == 2
    np.testing.assert_allclose(labels.colormap.map(np.array([1]))[0], REFERENCE_COLOURS[1])
    assert "HU" not in widget.info.text() and "pancreas (incl. tumour)" in widget.info.text()
    assert 40 < np.median(image.data[labels.data == 1]) < 160
    # the pancreas label reads "pancreas" under the cursor
    z, y, x = np.argwhere(labels.data == 1)[0]
    world = np.asarray(image.data_to_world((z, y, x)))
    assert "pancreas" in str(labels.get_status(world, world=True))

    widget.window_combo.setCurrentText("bone")
    assert tuple(image.contrast_limits) == CT_WINDOWS["bone"]


def test_a_label_file_opened_as_a_ct_is_read_as_labels(widget, qtbot, nih_label):
    widget.load(nih_label)
    wait(widget, qtbot)
    [labels] = widget.viewer.layers
    assert isinstance(labels, Labels) and labels.contour == 2  # a reference, outlined
    assert "HU" not in widget.info.text() and "pancreas (incl. tumour)" in widget.info.text()


def test_load_dicom_folder(widget, qtbot, nih_dicom, monkeypatch):
    told = []
    monkeypatch.setattr("napari_dsms._widgets.load_ct.show_info", told.append)
    widget.load(nih_dicom)
    wait(widget, qtbot)
    # the notice gives the shape in the file's order, as the panel does (it said 24 x 512 x 512
    # beside the panel's 512 x 512 x 24, a tester)
    assert told == [f"Opened {nih_dicom.name}: 512 x 512 x 24 voxels"]
    assert "512 x 512 x 24" in widget.info.text()
    [image] = widget.viewer.layers
    assert image.data.shape == (24, 512, 512)
    assert tuple(image.scale) == pytest.approx(NIH_SCALE)
    assert image.translate[0] == pytest.approx(-146.0)
    assert "Pancreas" in widget.info.text()
    # named by its folder, not by the series description "Pancreas" (which reads like a label)
    assert image.name == nih_dicom.name


def test_errors_become_notifications(widget, qtbot, tmp_path, monkeypatch):
    messages = []
    monkeypatch.setattr("napari_dsms._widgets.load_ct.show_error", messages.append)
    monkeypatch.setattr("napari_dsms._widgets._worker.show_error", messages.append)
    widget.load(tmp_path / "absent.nii.gz")
    wait(widget, qtbot)
    assert messages and "absent.nii.gz" in messages[0]
    assert len(widget.viewer.layers) == 0
    widget.load_labels(tmp_path / "label.nii.gz")  # no CT yet
    assert "open the CT first" in messages[-1]
    assert widget.open_nifti_button.isEnabled()


def test_mismatched_labels_refused(widget, qtbot, tmp_path, nih_ct, monkeypatch):
    messages = []
    monkeypatch.setattr("napari_dsms._widgets.load_ct.show_error", messages.append)
    monkeypatch.setattr("napari_dsms._widgets._worker.show_error", messages.append)
    widget.load(nih_ct)
    wait(widget, qtbot)
    small = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(small))
    widget.load_labels(small)
    wait(widget, qtbot)
    assert "shape" in messages[-1] and "label.nii.gz" in messages[-1]
    assert len(widget.viewer.layers) == 1


def test_several_series_named_in_a_warning(widget, qtbot, tmp_path, monkeypatch):
    warnings_shown = []
    monkeypatch.setattr("napari_dsms._widgets._worker.show_warning", warnings_shown.append)
    write_series(tmp_path, n=5)
    for k in range(2):
        write_slice(tmp_path / f"other{k}.dcm", pattern(0, 8, 8), (0, 0, 3.0 * k), series_uid="7.7")
    widget.load(tmp_path)
    wait(widget, qtbot)
    assert widget.viewer.layers[0].data.shape == (5, 12, 16)
    assert (
        warnings_shown and "largest" in warnings_shown[0] and "Abdomen portal" in warnings_shown[0]
    )


def test_a_ct_opened_another_way_is_described_too(make_napari_viewer, nih_ct):
    """Drag and drop or File > Open goes through napari's reader, not this dock's buttons."""
    viewer = make_napari_viewer()
    widget = LoadCTWidget(viewer)
    assert widget.info.text() == "No CT loaded."
    viewer.open(str(nih_ct), plugin="napari-dsms")
    assert "512 x 512 x 101" in widget.info.text() and "HU" in widget.info.text()
    assert LoadCTWidget(viewer).info.text() == widget.info.text()  # docked after the CT
    # it describes the CT selected in the layer list, which Open labels checks against
    [ct] = viewer.layers
    viewer.add_image(np.zeros((4, 8, 8), np.int16), name="plain")
    assert "plain" in widget.info.text()
    viewer.layers.selection.active = ct
    assert "512 x 512 x 101" in widget.info.text()


def test_an_image_from_another_reader_is_described_not_refused(make_napari_viewer):
    """With the dock open, viewer.add_image of a plain array raised VolumeError from the dock's
    layer-inserted handler: napari's own call failed (a tester)."""
    viewer = make_napari_viewer()
    widget = LoadCTWidget(viewer)
    viewer.add_image(np.zeros((4, 8, 8), np.int16), name="plain")
    text = widget.info.text()
    assert "plain (4 x 8 x 8, from another reader)" in text
    assert "geometry:    unknown" in text and "axial slices" in text
    assert LoadCTWidget(viewer).info.text() == text  # docked after it


def test_a_reference_opened_beside_labels_being_corrected_leaves_them_the_brush(
    widget, qtbot, tmp_path
):
    """napari selects a new layer: a tester's next brush stroke after Open labels went into
    the manual reference instead of the labels being corrected."""
    viewer = widget.viewer
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    ct = np.full((24, 20, 6), 40, dtype=np.int16)
    nib.save(nib.Nifti1Image(ct, affine), str(tmp_path / "ct.nii.gz"))
    reference = np.zeros(ct.shape, dtype=np.uint8)
    reference[8:14, 6:12, 2:4] = 1
    nib.save(nib.Nifti1Image(reference, affine), str(tmp_path / "label.nii.gz"))
    widget.load(tmp_path / "ct.nii.gz")
    wait(widget, qtbot)
    [image] = viewer.layers
    corrected = viewer.add_labels(
        np.zeros(image.data.shape, dtype=np.uint8), scale=image.scale, translate=image.translate,
        name="ct pancreas/tumour",
    )  # fmt: skip
    assert viewer.layers.selection.active is corrected
    widget.load_labels(tmp_path / "label.nii.gz")
    wait(widget, qtbot)
    opened = viewer.layers[-1]
    assert opened is not corrected and opened.contour  # the reference, outlined
    assert viewer.layers.selection.active is corrected
    assert "painting stays on 'ct pancreas/tumour'" in widget.info.text()
