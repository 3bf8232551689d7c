"""NIfTI in and labels out with exact geometry, and a clear refusal for every bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from src_models import Volume, VolumeError, read_labels, read_volume, write_image, write_labels
from src_models.io import describe
from src_models.io.orientation import to_canonical
from src_models.metrics import volume_ml

AFFINE = np.array(
    [[-0.8, 0.0, 0.0, 100.0], [0.0, 0.8, 0.0, -120.0], [0.0, 0.0, 2.5, -50.0], [0, 0, 0, 1.0]]
)


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE, **codes) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=codes.get("qform", 1))
    img.set_sform(affine, code=codes.get("sform", 1))
    nib.save(img, str(path))
    return path


@pytest.fixture
def ct(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    return save(tmp_path / "ct.nii.gz", rng.integers(-1024, 1500, (12, 10, 6), dtype=np.int16))


def only(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


# --- real CT -----------------------------------------------------------------------------------


def test_real_ct_reads_with_its_geometry(nih_ct):
    volume = read_volume(nih_ct)
    assert volume.shape == (512, 512, 101)
    assert volume.array.dtype == np.int16
    assert volume.axcodes == ("L", "A", "S")
    assert volume.spacing == pytest.approx((0.859375, 0.859375, 1.0))
    np.testing.assert_array_equal(volume.affine, nib.load(str(nih_ct)).affine)
    assert volume.info["qform_code"] == 1 and volume.info["sform_code"] == 1
    text = describe(volume)
    assert "512 x 512 x 101" in text and "LAS" in text and "int16" in text


def test_real_label_overlays_ct_exactly(nih_ct, nih_label):
    ct = read_volume(nih_ct)
    labels = read_labels(nih_label, reference=ct)
    assert labels.array.dtype == np.uint8
    assert np.count_nonzero(labels.array == 1) == 78329
    hu = ct.array[labels.array == 1]
    assert 40 < np.median(hu) < 160  # pancreas in a portal-venous CT


def test_real_round_trip_is_bit_exact(nih_ct, nih_label, tmp_path):
    ct = read_volume(nih_ct)
    labels = read_labels(nih_label, reference=ct)
    out = write_labels(tmp_path / "labels.nii.gz", labels.array, ct)
    again = read_labels(out, reference=ct)
    np.testing.assert_array_equal(again.array, labels.array)
    np.testing.assert_array_equal(again.affine, ct.affine)
    header = nib.load(str(out)).header
    assert header.get_data_dtype() == np.uint8
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1


# --- synthetic NIfTI ---------------------------------------------------------------------------


def test_singleton_fourth_axis_is_squeezed(tmp_path):
    data = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3, 1)
    volume = read_volume(save(tmp_path / "t.nii", data))
    assert volume.shape == (4, 5, 3)
    np.testing.assert_array_equal(volume.array, data[..., 0])


def test_scaled_nifti_gives_compact_hu(tmp_path):
    raw = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) * 10
    img = nib.Nifti1Image(raw, AFFINE)
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp_path / "scaled.nii"))
    volume = read_volume(tmp_path / "scaled.nii")
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, raw * 2 - 1024)
    img.header.set_slope_inter(0.5, 0.25)
    nib.save(img, str(tmp_path / "fraction.nii"))
    assert read_volume(tmp_path / "fraction.nii").array.dtype == np.float32


def test_qform_used_when_sform_code_is_zero(tmp_path):
    data = np.zeros((3, 4, 5), dtype=np.int16)
    path = save(tmp_path / "q.nii.gz", data, sform=0)
    volume = read_volume(path)
    np.testing.assert_allclose(volume.affine, AFFINE, atol=1e-5)
    assert volume.info["sform_code"] == 0


def test_write_labels_round_trip_and_codes(ct, tmp_path):
    reference = read_volume(ct)
    labels = np.zeros(reference.shape, dtype=np.int64)
    labels[2:5, 3:6, 1:4] = 1
    labels[3, 4, 2] = 2
    out = write_labels(tmp_path / "seg.nii.gz", labels, reference)
    again = read_labels(out, reference)
    np.testing.assert_array_equal(again.array, labels)
    np.testing.assert_array_equal(again.affine, reference.affine)
    assert only(tmp_path) == ["ct.nii.gz", "seg.nii.gz"]  # no temporary file left


def test_labels_we_write_read_back_as_labels_whatever_their_name(ct, tmp_path):
    # dsms refine -o refined.nii.gz: "refined" says nothing, the NIfTI label intent does
    reference = read_volume(ct)
    labels = np.zeros(reference.shape, dtype=np.uint8)
    labels[2:5, 3:6, 1:4] = 1
    out = write_labels(tmp_path / "refined.nii.gz", labels, reference)
    assert nib.load(str(out)).header.get_intent()[0] == "label"
    text = describe(read_volume(out))
    assert "labels" in text and "HU" not in text
    assert "HU" in describe(reference)  # the CT itself is no label map


def test_write_labels_copies_form_codes(tmp_path):
    reference = read_volume(
        save(tmp_path / "ct.nii", np.zeros((3, 4, 5), np.int16), qform=2, sform=4)
    )
    out = write_labels(tmp_path / "l.nii", np.ones(reference.shape, np.uint8), reference)
    header = nib.load(str(out)).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (2, 4)


def test_write_image_float(ct, tmp_path):
    reference = read_volume(ct)
    image = np.linspace(0, 1, int(np.prod(reference.shape))).reshape(reference.shape)
    out = write_image(tmp_path / "recon.nii.gz", image, reference)
    again = read_volume(out)
    assert again.array.dtype == np.float32
    np.testing.assert_array_equal(again.array, image.astype(np.float32))
    np.testing.assert_array_equal(again.affine, reference.affine)


def test_labels_back_from_canonical_land_on_source_grid(ct, tmp_path):
    from src_models.io.orientation import from_canonical

    reference = read_volume(ct)
    labels = np.zeros(reference.shape, np.uint8)
    labels[1, 2, 3] = 2
    canonical, _ = to_canonical(labels, reference.affine)
    out = write_labels(tmp_path / "x.nii", from_canonical(canonical, reference.affine), reference)
    assert read_volume(out).array[1, 2, 3] == 2


# --- refusals ----------------------------------------------------------------------------------


def refuse(match: str, func, *args):
    with pytest.raises(VolumeError, match=match) as info:
        func(*args)
    return str(info.value)


def test_missing_file(tmp_path):
    message = refuse("no such file", read_volume, tmp_path / "absent.nii.gz")
    assert "absent.nii.gz" in message


def test_empty_file(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    assert "empty.nii.gz" in refuse("empty", read_volume, tmp_path / "empty.nii.gz")


def test_truncated_gzip(ct, tmp_path):
    blob = ct.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    assert "cut.nii.gz" in refuse("truncated|damaged|not a readable", read_volume, cut)


def test_not_a_nifti(tmp_path):
    (tmp_path / "notes.nii").write_text("hello, this is not an image\n" * 20)
    refuse("notes.nii.*NIfTI", read_volume, tmp_path / "notes.nii")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG" + b"\0" * 300)
    refuse("neither a NIfTI", read_volume, tmp_path / "photo.png")
    (tmp_path / "gz.nii.gz").write_bytes(gzip.compress(b"x" * 400))
    refuse("gz.nii.gz", read_volume, tmp_path / "gz.nii.gz")


def test_2d_image_reads_as_one_slice(tmp_path):
    pixels = np.arange(48, dtype=np.int16).reshape(8, 6)
    for name, data in (("slice.nii", pixels), ("one.nii", pixels[..., None])):
        volume = read_volume(save(tmp_path / name, data))
        assert volume.shape == (8, 6, 1)
        np.testing.assert_array_equal(volume.array[..., 0], pixels)
        np.testing.assert_allclose(volume.affine, AFFINE, atol=1e-5)


def test_2d_image_without_slice_thickness_gets_1_mm(tmp_path):
    affine = np.diag([0.7, 0.7, 0.0, 1.0])
    img = nib.Nifti1Image(np.zeros((8, 6), np.int16), np.diag([0.7, 0.7, 1.0, 1.0]))
    img.header.set_sform(affine, code=1)
    nib.save(img, str(tmp_path / "flat.nii"))
    volume = read_volume(tmp_path / "flat.nii")
    assert volume.spacing == pytest.approx((0.7, 0.7, 1.0))
    assert volume.voxel_volume_mm3 == pytest.approx(0.49)


def test_zero_voxel_size_without_an_sform_is_refused_not_taken_as_1_mm(tmp_path):
    img = nib.Nifti1Image(np.zeros((8, 6, 4), np.int16), None)
    img.header.set_qform(np.diag([0.7, 0.7, 2.0, 1.0]), code=1)
    img.header.set_sform(None, code=0)
    img.header["pixdim"][1:3] = 0.0  # a damaged header: nibabel would measure 1 mm
    nib.save(img, str(tmp_path / "zero.nii"))
    message = refuse("voxel size of 0 along axis 0", read_volume, tmp_path / "zero.nii")
    assert "zero.nii" in message and "pixdim[1]" in message


def test_a_line_is_refused(tmp_path):
    refuse("not even a 2D slice", read_volume, save(tmp_path / "l.nii", np.zeros((8, 1, 1))))


def test_4d_image(tmp_path):
    refuse("4D.*several volumes", read_volume, save(tmp_path / "t.nii", np.zeros((4, 4, 3, 2))))


def test_nan_and_inf_voxels(tmp_path):
    data = np.zeros((4, 4, 3), np.float32)
    data[1, 1, 1] = np.nan
    refuse("NaN", read_volume, save(tmp_path / "nan.nii", data))
    data[1, 1, 1] = np.inf
    refuse("NaN or infinite", read_volume, save(tmp_path / "inf.nii", data))


def test_label_shape_mismatch(ct, tmp_path):
    reference = read_volume(ct)
    bad = save(tmp_path / "label.nii.gz", np.zeros((12, 10, 5), np.uint8))
    message = refuse("shape", read_labels, bad, reference)
    assert "label.nii.gz" in message and "(12, 10, 5)" in message


def test_label_affine_mismatch(ct, tmp_path):
    reference = read_volume(ct)
    moved = AFFINE.copy()
    moved[0, 3] += 5.0
    bad = save(tmp_path / "label.nii.gz", np.zeros(reference.shape, np.uint8), moved)
    refuse("affine does not match", read_labels, bad, reference)


def reoriented(path: Path, data: np.ndarray, affine: np.ndarray, axcodes: str) -> Path:
    """``data`` saved in another axis order, as a tool that writes RAS or LPS would."""
    img = nib.Nifti1Image(data, affine)
    current = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(axcodes))
    nib.save(img.as_reoriented(transform), str(path))
    return path


@pytest.mark.parametrize("axcodes", ["RAS", "PIL", "SLA"])
def test_labels_in_another_axis_order_land_on_the_same_voxels(ct, tmp_path, axcodes):
    reference = read_volume(ct)
    labels = np.random.default_rng(1).integers(0, 3, reference.shape).astype(np.uint8)
    path = reoriented(tmp_path / "label.nii.gz", labels, reference.affine, axcodes)
    assert nib.aff2axcodes(nib.load(str(path)).affine) == tuple(axcodes)
    read = read_labels(path, reference)
    np.testing.assert_array_equal(read.array, labels)
    np.testing.assert_allclose(read.affine, reference.affine)
    assert read.info["reoriented_from"] == tuple(axcodes)
    # and written back on the CT's grid, as the CT's own axis order
    out = write_labels(tmp_path / "out.nii.gz", read_labels(path), reference)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), labels)


def test_labels_reordered_but_also_moved_are_refused(ct, tmp_path):
    reference = read_volume(ct)
    moved = reference.affine.copy()
    moved[1, 3] += 0.8  # one voxel along y
    labels = np.zeros(reference.shape, np.uint8)
    refuse(
        "affine does not match",
        read_labels,
        reoriented(tmp_path / "l.nii.gz", labels, moved, "RAS"),
        reference,
    )


def test_label_tolerates_float32_affine_rounding(ct, tmp_path):
    reference = read_volume(ct)
    nudged = reference.affine.copy()
    nudged[:3, 3] += 1e-4
    ok = save(tmp_path / "label.nii.gz", np.zeros(reference.shape, np.uint8), nudged)
    assert read_labels(ok, reference).shape == reference.shape


def test_non_integer_and_out_of_range_labels(ct, tmp_path):
    reference = read_volume(ct)
    probabilities = np.full(reference.shape, 0.3, np.float32)
    refuse("whole numbers", read_labels, save(tmp_path / "p.nii", probabilities), reference)
    many = np.zeros(reference.shape, np.int16)
    many[0, 0, 0] = 7
    refuse("0 \\(background\\).*7", read_labels, save(tmp_path / "m.nii", many), reference)
    exact = np.zeros(reference.shape, np.float32)
    exact[0, 0, 0] = 2.0
    assert read_labels(save(tmp_path / "f.nii", exact), reference).array.dtype == np.uint8


def test_writer_refusals_write_nothing(ct, tmp_path):
    reference = read_volume(ct)
    good = np.zeros(reference.shape, np.uint8)
    before = ct.read_bytes()
    refuse("overwrite the source CT", write_labels, ct, good, reference)
    assert ct.read_bytes() == before
    refuse("shape", write_labels, tmp_path / "a.nii.gz", np.zeros((2, 2, 2), np.uint8), reference)
    refuse("\\.nii or \\.nii\\.gz", write_labels, tmp_path / "a.png", good, reference)
    refuse("does not exist", write_labels, tmp_path / "no" / "a.nii", good, reference)
    refuse("whole numbers", write_labels, tmp_path / "a.nii", good + 0.5, reference)
    refuse("NaN", write_image, tmp_path / "r.nii", np.full(reference.shape, np.nan), reference)
    assert only(tmp_path) == ["ct.nii.gz"]


# --- header fields other tools got wrong ----------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "to_mm", "name"), [("meter", 1000.0, "metres"), ("micron", 0.001, "micrometres")]
)
def test_spatial_units_are_converted_to_mm(tmp_path, unit, to_mm, name):
    data = np.zeros((12, 10, 6), np.int16)
    data[4:8, 3:6, 1:5] = 1
    in_unit = AFFINE.copy()
    in_unit[:3] /= to_mm  # the same grid, written in the file's unit
    img = nib.Nifti1Image(data, in_unit)
    img.set_qform(in_unit, code=1)
    img.set_sform(in_unit, code=1)
    img.header.set_xyzt_units(unit, "sec")
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    volume = read_volume(tmp_path / "ct.nii.gz")
    np.testing.assert_allclose(volume.affine, AFFINE, rtol=1e-5, atol=1e-5)
    assert volume.spacing == pytest.approx((0.8, 0.8, 2.5), rel=1e-5)
    assert volume_ml(volume.array == 1, volume.voxel_volume_mm3) == pytest.approx(
        48 * 0.8 * 0.8 * 2.5 / 1000, rel=1e-5
    )
    text = describe(volume)
    assert f"the file is in {name}" in text and f"x {to_mm:g}" in text
    out = write_labels(tmp_path / "labels.nii.gz", volume.array, volume)
    assert nib.load(str(out)).header.get_xyzt_units()[0] == "mm"
    read_labels(out, reference=volume)  # the same grid, now in mm


def test_undefined_spatial_unit_is_refused(tmp_path):
    path = save(tmp_path / "u.nii", np.zeros((3, 4, 5), np.int16))
    img = nib.load(str(path))
    img.header["xyzt_units"] = 5
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), str(path))
    refuse("spatial unit code 5", read_volume, path)


def test_no_orientation_warns_and_labels_keep_codes_0(tmp_path):
    path = save(tmp_path / "ct.nii.gz", np.zeros((12, 10, 6), np.int16), qform=0, sform=0)
    with pytest.warns(UserWarning, match="orientation unknown"):
        volume = read_volume(path)
    assert volume.info["orientation_unknown"] is True
    assert "orientation unknown" in volume.info["warnings"][0]
    assert "orientation: unknown" in describe(volume)
    out = write_labels(tmp_path / "labels.nii.gz", np.ones(volume.shape, np.uint8), volume)
    written = nib.load(str(out))
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (0, 0)
    # any reader falls back to the same grid for both files
    np.testing.assert_allclose(written.affine, nib.load(str(path)).affine, atol=1e-6)
    with pytest.warns(UserWarning, match="orientation unknown"):
        read_labels(out, reference=volume)


def sheared(degrees: float = 20.0) -> np.ndarray:
    """A gantry-tilted grid: each slice shifted along y by tan(tilt) x slice step."""
    affine = AFFINE.copy()
    affine[1, 2] = 2.5 * np.tan(np.deg2rad(degrees))
    return affine


def test_gantry_tilt_labels_have_one_geometry_and_volumes_use_det(tmp_path):
    volume = Volume(
        np.zeros((12, 10, 6), np.int16), sheared(), "", "tilted", {"qform_code": 1, "sform_code": 1}
    )
    assert volume.voxel_volume_mm3 == pytest.approx(0.8 * 0.8 * 2.5)
    assert np.prod(volume.spacing) == pytest.approx(0.8 * 0.8 * 2.5 / np.cos(np.deg2rad(20)))
    assert "sheared" in describe(volume)
    out = write_labels(tmp_path / "labels.nii.gz", np.ones(volume.shape, np.uint8), volume)
    header = nib.load(str(out)).header
    # a qform (a rotation) cannot hold the shear: code 0, so no reader picks a second geometry
    assert int(header["qform_code"]) == 0 and int(header["sform_code"]) == 1
    np.testing.assert_allclose(header.get_best_affine(), sheared(), atol=1e-5)
    again = read_labels(out, reference=volume)
    assert again.info["warnings"] == []


def test_file_with_disagreeing_qform_and_sform_warns(tmp_path):
    img = nib.Nifti1Image(np.zeros((12, 10, 6), np.int16), sheared())
    img.set_qform(sheared(), code=1)  # nibabel stores the nearest rotation
    img.set_sform(sheared(), code=1)
    nib.save(img, str(tmp_path / "tilt.nii"))
    with pytest.warns(UserWarning, match="qform .code 1. and the sform .code 1. place voxels"):
        volume = read_volume(tmp_path / "tilt.nii")
    np.testing.assert_allclose(volume.affine, sheared(), atol=1e-5)


def test_labels_keep_the_ct_own_qform_when_it_differs_from_the_sform(tmp_path):
    # Written labels got the sform in both forms: a viewer that reads qforms showed them 30 mm
    # away from the CT (found by a tester).
    moved = AFFINE.copy()
    moved[0, 3] += 30.0
    hu = np.random.default_rng(0).integers(-1000, 400, (12, 10, 6), np.int16)
    img = nib.Nifti1Image(hu, AFFINE)
    img.set_sform(AFFINE, code=1)
    img.set_qform(moved, code=2)
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    with pytest.warns(UserWarning, match="30.0 mm apart"):
        ct = read_volume(tmp_path / "ct.nii.gz")
    out = write_labels(tmp_path / "labels.nii.gz", np.zeros(ct.shape, np.uint8), ct)
    header, source = nib.load(out).header, img.header
    for form in ("qform", "sform"):
        got, code = getattr(header, f"get_{form}")(coded=True)
        want, want_code = getattr(source, f"get_{form}")(coded=True)
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert int(code) == int(want_code)


def test_labels_of_a_sheared_ct_keep_its_own_qform(tmp_path):
    # The sheared sform cannot be a qform, but the CT's own qform (a rotation) is kept with its
    # code rather than dropped to code 0 (found by a tester).
    img = nib.Nifti1Image(
        np.random.default_rng(0).integers(-1000, 400, (12, 10, 6), np.int16), None
    )
    img.set_sform(sheared(), code=1)
    img.set_qform(AFFINE, code=4)
    nib.save(img, str(tmp_path / "tilt.nii"))
    with pytest.warns(UserWarning, match="place voxels"):
        ct = read_volume(tmp_path / "tilt.nii")
    header = nib.load(write_labels(tmp_path / "l.nii.gz", np.zeros(ct.shape, np.uint8), ct)).header
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    assert (int(qcode), int(scode)) == (4, 1)
    np.testing.assert_allclose(qform, AFFINE, atol=1e-4)
    np.testing.assert_allclose(sform, sheared(), atol=1e-4)


def test_an_invalid_quaternion_without_an_sform_is_refused_in_words(tmp_path):
    path = save(tmp_path / "ct.nii", np.zeros((12, 10, 6), np.int16), sform=0)
    header = nib.load(path).header
    header["quatern_b"] = header["quatern_c"] = header["quatern_d"] = 0.9
    data = np.random.default_rng(0).integers(-1000, 400, (12, 10, 6), np.int16)
    nib.save(nib.Nifti1Image(data, None, header), str(tmp_path / "bad.nii"))
    refuse(
        "bad.nii: the qform's quaternion .* there is no sform", read_volume, tmp_path / "bad.nii"
    )


def test_a_qform_that_is_not_a_rotation_is_named_and_ignored(tmp_path):
    path = save(tmp_path / "ct.nii", np.zeros((12, 10, 6), np.int16))
    img = nib.load(path)
    header = img.header
    header["quatern_b"] = header["quatern_c"] = header["quatern_d"] = 0.9
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, header), str(tmp_path / "bad.nii"))
    with pytest.warns(UserWarning, match="bad.nii: the qform .code 1. is not a valid rotation"):
        volume = read_volume(tmp_path / "bad.nii")
    np.testing.assert_allclose(volume.affine, AFFINE, atol=1e-5)


def test_volume_properties():
    volume = Volume(np.zeros((2, 3, 4), np.int16), AFFINE, "x.nii", "x")
    assert volume.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert volume.axcodes == ("L", "A", "S")
    assert volume.shape == (2, 3, 4)


def test_a_compressed_file_named_nii_and_a_plain_one_named_nii_gz_are_named(tmp_path):
    # nibabel says only "Cannot work out file type" / "not a gzip file" (a tester)
    data = np.zeros((20, 20, 3), np.int16)
    packed = save(tmp_path / "real.nii.gz", data)
    misnamed = tmp_path / "scan.nii"
    misnamed.write_bytes(packed.read_bytes())
    refuse("gzip-compressed but named .nii; name it .nii.gz", read_volume, misnamed)
    plain = save(tmp_path / "real.nii", data)
    misnamed = tmp_path / "plain.nii.gz"
    misnamed.write_bytes(plain.read_bytes())
    refuse("named .nii.gz but not compressed; name it .nii", read_volume, misnamed)


@pytest.mark.parametrize("suffix", [".hdr", ".img"])
def test_a_nifti_pair_is_named_with_how_to_convert_it(tmp_path, suffix):
    pair = nib.Nifti1Pair(np.zeros((20, 20, 3), np.int16), AFFINE)
    nib.save(pair, str(tmp_path / "scan.hdr"))
    message = refuse("NIfTI or Analyze pair", read_volume, tmp_path / f"scan{suffix}")
    assert "nib.save(nib.load('scan.hdr'), 'scan.nii.gz')" in message
