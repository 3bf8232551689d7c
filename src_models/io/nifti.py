"""NIfTI-1/2 files in and out, with the geometry kept exactly (nibabel)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from .atomic import atomic_path
from .volume import Volume, VolumeError, check_same_grid, label_array, rescale_to_hu

NIFTI_SUFFIXES = (".nii", ".nii.gz")


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


def read_nifti(path: Path) -> Volume:
    """Read a 3D NIfTI CT: HU in the stored dtype where it fits, the file's affine and codes."""
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
