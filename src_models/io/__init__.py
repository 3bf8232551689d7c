"""Volumes in and out: the :class:`Volume` type, NIfTI, DICOM series, DICOM-SEG, orientation,
CT windows.

Imports nothing else of :mod:`src_models`, so every other part may build on it.
"""

from __future__ import annotations

from .nifti import NIFTI_SUFFIXES, write_image, write_labels
from .output import FORMATS, check_output, output_format, write_output
from .readers import read_labels, read_volume, read_volume_reporting
from .seg import SEG_SUFFIXES, Algorithm, read_seg, write_seg
from .volume import (
    AFFINE_TOLERANCE_MM,
    LABEL_NAMES,
    Volume,
    VolumeError,
    check_ct,
    check_same_grid,
    describe,
    label_array,
    looks_like_labels,
    on_grid_of,
    rescale_to_hu,
)

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "FORMATS",
    "SEG_SUFFIXES",
    "Algorithm",
    "LABEL_NAMES",
    "NIFTI_SUFFIXES",
    "Volume",
    "VolumeError",
    "check_ct",
    "check_output",
    "check_same_grid",
    "on_grid_of",
    "describe",
    "label_array",
    "looks_like_labels",
    "output_format",
    "read_labels",
    "read_seg",
    "read_volume",
    "read_volume_reporting",
    "rescale_to_hu",
    "write_image",
    "write_labels",
    "write_output",
    "write_seg",
]
