"""The CT volume type shared by every reader and writer.

A :class:`Volume` keeps the voxels in the file's own index order together with the affine that
maps those indices to RAS millimetres (nibabel's convention). Nothing is resampled on the way in
or out: display, inference and training reorient with :mod:`src_models.io.orientation` (axis
permutations and flips only), and results are written back on the source grid with the source
affine, so a label file always overlays its CT in any viewer.

Every refusal raises :class:`VolumeError` with a message that names the file and the problem,
because these messages end up in front of a user (napari notification, ``dsms`` error line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from .orientation import from_canonical, head_feet_axis, to_canonical

#: Label values of the Medical Segmentation Decathlon Task07 convention used everywhere.
LABEL_NAMES: dict[int, str] = {0: "background", 1: "pancreas", 2: "tumour"}

#: Largest distance (mm) between two affines that still counts as the same voxel grid.
AFFINE_TOLERANCE_MM = 1e-3


class VolumeError(ValueError):
    """A volume, label file or DICOM series that cannot be read or written as asked."""


@dataclass
class Volume:
    """Voxels in the file's own index order and the affine that places them in the patient.

    Attributes
    ----------
    array : numpy.ndarray
        3D voxel array (a 2D one becomes a volume of one slice, shape (X, Y, 1), the affine's
        third column giving the slice axis). For CT the values are Hounsfield units in the
        file's native dtype (int16 for most scanners); DICOM series use index order (column,
        row, slice).
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
        if np.ndim(self.array) == 2:  # one slice: the models are 2D and segment it like a volume
            self.array = np.asarray(self.array)[..., None]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`array` (the file's index order)."""
        return tuple(int(n) for n in self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (norms of the affine's columns)."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³: ``|det|`` of the affine's 3 x 3 part.

        Equal to the product of :attr:`spacing` on a rectangular grid; smaller on a sheared one
        (gantry tilt), where the product of column norms overstates every volume.
        """
        return voxel_volume_mm3(self.affine)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Anatomical direction each array axis increases towards, e.g. ``('L', 'A', 'S')``."""
        return tuple(str(code) for code in nib.aff2axcodes(self.affine))


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """One voxel's volume in mm³ for ``affine`` (index -> mm): ``|det A[:3, :3]|``."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def is_rectangular(affine: np.ndarray, tolerance: float = 1e-4) -> bool:
    """True when the grid's axes are perpendicular (a rotation times voxel sizes, no shear).

    Only such an affine fits a NIfTI qform (a quaternion and three voxel sizes); a sheared one
    (gantry tilt) fits the sform only. ``tolerance`` bounds the cosine between two axes.
    """
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    units = columns / np.linalg.norm(columns, axis=0)
    cosines = units.T @ units - np.eye(3)
    return bool(np.abs(cosines).max() <= tolerance)


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


def format_ml(millilitres: float) -> str:
    """A volume for people to read: one decimal, but three under 1 mL, so a small tumour
    (0.027 mL) does not read "0.0 mL", as if the stroke had done nothing (a tester). Files and
    JSON keep the full figure."""
    if 0 < abs(millilitres) < 0.001:
        return "< 0.001 mL"
    if 0 < abs(millilitres) < 1:
        return f"{millilitres:.3f} mL"
    return f"{millilitres:.1f} mL"


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


def on_grid_of(volume: Volume, reference: Volume, what: str = "volume") -> Volume:
    """``volume`` on ``reference``'s voxel grid: as it is, or with its axes reordered.

    Tools save labels in their own axis order (nibabel's ``as_closest_canonical`` writes RAS,
    ITK-based tools LPS). When both grids hold the same voxels in another order or direction,
    the voxels are permuted and flipped (``nibabel.orientations``, no interpolation), so each one
    keeps its place in the patient (mm) and nothing is resampled.

    Returns
    -------
    Volume
        ``volume`` itself when its grid is ``reference``'s; otherwise a new volume with the
        array in ``reference``'s index order (shape ``reference.shape``) and ``reference``'s
        affine, ``info["reoriented_from"]`` naming the file's axis codes (for example
        ``("R", "A", "S")``).

    Raises
    ------
    VolumeError
        The grids differ otherwise (voxel size, origin, extent, obliquity): the message of
        :func:`check_same_grid`.
    """
    try:
        check_same_grid(volume, reference, what)
        return volume
    except VolumeError:
        if volume.array.ndim != 3 or len(reference.shape) != 3:
            raise
        canonical, affine = to_canonical(volume.array, volume.affine)
        template = np.broadcast_to(np.uint8(0), reference.shape)
        ref_canonical, ref_affine = to_canonical(template, reference.affine)
        same = canonical.shape == ref_canonical.shape and np.allclose(
            affine, ref_affine, rtol=0, atol=AFFINE_TOLERANCE_MM
        )
        if not same:
            raise
    array = np.ascontiguousarray(from_canonical(canonical, reference.affine))
    info = {**volume.info, "reoriented_from": nib.aff2axcodes(volume.affine)}
    return Volume(array, reference.affine, volume.source, volume.description, info)


#: File names that announce a segmentation rather than an image.
LABEL_FILE_NAME = re.compile(r"label|seg|mask", re.IGNORECASE)


def looks_like_labels(volume: Volume) -> bool:
    """A label file: integer voxels, values within {0, 1, 2}, and a name that says so, the
    NIfTI intent NIFTI_INTENT_LABEL (which napari-dsms writes into its labels) or a DICOM
    Segmentation (Modality SEG, DICOM PS3.3 C.8.20), whatever its file name."""
    name = Path(volume.source).name
    marked = (
        volume.info.get("intent") == "label"
        or volume.info.get("modality") == "SEG"
        or LABEL_FILE_NAME.search(name)
    )
    if not marked or not np.issubdtype(volume.array.dtype, np.integer):
        return False
    return int(volume.array.min()) >= 0 and int(volume.array.max()) <= 2


#: Slices tilted further than this from axial (degrees) earn a warning: the models learnt from
#: axial slices, and a volume near 45 degrees may even be cut along another of its axes.
MAX_OBLIQUE_DEG = 30.0

#: Voxel sizes (mm) outside this range are not a CT scanner's: a damaged header.
VOXEL_MM = (0.05, 20.0)

#: A volume with at most this many distinct values is a mask or a label map, not a CT.
MASK_VALUES = 3

#: An abdominal CT in Hounsfield units holds air (about -1000 HU) around the body and in the
#: bowel; a volume whose lowest value is above this was probably not stored in HU.
AIR_HU = -500.0

#: No CT stores values above this (extended CT scales for metal end at 30,710 HU); above it
#: the pixel data were misread (a slice read as unsigned that holds signed values).
MAX_HU = 31_000.0

#: Width (mm) of a body that lies wholly inside the slice, from a newborn's abdomen to the
#: widest adult's: outside it the voxel sizes are wrong, though each looks like a scanner's
#: (a header scaled 10 times gave 481 mL of pancreas, one scaled by 0.2 gave 0 mL).
BODY_WIDTH_MM = (80.0, 700.0)


#: The axial slices the models read must be at least this wide each way (mm, pixels): they
#: segment a slice from the abdomen around the pancreas. A coronal slice of the shared CT was
#: read as 101 axial slices of 512 x 1 pixels and gave 0 mL of pancreas (the label holds 1.4
#: mL there), as did a 20 mm crop inside the pancreas, with exit status 0 (a tester).
MIN_SLICE_MM = 50.0
MIN_SLICE_PIXELS = 16


def check_ct(volume: Volume) -> list[str]:
    """Refuse what is plainly not a CT in Hounsfield units; return doubts as warning texts.

    The models read Hounsfield units through a fixed window (the paper's preprocessing), so
    another image gives labels and volumes in mL that mean nothing, with nothing to show it.

    Returns
    -------
    list of str
        Warnings: values that do not look like HU (no air, or an 8-bit image), voxel sizes
        outside :data:`VOXEL_MM`, a body wider or narrower than :data:`BODY_WIDTH_MM`
        (:func:`body_width_mm`), and slices tilted more than :data:`MAX_OBLIQUE_DEG` from
        axial.

    Raises
    ------
    VolumeError
        A label file (:func:`looks_like_labels`, or at most :data:`MASK_VALUES` distinct
        values), a DICOM series of another modality than CT (DICOM PS3.3 C.7.3.1, Modality),
        or values above :data:`MAX_HU`, or axial slices narrower than :data:`MIN_SLICE_MM`
        or :data:`MIN_SLICE_PIXELS` (a coronal or sagittal slice or slab, a small crop).
    """
    name = volume.source or volume.description or "the volume"
    if looks_like_labels(volume):
        raise VolumeError(f"{name}: this is a label file (values 0 to 2), not a CT to segment")
    _check_slice_size(volume, name)
    few = few_values(volume)
    if few is not None:
        raise VolumeError(f"{name}: {few}")
    modality = volume.info.get("modality", "CT")
    if modality != "CT":
        raise VolumeError(
            f"{name}: modality {modality}, not CT; the models read Hounsfield units and "
            "segment CT only"
        )
    highest = float(volume.array.max()) if volume.array.size else 0.0
    if highest > MAX_HU:
        axis, _ = head_feet_axis(volume.affine)
        slices = np.flatnonzero(
            np.moveaxis(np.asarray(volume.array) > MAX_HU, axis, 0).any(
                axis=tuple(range(1, volume.array.ndim))
            )
        )
        raise VolumeError(
            f"{name}: values up to {highest:g} HU in slice{'s' * (len(slices) > 1)} "
            f"{', '.join(map(str, slices[:5]))}{', …' if len(slices) > 5 else ''} (along the "
            f"head-feet axis, 0-based), beyond any CT scale (at most about {MAX_HU:g} HU): the "
            "pixel data were misread (PixelRepresentation or rescale slope and intercept of "
            "those slices?)"
        )
    doubts = []
    if volume.array.size and float(volume.array.min()) > AIR_HU:
        doubts.append(
            f"{name}: no voxel below {AIR_HU:g} HU (lowest {float(volume.array.min()):g}; "
            f"{volume.array.dtype}): an abdominal CT in Hounsfield units shows air at about "
            "-1000 HU. If the values were windowed or rescaled on export, labels and volumes "
            "will be wrong"
        )
    sizes = np.linalg.norm(np.asarray(volume.affine, dtype=np.float64)[:3, :3], axis=0)
    if not all(VOXEL_MM[0] <= size <= VOXEL_MM[1] for size in sizes):
        doubts.append(
            f"{name}: voxel sizes {' x '.join(f'{v:.3g}' for v in sizes)} mm, outside the "
            f"{VOXEL_MM[0]:g} to {VOXEL_MM[1]:g} mm of CT scanners: the header's geometry is "
            "probably wrong, and so would be the volumes in mL"
        )
    width = body_width_mm(volume)
    if width is not None and not BODY_WIDTH_MM[0] <= width <= BODY_WIDTH_MM[1]:
        doubts.append(
            f"{name}: the body measures {width:.0f} mm across with these voxel sizes "
            f"({' x '.join(f'{v:.3g}' for v in sizes)} mm), outside the {BODY_WIDTH_MM[0]:g} "
            f"to {BODY_WIDTH_MM[1]:g} mm of a patient: the header's geometry is probably "
            "wrong, and so would be the volumes in mL"
        )
    tilt = slice_tilt_deg(volume.affine)
    if tilt > MAX_OBLIQUE_DEG:
        doubts.append(
            f"{name}: the slices the models read are tilted {tilt:.0f} degrees from axial "
            "(an oblique acquisition or reformat); the models learnt from axial slices, so "
            "labels and volumes may be wrong. Resample the CT to axial slices first"
        )
    return doubts


def _check_slice_size(volume: Volume, name: str) -> None:
    """Refuse axial slices too small to segment (:data:`MIN_SLICE_MM`, :data:`MIN_SLICE_PIXELS`)."""
    if volume.array.ndim != 3:
        return
    axis, _ = head_feet_axis(volume.affine)
    in_plane = [a for a in range(3) if a != axis]
    sizes = np.linalg.norm(np.asarray(volume.affine, dtype=np.float64)[:3, :3], axis=0)
    pixels = [int(volume.array.shape[a]) for a in in_plane]
    widths = [n * sizes[a] for n, a in zip(pixels, in_plane, strict=True)]
    if min(pixels) < MIN_SLICE_PIXELS or min(widths) < MIN_SLICE_MM:
        raise VolumeError(
            f"{name}: the axial slices the models read are {pixels[0]} x {pixels[1]} pixels "
            f"({widths[0]:.0f} x {widths[1]:.0f} mm), too small for an abdomen around the "
            f"pancreas (at least {MIN_SLICE_PIXELS} pixels and {MIN_SLICE_MM:g} mm each way): "
            "a coronal or sagittal slice or slab, or a small crop, cannot be segmented; the "
            "models read whole axial slices"
        )


def body_width_mm(volume: Volume, slices: int = 9) -> float | None:
    """Median width (mm) of the body across the slices the models read, or ``None``.

    On up to ``slices`` slices spread along the head-feet axis, the body is the largest
    component above :data:`AIR_HU` (computed on about every 2 mm); its width is the longer side
    of its bounding box. Slices where it touches the slice's edge (a field of view cropped into
    the body) or that hold none say nothing and are skipped.
    """
    array = np.asarray(volume.array)
    if array.ndim != 3 or not array.size:
        return None
    axis, _ = head_feet_axis(volume.affine)
    in_plane = [a for a in range(3) if a != axis]
    sizes = np.linalg.norm(np.asarray(volume.affine, dtype=np.float64)[:3, :3], axis=0)
    steps = [max(1, int(2.0 // max(sizes[a], 1e-6))) for a in in_plane]
    widths = []
    # A view per slice: np.take would first copy a NIfTI's Fortran-ordered array whole (about
    # 1 s for 240 slices of 512 x 512, per call).
    along = np.moveaxis(array, axis, 0)
    for k in np.unique(np.linspace(0, array.shape[axis] - 1, slices).round().astype(int)):
        plane = along[k][:: steps[0], :: steps[1]] > AIR_HU
        components, count = ndimage.label(plane, np.ones((3, 3), dtype=bool))
        if count == 0:
            continue
        largest = int(np.bincount(components.ravel())[1:].argmax()) + 1
        rows, cols = ndimage.find_objects(components, max_label=largest)[largest - 1]
        if (
            rows.start == 0
            or cols.start == 0
            or rows.stop == plane.shape[0]
            or (cols.stop == plane.shape[1])
        ):
            continue
        widths.append(
            max(
                (rows.stop - rows.start) * steps[0] * sizes[in_plane[0]],
                (cols.stop - cols.start) * steps[1] * sizes[in_plane[1]],
            )
        )
    return float(np.median(widths)) if widths else None


def slice_tilt_deg(affine: np.ndarray) -> float:
    """Angle in degrees between the plane of the slices the models read and the axial plane.

    Those slices span the two array axes other than the one closest to head-feet
    (:func:`~src_models.io.orientation.head_feet_axis`, the engine's slice axis); their normal
    is compared with the S axis. 0 for an axial CT, the gantry angle for a tilted gantry.
    """
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    slice_axis, _ = head_feet_axis(affine)
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    normal = np.cross(columns[:, in_plane[0]], columns[:, in_plane[1]])
    cosine = abs(normal[2]) / np.linalg.norm(normal)
    return float(np.degrees(np.arccos(np.clip(cosine, 0.0, 1.0))))


def few_values(volume: Volume) -> str | None:
    """What a volume of a handful of values holds ("only air", "only the values 0, 1, 3: a mask
    or label file"), or ``None`` for a CT's hundreds of grey values.

    Every 4th voxel along each axis decides (a CT shows hundreds of grey values even there, a
    mask or label map, whatever its name or dtype, e.g. a Decathlon labelsTr file, a handful);
    the words name what the whole file holds (a tester's label file with a patch of 3 was said
    to hold "only the values 0, 1").
    """
    array = np.asarray(volume.array)
    sample = array[tuple(slice(None, None, 4) for _ in array.shape)]
    if not array.size or np.unique(sample).size > MASK_VALUES:
        return None
    values = np.unique(array)
    shown = ", ".join(f"{v:g}" for v in values[:6])
    if values.size > 6:
        shown += f", ... ({values.size} values in all)"
    if values.max() < AIR_HU:
        return f"holds only air ({shown} HU): no body to segment"
    return f"holds only the values {shown}: a mask or label file, not a CT to segment"


def describe(volume: Volume) -> str:
    """Several lines about a volume for ``dsms info`` and the Load CT panel.

    Besides shape, spacing, orientation and intensity range, it says what the reader converted
    or could not know: a spatial unit converted to mm, an unknown orientation, a sheared grid
    (the voxel volume then comes from ``|det|`` of the affine). Reader warnings are the
    caller's to show (``dsms`` prints them, napari notifies).
    """
    array = volume.array
    info = volume.info
    lo, hi = (array.min(), array.max()) if array.size else (0, 0)
    labels = looks_like_labels(volume)
    kind = "labels" if labels else "HU" if info.get("modality", "CT") == "CT" else "values"
    orientation = f"{''.join(volume.axcodes)} (axes increase towards these directions)"
    if info.get("orientation_unknown"):
        orientation = f"unknown (qform_code = sform_code = 0); {''.join(volume.axcodes)} assumed"
    lines = [
        f"source:      {volume.source or '(in memory)'}",
        f"description: {volume.description}",
        f"shape:       {' x '.join(str(n) for n in volume.shape)}",
        f"spacing:     {' x '.join(f'{s:.4g}' for s in volume.spacing)} mm",
        f"voxel:       {volume.voxel_volume_mm3:.4g} mm³",
        f"orientation: {orientation}",
        f"{kind}:{' ' * (12 - len(kind))}{lo:g} to {hi:g} ({array.dtype})",
    ]
    few = None if labels else few_values(volume)
    if few is not None:  # not HU: a tester read "HU: 0 to 3" for a label file with a 3 in it
        lines[-1] = f"values:      {lo:g} to {hi:g} ({array.dtype}); {few}"
    elif kind == "HU" and hi > MAX_HU:  # a tester's series read "HU: -1024 to 65535" unremarked
        lines[-1] += (
            f"; above any CT scale (at most about {MAX_HU:g} HU): pixel data misread "
            "(PixelRepresentation or rescale of some slices?), and segmenting it is refused"
        )
    if labels:  # the volumes a radiologist reads off a label file, in mL (|det| voxels)
        counts = [np.count_nonzero(array >= 1), np.count_nonzero(array == 2)]
        pancreas, tumour = (n * volume.voxel_volume_mm3 / 1000 for n in counts)
        lines.append(
            f"volumes:     pancreas {format_ml(pancreas)} (tumour included), tumour "
            f"{format_ml(tumour)}"
        )
    if "format" in info:
        lines.insert(2, f"format:      {info['format']}")
    if info.get("unit_to_mm", 1.0) != 1.0:
        lines.append(
            f"units:       the file is in {info['spatial_unit']} (xyzt_units); "
            f"converted to mm (x {info['unit_to_mm']:g})"
        )
    if not is_rectangular(volume.affine):
        lines.append(
            "grid:        sheared (gantry tilt); volumes use |det| of the affine, "
            f"{volume.voxel_volume_mm3:.4g} mm³ per voxel"
        )
    lines += [f"segment:     {segment}" for segment in info.get("segments", [])]
    lines += [f"references:  series {uid}" for uid in info.get("referenced_series_uids", [])]
    return "\n".join(lines)
