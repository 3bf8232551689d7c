"""DICOM series: slice order, LPS -> RAS geometry, rescale, and refusals of broken series.

Synthetic series are written with pydicom so that orientations and faults no shared file has
(reversed listing, oblique or sagittal planes, gaps, mixed series) are checked against the
geometry DICOM defines: voxel (column i, row j) of a slice lies at
ImagePositionPatient + i * column spacing * row direction + j * row spacing * column direction.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from src_models import VolumeError, read_labels, read_volume, write_labels
from src_models.io.orientation import to_canonical
from src_models.metrics import volume_ml

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ROWS, COLS = 12, 16
SPACING = (0.7, 0.9)  # DICOM PixelSpacing: (between rows, between columns)


def pattern(slice_id: int, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """Pixel values that say which slice, row and column they came from."""
    r, c = np.mgrid[:rows, :cols]
    return (slice_id * 1000 + r * 30 + c).astype(np.int16)


def write_slice(
    path: Path,
    pixels: np.ndarray,
    position,
    orientation=AXIAL,
    series_uid: str = "1.2.3.4",
    instance: int = 1,
    slope: float = 1.0,
    intercept: float = 0.0,
    description: str = "Abdomen portal",
    spacing=SPACING,
    unsigned: bool = False,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = "Phantom^Test"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = list(spacing)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0 if unsigned else 1
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype(np.uint16 if unsigned else np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(
    folder: Path,
    orientation=AXIAL,
    n: int = 6,
    step: float = 2.5,
    origin=(-120.0, -90.0, -40.0),
    reverse: bool = False,
    **kwargs,
):
    """A series stacked along the slice normal; returns [(position, pixels)] by slice id."""
    folder.mkdir(exist_ok=True)
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    slices = []
    ids = range(n)
    for sid in ids:
        position = np.asarray(origin) + sid * step * normal
        slices.append((position, pattern(sid)))
    order = list(ids)[::-1] if reverse else list(ids)
    for rank, sid in enumerate(order):
        name = f"IM{(rank * 7919) % 1000:04d}.dcm"  # names in neither spatial nor acquisition order
        write_slice(
            folder / name, slices[sid][1], slices[sid][0], orientation, instance=rank + 1, **kwargs
        )
    return slices


def check_geometry(volume, slices, orientation=AXIAL, spacing=SPACING):
    """Every voxel sits where DICOM puts its source pixel (LPS -> RAS)."""
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    values = volume.array.astype(np.int64)
    index = np.indices(values.shape).reshape(3, -1)
    value = values.reshape(-1)
    sid, rest = value // 1000, value % 1000
    r, c = rest // 30, rest % 30
    positions = np.array([p for p, _ in slices])[sid]
    lps = positions + (c * spacing[1])[:, None] * row + (r * spacing[0])[:, None] * col
    ras = lps * np.array([-1.0, -1.0, 1.0])
    world = (volume.affine @ np.vstack([index, np.ones(index.shape[1])]))[:3].T
    np.testing.assert_allclose(world, ras, atol=1e-6)
    # index convention: i = column, j = row
    assert np.array_equal(c.reshape(values.shape)[:, 0, 0], np.arange(values.shape[0]))


def test_axial_lps_series(tmp_path):
    slices = write_series(tmp_path / "s")
    volume = read_volume(tmp_path / "s")
    assert volume.shape == (COLS, ROWS, 6)
    assert volume.axcodes == ("L", "P", "S")
    assert volume.spacing == pytest.approx((0.9, 0.7, 2.5))
    expected = np.array(
        [[-0.9, 0, 0, 120.0], [0, -0.7, 0, 90.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1.0]]
    )
    np.testing.assert_allclose(volume.affine, expected)
    check_geometry(volume, slices)
    assert volume.description == "Abdomen portal"
    assert volume.info["modality"] == "CT" and volume.info["n_slices"] == 6
    assert "Phantom" not in repr(volume.info)  # no patient identifiers


def test_reverse_listed_series_reads_the_same(tmp_path):
    write_series(tmp_path / "a")
    write_series(tmp_path / "b", reverse=True)
    a, b = read_volume(tmp_path / "a"), read_volume(tmp_path / "b")
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(a.affine, b.affine)


def test_flipped_rows_orientation_like_the_shared_series(tmp_path):
    orientation = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # normal points to the feet
    slices = write_series(tmp_path / "s", orientation)
    volume = read_volume(tmp_path / "s")
    assert volume.axcodes == ("L", "A", "S")  # slices still run feet -> head
    check_geometry(volume, slices, orientation)


def test_oblique_series(tmp_path):
    a = np.deg2rad(25.0)
    orientation = (np.cos(a), np.sin(a), 0.0, -np.sin(a) * 0.9, np.cos(a) * 0.9, 0.43589)
    row = np.asarray(orientation[:3])
    col = np.asarray(orientation[3:])
    col = col - row * (row @ col)
    col /= np.linalg.norm(col)
    orientation = (*row, *col)
    slices = write_series(tmp_path / "s", orientation, n=5, step=1.25)
    volume = read_volume(tmp_path / "s")
    check_geometry(volume, slices, orientation)
    canonical, _ = to_canonical(volume.array, volume.affine)
    assert canonical.size == volume.array.size


def test_sagittal_series(tmp_path):
    orientation = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    slices = write_series(tmp_path / "s", orientation, n=4)
    volume = read_volume(tmp_path / "s")
    assert volume.axcodes == ("P", "I", "L")  # slices run towards +x (patient left)
    check_geometry(volume, slices, orientation)


def test_rescale_slope_and_intercept(tmp_path):
    write_series(tmp_path / "s", slope=2.0, intercept=-1024.0)
    volume = read_volume(tmp_path / "s")
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array[..., 1], pattern(1).T * 2 - 1024)
    write_series(tmp_path / "f", slope=0.5, intercept=-0.25)
    fractional = read_volume(tmp_path / "f")
    assert fractional.array.dtype == np.float32
    assert fractional.array[0, 0, 1] == pytest.approx(1000 * 0.5 - 0.25)


def test_signed_and_unsigned_slices_in_one_series(tmp_path):
    """One slice stored unsigned (raw = HU + 1024, intercept -1024) among signed ones."""
    folder = tmp_path / "s"
    folder.mkdir()
    hu = np.full((4, ROWS, COLS), -1000, dtype=np.int16)  # air
    hu[:, 3:9, 4:12] = 40  # a 6 x 8 "pancreas" on every slice
    hu[:, 0, 0] = 1500  # bone
    for k in range(4):
        unsigned = k == 0  # the first slice sets the stack type in a naive reader
        write_slice(
            folder / f"{k}.dcm",
            hu[k] + 1024 if unsigned else hu[k],
            (-120.0, -90.0, -40.0 + 2.5 * k),
            intercept=-1024.0 if unsigned else 0.0,
            unsigned=unsigned,
        )
    volume = read_volume(folder)
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, hu.transpose(2, 1, 0))
    pancreas_ml = volume_ml(volume.array == 40, volume.voxel_volume_mm3)
    assert pancreas_ml == pytest.approx(4 * 6 * 8 * 0.7 * 0.9 * 2.5 / 1000)


@pytest.mark.parametrize("high_first", [True, False])
def test_slices_whose_hu_need_more_than_int16(tmp_path, high_first):
    """An unsigned slice with values above int16 next to signed ones: int32, all exact,
    whether the wide slice comes first or the stack has to widen on the way."""
    folder = tmp_path / "s"
    folder.mkdir()
    high = np.full((ROWS, COLS), 40000, dtype=np.int64)  # e.g. a metal implant scale
    z_high, z_low = (0.0, 2.5) if high_first else (5.0, 2.5)
    write_slice(folder / "a.dcm", high, (0, 0, z_high), unsigned=True)
    write_slice(folder / "b.dcm", np.full((ROWS, COLS), -1000), (0, 0, z_low))
    write_slice(folder / "c.dcm", np.full((ROWS, COLS), -900), (0, 0, 5.0 - z_high))
    volume = read_volume(folder)
    assert volume.array.dtype == np.int32
    k_high = 0 if high_first else 2
    assert volume.array[..., k_high].min() == 40000
    assert volume.array[..., 1].max() == -1000


def test_one_fractional_slice_widens_the_stack_to_float(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    write_slice(folder / "a.dcm", np.full((ROWS, COLS), -1000), (0, 0, 0))
    write_slice(folder / "b.dcm", np.full((ROWS, COLS), 81), (0, 0, 2.5), slope=0.5)
    volume = read_volume(folder)
    assert volume.array.dtype == np.float32
    assert volume.array[..., 0].max() == -1000 and volume.array[..., 1].min() == 40.5


def test_gantry_tilt_series_volumes_and_labels(tmp_path):
    """Slices shifted along y by tan(20 deg) x step: a sheared grid, kept exactly."""
    folder = tmp_path / "s"
    folder.mkdir()
    shift = 2.5 * np.tan(np.deg2rad(20.0))
    for k in range(4):
        write_slice(folder / f"{k}.dcm", pattern(k), (-120.0, -90.0 + k * shift, -40.0 + 2.5 * k))
    volume = read_volume(folder)
    np.testing.assert_allclose(volume.affine[:3, 2], [0.0, -shift, 2.5])
    assert volume.voxel_volume_mm3 == pytest.approx(0.9 * 0.7 * 2.5)  # not x 1/cos(20 deg)
    out = write_labels(tmp_path / "labels.nii.gz", np.ones(volume.shape, np.uint8), volume)
    written = nib.load(str(out))
    assert int(written.header["qform_code"]) == 0 and int(written.header["sform_code"]) == 1
    np.testing.assert_allclose(written.affine, volume.affine, atol=1e-4)


def test_series_without_the_part10_preamble_reads_the_same(tmp_path):
    """Older exporters write bare implicit-VR data sets: no preamble, no file meta."""
    slices = write_series(tmp_path / "s", n=4)
    (tmp_path / "bare").mkdir()
    for path in (tmp_path / "s").iterdir():
        ds = dcmread(path)
        ds.preamble = None
        ds.file_meta = FileMetaDataset()
        ds.save_as(tmp_path / "bare" / path.stem, implicit_vr=True, little_endian=True)
    assert dcmread(next((tmp_path / "bare").iterdir()), force=True).preamble is None
    bare = read_volume(tmp_path / "bare")
    check_geometry(bare, slices)
    np.testing.assert_array_equal(bare.array, read_volume(tmp_path / "s").array)


def test_largest_series_chosen_with_a_warning(tmp_path):
    folder = tmp_path / "study"
    write_series(folder, n=6)
    for k in range(2):
        write_slice(
            folder / f"scout{k}.dcm",
            pattern(0, 8, 8),
            (0, 0, k * 5.0),
            series_uid="9.9.9",
            description="Bone thin",
        )
    with pytest.warns(UserWarning, match="largest.*Abdomen portal.*6 images.*Bone thin"):
        volume = read_volume(folder)
    assert volume.shape == (COLS, ROWS, 6)
    assert volume.info["other_series"]


def test_single_file_reads_its_series(tmp_path):
    folder = tmp_path / "study"
    write_series(folder, n=5)
    for k in range(3):
        write_slice(folder / f"z{k}.dcm", pattern(0, 8, 8), (0, 0, k * 5.0), series_uid="9.9")
    volume = read_volume(folder / "z1.dcm")
    assert volume.shape == (8, 8, 3)


def test_non_image_files_are_ignored(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, n=4)
    (folder / "README.txt").write_text("exported by a PACS")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory (DICOMDIR)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report = FileDataset(str(folder / "DICOMDIR"), {}, file_meta=meta, preamble=b"\0" * 128)
    report.FileSetID = "X"
    report.save_as(folder / "DICOMDIR", enforce_file_format=True)
    assert read_volume(folder).shape == (COLS, ROWS, 4)


def test_compressed_series_decodes_with_an_available_decoder(tmp_path):
    folder = tmp_path / "rle"
    slices = write_series(folder, n=3)
    if not get_decoder(RLELossless).is_available:
        pytest.skip("no RLE decoder")
    for path in folder.iterdir():
        ds = dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path, enforce_file_format=True)
    check_geometry(read_volume(folder), slices)


def test_compressed_without_decoder_names_the_package(tmp_path):
    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    folder = tmp_path / "jpeg"
    write_series(folder, n=3)
    for path in folder.iterdir():
        ds = dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([b"\xff\xd8" + b"\0" * 64 + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(VolumeError, match="compressed.*pip install pylibjpeg"):
        read_volume(folder)


# --- refusals ----------------------------------------------------------------------------------


def test_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(VolumeError, match="no DICOM images"):
        read_volume(tmp_path)


def test_a_pacs_export_folder_names_the_series_folders_below_it(tmp_path):
    (tmp_path / "export" / "ST0").mkdir(parents=True)
    write_series(tmp_path / "export" / "ST0" / "SE0", n=3)
    with pytest.raises(VolumeError, match="subfolders hold DICOM files.*ST0/SE0"):
        read_volume(tmp_path / "export")


def test_missing_slice(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, n=6)
    positions = sorted(folder.iterdir())
    victim = next(p for p in positions if float(dcmread(p).ImagePositionPatient[2]) == -35.0)
    victim.unlink()
    with pytest.raises(VolumeError, match="missing") as info:
        read_volume(folder)
    assert str(folder) in str(info.value)
    # the positions as stored (z = -37.5 and -32.5 around the gap), as a PACS shows them
    assert "-37.50) and (-120.00, -90.00, -32.50)" in str(info.value)


def test_uneven_spacing_and_a_lone_localizer_are_named_for_what_they_are(tmp_path):
    """A tester's series with jittering positions was called incomplete, one whose gaps drift
    evenly was said to leave a straight line, and a localizer file 'not a DICOM image'."""
    drift = [0.0125 * k * (k - 1) for k in range(16)]  # gaps from 2.5 to 2.875 mm, evenly
    for name, offsets in (("jitter", [0, 0.4, 0, 0.4, 0, 0.4]), ("drift", drift)):
        folder = tmp_path / name
        write_series(folder, n=len(offsets))
        for path in folder.iterdir():
            ds = dcmread(path)
            k = round((float(ds.ImagePositionPatient[2]) + 40.0) / 2.5)
            ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + offsets[k]
            ds.save_as(path)
        with pytest.raises(VolumeError, match="resample the series to even spacing") as info:
            read_volume(folder)
        assert "missing" not in str(info.value) and "incomplete" not in str(info.value)
    write_series(tmp_path / "study", n=4)
    scout = write_slice(tmp_path / "study" / "scout.dcm", pattern(0), (-120.0, -90.0, -40.0))
    ds = dcmread(scout)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(scout)
    with pytest.raises(VolumeError, match="scout.dcm: a localizer \\(scout\\) image"):
        read_volume(scout)


def test_single_slice_reads_as_a_volume_of_one_slice(tmp_path):
    path = write_slice(tmp_path / "one.dcm", pattern(0), (-120.0, -90.0, -40.0))
    ds = dcmread(path)
    ds.SliceThickness = 3.0
    ds.save_as(path)
    for source in (tmp_path, path):  # the folder, or the one file alone
        volume = read_volume(source)
        assert volume.shape == (COLS, ROWS, 1)
        np.testing.assert_array_equal(volume.array[..., 0], pattern(0).T)
        np.testing.assert_allclose(volume.affine[:3, 2], [0.0, 0.0, 3.0])
        assert volume.voxel_volume_mm3 == pytest.approx(0.7 * 0.9 * 3.0)


def test_single_slice_negative_spacing_between_slices_is_a_distance(tmp_path):
    path = write_slice(tmp_path / "one.dcm", pattern(0), (0, 0, 0))
    ds = dcmread(path)
    ds.SpacingBetweenSlices = -2.0  # written by some exporters; the magnitude is the spacing
    ds.SliceThickness = 3.0
    ds.save_as(path)
    assert read_volume(path).voxel_volume_mm3 == pytest.approx(0.7 * 0.9 * 2.0)


def test_single_slice_without_thickness_warns_and_assumes_1_mm(tmp_path):
    path = write_slice(tmp_path / "one.dcm", pattern(0), (0, 0, 0))
    ds = dcmread(path)
    ds.SliceThickness = None  # present but empty (allowed: Type 2)
    ds.save_as(path)
    with pytest.warns(UserWarning, match="one.dcm: a single slice without"):
        volume = read_volume(tmp_path)
    assert volume.voxel_volume_mm3 == pytest.approx(0.7 * 0.9 * 1.0)


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        ("ImagePositionPatient", None),
        ("ImageOrientationPatient", None),
        ("PixelSpacing", None),
        ("RescaleSlope", None),
        ("RescaleIntercept", None),
        ("PixelSpacing", [0.7]),
        ("ImagePositionPatient", [1.0, "nan", 2.0]),
        ("ImageOrientationPatient", [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
        ("RescaleSlope", 0.0),
        ("Rows", None),
    ],
)
def test_empty_or_malformed_geometry_tags_name_file_and_tag(tmp_path, tag, value):
    folder = tmp_path / "s"
    write_series(folder, n=4)
    victim = sorted(folder.iterdir())[2]
    ds = dcmread(victim)
    setattr(ds, tag, value)
    ds.save_as(victim)
    with pytest.raises(VolumeError) as info:
        read_volume(folder)
    message = str(info.value)
    assert message.startswith(str(victim)) and tag in message
    if value is None:
        assert "present but empty" in message


def test_empty_image_type_is_not_a_localizer(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, n=3)
    for path in folder.iterdir():
        ds = dcmread(path)
        ds.ImageType = None  # Type 2/3 elsewhere: present but empty
        ds.save_as(path)
    assert read_volume(folder).shape == (COLS, ROWS, 3)


def test_orientations_equal_up_to_rounding_are_the_same(tmp_path):
    """Exporters round direction cosines differently: 1e-5 apart is one orientation."""
    folder = tmp_path / "s"
    write_series(folder, n=4)
    victim = sorted(folder.iterdir())[1]
    ds = dcmread(victim)
    ds.ImageOrientationPatient = [1.0, 0.000051, 0.0, -0.000051, 1.0, 0.0]  # 0.0001 at 4 places
    ds.save_as(victim)
    assert read_volume(folder).shape == (COLS, ROWS, 4)


DAMAGE = {
    "cut in the header": lambda data: data[:400],
    "cut before the DICM marker": lambda data: data[:100],
    "empty": lambda data: b"",
    "junk after the DICM marker": lambda data: data[:132] + bytes(range(256)) * 20,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("which", [0, 2, -1])
def test_a_damaged_file_is_named_not_skipped(tmp_path, which, damage):
    # Cut short at either end of the series, a slice was dropped without a word (27.4 mL
    # instead of 28.5 on the shared series, exit 0; found by two testers).
    folder = tmp_path / "s"
    write_series(folder, n=5)
    victim = sorted(folder.iterdir(), key=lambda p: dcmread(p).ImagePositionPatient[2])[which]
    victim.write_bytes(DAMAGE[damage](victim.read_bytes()))
    with pytest.raises(VolumeError, match=f"1 damaged DICOM file .{victim.name}"):
        read_volume(folder)


@pytest.mark.parametrize(
    ("keyword", "raw"), [("Rows", b"\x00\x02\x00\x02"), ("NumberOfFrames", b"inf ")]
)
def test_a_header_value_of_the_wrong_kind_names_the_file(tmp_path, keyword, raw):
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement

    folder = tmp_path / "s"
    write_series(folder, n=3)
    victim = sorted(folder.iterdir())[1]
    ds = dcmread(victim)
    tag = tag_for_keyword(keyword)
    vr = "US" if keyword == "Rows" else "IS"
    ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)
    ds.save_as(victim)
    with pytest.raises(VolumeError, match=victim.name) as caught:
        read_volume(folder)
    if keyword == "Rows":
        assert "a header value cannot be read" in str(caught.value)


def test_mixed_sizes(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, n=4)
    write_slice(folder / "big.dcm", pattern(9, 20, 20), (-120.0, -90.0, -40.0 + 4 * 2.5))
    with pytest.raises(VolumeError, match="image sizes"):
        read_volume(folder)


def test_mixed_orientations(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, n=4)
    write_slice(
        folder / "tilted.dcm",
        pattern(9),
        (-120.0, -90.0, -30.0),
        orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    )
    with pytest.raises(VolumeError, match="orientations"):
        read_volume(folder)


def test_duplicate_positions(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, n=4)
    write_slice(folder / "again.dcm", pattern(9), (-120.0, -90.0, -40.0))
    with pytest.raises(VolumeError, match="same ImagePositionPatient"):
        read_volume(folder)


# --- enhanced (multi-frame) CT: every slice a frame of one file ------------------------------


def item(**attributes) -> Dataset:
    ds = Dataset()
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def write_enhanced(
    path: Path, n: int = 5, step: float = 2.5, order=None, intercepts=None, **shared
) -> list[tuple[np.ndarray, np.ndarray]]:
    """An Enhanced CT Image file; frames stored in ``order``; returns [(position, pixels)]."""
    order = list(range(n)) if order is None else order
    intercepts = intercepts or [0.0] * n
    slices = [(np.array([-120.0, -90.0, -40.0 + k * step]), pattern(k)) for k in range(n)]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDescription = "Enhanced abdomen"
    ds.NumberOfFrames = n
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    groups = {
        "PlaneOrientationSequence": [item(ImageOrientationPatient=list(AXIAL))],
        "PixelMeasuresSequence": [item(PixelSpacing=list(SPACING), SliceThickness=step)],
    }
    groups.update(shared)
    ds.SharedFunctionalGroupsSequence = [item(**groups)]
    ds.PerFrameFunctionalGroupsSequence = [
        item(
            PlanePositionSequence=[item(ImagePositionPatient=[float(v) for v in slices[k][0]])],
            PixelValueTransformationSequence=[
                item(RescaleSlope=1.0, RescaleIntercept=intercepts[k], RescaleType="HU")
            ],
        )
        for k in order
    ]
    stored = [slices[k][1] - np.int16(intercepts[k]) for k in order]
    ds.PixelData = np.stack(stored).astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return slices


def test_enhanced_ct_reads_like_the_same_series(tmp_path):
    (tmp_path / "e").mkdir()
    order = [3, 0, 4, 1, 2]  # frames in no spatial order
    slices = write_enhanced(
        tmp_path / "e" / "enhanced.dcm", order=order, intercepts=[-1024.0, 0, 0, 0, -1024.0]
    )
    write_series(tmp_path / "classic", n=5)
    enhanced = read_volume(tmp_path / "e" / "enhanced.dcm")
    classic = read_volume(tmp_path / "classic")
    assert enhanced.shape == classic.shape == (COLS, ROWS, 5)
    np.testing.assert_array_equal(enhanced.array, classic.array)  # per-frame rescale applied
    np.testing.assert_allclose(enhanced.affine, classic.affine)
    check_geometry(enhanced, slices)
    assert enhanced.info["format"] == "DICOM enhanced (multi-frame)"
    assert enhanced.info["n_slices"] == 5 and enhanced.description == "Enhanced abdomen"


def test_enhanced_ct_gets_the_series_checks(tmp_path):
    write_enhanced(tmp_path / "gap.dcm", n=4)
    ds = dcmread(tmp_path / "gap.dcm")
    plane = ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence[0]
    plane.ImagePositionPatient = [-120.0, -90.0, -40.0 + 5 * 2.5]  # one slice left out
    ds.save_as(tmp_path / "gap.dcm")
    with pytest.raises(VolumeError, match=r"gap.dcm frame 3 and gap.dcm frame 4.*missing"):
        read_volume(tmp_path / "gap.dcm")


def test_enhanced_ct_with_an_empty_position_names_the_frame(tmp_path):
    folder = tmp_path / "e"
    folder.mkdir()
    write_enhanced(folder / "x.dcm", n=3)
    ds = dcmread(folder / "x.dcm")
    ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0].ImagePositionPatient = None
    ds.save_as(folder / "x.dcm")
    with pytest.raises(VolumeError, match=r"x.dcm \(frame 2\): ImagePositionPatient is present"):
        read_volume(folder)


# --- the shared real series --------------------------------------------------------------------


def test_real_dicom_equals_nifti_crop(nih_dicom, nih_ct):
    dicom = read_volume(nih_dicom)
    nifti = read_volume(nih_ct)
    assert dicom.shape == (512, 512, 24)
    assert dicom.array.dtype == np.int16
    np.testing.assert_array_equal(dicom.array, nifti.array[:, :, 38:62])
    crop_affine = nifti.affine @ nib.affines.from_matvec(np.eye(3), [0, 0, 38])
    np.testing.assert_allclose(dicom.affine, crop_affine, atol=1e-6)
    a, _ = to_canonical(dicom.array, dicom.affine)
    b, _ = to_canonical(nifti.array[:, :, 38:62], crop_affine)
    np.testing.assert_array_equal(a, b)
    for i, j in ((0, 0), (100, 300), (511, 511)):
        np.testing.assert_allclose(dicom.affine @ [i, j, 0, 1], nifti.affine @ [i, j, 38, 1])
    assert dicom.info["series_description"] == "Pancreas"
    assert "PANCREAS_0001" not in repr(dicom.info)


def test_labels_written_on_a_dicom_grid_read_back(tmp_path):
    a = np.deg2rad(17.0)
    orientation = (np.cos(a), np.sin(a), 0.0, -np.sin(a), np.cos(a), 0.0)
    write_series(tmp_path / "s", orientation, n=4, step=1.3)
    volume = read_volume(tmp_path / "s")
    labels = (volume.array % 3).astype(np.uint8)
    with pytest.raises(VolumeError, match="into the source DICOM folder"):
        write_labels(tmp_path / "s" / "labels.nii.gz", labels, volume)
    out = write_labels(tmp_path / "labels.nii.gz", labels, volume)
    again = read_labels(out, reference=volume)  # float32 NIfTI affine within tolerance
    np.testing.assert_array_equal(again.array, labels)
    header = nib.load(str(out)).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1)
