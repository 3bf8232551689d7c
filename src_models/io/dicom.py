"""DICOM series folder or enhanced CT file -> :class:`~src_models.io.Volume` with a RAS affine.

DICOM places every slice on its own (ImagePositionPatient, ImageOrientationPatient) in LPS
millimetres, and files come in any order. A classic series has one slice per file; an enhanced
(multi-frame) CT holds every slice as a frame of one file, with each frame's position,
orientation, pixel size and rescale in the per-frame or shared functional groups (DICOM PS3.3
C.7.6.16: PlanePositionSequence, PlaneOrientationSequence, PixelMeasuresSequence,
PixelValueTransformationSequence). Both become the same list of :class:`Frame` records, so both
get the same checks. The reader sorts frames along the slice normal, refuses series that would
give a wrong geometry (a missing slice, mixed sizes or orientations, an empty or malformed
geometry tag) instead of guessing, and converts LPS to RAS by flipping the signs of x and y.

Index convention (nibabel / dcm2niix): ``array[i, j, k]`` is column ``i``, row ``j`` of slice
``k``. Slices run in the direction of increasing patient coordinate along the slice axis (feet to
head for axial series), whatever the file order or the sign of the row x column cross product,
so the same scan reads the same way from every exporter.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .dicom_frames import DEFAULT_THICKNESS_MM, Frame, count_frames, read_frames
from .volume import Volume, VolumeError, rescale_to_hu

DECODER_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)"

#: Segmentation and Label Map Segmentation Storage (DICOM PS3.4 B.5): labels, never CT.
SEGMENTATION_SOP_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}
)

#: LPS (DICOM) -> RAS (NIfTI / nibabel) for points and direction vectors.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Largest difference between two slices' direction cosines (ImageOrientationPatient) or pixel
#: spacings (mm) that still counts as the same; exporters round these values differently.
ORIENTATION_TOLERANCE = 1e-3
SPACING_TOLERANCE_MM = 1e-3


#: File name endings that claim DICOM: such a file that is not readable DICOM is damaged.
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` looks like DICOM: the Part 10 preamble ('DICM' at byte 128), or,
    as older exporters write it, a bare little-endian data set starting with group 0002 or 0008.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00"


def _read(path: Path, pixels: bool) -> pydicom.Dataset:
    """``dcmread`` that also takes files without the Part 10 preamble and file meta.

    pydicom needs a Transfer Syntax UID to decode pixels; a bare data set gets the one its
    encoding was detected as (implicit or explicit VR, little or big endian).
    """
    ds = pydicom.dcmread(path, stop_before_pixels=not pixels, force=True)
    if "TransferSyntaxUID" not in ds.file_meta and getattr(ds, "original_encoding", None):
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little
            else ExplicitVRBigEndian
        )
    return ds


def _series_below(folder: Path, shown: int = 3, depth: int = 3) -> str:
    """A hint naming subfolders that hold DICOM files (PACS exports nest STUDY/SERIES), or "".

    Subfolders up to ``depth`` levels down are looked at, and only their first file, so the
    hint stays quick on large exports.
    """
    found = []
    for level in range(1, depth + 1):
        for path in sorted(folder.glob("/".join(["*"] * level))):
            if not path.is_dir():
                continue
            files = sorted(child for child in path.iterdir() if child.is_file())[:1]
            if files and is_dicom_file(files[0]):
                found.append(path)
    if not found:
        return ""
    names = ", ".join(str(path) for path in found[:shown]) + (", …" if len(found) > shown else "")
    return f"; its subfolders hold DICOM files: choose one series folder, e.g. {names}"


def _headers(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    """Header of every image file in ``folder``; DICOMDIR, reports and other files are skipped.

    Raises
    ------
    VolumeError
        A file that starts as DICOM but cannot be read (cut short, overwritten): it may be a
        slice of the series, and a series read without it would silently lack that slice (at
        either end no gap shows it; found by a tester: 27.4 mL instead of 28.5, exit 0).
    """
    found, damaged = [], []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        if not is_dicom_file(path):
            if path.suffix.lower() in DICOM_SUFFIXES:  # named DICOM, but empty or cut short
                damaged.append(f"{path.name} (not DICOM: {path.stat().st_size} bytes)")
            continue
        try:
            ds = _read(path, pixels=False)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            damaged.append(f"{path.name} ({exc})")
            continue
        if "Rows" not in ds or "Columns" not in ds:
            sop_class = _sop_class(ds)
            if not sop_class:  # a Part 10 file always names its SOP class: garbage
                damaged.append(f"{path.name} (no SOP class: overwritten or garbled)")
            elif "Image Storage" in sop_class.name:  # an image cut short in its header
                damaged.append(f"{path.name} (an image without Rows or Columns: cut short?)")
            continue  # DICOMDIR, structured report, presentation state, ...
        if "LOCALIZER" in _image_type(ds):
            continue  # scout images share study but never the volume's grid
        if str(ds.get("SOPClassUID", "")) in SEGMENTATION_SOP_CLASSES:
            continue  # a DICOM-SEG beside its series holds labels, not CT (src_models.io.seg)
        found.append((path, ds))
    if damaged:
        shown = "; ".join(damaged[:3]) + ("; …" if len(damaged) > 3 else "")
        raise VolumeError(
            f"{folder}: {len(damaged)} damaged DICOM file{'s' * (len(damaged) > 1)} ({shown}); "
            "the series may lack slices. Export the series again, or move the damaged files "
            "out of the folder to read the rest"
        )
    return found


def _instance_number(ds: pydicom.Dataset) -> int | None:
    """InstanceNumber (0020,0013), ``None`` when absent or not a number."""
    try:
        value = ds.get("InstanceNumber")
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _sop_class(ds: pydicom.Dataset) -> UID:
    """The file's SOP Class UID, from the data set or else its file meta (PS3.10)."""
    meta = getattr(ds, "file_meta", None)
    fallback = meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""
    return UID(str(ds.get("SOPClassUID", "") or fallback))


def _image_type(ds: pydicom.Dataset) -> list[str]:
    """ImageType values in upper case; empty when the tag is absent or empty (Type 2/3)."""
    value = ds.get("ImageType")
    if not value:
        return []
    values = [value] if isinstance(value, str) else list(value)
    return [str(v).upper() for v in values]


def _why_not_read(path: Path) -> str:
    """Why a file given on its own is not read as part of a CT series, in a few words."""
    try:
        ds = _read(path, pixels=False) if is_dicom_file(path) else None
    except (InvalidDicomError, OSError, ValueError, EOFError):
        ds = None
    if ds is not None and "LOCALIZER" in _image_type(ds):
        return "a localizer (scout) image, not a slice of a CT volume; open its series' slices"
    return "not a DICOM image file"


def _choose_series(
    folder: Path, headers: list[tuple[Path, pydicom.Dataset]], series_of: Path | None
) -> tuple[list[tuple[Path, pydicom.Dataset]], list[str]]:
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path, ds in headers:
        groups[str(ds.get("SeriesInstanceUID", ""))].append((path, ds))
    if series_of is not None:
        wanted = next((uid for uid, g in groups.items() if any(p == series_of for p, _ in g)), None)
        if wanted is None:
            raise VolumeError(f"{series_of}: {_why_not_read(series_of)}")
        return groups[wanted], []
    ranked = sorted(groups.items(), key=lambda item: (-_n_images(item[1]), item[0]))
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
    uid = ds.get("SeriesInstanceUID", "?")
    return f"'{name}'{number_text} ({_n_images(group)} images, UID {uid})"


def _n_images(group: list[tuple[Path, pydicom.Dataset]]) -> int:
    """Images of a series: files, with every frame of an enhanced file counted."""
    return sum(count_frames(ds) for _, ds in group)


def _require_same(
    folder: Path, frames: list[Frame], key: Callable[[Frame], np.ndarray], what: str, tol: float
) -> None:
    """Refuse frames whose ``key`` differs from the first frame's by more than ``tol``."""
    reference = np.asarray(key(frames[0]), dtype=np.float64)
    groups: list[tuple[np.ndarray, list[str]]] = [(reference, [])]
    for frame in frames:
        value = np.asarray(key(frame), dtype=np.float64)
        for known, names in groups:
            if known.shape == value.shape and np.abs(known - value).max() <= tol:
                names.append(frame.name)
                break
        else:
            groups.append((value, [frame.name]))
    if len(groups) > 1:
        parts = [
            f"{np.round(value, 4).tolist()} in {len(names)} image(s) (e.g. {names[0]})"
            for value, names in groups
        ]
        raise VolumeError(f"{folder}: the series mixes {what}: {'; '.join(parts)}")


def _geometry(folder: Path, frames: list[Frame]) -> tuple[list[Frame], np.ndarray]:
    """Frames sorted along the slice normal and the step between them (LPS mm).

    Several frames: the step is the mean distance vector between neighbours (sheared for a
    tilted gantry), with gaps, duplicates and scattered slices refused. One frame: the normal
    times SpacingBetweenSlices or SliceThickness (1 mm, with a warning, when neither is given).
    Slices run towards increasing patient coordinate along the step's largest component.
    """
    _require_same(folder, frames, lambda f: (f.rows, f.cols), "image sizes", 0)
    _require_same(
        folder,
        frames,
        lambda f: np.concatenate([f.row, f.col]),
        "orientations (ImageOrientationPatient)",
        ORIENTATION_TOLERANCE,
    )
    _require_same(folder, frames, lambda f: f.spacing, "pixel spacings", SPACING_TOLERANCE_MM)
    normal = np.cross(frames[0].row, frames[0].col)
    positions = np.array([f.position for f in frames])
    order = np.argsort(positions @ normal, kind="stable")
    frames = [frames[i] for i in order]
    positions = positions[order]
    if len(frames) > 1:
        step = _check_spacing(folder, frames, positions, normal)
    else:
        thickness = frames[0].thickness
        if thickness is None:
            thickness = DEFAULT_THICKNESS_MM
            warnings.warn(
                f"{frames[0].where}: a single slice without SpacingBetweenSlices or "
                f"SliceThickness; {thickness:g} mm assumed for volumes in mL",
                UserWarning,
                stacklevel=4,
            )
        step = normal * thickness
    if step[np.argmax(np.abs(step))] < 0:
        frames, step = frames[::-1], -step
    return frames, step


def _check_spacing(
    folder: Path, frames: list[Frame], positions: np.ndarray, normal: np.ndarray
) -> np.ndarray:
    """Uniform slice step as a vector (LPS mm); refuse gaps, duplicates and scattered slices.

    Messages give the slices' ImagePositionPatient (DICOM PS3.3 C.7.6.2.1.1) as stored, which
    a PACS shows; the position along the slice normal has the opposite sign for some
    orientations (a tester read 133 mm for a slice at z = -133).
    """

    def where(i: int) -> str:
        return "(" + ", ".join(f"{v:.2f}" for v in positions[i]) + ")"

    depth = positions @ normal
    steps = np.abs(np.diff(depth))
    duplicate = np.flatnonzero(steps < 1e-3)
    if duplicate.size:
        i = int(duplicate[0])
        raise VolumeError(
            f"{folder}: two slices at the same ImagePositionPatient {where(i)} mm "
            f"({frames[i].name}, {frames[i + 1].name}); several acquisitions in one series?"
        )
    typical = float(np.median(steps))
    tolerance = max(0.1 * typical, 0.02)
    bad = np.flatnonzero(np.abs(steps - typical) > tolerance)
    if bad.size:
        i = int(bad[0])
        ratio = steps[i] / typical
        cause = (
            f"about {round(ratio) - 1} slice(s) missing; the series is incomplete"
            if ratio > 1.5 and abs(ratio - round(ratio)) < 0.2
            else "uneven slice spacing, which one voxel grid cannot hold; resample the series "
            "to even spacing (3D Slicer, dcm2niix) first"
        )
        raise VolumeError(
            f"{folder}: slices are {typical:.3g} mm apart but {steps[i]:.3g} mm between "
            f"{frames[i].name} and {frames[i + 1].name} (ImagePositionPatient {where(i)} and "
            f"{where(i + 1)} mm): {cause}"
        )
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    expected = positions[0] + np.outer(np.arange(len(positions)), step)
    drift = float(np.abs(positions - expected).max())
    if drift > tolerance:
        raise VolumeError(
            f"{folder}: slice positions are not evenly spaced along one straight line (up to "
            f"{drift:.3g} mm from where evenly spaced slices would lie), which one voxel grid "
            "cannot hold; resample the series to even spacing (3D Slicer, dcm2niix) first"
        )
    return step


def _decode(path: Path) -> np.ndarray:
    """Pixel data of ``path`` as stored (one frame: rows x columns; enhanced: frames first)."""
    ds = _read(path, pixels=True)
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
    return pixels


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


def _frames_hu(frames: list[Frame]) -> Iterator[tuple[int, np.ndarray]]:
    """``(k, HU of frames[k])``, each frame rescaled with its own slope and intercept.

    Each file is decoded once (an enhanced file holds all frames), in file order.
    """
    wanted: dict[Path, list[int]] = defaultdict(list)
    for k, frame in enumerate(frames):
        wanted[frame.path].append(k)
    for path, positions in wanted.items():
        pixels = _decode(path)
        if pixels.ndim == 2:
            pixels = pixels[None]
        for k in positions:
            frame = frames[k]
            raw = pixels[frame.index or 0]
            if raw.shape != (frame.rows, frame.cols):
                raise VolumeError(
                    f"{frame.where}: pixel data of shape {raw.shape} but Rows x Columns "
                    f"{frame.rows} x {frame.cols}"
                )
            yield k, rescale_to_hu(raw, frame.slope, frame.intercept)


def _holding(hu: np.ndarray) -> np.dtype:
    """The smallest of int16, int32, int64 that holds integer ``hu``; float32 for fractions."""
    if np.issubdtype(hu.dtype, np.floating):
        return np.dtype(np.float32)
    lo, hi = int(hu.min()), int(hu.max())
    for dtype in (np.int16, np.int32):
        if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _stack_hu(frames: list[Frame]) -> np.ndarray:
    """HU of all frames, stacked (slice, row, column) in one type that holds every frame.

    Each frame is rescaled on its own (its own stored type, slope and intercept), so a series
    mixing unsigned and signed slices (raw = HU + 1024 with intercept -1024 next to raw = HU)
    is right slice by slice, and the stack never squeezes them into the first slice's type:
    int16 when every value fits (the usual CT case, decoded straight into the stack), widened
    to int32 or float32 (one copy) as soon as a frame needs it.
    """
    stack: np.ndarray | None = None
    for k, hu in _frames_hu(frames):
        needed = _holding(hu)
        if stack is None:
            stack = np.empty((len(frames), *hu.shape), dtype=needed)
        elif needed != stack.dtype:
            wider = np.result_type(stack.dtype, needed)
            stack = stack.astype(np.float32 if wider.kind == "f" else wider)
        stack[k] = hu
    assert stack is not None  # frames is never empty
    return stack


def _info(
    ds: pydicom.Dataset, frames: list[Frame], step: np.ndarray, others: list[str]
) -> dict[str, Any]:
    """Header facts worth showing; no patient name, ID, birth date or other identifiers."""

    def text(key: str) -> str:
        return str(ds.get(key, "") or "")

    first = frames[0]
    syntax = ds.file_meta.get("TransferSyntaxUID", None)
    return {
        "format": "DICOM enhanced (multi-frame)" if first.index is not None else "DICOM",
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
        "slice_thickness": "" if first.thickness is None else f"{first.thickness:g}",
        "image_orientation": [float(v) for v in (*first.row, *first.col)],
        "transfer_syntax": syntax.name if syntax is not None else "",
        "rescale_slope": first.slope,
        "rescale_intercept": first.intercept,
        "n_slices": len(frames),
        "slice_step_mm": float(np.linalg.norm(step)),
        "other_series": others,
        "qform_code": 1,
        "sform_code": 1,
    }


def read_dicom_series(folder: Path, series_of: Path | None = None) -> Volume:
    """Read one DICOM series (classic or enhanced) from ``folder`` into a :class:`Volume`.

    Parameters
    ----------
    folder : pathlib.Path
        Folder with the series' files (not searched recursively).
    series_of : pathlib.Path, optional
        Read the series this file belongs to; by default the largest series of the folder, with
        a warning naming it when there are several.

    Returns
    -------
    Volume
        HU in index order (column, row, slice), RAS affine; a single slice gives shape
        (columns, rows, 1).

    Raises
    ------
    VolumeError
        No images; a geometry or rescale tag absent, empty or malformed (the message names the
        file, the frame and the tag); mixed sizes, orientations or spacings; missing or
        duplicate slices; undecodable pixel data.
    """
    folder = Path(folder)
    headers = _headers(folder)
    if not headers:
        raise VolumeError(f"{folder}: no DICOM images in this folder{_series_below(folder)}")
    group, others = _choose_series(folder, headers, series_of)
    frames, step = _geometry(folder, read_frames(group))
    datasets = dict(group)
    _check_decoder(frames[0].path, datasets[frames[0].path])
    hu = _stack_hu(frames)
    first = frames[0]
    lps = np.eye(4)
    lps[:3, 0] = first.row * first.spacing[1]  # index i walks along a row: next column
    lps[:3, 1] = first.col * first.spacing[0]  # index j walks down a column: next row
    lps[:3, 2] = step
    lps[:3, 3] = first.position
    affine = LPS_TO_RAS @ lps
    ds = datasets[first.path]
    description = str(ds.get("SeriesDescription", "") or folder.name)
    info = _info(ds, frames, step, others)
    # Slice k's file, frame and SOP Instance UID, for a DICOM-SEG that references its source.
    info["slice_files"] = [frame.path.name for frame in frames]
    info["slice_frames"] = [frame.index for frame in frames]
    info["sop_instance_uids"] = [str(datasets[f.path].get("SOPInstanceUID", "")) for f in frames]
    # What a PACS viewer shows as the image number ("Im 147"): how a radiologist finds a slice
    # there (the series order counts from 0 at one end, a tester could not find "slice 3").
    info["instance_numbers"] = [_instance_number(datasets[f.path]) for f in frames]
    return Volume(hu.transpose(2, 1, 0), affine, str(folder), description, info)
