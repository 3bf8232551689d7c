"""DICOM series folder -> :class:`~src_models.io.Volume` with an exact RAS affine.

DICOM places every slice on its own (ImagePositionPatient, ImageOrientationPatient) in LPS
millimetres, and files come in any order. The reader sorts slices along the slice normal,
refuses series that would give a wrong geometry (a missing slice, mixed sizes or orientations)
instead of guessing, and converts LPS to RAS by flipping the signs of x and y.

Index convention (nibabel / dcm2niix): ``array[i, j, k]`` is column ``i``, row ``j`` of slice
``k``. Slices run in the direction of increasing patient coordinate along the slice axis (feet to
head for axial series), whatever the file order or the sign of the row x column cross product,
so the same scan reads the same way from every exporter.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from .volume import Volume, VolumeError, rescale_to_hu

DECODER_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)"

#: LPS (DICOM) -> RAS (NIfTI / nibabel) for points and direction vectors.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` has the DICOM Part 10 preamble ('DICM' at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _headers(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    """Header of every image file in ``folder``; DICOMDIR, reports and other files are skipped."""
    found = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or not is_dicom_file(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "Rows" not in ds or "Columns" not in ds:
            continue  # DICOMDIR, structured report, presentation state, ...
        if "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])]:
            continue  # scout images share study but never the volume's grid
        found.append((path, ds))
    return found


def _choose_series(
    folder: Path, headers: list[tuple[Path, pydicom.Dataset]], series_of: Path | None
) -> tuple[list[tuple[Path, pydicom.Dataset]], list[str]]:
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path, ds in headers:
        groups[str(ds.get("SeriesInstanceUID", ""))].append((path, ds))
    if series_of is not None:
        wanted = next((uid for uid, g in groups.items() if any(p == series_of for p, _ in g)), None)
        if wanted is None:
            raise VolumeError(f"{series_of}: not a DICOM image file")
        return groups[wanted], []
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    others = [_series_label(g) for _, g in ranked[1:]]
    chosen = ranked[0][1]
    if others:
        warnings.warn(
            f"{folder}: holds {len(groups)} DICOM series; reading the largest, "
            f"{_series_label(chosen)}; ignoring {'; '.join(others)}",
            UserWarning,
            stacklevel=3,
        )
    return chosen, others


def _series_label(group: list[tuple[Path, pydicom.Dataset]]) -> str:
    ds = group[0][1]
    name = str(ds.get("SeriesDescription", "") or "unnamed series")
    number = ds.get("SeriesNumber", None)
    number_text = f" #{number}" if number not in (None, "") else ""
    return f"'{name}'{number_text} ({len(group)} images, UID {ds.get('SeriesInstanceUID', '?')})"


def _require_same(folder: Path, group, key, what: str) -> None:
    values: dict[Any, list[str]] = defaultdict(list)
    for path, ds in group:
        values[key(ds)].append(path.name)
    if len(values) > 1:
        parts = [
            f"{value} in {len(names)} file(s) (e.g. {names[0]})" for value, names in values.items()
        ]
        raise VolumeError(f"{folder}: the series mixes {what}: {'; '.join(parts)}")


def _geometry(folder: Path, group) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """Sorted files, row / column direction cosines and slice positions (LPS mm)."""
    for path, ds in group:
        missing = [
            tag
            for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
            if tag not in ds
        ]
        if missing:
            raise VolumeError(
                f"{path}: no {', '.join(missing)}; the slice cannot be placed in the patient"
            )
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise VolumeError(
                f"{path}: multi-frame (enhanced) DICOM is not supported; convert the series to "
                "NIfTI with dcm2niix first"
            )
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise VolumeError(f"{path}: a colour image, not a CT slice")
    _require_same(folder, group, lambda ds: (int(ds.Rows), int(ds.Columns)), "image sizes")
    _require_same(
        folder,
        group,
        lambda ds: tuple(np.round(np.asarray(ds.ImageOrientationPatient, float), 4)),
        "orientations (ImageOrientationPatient)",
    )
    _require_same(
        folder,
        group,
        lambda ds: tuple(np.round(np.asarray(ds.PixelSpacing, float), 4)),
        "pixel spacings",
    )
    iop = np.asarray(group[0][1].ImageOrientationPatient, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 0.5:
        raise VolumeError(f"{group[0][0]}: ImageOrientationPatient {iop.tolist()} is degenerate")
    positions = np.array([np.asarray(ds.ImagePositionPatient, float) for _, ds in group])
    order = np.argsort(positions @ normal, kind="stable")
    files = [group[i] for i in order]
    positions = positions[order]
    if len(files) > 1:
        step = positions[-1] - positions[0]
        if step[np.argmax(np.abs(step))] < 0:
            files, positions = files[::-1], positions[::-1]
    return files, row, col, positions


def _check_spacing(folder: Path, files, positions: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Uniform slice step as a vector (LPS mm); refuse gaps, duplicates and scattered slices."""
    depth = positions @ normal
    steps = np.abs(np.diff(depth))
    duplicate = np.flatnonzero(steps < 1e-3)
    if duplicate.size:
        i = int(duplicate[0])
        raise VolumeError(
            f"{folder}: two slices at the same position {depth[i]:.2f} mm "
            f"({files[i][0].name}, {files[i + 1][0].name}); several acquisitions in one series?"
        )
    typical = float(np.median(steps))
    tolerance = max(0.1 * typical, 0.02)
    bad = np.flatnonzero(np.abs(steps - typical) > tolerance)
    if bad.size:
        i = int(bad[0])
        ratio = steps[i] / typical
        cause = (
            f"about {round(ratio) - 1} slice(s) missing"
            if ratio > 1.5 and abs(ratio - round(ratio)) < 0.2
            else "inconsistent slice spacing"
        )
        raise VolumeError(
            f"{folder}: slices are {typical:.3g} mm apart but {steps[i]:.3g} mm between "
            f"{files[i][0].name} and {files[i + 1][0].name} at {depth[i]:.2f} and "
            f"{depth[i + 1]:.2f} mm: {cause}; the series is incomplete"
        )
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    expected = positions[0] + np.outer(np.arange(len(positions)), step)
    drift = float(np.abs(positions - expected).max())
    if drift > tolerance:
        raise VolumeError(
            f"{folder}: slice positions do not lie on a straight line (off by {drift:.3g} mm)"
        )
    return step


def _decode(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    ds = pydicom.dcmread(path)
    syntax = ds.file_meta.get("TransferSyntaxUID", None)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises several error types for undecodable data
        if syntax is not None and syntax.is_compressed:
            raise VolumeError(
                f"{path}: pixel data is compressed ({syntax.name}) and could not be decoded "
                f"({exc}); install a decoder: {DECODER_HINT}"
            ) from exc
        raise VolumeError(f"{path}: pixel data cannot be read ({exc})") from exc
    return ds, pixels


def _check_decoder(path: Path, ds: pydicom.Dataset) -> None:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID", None) if meta is not None else None
    if syntax is None or not syntax.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        available = get_decoder(syntax).is_available
    except Exception:  # a transfer syntax pydicom has no decoder class for at all
        available = False
    if not available:
        raise VolumeError(
            f"{path}: pixel data is compressed ({syntax.name}) and no decoder for it is "
            f"installed; install one: {DECODER_HINT}"
        )


def _stack_hu(slices: list[np.ndarray]) -> np.ndarray:
    """Stack per-slice HU arrays in one dtype that holds every slice's values.

    Each slice was rescaled on its own (its own stored type, slope and intercept), so a series
    mixing unsigned and signed slices (raw = HU + 1024 with intercept -1024 next to raw = HU)
    is right slice by slice; the stack must not squeeze them back into the first slice's type.
    int16 when every value fits (the usual CT case), else the smallest integer type holding all
    slices, float32 when any slice is fractional. The list is emptied while stacking, so the
    peak memory is about one copy of the volume.
    """
    if any(np.issubdtype(s.dtype, np.floating) for s in slices):
        dtype = np.dtype(np.float32)
    else:
        lo = min(int(s.min()) for s in slices)
        hi = max(int(s.max()) for s in slices)
        info16 = np.iinfo(np.int16)
        dtype = np.dtype(np.int16) if info16.min <= lo and hi <= info16.max else np.int32
        if not (np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max):
            dtype = np.dtype(np.int64)
    stack = np.empty((len(slices), *slices[0].shape), dtype=dtype)
    for k in range(len(slices)):
        stack[k] = slices[k]
        slices[k] = None  # type: ignore[call-overload]
    return stack


def _info(ds: pydicom.Dataset, n: int, step: np.ndarray, others: list[str]) -> dict[str, Any]:
    """Header facts worth showing; no patient name, ID, birth date or other identifiers."""

    def text(key: str) -> str:
        return str(ds.get(key, "") or "")

    syntax = ds.file_meta.get("TransferSyntaxUID", None)
    return {
        "format": "DICOM",
        "modality": text("Modality") or "CT",
        "series_uid": text("SeriesInstanceUID"),
        "series_number": text("SeriesNumber"),
        "series_description": text("SeriesDescription"),
        "study_description": text("StudyDescription"),
        "body_part": text("BodyPartExamined"),
        "manufacturer": text("Manufacturer"),
        "model": text("ManufacturerModelName"),
        "convolution_kernel": text("ConvolutionKernel"),
        "kvp": text("KVP"),
        "slice_thickness": text("SliceThickness"),
        "image_orientation": [float(v) for v in ds.ImageOrientationPatient],
        "transfer_syntax": syntax.name if syntax is not None else "",
        "rescale_slope": float(ds.get("RescaleSlope", 1) or 1),
        "rescale_intercept": float(ds.get("RescaleIntercept", 0) or 0),
        "n_slices": n,
        "slice_step_mm": float(np.linalg.norm(step)),
        "other_series": others,
        "qform_code": 1,
        "sform_code": 1,
    }


def read_dicom_series(folder: Path, series_of: Path | None = None) -> Volume:
    """Read one DICOM series from ``folder`` into a :class:`Volume` (HU, RAS affine).

    Parameters
    ----------
    folder : pathlib.Path
        Folder with the series' files (not searched recursively).
    series_of : pathlib.Path, optional
        Read the series this file belongs to; by default the largest series of the folder, with
        a warning naming it when there are several.
    """
    folder = Path(folder)
    headers = _headers(folder)
    if not headers:
        raise VolumeError(f"{folder}: no DICOM images in this folder")
    group, others = _choose_series(folder, headers, series_of)
    if len(group) < 2:
        raise VolumeError(
            f"{folder}: the series has a single slice (a 2D image); a CT volume needs several"
        )
    files, row, col, positions = _geometry(folder, group)
    step = _check_spacing(folder, files, positions, np.cross(row, col))
    _check_decoder(*files[0])

    datasets = []
    slices = []
    for path, _ in files:
        ds, pixels = _decode(path)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        slices.append(rescale_to_hu(pixels, slope, intercept))
        del ds.PixelData  # keep only headers: the pixels live in ``slices``
        datasets.append(ds)
    hu = _stack_hu(slices)

    row_spacing, col_spacing = (float(v) for v in files[0][1].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row * col_spacing  # index i walks along a row: next column
    lps[:3, 1] = col * row_spacing  # index j walks down a column: next row
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = LPS_TO_RAS @ lps
    first = datasets[0]
    description = str(first.get("SeriesDescription", "") or folder.name)
    return Volume(
        hu.transpose(2, 1, 0),
        affine,
        str(folder),
        description,
        _info(first, len(files), step, others),
    )
