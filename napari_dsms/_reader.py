"""npe2 reader: NIfTI files and DICOM series folders open as CT images or pancreas labels.

A DICOM-SEG file (from PACS, 3D Slicer, TotalSegmentator or ``dsms predict -o labels.dcm``)
opens as a Labels layer, 0/1/2 by its segment codes, at the world position of its frames.

napari asks every plugin whether it can read a path, so :func:`napari_get_reader` decides from
the name and a few bytes only, and answers ``None`` for anything it does not claim. Once it has
claimed a path, a failure raises :class:`~src_models.io.VolumeError` with a message naming
the file and the problem, which napari shows as a notification.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from napari.utils.notifications import show_warning

from src_models.io import (
    NIFTI_SUFFIXES,
    label_array,
    looks_like_labels,
    read_volume_reporting,
)
from src_models.io.dicom import is_dicom_file

from ._layers import REFERENCE, LayerDataTuple, image_layer_data, labels_layer_data

ReaderFunction = Callable[[str | list[str]], list[LayerDataTuple]]

#: Files looked at when deciding whether a folder is a DICOM series (enough for any layout).
_DICOM_PROBE = 64


def _single_path(path: str | os.PathLike[str] | list) -> Path | None:
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(path)


def _folder_has_dicom(folder: Path) -> bool:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return False
    files = [p for p in entries if p.is_file() and not p.name.startswith(".")]
    return any(is_dicom_file(p) for p in files[:_DICOM_PROBE])


def napari_get_reader(path: str | list[str]) -> ReaderFunction | None:
    """Return :func:`read_ct` for a NIfTI file, a DICOM file or folder, else ``None``."""
    target = _single_path(path)
    if target is None:
        return None
    if target.is_dir():
        return read_ct if _folder_has_dicom(target) else None
    if target.name.lower().endswith(NIFTI_SUFFIXES):
        return read_ct
    if target.is_file() and is_dicom_file(target):
        return read_ct
    return None


def read_ct(path: str | list[str]) -> list[LayerDataTuple]:
    """Read a CT (abdomen window), a label file or a DICOM-SEG as layer data.

    Label files and SEGs are references: they get their own colours, never those of a model's
    result. The reader's warnings (unknown orientation, several series in a folder, a single
    slice without thickness) become napari notifications; a 2D image opens as one slice.
    """
    target = _single_path(path)
    volume, warnings = read_volume_reporting(target)
    for text in warnings:
        show_warning(text)
    if volume.info.get("format") == "DICOM-SEG":
        return [labels_layer_data(volume, volume, name=volume.description, role=REFERENCE)]
    if looks_like_labels(volume):
        volume.array = label_array(volume.array, volume.source)
        name = Path(volume.source).name
        return [labels_layer_data(volume, volume, name=name.split(".nii")[0], role=REFERENCE)]
    return [image_layer_data(volume)]
