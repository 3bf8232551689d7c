"""npe2 reader, writer, sample data and layer helpers: geometry survives the trip through napari."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_dsms._layers import (
    LABEL_COLOURS,
    REFERENCE_COLOURS,
    image_layer_data,
    labels_layer_data,
    layer_to_volume,
    new_labels_like,
)
from napari_dsms._reader import napari_get_reader
from napari_dsms._sample_data import make_phantom_sample
from napari_dsms._writer import write_labels_layer
from src_models import VolumeError, read_labels, read_volume, write_labels
from src_models.io.windows import CT_WINDOWS
from src_models.phantom import make_phantom

NIH_SCALE = (1.0, 0.859375, 0.859375)


class FakeLayer:
    """The attributes of a napari layer the helpers use, without a viewer."""

    def __init__(self, layer_data):
        self.data, kwargs, _ = layer_data
        self.name = kwargs["name"]
        self.metadata = kwargs["metadata"]


def test_reader_declines_foreign_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "empty")) is None
    assert napari_get_reader(str(tmp_path)) is None
    assert napari_get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.nii")]) is None
    assert napari_get_reader(str(tmp_path / "absent.png")) is None


def test_reader_opens_real_ct_in_radiological_layout(nih_ct):
    reader = napari_get_reader(str(nih_ct))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(nih_ct))
    assert kind == "image" and data.shape == (101, 512, 512)
    assert kwargs["scale"] == pytest.approx(NIH_SCALE)
    assert kwargs["translate"] == pytest.approx((-184.0, -439.140625, 0.0))
    assert kwargs["contrast_limits"] == CT_WINDOWS["abdomen"]
    np.testing.assert_array_equal(kwargs["metadata"]["affine"], nib.load(str(nih_ct)).affine)
    assert kwargs["metadata"]["shape"] == (512, 512, 101)
    assert kwargs["metadata"]["source"] == str(nih_ct)


def test_reader_opens_real_label_as_labels_that_overlay(nih_ct, nih_label):
    [(image, image_kwargs, _)] = napari_get_reader(str(nih_ct))(str(nih_ct))
    [(labels, kwargs, kind)] = napari_get_reader([str(nih_label)])([str(nih_label)])
    assert kind == "labels" and labels.shape == image.shape
    assert kwargs["scale"] == image_kwargs["scale"]
    assert kwargs["translate"] == image_kwargs["translate"]
    assert kwargs["features"]["name"] == ["background", "pancreas", "tumour"]
    colours = kwargs["colormap"].color_dict
    # a label file is a reference: its own colours, never those of the model's result
    np.testing.assert_allclose(colours[1], REFERENCE_COLOURS[1])
    assert not np.allclose(colours[1], LABEL_COLOURS[1])
    assert kwargs["metadata"]["dsms_role"] == "reference"
    assert colours[0][3] == 0  # background transparent
    hu = image[labels == 1]
    assert 40 < np.median(hu) < 160


def test_reader_opens_dicom_folder(nih_dicom):
    reader = napari_get_reader(str(nih_dicom))
    [(data, kwargs, kind)] = reader(str(nih_dicom))
    assert kind == "image" and data.shape == (24, 512, 512)
    assert kwargs["translate"][0] == pytest.approx(-146.0)


def test_reader_raises_clear_error_for_claimed_broken_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"\0" * 10)
    reader = napari_get_reader(str(bad))
    with pytest.raises(VolumeError, match="broken.nii.gz"):
        reader(str(bad))


def test_label_heuristic_needs_name_and_values(tmp_path):
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.uint8), affine), str(tmp_path / "image.nii"))
    nib.save(nib.Nifti1Image(np.full((4, 4, 3), 5, np.uint8), affine), str(tmp_path / "seg.nii"))
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.uint8), affine), str(tmp_path / "mask.nii"))
    kinds = [
        napari_get_reader(str(tmp_path / n))(str(tmp_path / n))[0][2]
        for n in ("image.nii", "seg.nii", "mask.nii")
    ]
    assert kinds == ["image", "image", "labels"]


def test_sample_data_is_aligned_phantom():
    (image, image_kwargs, kind), (labels, kwargs, label_kind) = make_phantom_sample()
    assert (kind, label_kind) == ("image", "labels")
    assert image.shape == labels.shape == (48, 256, 256)
    assert kwargs["scale"] == image_kwargs["scale"] == pytest.approx((2.5, 1.4, 1.4))
    assert set(np.unique(labels).tolist()) == {0, 1, 2}


def test_layers_round_trip_to_the_file_grid():
    image, labels = make_phantom(seed=5)
    image_layer = FakeLayer(image_layer_data(image))
    back = layer_to_volume(image_layer)
    np.testing.assert_array_equal(back.array, image.array)
    np.testing.assert_array_equal(back.affine, image.affine)
    label_layer = FakeLayer(labels_layer_data(labels, image_layer, name="seg"))
    np.testing.assert_array_equal(layer_to_volume(label_layer).array, labels.array)


def test_new_labels_like_inherits_geometry():
    image, _ = make_phantom(seed=5)
    image_data = image_layer_data(image, window="liver")
    assert image_data[1]["contrast_limits"] == CT_WINDOWS["liver"]
    data, kwargs, kind = new_labels_like(FakeLayer(image_data), name="corrections")
    assert kind == "labels" and data.shape == image_data[0].shape and not data.any()
    assert kwargs["scale"] == image_data[1]["scale"]
    assert kwargs["translate"] == image_data[1]["translate"]
    np.testing.assert_array_equal(kwargs["metadata"]["affine"], image.affine)


def test_labels_layer_data_refuses_mismatch():
    image, labels = make_phantom(seed=5)
    with pytest.raises(VolumeError, match="do not fit"):
        labels_layer_data(np.zeros((3, 3, 3), np.uint8), image)
    with pytest.raises(KeyError, match="abdomen"):
        image_layer_data(image, window="brain")


def test_writer_puts_labels_on_the_ct_grid(nih_ct, nih_label, tmp_path):
    [(_, image_kwargs, _)] = napari_get_reader(str(nih_ct))(str(nih_ct))
    [(labels, kwargs, _)] = napari_get_reader(str(nih_label))(str(nih_label))
    written = write_labels_layer(str(tmp_path / "edited"), labels, kwargs)
    assert written == [str(tmp_path / "edited.nii.gz")]
    again = read_labels(written[0], reference=read_volume(nih_ct))
    np.testing.assert_array_equal(again.array, nib.load(str(nih_label)).get_fdata() > 0)
    # napari's Save explains the file like the Review dock's export: a side-car beside it
    sidecar = json.loads((tmp_path / "edited.json").read_text())
    assert sidecar["kind"] == "labels" and sidecar["file"] == "edited.nii.gz"
    assert sidecar["volumes_ml"]["pancreas"] == pytest.approx(58.0, abs=0.5)  # 78,329 voxels
    assert sidecar["edited_slices"]["canonical"] == [] and sidecar["model"] is None


def test_writer_refusals(tmp_path):
    image, labels = make_phantom(seed=5)
    source = tmp_path / "ct.nii.gz"
    source.write_bytes(b"original")
    data, kwargs, _ = labels_layer_data(labels, image)
    kwargs["metadata"]["source"] = str(source)
    with pytest.raises(VolumeError, match="overwrite the source CT"):
        write_labels_layer(str(source), data, kwargs)
    assert source.read_bytes() == b"original"
    with pytest.raises(VolumeError, match="no file geometry"):
        write_labels_layer(str(tmp_path / "x.nii.gz"), data, {"name": "painted", "metadata": {}})
    with pytest.raises(VolumeError, match="no longer matches"):
        write_labels_layer(str(tmp_path / "x.nii.gz"), data[:-1], kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_phantom_written_and_read_back(tmp_path):
    image, labels = make_phantom(seed=6)
    out = write_labels(tmp_path / "phantom_label.nii.gz", labels, image)
    again = read_labels(Path(out), reference=image)
    np.testing.assert_array_equal(again.array, labels.array)


def test_viewer_opens_and_saves_through_the_plugin(make_napari_viewer, nih_ct, nih_label, tmp_path):
    viewer = make_napari_viewer()
    [image] = viewer.open(str(nih_ct), plugin="napari-dsms")
    [labels] = viewer.open(str(nih_label), plugin="napari-dsms")
    assert isinstance(image, Image) and isinstance(labels, Labels)
    assert image.data.shape == labels.data.shape == (101, 512, 512)
    assert tuple(image.scale) == pytest.approx(NIH_SCALE)
    labels.data[50, 200, 200] = 2
    [written] = labels.save(str(tmp_path / "edited.nii.gz"), plugin="napari-dsms")
    again = read_labels(written, reference=read_volume(nih_ct))
    np.testing.assert_array_equal(again.array, layer_to_volume(labels).array)
    native = np.argwhere(again.array == 2)[0]
    world = image.data_to_world((50, 200, 200))  # (S, P, L) mm
    ras = again.affine @ np.append(native, 1.0)
    assert (ras[2], -ras[1], -ras[0]) == pytest.approx(tuple(world))


def test_reader_notifies_unknown_orientation_and_keeps_the_flag(tmp_path):
    from napari.utils.notifications import notification_manager

    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), None)  # qform_code = sform_code = 0
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    before = len(notification_manager.records)
    [(_, kwargs, kind)] = napari_get_reader(str(tmp_path / "ct.nii.gz"))(
        str(tmp_path / "ct.nii.gz")
    )
    assert kind == "image"
    assert kwargs["metadata"]["volume_info"]["orientation_unknown"] is True
    new = [str(n.message) for n in notification_manager.records[before:]]
    assert any("orientation unknown" in message for message in new)


def test_reader_opens_a_2d_image_as_one_slice(tmp_path):
    pixels = np.arange(30, dtype=np.int16).reshape(6, 5)
    nib.save(nib.Nifti1Image(pixels, np.diag([0.7, 0.8, 1.0, 1.0])), str(tmp_path / "s.nii"))
    [(data, kwargs, kind)] = napari_get_reader(str(tmp_path / "s.nii"))(str(tmp_path / "s.nii"))
    assert kind == "image" and data.shape == (1, 5, 6)  # (slice, row, column)
    assert kwargs["metadata"]["shape"] == (6, 5, 1)
    assert sorted(np.asarray(data).ravel().tolist()) == list(range(30))
