"""NIfTI-1/2 files in and out, with the geometry kept exactly (nibabel)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from .atomic import atomic_path, output_place_problem
from .volume import (
    Volume,
    VolumeError,
    is_rectangular,
    label_array,
    on_grid_of,
    rescale_to_hu,
)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


#: The first two bytes of every gzip stream (RFC 1952).
GZIP_MAGIC = b"\x1f\x8b"


def _check_compression_matches_name(path: Path) -> None:
    """Name the mismatch when a file's gzip compression and its name disagree: nibabel then
    says only "Cannot work out file type" or "not a gzip file" (a tester's renamed files)."""
    with open(path, "rb") as file:
        gzipped = file.read(2) == GZIP_MAGIC
    named = path.name.lower().endswith(".gz")
    if gzipped and not named:
        raise VolumeError(f"{path}: the file is gzip-compressed but named .nii; name it .nii.gz")
    if named and not gzipped:
        raise VolumeError(f"{path}: the file is named .nii.gz but not compressed; name it .nii")


def _load_nifti_image(path: Path) -> nib.Nifti1Image:
    _check_compression_matches_name(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for foreign or damaged files
        if "w2 should be positive" in str(exc):  # nibabel's words for a non-unit quaternion
            raise VolumeError(
                f"{path}: the qform's quaternion (quatern_b, c, d) is not a rotation and there "
                "is no sform (sform_code 0), so the voxels cannot be placed in the patient; "
                "export the CT again"
            ) from exc
        raise VolumeError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise VolumeError(f"{path}: not a NIfTI file (nibabel read it as {type(img).__name__})")
    return img


#: NIfTI ``xyzt_units`` space codes (bits 0-2) -> (name shown to users, factor to millimetres).
#: Code 0 (unknown) is read as millimetres, as nibabel, ITK and dcm2niix do.
SPACE_UNITS: dict[int, tuple[str, float]] = {
    0: ("unknown (read as mm)", 1.0),
    1: ("metres", 1000.0),
    2: ("mm", 1.0),
    3: ("micrometres", 0.001),
}

#: qform and sform further apart than this (mm, at any corner of the grid) earn a warning.
FORMS_DISAGREE_MM = 0.5


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The 3D shape of a NIfTI array: a 2D image gains a slice axis of length 1, trailing
    singleton axes (time of length 1) are dropped."""
    spatial = tuple(shape[:3]) + (1,) * (3 - len(shape[:3]))
    extra = tuple(shape[3:])
    if any(n != 1 for n in extra):
        raise VolumeError(
            f"{path}: a {len(shape)}D image of shape {shape} (several volumes); "
            "a single 3D CT volume is needed"
        )
    if 0 in spatial:
        raise VolumeError(f"{path}: the image of shape {shape} has no voxels along an axis")
    if sum(n > 1 for n in spatial) < 2:
        raise VolumeError(
            f"{path}: an image of shape {shape} is not even a 2D slice; a CT slice or volume "
            "is needed"
        )
    return spatial  # type: ignore[return-value]


def _unit_scale(path: Path, header: nib.Nifti1Header) -> tuple[str, float]:
    """Spatial unit of the header (``xyzt_units`` bits 0-2) and its factor to millimetres."""
    code = int(header["xyzt_units"]) & 0x07
    if code not in SPACE_UNITS:
        raise VolumeError(
            f"{path}: xyzt_units holds the spatial unit code {code}, which NIfTI does not "
            "define (0 unknown, 1 metres, 2 mm, 3 micrometres); the voxel size is unknown"
        )
    return SPACE_UNITS[code]


def _form_warnings(path: Path, header: nib.Nifti1Header, shape: tuple[int, ...]) -> list[str]:
    """Warnings about the file's orientation: none given, or a qform and sform that disagree."""
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    if qcode == 0 and scode == 0:
        return [
            f"{path}: orientation unknown: qform_code and sform_code are both 0, so the file "
            "does not say where its voxels lie in the patient; read with nibabel's fallback "
            "(voxel sizes only), so left/right and position may be wrong. Labels are written "
            "with codes 0 on the same grid, so any viewer pairs them with this file."
        ]
    if qcode == 0 or scode == 0:
        return []
    qform = _qform(header)
    if qform is None:
        return [
            f"{path}: the qform (code {qcode}) is not a valid rotation (its quaternion "
            f"parameters are out of range); using the sform (code {scode}), as nibabel does"
        ]
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape[:3]], indexing="ij"))
    corners = np.vstack([corners.reshape(3, -1), np.ones((1, 8))])
    gap = np.linalg.norm((qform - header.get_sform()) @ corners, axis=0).max()
    if gap <= FORMS_DISAGREE_MM:
        return []
    return [
        f"{path}: the qform (code {qcode}) and the sform (code {scode}) place voxels up to "
        f"{gap:.1f} mm apart; using the sform, as nibabel does (other viewers may use the qform)"
    ]


def _qform(header: nib.Nifti1Header) -> np.ndarray | None:
    """The header's qform matrix, or ``None`` when its quaternion is not a rotation."""
    try:
        return np.asarray(header.get_qform(), dtype=np.float64)
    except (nib.spatialimages.HeaderDataError, ValueError):
        return None


def read_nifti(path: Path) -> Volume:
    """Read a NIfTI CT: HU in the stored dtype where it fits, the file's affine and codes.

    Parameters
    ----------
    path : pathlib.Path
        A ``.nii`` or ``.nii.gz`` file (NIfTI-1 or NIfTI-2) holding a 3D volume, a 2D slice
        (read with a slice axis of length 1) or a 4D file whose fourth axis has length 1.

    Returns
    -------
    Volume
        ``array`` in the file's index order, ``affine`` in millimetres whatever the file's
        spatial unit (``xyzt_units`` metres or micrometres are converted), ``info`` with the
        codes, the unit, ``orientation_unknown`` and the warnings issued.

    Raises
    ------
    VolumeError
        Damaged file, more than one volume, NaN / Inf voxels, a non-numeric data type, an
        undefined unit code or a degenerate affine.

    Warns
    -----
    UserWarning
        Orientation unknown (both form codes 0), or a qform and sform that disagree.
    """
    img = _load_nifti_image(path)
    spatial = _spatial_shape(path, img.shape)
    stored = img.get_data_dtype()
    if not (np.issubdtype(stored, np.integer) or np.issubdtype(stored, np.floating)):
        raise VolumeError(f"{path}: voxels of type {stored} (not grey values); a CT is needed")
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
    header = img.header
    _check_voxel_sizes(path, img, spatial)
    unit, to_mm = _unit_scale(path, header)
    affine = np.asarray(img.affine, dtype=np.float64)
    affine[:3] *= to_mm
    affine = _check_affine(path, affine, spatial)
    warning_texts = _form_warnings(path, header, spatial)
    for text in warning_texts:
        warnings.warn(text, UserWarning, stacklevel=3)
    # A qform that differs from the sform is kept to be written back unchanged (_write_nifti):
    # viewers that read the qform then place our labels where they place this CT.
    qform = _qform(header) if int(header["qform_code"]) and int(header["sform_code"]) else None
    if qform is not None:
        qform[:3] *= to_mm
        qform = None if np.allclose(qform, affine) else qform
    info = {
        "format": "NIfTI-2" if isinstance(img, nib.Nifti2Image) else "NIfTI-1",
        "dtype": str(stored),
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "orientation_unknown": int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0,
        "spatial_unit": unit,
        "unit_to_mm": to_mm,
        "rescale_slope": slope,
        "rescale_intercept": inter,
        "warnings": warning_texts,
        "intent": header.get_intent()[0],  # "label" (NIFTI_INTENT_LABEL) for label maps
        **({"qform": qform.tolist()} if qform is not None else {}),
    }
    return Volume(array, affine, str(path), path.name, info)


def _check_voxel_sizes(path: Path, img: nib.Nifti1Image, shape: tuple[int, int, int]) -> None:
    """Refuse voxel sizes of 0 (or NaN) where the affine is built from ``pixdim``.

    Without an sform (``sform_code`` 0) the qform and the fallback affine take their voxel
    sizes from ``pixdim[1:4]``, and nibabel, loading the header, replaces a 0 there with 1 mm
    and only logs it: a CT of 0.7 mm pixels then measured 94.6 mL instead of 68.9 with no
    warning. So the header is read again as stored (``check=False``). A single slice may lack
    a thickness (it is given 1 mm, see :func:`_check_affine`).
    """
    if int(img.header["sform_code"]) > 0:  # the sform's matrix holds the voxel sizes itself
        return
    with nib.openers.ImageOpener(str(path)) as stored:
        raw = type(img.header).from_fileobj(stored, check=False)
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    for axis in range(3 if shape[2] > 1 else 2):
        size = pixdim[axis]
        if not (np.isfinite(size) and size > 0):
            raise VolumeError(
                f"{path}: the header gives a voxel size of {size:g} along axis {axis} "
                f"(pixdim[{axis + 1}]), so distances and volumes cannot be measured; "
                "export the CT again or set pixdim to the true voxel size"
            )


def _check_affine(path: Path, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Refuse a non-finite or flat affine; give a single slice without thickness 1 mm."""
    if not np.isfinite(affine).all():
        raise VolumeError(f"{path}: the voxel-to-world affine holds NaN or infinite values")
    if shape[2] == 1 and np.linalg.norm(affine[:3, 2]) < 1e-6:
        normal = np.cross(affine[:3, 0], affine[:3, 1])
        if np.linalg.norm(normal) > 0:
            affine = affine.copy()
            affine[:3, 2] = normal / np.linalg.norm(normal)  # 1 mm: a 2D slice has no thickness
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise VolumeError(f"{path}: the voxel-to-world affine is degenerate:\n{affine}")
    return affine


def _check_output_path(path: Path, reference: Volume) -> None:
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise VolumeError(f"{path}: output must be a NIfTI file ending in .nii or .nii.gz")
    problem = output_place_problem(path)
    if problem:
        raise VolumeError(problem)
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
    """qform / sform codes for an output on ``reference``'s grid.

    The reference NIfTI's codes (1, scanner, for DICOM), so every viewer pairs the two files
    the same way: codes 0 / 0 stay 0 / 0 (both files then fall back to the same voxel-size
    grid). A sheared grid (gantry tilt) gets qform code 0: a qform is a rotation and cannot hold
    the shear, and nibabel would store the nearest rotation, a second geometry tens of mm away.
    """
    qcode = int(reference.info.get("qform_code", 1))
    scode = int(reference.info.get("sform_code", 1))
    if not is_rectangular(reference.affine):
        # The CT's own qform (a rotation, kept in info by read_nifti) is written back with its
        # code; only a qform made from the sheared affine would be a second geometry.
        scode, qcode = scode or qcode or 1, (qcode if reference.info.get("qform") else 0)
    return qcode, scode


def _write_nifti(path: Path, array: np.ndarray, reference: Volume, intent: str) -> Path:
    """Write ``array`` on ``reference``'s grid; ``intent`` "labels" marks a label map."""
    _check_output_path(path, reference)
    if tuple(array.shape) != reference.shape:
        raise VolumeError(
            f"{path}: {intent} shape {tuple(array.shape)} does not match the reference grid "
            f"{reference.shape} of {reference.source or 'the reference volume'}"
        )
    img = nib.Nifti1Image(array, reference.affine)
    qcode, scode = _form_codes(reference)
    # The source's own qform where it differs from its sform (read_nifti), so a viewer that
    # reads qforms pairs the two files as it pairs their qforms; else the affine. Setting it
    # also sets pixdim, which codes 0 / 0 rely on.
    qform = reference.info.get("qform") if qcode else None
    img.set_qform(reference.affine if qform is None else np.asarray(qform), code=qcode)
    img.set_sform(reference.affine, code=scode)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_data_dtype(array.dtype)
    if intent == "labels":  # NIFTI_INTENT_LABEL: read back as labels whatever the file's name
        img.header.set_intent("label")
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    try:
        with atomic_path(path, suffix=suffix) as temporary:
            nib.save(img, temporary)
    except PermissionError as exc:
        raise VolumeError(
            f"{path}: cannot write into the folder {path.parent} ({exc.strerror})"
        ) from exc
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
        :func:`src_models.io.orientation.from_canonical` first for canonical arrays).
    reference : Volume
        The CT the labels belong to; its source file is never overwritten.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    if isinstance(labels, Volume):
        labels = on_grid_of(labels, reference, what="labels")
    array = labels.array if isinstance(labels, Volume) else labels
    return _write_nifti(path, label_array(array, str(path)), reference, "labels")


def write_image(path: str | os.PathLike[str], array: np.ndarray, reference: Volume) -> Path:
    """Write an image (for example a reconstruction in HU) on ``reference``'s voxel grid.

    int16 arrays are written as int16 (HU); anything else as float32.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.int16:
        array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise VolumeError(f"{path}: the image to write holds NaN or infinite values")
    return _write_nifti(path, array, reference, "image")
