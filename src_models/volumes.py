"""CT volumes in and out with their geometry kept exactly.

A :class:`Volume` keeps the voxels in the file's own index order together with the affine that
maps those indices to RAS millimetres (nibabel's convention). Nothing is resampled on the way in
or out: display, inference and training reorient with :mod:`src_models.orientation` (axis
permutations and flips only), and results are written back on the source grid with the source
affine, so a label file always overlays its CT in any viewer.

Every refusal raises :class:`VolumeError` with a message that names the file and the problem,
because these messages end up in front of a user (napari notification, ``dsms`` error line).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .atomic import atomic_path

#: Label values of the Medical Segmentation Decathlon Task07 convention used everywhere.
LABEL_NAMES: dict[int, str] = {0: "background", 1: "pancreas", 2: "tumour"}

#: Largest distance (mm) between two affines that still counts as the same voxel grid.
AFFINE_TOLERANCE_MM = 1e-3

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class VolumeError(ValueError):
    """A volume, label file or DICOM series that cannot be read or written as asked."""


@dataclass
class Volume:
    """Voxels in the file's own index order and the affine that places them in the patient.

    Attributes
    ----------
    array : numpy.ndarray
        3D voxel array. For CT the values are Hounsfield units in the file's native dtype
        (int16 for most scanners); DICOM series use index order (column, row, slice).
    affine : numpy.ndarray
        4 x 4 float64 matrix mapping ``array`` indices to RAS millimetres, as nibabel's
        ``img.affine``.
    source : str
        Path the volume was read from (a DICOM series folder for DICOM), empty when synthetic.
    description : str
        Series description for DICOM, otherwise the file name; shown to the user.
    info : dict
        Header facts without patient identifiers: format, modality, series UID, rescale
        slope and intercept, NIfTI qform / sform codes. Writers use the codes.
    """

    array: np.ndarray
    affine: np.ndarray
    source: str = ""
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise VolumeError(f"{self.source or 'volume'}: affine must be 4 x 4")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`array` (the file's index order)."""
        return tuple(int(n) for n in self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (norms of the affine's columns)."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Anatomical direction each array axis increases towards, e.g. ``('L', 'A', 'S')``."""
        return tuple(str(code) for code in nib.aff2axcodes(self.affine))


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a CT volume from a NIfTI file or a DICOM series.

    Parameters
    ----------
    path : str or path-like
        A ``.nii`` / ``.nii.gz`` file, a folder holding a DICOM series, or one DICOM file of a
        series (the whole series in its folder is read).

    Returns
    -------
    Volume
        Voxels in the file's index order with their RAS affine.

    Raises
    ------
    VolumeError
        The path is missing, empty, truncated, not NIfTI or DICOM, not a 3D volume, holds
        NaN / Inf voxels, or the DICOM series is incomplete or inconsistent.
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        from .dicom import read_dicom_series

        return read_dicom_series(path)
    if path.stat().st_size == 0:
        raise VolumeError(f"{path}: the file is empty")
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return _read_nifti(path)
    from .dicom import is_dicom_file, read_dicom_series

    if is_dicom_file(path):
        return read_dicom_series(path.parent, series_of=path)
    raise VolumeError(
        f"{path}: neither a NIfTI file (.nii, .nii.gz) nor a DICOM file or series folder"
    )


def rescale_to_hu(raw: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Apply a rescale slope and intercept without needless float64 copies.

    Integer slope and intercept on integer data give int16 when every value fits (the usual CT
    case), otherwise int32; any other scaling gives float32, enough for HU. A writeable ``raw``
    that already has the result's dtype is rescaled in place, so a 512 x 512 x 240 int16 series
    needs no second 126 MB buffer (integer wrap-around keeps intermediate overflow exact).
    """
    if slope == 1 and intercept == 0:
        return raw
    if (
        np.issubdtype(raw.dtype, np.integer)
        and float(slope).is_integer()
        and float(intercept).is_integer()
    ):
        lo, hi = int(raw.min()), int(raw.max())
        ends = (lo * slope + intercept, hi * slope + intercept)
        info16 = np.iinfo(np.int16)
        dtype = np.int16 if info16.min <= min(ends) and max(ends) <= info16.max else np.int32
        out = raw if raw.dtype == dtype and raw.flags.writeable else raw.astype(dtype)
        if slope != 1:
            out *= dtype(slope)
        out += dtype(intercept)
        return out
    out = raw.astype(np.float32)
    out *= np.float32(slope)
    out += np.float32(intercept)
    return out


def _load_nifti_image(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for foreign or damaged files
        raise VolumeError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise VolumeError(f"{path}: not a NIfTI file (nibabel read it as {type(img).__name__})")
    return img


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The 3D shape of a NIfTI array, allowing trailing singleton axes (time of length 1)."""
    spatial = tuple(shape[:3])
    extra = tuple(shape[3:])
    if len(spatial) < 3 or min(spatial) < 2:
        raise VolumeError(
            f"{path}: a 2D image of shape {shape}; a CT volume with at least 2 slices is needed"
        )
    if any(n != 1 for n in extra):
        raise VolumeError(
            f"{path}: a {len(shape)}D image of shape {shape} (several volumes); "
            "a single 3D CT volume is needed"
        )
    return spatial  # type: ignore[return-value]


def _read_nifti(path: Path) -> Volume:
    img = _load_nifti_image(path)
    spatial = _spatial_shape(path, img.shape)
    proxy = img.dataobj
    try:
        raw = np.asarray(proxy.get_unscaled()).reshape(spatial, order="F")
    except Exception as exc:  # zlib / EOF errors of truncated or damaged files
        raise VolumeError(f"{path}: the file is truncated or damaged ({exc})") from exc
    slope = float(proxy.slope) if np.isfinite(proxy.slope) and proxy.slope != 0 else 1.0
    inter = float(proxy.inter) if np.isfinite(proxy.inter) else 0.0
    array = rescale_to_hu(raw, slope, inter)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise VolumeError(f"{path}: {bad} voxels are NaN or infinite")
    affine = np.asarray(img.affine, dtype=np.float64)
    _check_affine(path, affine)
    header = img.header
    info = {
        "format": "NIfTI-2" if isinstance(img, nib.Nifti2Image) else "NIfTI-1",
        "dtype": str(img.get_data_dtype()),
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "rescale_slope": slope,
        "rescale_intercept": inter,
    }
    return Volume(array, affine, str(path), path.name, info)


def _check_affine(path: Path, affine: np.ndarray) -> None:
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise VolumeError(f"{path}: the voxel-to-world affine is degenerate:\n{affine}")


def read_labels(path: str | os.PathLike[str], reference: Volume | None = None) -> Volume:
    """Read a label volume (0 background, 1 pancreas, 2 tumour) and check it fits ``reference``.

    Parameters
    ----------
    path : str or path-like
        Label NIfTI (or DICOM series). Float files are accepted when every value is an exact
        integer, since many tools save masks as float.
    reference : Volume, optional
        The CT the labels belong to: shape and affine must match, otherwise the labels would
        silently land on the wrong voxels.

    Returns
    -------
    Volume
        uint8 labels on the file's grid.
    """
    volume = read_volume(path)
    volume.array = label_array(volume.array, volume.source)
    if reference is not None:
        check_same_grid(volume, reference, what="label file")
    return volume


def label_array(values: np.ndarray, name: str = "labels") -> np.ndarray:
    """Validate label values (exact integers in 0..2) and return them as uint8."""
    values = np.asarray(values)
    if values.dtype == np.bool_:
        return values.astype(np.uint8)
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise VolumeError(f"{name}: labels must be numbers, got dtype {values.dtype}")
    if values.size == 0:
        raise VolumeError(f"{name}: the label volume is empty")
    lo, hi = values.min(), values.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise VolumeError(f"{name}: labels contain NaN or infinite values")
    if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.rint(values)):
        raise VolumeError(
            f"{name}: labels must be whole numbers (0 background, 1 pancreas, 2 tumour), "
            "found fractional values; is this a probability map or a CT image?"
        )
    if lo < 0 or hi > 2:
        raise VolumeError(
            f"{name}: label values must be 0 (background), 1 (pancreas) or 2 (tumour), "
            f"found values from {lo:g} to {hi:g}"
        )
    return values.astype(np.uint8)


def check_same_grid(volume: Volume, reference: Volume, what: str = "volume") -> None:
    """Refuse a volume whose shape or affine differs from ``reference``'s.

    The affine is compared with :data:`AFFINE_TOLERANCE_MM`: NIfTI stores it in float32, so a
    bit-exact comparison would refuse files written from a DICOM-derived geometry.
    """
    name = volume.source or what
    ref_name = reference.source or "the reference volume"
    if volume.shape != reference.shape:
        raise VolumeError(
            f"{name}: {what} shape {volume.shape} does not match {ref_name} {reference.shape}"
        )
    if not np.allclose(volume.affine, reference.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        raise VolumeError(
            f"{name}: {what} affine does not match {ref_name} (the voxels would not overlay):\n"
            f"{np.array2string(volume.affine, precision=4)}\nvs\n"
            f"{np.array2string(reference.affine, precision=4)}"
        )


def _check_output_path(path: Path, reference: Volume) -> None:
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise VolumeError(f"{path}: output must be a NIfTI file ending in .nii or .nii.gz")
    if not path.parent.is_dir():
        raise VolumeError(f"{path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise VolumeError(f"{path}: is a folder, not a file name")
    if reference.source:
        source = Path(reference.source).resolve()
        target = path.resolve()
        if target == source:
            raise VolumeError(
                f"{path}: refusing to overwrite the source CT {reference.source}; "
                "choose another file name"
            )
        if source in target.parents:
            raise VolumeError(
                f"{path}: refusing to write into the source DICOM folder {reference.source} "
                "(it would become part of the series); choose another folder"
            )


def _form_codes(reference: Volume) -> tuple[int, int]:
    """qform / sform codes for an output: the reference NIfTI's, else 1 (scanner) for DICOM."""
    qcode = int(reference.info.get("qform_code", 1))
    scode = int(reference.info.get("sform_code", 1))
    if qcode == 0 and scode == 0:
        qcode = scode = 1
    return qcode, scode


def _write_nifti(path: Path, array: np.ndarray, reference: Volume, intent: str) -> Path:
    _check_output_path(path, reference)
    if tuple(array.shape) != reference.shape:
        raise VolumeError(
            f"{path}: {intent} shape {tuple(array.shape)} does not match the reference grid "
            f"{reference.shape} of {reference.source or 'the reference volume'}"
        )
    img = nib.Nifti1Image(array, reference.affine)
    qcode, scode = _form_codes(reference)
    img.set_qform(reference.affine, code=qcode)
    img.set_sform(reference.affine, code=scode)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_data_dtype(array.dtype)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as temporary:
        nib.save(img, temporary)
    return path


def write_labels(
    path: str | os.PathLike[str], labels: np.ndarray | Volume, reference: Volume
) -> Path:
    """Write labels as a uint8 NIfTI on ``reference``'s voxel grid with its affine.

    Parameters
    ----------
    path : str or path-like
        Output ``.nii`` or ``.nii.gz``; written to a temporary name in the same folder and
        renamed, so a failure never leaves a half-written file.
    labels : numpy.ndarray or Volume
        Values 0, 1, 2 in ``reference``'s index order and shape (use
        :func:`src_models.orientation.from_canonical` first for canonical arrays).
    reference : Volume
        The CT the labels belong to; its source file is never overwritten.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    array = labels.array if isinstance(labels, Volume) else labels
    if isinstance(labels, Volume):
        check_same_grid(labels, reference, what="labels")
    return _write_nifti(path, label_array(array, str(path)), reference, "labels")


def write_image(path: str | os.PathLike[str], array: np.ndarray, reference: Volume) -> Path:
    """Write a float32 image (for example a reconstruction) on ``reference``'s voxel grid."""
    path = Path(path)
    array = np.asarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise VolumeError(f"{path}: the image to write holds NaN or infinite values")
    return _write_nifti(path, array, reference, "image")


def describe(volume: Volume) -> str:
    """Several lines about a volume for ``dsms info`` and the Load CT panel."""
    array = volume.array
    lo, hi = (array.min(), array.max()) if array.size else (0, 0)
    kind = "HU" if volume.info.get("modality", "CT") == "CT" else "values"
    lines = [
        f"source:      {volume.source or '(in memory)'}",
        f"description: {volume.description}",
        f"shape:       {' x '.join(str(n) for n in volume.shape)}",
        f"spacing:     {' x '.join(f'{s:.4g}' for s in volume.spacing)} mm",
        f"orientation: {''.join(volume.axcodes)} (axes increase towards these directions)",
        f"{kind}:{' ' * (12 - len(kind))}{lo:g} to {hi:g} ({array.dtype})",
    ]
    if "format" in volume.info:
        lines.insert(2, f"format:      {volume.info['format']}")
    return "\n".join(lines)
