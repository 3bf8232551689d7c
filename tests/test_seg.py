"""DICOM-SEG out and in: same voxels at the same world positions, read by us and by highdicom.

Series are written with pydicom (axial in both listing orders, rows running to the feet as in
the shared series, oblique), labels are written as DICOM-SEG, and every label voxel is placed in
the patient three ways that must agree: the CT's affine, our SEG reader's affine, and highdicom's
own reading of the SEG (frame positions and the source images each frame references).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from test_dicom import write_enhanced

from src_models import build_model, save_checkpoint
from src_models.cli import main
from src_models.io import (
    Algorithm,
    VolumeError,
    read_labels,
    read_volume,
    write_output,
    write_seg,
)

ROWS, COLS = 10, 12
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ROWS_TO_FEET = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # as the shared NIH series
ALGORITHM = Algorithm("tiny_unet", "unet", "0.0-test", "0123456789abcdef" * 4)
#: What a PACS shows for label 1: the organ without its tumour, so its volume is not misread.
PANCREAS_LABEL = "Pancreas excluding tumour"


def _oblique() -> tuple[float, ...]:
    a = np.deg2rad(25.0)
    row = np.array([np.cos(a), np.sin(a), 0.0])
    col = np.array([-np.sin(a) * 0.9, np.cos(a) * 0.9, 0.43589])
    col = col - row * (row @ col)
    return (*row, *(col / np.linalg.norm(col)))


def write_ct_series(
    folder: Path,
    orientation=AXIAL,
    n: int = 7,
    step: float = 2.5,
    reverse: bool = False,
    tilt_deg: float = 0.0,
) -> list[str]:
    """A CT series with the study identifiers a scanner writes; returns SOP UIDs by position.

    ``tilt_deg`` shifts each slice along its columns by ``step * tan(tilt)``, as a tilted
    gantry does: the slices are then not stacked along their normal.
    """
    folder.mkdir()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    normal = np.cross(orientation[:3], orientation[3:])
    uids = [generate_uid() for _ in range(n)]
    order = list(range(n))[::-1] if reverse else list(range(n))
    for rank, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uids[k]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(
            str(folder / f"IM{rank:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128
        )
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uids[k]
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID = "Phantom^Seg", "PHANTOM-7"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID, ds.AccessionNumber, ds.StudyDate, ds.StudyTime = "S1", "A1", "20260101", "1200"
        ds.ReferringPhysicianName = ""
        ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "Test", 4, rank + 1
        ds.SeriesDescription = "Abdomen portal"
        ds.ImagePositionPatient = [
            float(v)
            for v in np.array([-60.0, -40.0, -20.0])
            + k * step * (normal + np.tan(np.radians(tilt_deg)) * np.asarray(orientation[3:]))
        ]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [0.8, 0.6]
        ds.SliceThickness = step
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.full((ROWS, COLS), 1000 + k, np.int16).tobytes()
        ds.save_as(folder / f"IM{rank:03d}.dcm", enforce_file_format=True)
    return uids


def make_labels(shape: tuple[int, ...]) -> np.ndarray:
    """Pancreas on slices 1..4 with a tumour on slices 2..3; slices 0, 5, 6 empty."""
    labels = np.zeros(shape, np.uint8)
    labels[2:9, 3:7, 1:5] = 1
    labels[4:6, 4:6, 2:4] = 2
    labels[10, 0, 3] = 1  # an edge voxel, asymmetric in every axis
    return labels


def world_of(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """World positions of the voxels of ``mask``, sorted so two sets compare row by row."""
    index = np.argwhere(mask)
    points = (affine @ np.c_[index, np.ones(len(index))].T)[:3].T
    return points[np.lexsort(np.round(points, 3).T)]


def highdicom_world(path: Path, value: int) -> np.ndarray:
    """RAS positions of the voxels of the segment coding ``value``, from highdicom alone."""
    seg = hd.seg.segread(path)
    wanted = codes.SCT.Pancreas if value == 1 else codes.SCT.Neoplasm
    numbers = seg.get_segment_numbers(segmented_property_type=wanted)
    if not numbers:
        return np.zeros((0, 3))
    volume = seg.get_volume(segment_numbers=numbers, combine_segments=True)
    index = np.argwhere(volume.array > 0)
    lps = (volume.affine @ np.c_[index, np.ones(len(index))].T)[:3].T
    ras = lps * np.array([-1.0, -1.0, 1.0])
    return ras[np.lexsort(np.round(ras, 3).T)]


SERIES = {
    "axial": {"orientation": AXIAL},
    "axial listed head to feet": {"orientation": AXIAL, "reverse": True},
    "rows to the feet": {"orientation": ROWS_TO_FEET},
    "oblique": {"orientation": _oblique(), "step": 1.25},
}


@pytest.mark.parametrize("kind", list(SERIES))
def test_round_trip_same_voxels_at_same_world_positions(tmp_path, kind):
    write_ct_series(tmp_path / "ct", **SERIES[kind])
    ct = read_volume(tmp_path / "ct")
    labels = make_labels(ct.shape)
    out = write_seg(tmp_path / "labels.dcm", labels, ct, ALGORITHM)

    on_ct = read_labels(out, reference=ct)  # ours, placed on the whole series
    np.testing.assert_array_equal(on_ct.array, labels)
    np.testing.assert_allclose(on_ct.affine, ct.affine)
    own = read_volume(out)  # ours, on the SEG's own frames (slices 1..4)
    assert own.shape == (COLS, ROWS, 4) and own.info["format"] == "DICOM-SEG"
    for value in (1, 2):
        expected = world_of(ct.affine, labels == value)
        np.testing.assert_allclose(world_of(own.affine, own.array == value), expected, atol=1e-4)
        np.testing.assert_allclose(highdicom_world(out, value), expected, atol=1e-4)


def test_slices_whose_orientations_differ_by_rounding_export_a_seg(tmp_path):
    # The reader took such a series as one volume, then the SEG failed after the whole
    # segmentation (highdicom wants one shared orientation; found by a tester).
    write_ct_series(tmp_path / "ct")
    for path in sorted((tmp_path / "ct").iterdir())[1::2]:
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = ["0.999999", "0", "0", "0", "1", "0"]
        ds.save_as(path)
    ct = read_volume(tmp_path / "ct")
    labels = make_labels(ct.shape)
    out = write_seg(tmp_path / "labels.dcm", labels, ct, ALGORITHM)
    np.testing.assert_array_equal(read_labels(out, reference=ct).array, labels)
    assert pydicom.dcmread(tmp_path / "ct" / "IM001.dcm").ImageOrientationPatient[0] == 0.999999


def test_a_tilted_gantry_series_seg_reads_back_on_its_sheared_grid(tmp_path):
    # It was written with exit 0 but read back nowhere: highdicom stacks frames along their
    # normal only, and a tilted gantry's slices step sideways too.
    write_ct_series(tmp_path / "ct", tilt_deg=20.0)
    ct = read_volume(tmp_path / "ct")
    assert not np.allclose(np.cross(ct.affine[:3, 0], ct.affine[:3, 1]) @ ct.affine[:3, 2], 0)
    labels = make_labels(ct.shape)
    labels[:, :, 3] = 0  # a slice without labels between labelled ones: a gap in the frames
    out = write_seg(tmp_path / "labels.dcm", labels, ct, ALGORITHM)
    on_ct = read_labels(out, reference=ct)
    np.testing.assert_array_equal(on_ct.array, labels)
    own = read_volume(out)
    for value in (1, 2):
        expected = world_of(ct.affine, labels == value)
        np.testing.assert_allclose(world_of(own.affine, own.array == value), expected, atol=1e-4)


def test_enhanced_ct_source_frames(tmp_path):
    """A multi-frame CT stored in scrambled frame order: each SEG frame names its CT frame."""
    path = tmp_path / "e" / "enhanced.dcm"
    path.parent.mkdir()
    order = [3, 0, 4, 1, 2]  # file frame i holds slice order[i]
    write_enhanced(path, n=5, order=order)
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID, ds.StudyID = "Phantom^Seg", "PHANTOM-8", "S2"
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid()
    ds.save_as(path, enforce_file_format=True)
    ct = read_volume(path)
    labels = make_labels(ct.shape)[:, :, :5]
    out = write_seg(tmp_path / "labels.dcm", labels, ct, ALGORITHM)
    np.testing.assert_array_equal(read_labels(out, ct).array, labels)
    for value in (1, 2):
        expected = world_of(ct.affine, labels == value)
        np.testing.assert_allclose(highdicom_world(out, value), expected, atol=1e-4)
    seg = hd.seg.segread(out)
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == ds.SOPInstanceUID
        k = order[int(source.ReferencedFrameNumber) - 1]
        position = item.PlanePositionSequence[0].ImagePositionPatient
        assert float(position[2]) == pytest.approx(-40.0 + 2.5 * k)


def test_frames_reference_the_series_own_instances(tmp_path):
    uids = write_ct_series(tmp_path / "ct", reverse=True)
    ct = read_volume(tmp_path / "ct")
    labels = make_labels(ct.shape)
    out = write_seg(tmp_path / "labels.dcm", labels, ct, ALGORITHM)
    seg = hd.seg.segread(out)
    source = pydicom.dcmread(next((tmp_path / "ct").iterdir()))
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "StudyID"):
        assert seg[key].value == source[key].value, key
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    listed = {
        item.ReferencedSOPInstanceUID
        for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert listed == set(uids)
    # each frame: the source slice it references holds exactly that frame's voxels
    pixels = seg.pixel_array.reshape(-1, ROWS, COLS)
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        k = uids.index(uid)
        value = 1 if seg.SegmentSequence[number - 1].SegmentLabel == PANCREAS_LABEL else 2
        np.testing.assert_array_equal(frame.astype(bool), labels[:, :, k].T == value)
    assert {
        uids.index(i.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for i in seg.PerFrameFunctionalGroupsSequence
    } == {1, 2, 3, 4}


def test_segments_are_coded_and_name_the_algorithm(tmp_path):
    write_ct_series(tmp_path / "ct")
    ct = read_volume(tmp_path / "ct")
    labels = make_labels(ct.shape)
    auto = hd.seg.segread(write_seg(tmp_path / "auto.dcm", labels, ct, ALGORITHM))
    pancreas, tumour = auto.SegmentSequence
    assert pancreas.SegmentedPropertyTypeCodeSequence[0].CodeValue == "15776009"
    assert pancreas.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert pancreas.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert tumour.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert tumour.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert tumour.AnatomicRegionSequence[0].CodeValue == "15776009"
    assert pancreas.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = pancreas.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "tiny_unet" and algorithm.AlgorithmVersion == "0.0-test"
    assert "unet" in algorithm.AlgorithmParameters
    assert ALGORITHM.checkpoint_sha256 in algorithm.AlgorithmParameters
    assert auto.SegmentationType == "BINARY"
    assert "Pancreas" in auto.SeriesDescription and "tiny_unet" in auto.SeriesDescription
    corrected = hd.seg.segread(
        write_seg(tmp_path / "corrected.dcm", labels, ct, ALGORITHM, corrected=True)
    )
    assert {s.SegmentAlgorithmType for s in corrected.SegmentSequence} == {"SEMIAUTOMATIC"}
    assert "corrected" in corrected.SeriesDescription
    manual = hd.seg.segread(write_seg(tmp_path / "manual.dcm", labels, ct))
    assert {s.SegmentAlgorithmType for s in manual.SegmentSequence} == {"MANUAL"}


def test_absent_structures(tmp_path):
    write_ct_series(tmp_path / "ct")
    ct = read_volume(tmp_path / "ct")
    pancreas_only = np.where(make_labels(ct.shape) == 2, 1, make_labels(ct.shape))
    seg = hd.seg.segread(write_seg(tmp_path / "p.dcm", pancreas_only, ct, ALGORITHM))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [PANCREAS_LABEL]  # no empty tumour
    np.testing.assert_array_equal(read_labels(tmp_path / "p.dcm", ct).array, pancreas_only)
    empty = np.zeros(ct.shape, np.uint8)
    seg = hd.seg.segread(write_seg(tmp_path / "e.dcm", empty, ct, ALGORITHM))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [PANCREAS_LABEL]
    np.testing.assert_array_equal(read_labels(tmp_path / "e.dcm", ct).array, empty)


def test_seg_from_another_tool_opens_by_segment_codes(tmp_path):
    """Other segment order, an extra (liver) segment, pancreas including the tumour."""
    write_ct_series(tmp_path / "ct", orientation=ROWS_TO_FEET, reverse=True)
    ct = read_volume(tmp_path / "ct")
    truth = make_labels(ct.shape)
    sources = [pydicom.dcmread(tmp_path / "ct" / name) for name in ct.info["slice_files"]]
    frames = truth.transpose(2, 1, 0)
    liver = np.zeros_like(frames)
    liver[0:3, 0:2, 0:4] = 1
    stacked = np.stack([liver, frames == 2, frames > 0], axis=-1).astype(np.uint8)
    manual = hd.seg.SegmentAlgorithmTypeValues.MANUAL
    descriptions = [
        hd.seg.SegmentDescription(1, "Liver", codes.SCT.Organ, codes.SCT.Liver, manual),
        hd.seg.SegmentDescription(
            2, "Lesion", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Tumor, manual
        ),
        hd.seg.SegmentDescription(3, "Pancreas", codes.SCT.Organ, codes.SCT.Pancreas, manual),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            sources,
            stacked,
            "BINARY",
            descriptions,
            hd.UID(),
            7,
            hd.UID(),
            1,
            "Other",
            "Viewer",
            "1",
            "1",
        )
    seg.save_as(tmp_path / "other.dcm")
    with pytest.warns(UserWarning, match="Liver"):
        own = read_volume(tmp_path / "other.dcm")
    assert set(np.unique(own.array)) == {0, 1, 2}
    for value in (1, 2):
        np.testing.assert_allclose(
            world_of(own.affine, own.array == value), world_of(ct.affine, truth == value), atol=1e-4
        )
    with pytest.warns(UserWarning, match="Liver"):
        np.testing.assert_array_equal(read_labels(tmp_path / "other.dcm", ct).array, truth)
    # beside its series (as PACS exports put it), the SEG (21 frames > 7 slices) is not the CT
    (tmp_path / "other.dcm").rename(tmp_path / "ct" / "other.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(again.array, ct.array)


def test_refusals(tmp_path):
    write_ct_series(tmp_path / "ct")
    ct = read_volume(tmp_path / "ct")
    labels = make_labels(ct.shape)
    with pytest.raises(VolumeError, match="source DICOM folder"):
        write_seg(tmp_path / "ct" / "labels.dcm", labels, ct, ALGORITHM)
    with pytest.raises(VolumeError, match="do not fit"):
        write_seg(tmp_path / "x.dcm", labels[:, :, :3], ct, ALGORITHM)
    nifti = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct.array, ct.affine), nifti)
    with pytest.raises(VolumeError, match="needs a DICOM series"):
        write_output(tmp_path / "y.dcm", labels, read_volume(nifti))
    assert not (tmp_path / "y.dcm").exists() and not (tmp_path / "x.dcm").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "ct.nii.gz"]


def test_predict_cli_nifti_source_asked_for_seg(tmp_path, capsys):
    write_ct_series(tmp_path / "ct")
    ct = read_volume(tmp_path / "ct")
    nifti = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct.array, ct.affine), nifti)
    for extra in ([], ["--format", "seg"]):
        out = tmp_path / ("labels.dcm" if not extra else "labels.seg")
        assert main(["predict", str(nifti), "-o", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "DICOM series" in err[0]
        assert not out.exists()
    assert main(["predict", str(nifti), "-o", str(tmp_path / "l.nii.gz"), "--format", "seg"]) == 2
    assert "use .dcm" in capsys.readouterr().err


def test_predict_cli_real_series_seg_matches_nifti(nih_dicom, tmp_path, capsys):
    """The acceptance check: highdicom puts every SEG voxel where the NIfTI output has it.

    An untrained tiny model (fixed seed, head biased towards both classes) labels pancreas and
    tumour all over, which exercises every frame of both segments in seconds.
    """
    torch.manual_seed(0)
    net = build_model("unet", width=4, depth=2)
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([0.5, 0.2]))
    preprocessing = {"hu_window": [0.0, 255.0], "spacing_mm": 3.0}
    model = save_checkpoint(tmp_path / "tiny_unet.pt", net, preprocessing=preprocessing)
    seg_path, nii_path = tmp_path / "labels.dcm", tmp_path / "labels.nii.gz"
    for out in (seg_path, nii_path):
        argv = ["predict", str(nih_dicom), "-o", str(out), "--model", str(model), "--device", "cpu"]
        assert main(argv) == 0
    nii = nib.load(nii_path)
    labels = np.asarray(nii.dataobj)
    assert (labels == 1).any() and (labels == 2).any()
    for value in (1, 2):
        np.testing.assert_allclose(
            highdicom_world(seg_path, value), world_of(nii.affine, labels == value), atol=1e-3
        )
    seg = hd.seg.segread(seg_path)
    series_uids = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in nih_dicom.iterdir()
    }
    listed = {
        item.ReferencedSOPInstanceUID
        for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert listed == series_uids
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "tiny_unet"
    assert main(["info", str(seg_path)]) == 0
    assert "DICOM-SEG" in capsys.readouterr().out


def test_labels_on_one_slice_and_a_seg_of_another_series(tmp_path):
    write_ct_series(tmp_path / "ct", orientation=ROWS_TO_FEET)
    ct = read_volume(tmp_path / "ct")
    labels = np.zeros(ct.shape, np.uint8)
    labels[3:6, 2:4, 5] = 2
    out = write_seg(tmp_path / "one.dcm", labels, ct, ALGORITHM)
    own = read_volume(out)
    assert own.shape == (COLS, ROWS, 1)
    np.testing.assert_allclose(
        world_of(own.affine, own.array == 2), world_of(ct.affine, labels == 2)
    )
    np.testing.assert_array_equal(read_labels(out, ct).array, labels)
    write_ct_series(tmp_path / "other", orientation=AXIAL, step=2.0)
    with pytest.raises(VolumeError, match="do not lie on the voxel grid"):
        read_labels(out, reference=read_volume(tmp_path / "other"))


def test_info_reads_a_seg_as_labels_whatever_its_name(tmp_path, capsys):
    # `dsms info` judged label files by their name: a SEG called "export.dcm" was described in
    # "values" with no volumes in mL (found by a tester).
    write_ct_series(tmp_path / "ct")
    ct = read_volume(tmp_path / "ct")
    out = write_seg(tmp_path / "export.dcm", make_labels(ct.shape), ct, ALGORITHM)
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "labels" in printed and "pancreas" in printed and "mL" in printed
