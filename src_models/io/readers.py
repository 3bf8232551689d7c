"""One entry point for every volume a user may hand us: NIfTI files, DICOM series, DICOM-SEG."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .dicom import is_dicom_file, read_dicom_series
from .nifti import NIFTI_SUFFIXES, read_nifti
from .seg import is_seg_file, onto_grid, read_seg
from .volume import Volume, VolumeError, label_array, on_grid_of

#: The two files of a NIfTI-1 pair or an Analyze 7.5 image.
PAIR_SUFFIXES = (".hdr", ".img")


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a CT volume from a NIfTI file or a DICOM series.

    Parameters
    ----------
    path : str or path-like
        A ``.nii`` / ``.nii.gz`` file, a folder holding a DICOM series, one DICOM file of a
        series (the whole series in its folder is read), or a DICOM-SEG file (labels 0/1/2 on
        the SEG's frames, see :func:`src_models.io.seg.read_seg`).

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
        return read_dicom_series(path)
    if path.stat().st_size == 0:
        raise VolumeError(f"{path}: the file is empty")
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if is_seg_file(path):
        return read_seg(path)
    if is_dicom_file(path):
        return read_dicom_series(path.parent, series_of=path)
    if path.name.lower().removesuffix(".gz").endswith(PAIR_SUFFIXES):
        raise VolumeError(
            f"{path}: a NIfTI or Analyze pair (.hdr header and .img voxels); napari-dsms reads "
            "single-file NIfTI. Convert a NIfTI pair, whose header places the voxels, with "
            "nibabel: nib.save(nib.load('scan.hdr'), 'scan.nii.gz'); an Analyze 7.5 file has "
            "no orientation, so check left and right after converting it"
        )
    raise VolumeError(
        f"{path}: neither a NIfTI file (.nii, .nii.gz) nor a DICOM file or series folder"
    )


def read_volume_reporting(path: str | os.PathLike[str]) -> tuple[Volume, list[str]]:
    """:func:`read_volume`, with the reader's warnings returned as text instead of printed.

    For callers that show warnings their own way (``dsms``: one ``warning: ...`` line each).
    Warnings other than :class:`UserWarning` (library deprecations) are passed on unchanged.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = read_volume(path)
    messages = []
    for item in caught:
        if issubclass(item.category, UserWarning):
            messages.append(str(item.message))
        else:
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
    return volume, messages


def read_labels(path: str | os.PathLike[str], reference: Volume | None = None) -> Volume:
    """Read a label volume (0 background, 1 pancreas, 2 tumour) and check it fits ``reference``.

    Parameters
    ----------
    path : str or path-like
        Label NIfTI, DICOM-SEG (placed on ``reference``'s slices) or DICOM series. Float
        files are accepted when every value is an exact integer, since many tools save masks
        as float.
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
    if reference is not None and volume.info.get("format") == "DICOM-SEG":
        # A SEG holds only the slices with labels: put them on the whole series.
        grid = onto_grid(volume, reference)
        volume = Volume(grid, reference.affine, volume.source, volume.description, volume.info)
    if reference is not None:
        volume = on_grid_of(volume, reference, what="label file")
    return volume
