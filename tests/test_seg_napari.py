"""DICOM-SEG in napari: a SEG opens as labels over its CT; Save as .dcm writes a SEG of the CT."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from napari.layers import Image, Labels
from test_seg import ROWS_TO_FEET, make_labels, write_ct_series

from napari_dsms._layers import MODEL, PREDICTION, image_layer_data, labels_layer_data
from napari_dsms._reader import napari_get_reader
from napari_dsms._writer import export_labels, write_labels_layer
from src_models import build_model, save_checkpoint
from src_models.io import Algorithm, VolumeError, read_labels, read_volume, write_seg

ALGORITHM = Algorithm("tiny_unet", "unet", "0.0-test", "ab" * 32)


def world_points(data: np.ndarray, kwargs: dict, value: int) -> np.ndarray:
    """World (napari) coordinates of the voxels equal to ``value``, sorted."""
    points = np.argwhere(data == value) * np.asarray(kwargs["scale"]) + kwargs["translate"]
    return points[np.lexsort(np.round(points, 3).T)]


@pytest.fixture
def ct_and_labels(tmp_path):
    write_ct_series(tmp_path / "ct", orientation=ROWS_TO_FEET, reverse=True)
    ct = read_volume(tmp_path / "ct")
    return ct, make_labels(ct.shape)


def test_reader_opens_a_seg_as_labels_where_the_ct_has_them(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    seg = write_seg(tmp_path / "from-pacs.dcm", labels, ct, ALGORITHM)
    [(data, kwargs, kind)] = napari_get_reader(str(seg))(str(seg))
    assert kind == "labels" and data.dtype == np.uint8
    assert kwargs["name"] == "Pancreas/tumour SEG (tiny_unet, automatic)"
    expected_data, expected_kwargs, _ = labels_layer_data(
        type(ct)(labels, ct.affine), image_layer_data(ct)[1]["metadata"]
    )
    for value in (1, 2):
        np.testing.assert_allclose(
            world_points(data, kwargs, value),
            world_points(expected_data, expected_kwargs, value),
            atol=1e-6,
        )


def test_save_as_dcm_writes_a_seg_of_the_series(make_napari_viewer, tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    viewer = make_napari_viewer()
    [image] = viewer.open(str(tmp_path / "ct"), plugin="napari-dsms")
    assert isinstance(image, Image)
    data, kwargs, _ = labels_layer_data(type(ct)(labels, ct.affine), image)
    layer = viewer.add_labels(data, **kwargs)
    [written] = layer.save(str(tmp_path / "labels.dcm"), plugin="napari-dsms")
    np.testing.assert_array_equal(read_labels(written, reference=ct).array, labels)
    [opened] = viewer.open(written, plugin="napari-dsms")
    assert isinstance(opened, Labels)
    index = tuple(np.argwhere(np.asarray(opened.data) == 2)[0])
    there = np.rint(layer.world_to_data(opened.data_to_world(index))).astype(int)
    assert np.asarray(layer.data)[tuple(there)] == 2
    assert {s.SegmentAlgorithmType for s in hd.seg.segread(written).SegmentSequence} == {"MANUAL"}


def test_export_marks_corrected_model_labels_semiautomatic(tmp_path, ct_and_labels):
    ct, labels = ct_and_labels
    checkpoint = save_checkpoint(
        tmp_path / "tiny.pt",
        build_model("unet", width=4, depth=2),
        preprocessing={"hu_window": [0.0, 255.0], "spacing_mm": 3.0},
    )
    data, kwargs, _ = labels_layer_data(type(ct)(labels, ct.affine), ct)
    metadata = kwargs["metadata"]
    metadata[MODEL] = {"arch": "unet", "checkpoint": str(checkpoint), "name": "tiny"}
    metadata[PREDICTION] = data.copy()
    automatic = hd.seg.segread(export_labels(tmp_path / "a.dcm", data, metadata))
    edited = data.copy()
    edited[edited == 2] = 1
    corrected = hd.seg.segread(export_labels(tmp_path / "c.dcm", edited, metadata))
    assert automatic.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert corrected.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    identification = corrected.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert identification.AlgorithmName == "tiny"
    assert Algorithm.from_checkpoint(
        {"path": checkpoint, "arch": "unet"}, "x"
    ).checkpoint_sha256 in str(identification.AlgorithmParameters)
    assert len(corrected.SegmentSequence) == 1  # the removed tumour is left out
    # the side-car names the corrected slices by their InstanceNumber too, as a PACS viewer
    # shows them (a tester could not find "source slice 3" there)
    import json

    from src_models.corrections import sidecar_path

    meta = {"metadata": metadata, "name": "labels", "scale": kwargs["scale"]}
    [saved] = write_labels_layer(str(tmp_path / "s.dcm"), edited, meta)  # napari's Save
    content = json.loads(sidecar_path(saved).read_text())
    edited_source = content["edited_slices"]["source"]
    assert edited_source and content["instance_numbers"]["edited_slices"] == [
        ct.info["instance_numbers"][k] for k in edited_source
    ]
    assert None not in ct.info["instance_numbers"]


def test_save_as_dcm_of_a_nifti_ct_is_refused(tmp_path, ct_and_labels):
    import nibabel as nib

    ct, labels = ct_and_labels
    nib.save(nib.Nifti1Image(ct.array, ct.affine), tmp_path / "ct.nii.gz")
    [(_, image_kwargs, _)] = napari_get_reader(str(tmp_path / "ct.nii.gz"))(
        str(tmp_path / "ct.nii.gz")
    )
    data, kwargs, _ = labels_layer_data(type(ct)(labels, ct.affine), image_kwargs["metadata"])
    with pytest.raises(VolumeError, match="needs a DICOM series"):
        write_labels_layer(str(tmp_path / "labels.dcm"), data, kwargs)
    assert not (tmp_path / "labels.dcm").exists()
