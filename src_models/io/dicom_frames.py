"""One 2D image of a DICOM series, its geometry and rescale read tag by tag.

A classic CT file holds one image; an enhanced (multi-frame) CT holds every slice as a frame,
with each frame's position, orientation, pixel size and rescale in the per-frame or shared
functional groups (DICOM PS3.3 C.7.6.16: PlanePositionSequence, PlaneOrientationSequence,
PixelMeasuresSequence, PixelValueTransformationSequence). Both become :class:`Frame` records.
Every tag is checked for presence, emptiness, value count and finiteness, and a bad one is named
with its file, frame and what it is needed for, so the series reader
(:mod:`src_models.io.dicom`) gets the same checked values from every exporter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from .volume import VolumeError

#: Slice thickness assumed for a single slice that states none (only volumes in mL use it).
DEFAULT_THICKNESS_MM = 1.0

#: What each geometry or rescale tag is needed for, for the messages naming a bad one.
TAG_PURPOSE = {
    "ImagePositionPatient": "the slice cannot be placed in the patient",
    "ImageOrientationPatient": "the slice's orientation is unknown",
    "PixelSpacing": "the pixel size is unknown",
    "RescaleSlope": "the pixel values cannot be converted to HU",
    "RescaleIntercept": "the pixel values cannot be converted to HU",
    "SliceThickness": "the slice thickness is unknown",
    "SpacingBetweenSlices": "the slice spacing is unknown",
}


@dataclass
class Frame:
    """One 2D image of a series: a classic file, or one frame of an enhanced (multi-frame) file.

    Attributes
    ----------
    path : pathlib.Path
        The file.
    index : int or None
        0-based frame number in an enhanced file; ``None`` for a single-frame file.
    position : numpy.ndarray
        ImagePositionPatient, (3,) LPS mm of the centre of the first transmitted pixel.
    row, col : numpy.ndarray
        Unit direction (LPS) along a row (towards the next column) and down a column.
    spacing : tuple of float
        PixelSpacing: (distance between rows, distance between columns) in mm.
    slope, intercept : float
        RescaleSlope and RescaleIntercept (1 and 0 when absent).
    thickness : float or None
        SpacingBetweenSlices, else SliceThickness, in mm (magnitude: some exporters write a
        negative SpacingBetweenSlices); ``None`` when neither is given or it is 0.
    rows, cols : int
        Image size.
    """

    path: Path
    index: int | None
    position: np.ndarray
    row: np.ndarray
    col: np.ndarray
    spacing: tuple[float, float]
    slope: float
    intercept: float
    thickness: float | None
    rows: int
    cols: int

    @property
    def name(self) -> str:
        """File name, with the frame number (1-based, as viewers show it) for enhanced files."""
        return self.path.name if self.index is None else f"{self.path.name} frame {self.index + 1}"

    @property
    def where(self) -> str:
        """Full path, with the frame number for enhanced files: the subject of messages."""
        return str(self.path) if self.index is None else f"{self.path} (frame {self.index + 1})"


def _numbers(
    where: str,
    ds: pydicom.Dataset,
    keyword: str,
    count: int,
    required: bool,
    lenient: bool = False,
) -> list[float] | None:
    """The values of a numeric tag, refusing empty, malformed or non-finite ones by name.

    Parameters
    ----------
    where : str
        File (and frame) named in messages.
    ds : pydicom.Dataset
        Dataset or functional-group item holding the tag.
    keyword : str
        DICOM keyword, e.g. ``"PixelSpacing"``.
    count : int
        Number of values the tag must hold (its value multiplicity).
    required : bool
        Refuse an absent tag; otherwise return ``None`` for it.
    lenient : bool
        Return ``None`` for an empty or malformed value instead of refusing: for tags DICOM
        allows empty (Type 2, e.g. SliceThickness) that only some uses need.

    Raises
    ------
    VolumeError
        Absent (when required), present but empty, not numbers, the wrong number of values, or
        NaN / infinite.
    """
    purpose = TAG_PURPOSE[keyword]
    if keyword not in ds:
        if required:
            raise VolumeError(f"{where}: no {keyword}; {purpose}")
        return None
    try:
        element = ds[keyword]
        empty = element.is_empty
        value = element.value
    except Exception as exc:  # pydicom raises on values it cannot parse as their VR
        raise VolumeError(f"{where}: {keyword} cannot be read ({exc}); {purpose}") from exc
    if empty:
        if lenient:
            return None
        raise VolumeError(f"{where}: {keyword} is present but empty; {purpose}")
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        if lenient:
            return None
        raise VolumeError(f"{where}: {keyword} holds {value!r}, not numbers; {purpose}") from exc
    if len(numbers) != count:
        raise VolumeError(
            f"{where}: {keyword} holds {len(numbers)} value(s) instead of {count}; {purpose}"
        )
    if not np.all(np.isfinite(numbers)):
        raise VolumeError(f"{where}: {keyword} holds {numbers}; {purpose}")
    return numbers


def _directions(where: str, iop: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Unit row and column directions from ImageOrientationPatient; refuse impossible ones."""
    row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
    lengths = np.linalg.norm(row), np.linalg.norm(col)
    if min(lengths) < 0.9 or max(lengths) > 1.1:
        raise VolumeError(
            f"{where}: ImageOrientationPatient {iop} does not hold two unit vectors; "
            f"{TAG_PURPOSE['ImageOrientationPatient']}"
        )
    row, col = row / lengths[0], col / lengths[1]
    if abs(row @ col) > 0.01:
        raise VolumeError(
            f"{where}: ImageOrientationPatient {iop}: rows and columns are not perpendicular; "
            f"{TAG_PURPOSE['ImageOrientationPatient']}"
        )
    return row, col


def _macro(ds: pydicom.Dataset, index: int | None, sequence: str) -> pydicom.Dataset:
    """Item of a functional-group macro for frame ``index``: per-frame first, then shared.

    Classic files (``index`` None) hold the attributes at the top level: the dataset itself.
    """
    if index is None:
        return ds
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    items = ([per_frame[index]] if index < len(per_frame) else []) + list(shared[:1])
    for item in items:
        if sequence in item and item[sequence].value:
            return item[sequence].value[0]
    return pydicom.Dataset()


def _frame(path: Path, ds: pydicom.Dataset, index: int | None) -> Frame:
    """The geometry and rescale of one frame (or of a classic file), every tag checked."""
    where = str(path) if index is None else f"{path} (frame {index + 1})"
    position = _macro(ds, index, "PlanePositionSequence")
    orientation = _macro(ds, index, "PlaneOrientationSequence")
    measures = _macro(ds, index, "PixelMeasuresSequence")
    transform = _macro(ds, index, "PixelValueTransformationSequence")
    if index is not None and "RescaleSlope" not in transform:
        transform = ds  # legacy-converted enhanced files may keep the rescale at the top level
    row, col = _directions(where, _numbers(where, orientation, "ImageOrientationPatient", 6, True))
    spacing = _numbers(where, measures, "PixelSpacing", 2, True)
    if min(spacing) <= 0:
        raise VolumeError(f"{where}: PixelSpacing {spacing}; {TAG_PURPOSE['PixelSpacing']}")
    slope = _numbers(where, transform, "RescaleSlope", 1, False)
    intercept = _numbers(where, transform, "RescaleIntercept", 1, False)
    if slope is not None and slope[0] == 0:
        raise VolumeError(f"{where}: RescaleSlope is 0; {TAG_PURPOSE['RescaleSlope']}")
    between = _numbers(where, measures, "SpacingBetweenSlices", 1, False, lenient=True)
    thickness = between or _numbers(where, measures, "SliceThickness", 1, False, lenient=True)
    return Frame(
        path=path,
        index=index,
        position=np.asarray(_numbers(where, position, "ImagePositionPatient", 3, True)),
        row=row,
        col=col,
        spacing=(spacing[0], spacing[1]),
        slope=slope[0] if slope else 1.0,
        intercept=intercept[0] if intercept else 0.0,
        thickness=abs(thickness[0]) if thickness and thickness[0] != 0 else None,
        rows=_size(where, ds, "Rows"),
        cols=_size(where, ds, "Columns"),
    )


def _size(where: str, ds: pydicom.Dataset, keyword: str) -> int:
    """Rows or Columns as a positive integer; refuse an empty or zero value by name."""
    value = ds.get(keyword)
    if value in (None, ""):
        raise VolumeError(f"{where}: {keyword} is present but empty; the image size is unknown")
    if int(value) < 1:
        raise VolumeError(f"{where}: {keyword} is {value}; the image size is unknown")
    return int(value)


def count_frames(ds: pydicom.Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError, OverflowError):
        return 1


def read_frames(group: list[tuple[Path, pydicom.Dataset]]) -> list[Frame]:
    """Every frame of the chosen series' files, classic or enhanced, as :class:`Frame` records."""
    frames = []
    for path, ds in group:
        try:
            frames += _file_frames(path, ds)
        except VolumeError:
            raise
        except (TypeError, ValueError, OverflowError, AttributeError) as exc:
            # A value of the wrong kind or multiplicity (two Rows, NumberOfFrames "inf"): one
            # line naming the file instead of a traceback.
            raise VolumeError(f"{path}: a header value cannot be read ({exc})") from exc
    return frames


def _file_frames(path: Path, ds: pydicom.Dataset) -> list[Frame]:
    """The frames of one file (:func:`read_frames`)."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise VolumeError(f"{path}: a colour image, not a CT slice")
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        per_frame = len(ds.get("PerFrameFunctionalGroupsSequence") or [])
        if per_frame not in (0, count_frames(ds)):
            raise VolumeError(
                f"{path}: {count_frames(ds)} frames (NumberOfFrames) but {per_frame} items in "
                "PerFrameFunctionalGroupsSequence; the frames cannot be placed"
            )
        return [_frame(path, ds, k) for k in range(count_frames(ds))]
    if count_frames(ds) > 1:
        raise VolumeError(
            f"{path}: {count_frames(ds)} frames without per-frame functional groups, so the "
            "frames cannot be placed in the patient"
        )
    return [_frame(path, ds, None)]
