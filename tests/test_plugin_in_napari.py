"""The plugin as napari sees it: File > Open, File > Open Sample, Plugins > dock widgets."""

from __future__ import annotations

import numpy as np
import pytest

PLUGIN = "napari-dsms"


def test_file_open_reads_the_real_ct_with_its_geometry(make_napari_viewer, nih_ct) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open(nih_ct, plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert layer.data.shape == (101, 512, 512)  # slices, rows (anterior up), columns
    np.testing.assert_allclose(layer.scale, (1.0, 0.859375, 0.859375))
    affine = np.asarray(layer.metadata["affine"])
    assert affine.shape == (4, 4)
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), (0.859375, 0.859375, 1.0))
    lower, upper = layer.contrast_limits
    assert (upper - lower, (upper + lower) / 2) == (400, 40)  # abdomen window


def test_file_open_reads_a_dicom_folder(make_napari_viewer, nih_dicom, nih_ct) -> None:
    viewer = make_napari_viewer()
    dicom = viewer.open(nih_dicom, plugin=PLUGIN)[0]
    nifti = viewer.open(nih_ct, plugin=PLUGIN)[0]
    assert dicom.data.shape == (24, 512, 512)
    np.testing.assert_array_equal(np.asarray(dicom.data), np.asarray(nifti.data)[38:62])
    # Same world position: the DICOM slices overlay slices 38..61 of the NIfTI volume.
    np.testing.assert_allclose(dicom.data_to_world((0, 0, 0)), nifti.data_to_world((38, 0, 0)))


def test_sample_phantom_opens_image_and_labels(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom")
    kinds = {type(layer).__name__ for layer in viewer.layers}
    assert kinds == {"Image", "Labels"}
    labels = next(layer for layer in viewer.layers if type(layer).__name__ == "Labels")
    assert set(np.unique(labels.data)) <= {0, 1, 2}
    assert 1 in np.unique(labels.data) and 2 in np.unique(labels.data)


def test_foreign_files_are_left_to_other_readers(tmp_path) -> None:
    from napari_dsms._reader import napari_get_reader

    text = tmp_path / "notes.txt"
    text.write_text("not a scan")
    assert napari_get_reader(str(text)) is None
    assert napari_get_reader(str(tmp_path)) is None  # a folder without DICOM


@pytest.mark.parametrize("widget_name", ["Load CT", "Segment", "Review and fine-tune"])
def test_dock_widgets_can_be_added(make_napari_viewer, widget_name: str) -> None:
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, widget_name)
    assert widget_name in dock.name
    assert dock.widget() is not None and widget.window() is viewer.window._qt_window


def test_make_demo_opens_the_sample_with_every_widget_docked(make_napari_viewer) -> None:
    from napari_dsms.demo import WIDGETS, open_demo_viewer

    viewer = open_demo_viewer(viewer=make_napari_viewer())
    assert {type(layer).__name__ for layer in viewer.layers} == {"Image", "Labels"}
    docked = " ".join(viewer.window.dock_widgets.keys())
    for name in WIDGETS:
        assert name in docked
