"""Labels as DICOM Segmentation (DICOM-SEG) objects, out and in, with highdicom.

A radiologist's labels belong in PACS next to the series they were drawn on. This module writes
labels 0/1/2 on a DICOM series' voxel grid as one binary Segmentation instance (DICOM PS3.3
A.51, Segmentation IOD) and reads a Segmentation instance from any tool (ours, 3D Slicer,
TotalSegmentator, MONAI Label) back into labels with their RAS affine.

Writing
    The SEG references the source series and every source SOP instance (one frame per labelled
    slice per segment, each pointing at its source image through the Derivation Image Sequence),
    and copies patient, study and frame-of-reference identifiers from the source headers; no
    identifier is invented. Segments are coded with SNOMED CT (DICOM CID 7150 / 7151):

    ============  ===============================================  ============================
    label         category (CID 7150)                              type (CID 7151)
    ============  ===============================================  ============================
    1 pancreas    91723000 Anatomical Structure                    15776009 Pancreas
    2 tumour      49755003 Morphologically Abnormal Structure      108369006 Neoplasm, anatomic
                                                                   region 15776009 Pancreas
    ============  ===============================================  ============================

    The pancreas segment is labelled "Pancreas excluding tumour": label 1 leaves the tumour out
    (MSD Task07's convention), so a PACS measuring that segment alone gets the organ without it.
    The algorithm (model name, architecture, napari-dsms version, SHA-256 of the checkpoint file)
    goes into each segment's Segment Algorithm Identification; the segment type is AUTOMATIC for
    an unedited prediction, SEMIAUTOMATIC once a person corrected it, MANUAL without a model.

    An absent structure (no tumour) gets no segment: empty frames are omitted, as highdicom and
    dcmqi do, and a segment without any frame is left out rather than written frameless, which
    several viewers fail on. Labels with neither structure keep the pancreas segment with all its
    frames empty, because a Segmentation must describe at least one segment; readers then show
    an empty pancreas, which is the finding.

Reading
    Segments are mapped to labels by their coded property type, not by their number or name:
    pancreas (15776009) -> 1; neoplasm / tumour (108369006) and adenocarcinoma of pancreas
    (700423003) -> 2, as are mass (4147007) and lesion (52988006) when their anatomic region is
    the pancreas or not given. Other segments (liver, vessels, ...) are ignored with a warning.
    Where segments overlap, tumour wins over pancreas (a pancreas segment that includes the
    tumour, as the paper's target does, still gives label 2 on the tumour). The frames' own
    positions give the affine, in the index order of :func:`src_models.io.dicom.read_dicom_series`
    (column, row, slice; slices towards increasing patient coordinate), so a SEG of a series
    overlays the series read by this package voxel for voxel.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from .atomic import atomic_path, output_place_problem
from .dicom import (
    LPS_TO_RAS,
    ORIENTATION_TOLERANCE,
    SEGMENTATION_SOP_CLASSES,
    SPACING_TOLERANCE_MM,
    is_dicom_file,
)
from .volume import Volume, VolumeError, label_array, on_grid_of

#: File endings that choose DICOM-SEG output.
SEG_SUFFIXES = (".dcm",)

#: SNOMED CT codes read as pancreas (label 1).
PANCREAS_TYPES = frozenset({codes.SCT.Pancreas.value})
#: SNOMED CT codes read as tumour (label 2) wherever they are.
TUMOUR_TYPES = frozenset({codes.SCT.Neoplasm.value, codes.SCT.AdenocarcinomaOfPancreas.value})
#: SNOMED CT codes read as tumour when the anatomic region is the pancreas or not given.
FINDING_TYPES = frozenset({codes.SCT.Mass.value, codes.SCT.Lesion.value})

#: Content Label (CS, at most 16 characters) of the SEG instances written here.
CONTENT_LABEL = "PANCREAS"
_MANUFACTURER = "napari-dsms"

#: Patient and study attributes of type 2 (present, possibly empty) that the SEG copies from
#: its source (DICOM PS3.3 C.7.1.1, C.7.2.1); highdicom needs them present.
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)

# highdicom warns that a one-part Patient's Name (common in anonymised data) may be a mistake;
# the name is the source's and is copied unchanged, so the warning says nothing to our user.
_PERSON_NAME_WARNING = r".*unlikely to represent the intended person name.*"


@dataclass(frozen=True)
class Algorithm:
    """The model that produced the labels, as the SEG's Segment Algorithm Identification.

    Attributes
    ----------
    name : str
        Model name: the bundled name or the checkpoint file's stem.
    architecture : str
        One of :data:`src_models.ARCHITECTURES`.
    version : str
        napari-dsms version that ran the model.
    checkpoint_sha256 : str
        SHA-256 of the checkpoint file (hex), which identifies the exact weights.
    """

    name: str
    architecture: str
    version: str
    checkpoint_sha256: str

    @classmethod
    def from_checkpoint(cls, meta: dict[str, Any], version: str) -> Algorithm:
        """Describe the checkpoint whose metadata ``meta`` (from ``load_checkpoint``) gives.

        Parameters
        ----------
        meta : dict
            Needs ``"path"`` (the checkpoint file) and ``"arch"``; an ensemble's
            ``"members"`` (their files) are hashed in order instead of ``"path"``.
        version : str
            napari-dsms version (``src_models.version.__version__``).
        """
        path = Path(meta["path"])
        digest = hashlib.sha256()
        for member in meta.get("members") or [path]:  # an ensemble: every member's file
            with open(member, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return cls(path.stem, str(meta["arch"]), version, digest.hexdigest())

    def identification(self) -> hd.AlgorithmIdentificationSequence:
        """highdicom's Algorithm Identification Sequence (DICOM PS3.3 C.8.20.2.1)."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=codes.cid7162.ArtificialIntelligence,
            version=self.version,
            parameters={
                "architecture": self.architecture,
                "checkpoint_sha256": self.checkpoint_sha256,
            },
        )


def _segment_description(
    number: int, label: int, algorithm: Algorithm | None, corrected: bool
) -> hd.seg.SegmentDescription:
    if algorithm is None:
        kind = hd.seg.SegmentAlgorithmTypeValues.MANUAL
    elif corrected:
        kind = hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
    else:
        kind = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    if label == 1:
        coding = {
            # Label 1 is the organ without its tumour (MSD Task07's convention): a PACS that
            # measures this segment alone must not read it as the whole pancreas.
            "segment_label": "Pancreas excluding tumour",
            "segmented_property_category": codes.SCT.AnatomicalStructure,
            "segmented_property_type": codes.SCT.Pancreas,
        }
    else:
        coding = {
            "segment_label": "Pancreatic tumour",
            "segmented_property_category": codes.SCT.MorphologicallyAbnormalStructure,
            "segmented_property_type": codes.SCT.Neoplasm,
            "anatomic_regions": [codes.SCT.Pancreas],
        }
    return hd.seg.SegmentDescription(
        segment_number=number,
        algorithm_type=kind,
        algorithm_identification=None if algorithm is None else algorithm.identification(),
        **coding,
    )


def check_seg_target(path: Path, reference_path: str | os.PathLike[str] | None) -> None:
    """Refuse a SEG output name that cannot work (missing folder, a folder, the source).

    Raises
    ------
    VolumeError
        The folder is missing, ``path`` is a folder, or ``path`` lies in the source series
        folder (it would become part of the series' folder and be read with it).
    """
    problem = output_place_problem(path)
    if problem:
        raise VolumeError(problem)
    if reference_path:
        source = Path(reference_path).resolve()
        target = path.resolve()
        if target == source or source in target.parents:
            raise VolumeError(
                f"{path}: refusing to write into the source DICOM folder {reference_path}; "
                "choose another folder"
            )


def _source_images(reference: Volume) -> tuple[list[pydicom.Dataset], list[int]]:
    """Headers of the reference's source images, and for each slice k its source frame.

    A classic series gives one header per slice (slice k is source image k); an enhanced CT
    gives its one multi-frame header, and slice k is the frame the reader took it from. Each
    file must still hold the SOP instance that was read.
    """
    info = reference.info
    uids = info.get("sop_instance_uids")
    names = info.get("slice_files")
    if not str(info.get("format", "")).startswith("DICOM") or not uids or not names:
        kind = info.get("format", "not a file")
        raise VolumeError(
            f"{reference.source or 'labels'}: DICOM-SEG needs labels of a DICOM series (it "
            f"references the series' images); this source is {kind}; write NIfTI "
            "(.nii.gz) instead"
        )
    folder = Path(reference.source)
    headers = []
    for name, uid in dict(zip(names, uids, strict=True)).items():
        path = folder / name
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise VolumeError(
                f"{path}: source image cannot be read for the SEG's references ({exc})"
            ) from exc
        if str(ds.get("SOPInstanceUID", "")) != uid:
            raise VolumeError(f"{path}: the file changed since the series was read")
        for key in _TYPE_2:  # may be empty (unknown) but present; left empty, never made up
            if key not in ds:
                setattr(ds, key, "")
        headers.append(ds)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if not str(headers[0].get(key, "") or ""):
            raise VolumeError(
                f"{folder / names[0]}: no {key}; a DICOM-SEG must carry the source's and none "
                "can be made up"
            )
    _share_plane(headers)
    frames = info.get("slice_frames") or [None] * len(names)
    if frames[0] is None:
        return headers, list(range(len(names)))
    if len(headers) != 1:
        raise VolumeError(
            f"{folder}: the series spreads over {len(headers)} multi-frame files; a DICOM-SEG "
            "can reference one multi-frame image only"
        )
    return headers, [int(frame) for frame in frames]


def _share_plane(headers: list[pydicom.Dataset]) -> None:
    """Give every slice header the first one's orientation and pixel spacing, in memory.

    The reader takes a series whose slices' ImageOrientationPatient or PixelSpacing differ by
    rounding (``0.999999`` against ``1``; :data:`~src_models.io.dicom.ORIENTATION_TOLERANCE`,
    :data:`~src_models.io.dicom.SPACING_TOLERANCE_MM`) as one volume, but highdicom refuses
    source images without one shared plane: a tester's series segmented fully and then failed
    to export. The files on disk are not touched.
    """
    for key, tolerance in (
        ("ImageOrientationPatient", ORIENTATION_TOLERANCE),
        ("PixelSpacing", SPACING_TOLERANCE_MM),
    ):
        first = headers[0].get(key)
        if first is None:
            continue
        for ds in headers[1:]:
            value = ds.get(key)
            if value is None or len(value) != len(first):
                continue
            if np.allclose(np.asarray(value, float), np.asarray(first, float), atol=tolerance):
                setattr(ds, key, first)


def _series_description(algorithm: Algorithm | None, corrected: bool) -> str:
    """Series Description (LO, at most 64 characters) that says what the series is."""
    if algorithm is None:
        how = "manual"
    else:
        how = f"{algorithm.name}, {'corrected' if corrected else 'automatic'}"
    return f"Pancreas/tumour SEG ({how})"[:64]


def write_seg(
    path: str | os.PathLike[str],
    labels: np.ndarray | Volume,
    reference: Volume,
    algorithm: Algorithm | None = None,
    corrected: bool = False,
) -> Path:
    """Write labels as a binary DICOM-SEG instance that references the source series.

    Parameters
    ----------
    path : str or path-like
        Output file (``.dcm`` by convention); written to a temporary name and renamed.
    labels : numpy.ndarray or Volume
        Values 0 background, 1 pancreas, 2 tumour, shape ``reference.shape``, in the reference's
        index order (column, row, slice for a DICOM series).
    reference : Volume
        The DICOM series the labels were drawn on, as read by
        :func:`src_models.io.dicom.read_dicom_series` (its ``info`` lists each slice's file and
        SOP Instance UID).
    algorithm : Algorithm, optional
        The model that made the labels; ``None`` marks the segments MANUAL.
    corrected : bool
        A person edited the model's labels: segments are SEMIAUTOMATIC instead of AUTOMATIC.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    VolumeError
        The reference is not a DICOM series, its files changed or lack study identifiers, the
        labels are not 0/1/2 on its grid, or the output path is unusable.
    """
    path = Path(path)
    check_seg_target(path, reference.source)
    if isinstance(labels, Volume):
        labels = on_grid_of(labels, reference, what="labels")
    array = label_array(labels.array if isinstance(labels, Volume) else labels, str(path))
    if array.shape != reference.shape:
        raise VolumeError(
            f"{path}: labels of shape {array.shape} do not fit the series "
            f"{reference.source} of shape {reference.shape}"
        )
    headers, source_frame = _source_images(reference)
    present = [value for value in (1, 2) if np.any(array == value)] or [1]
    # Slice k is the (rows, columns) image array[:, :, k].T, placed at its source frame, so
    # frame i of pixel_array lies on source image (or multi-frame frame) i; one channel per
    # segment.
    n_source = int(headers[0].get("NumberOfFrames", 1) or 1) if len(headers) == 1 else len(headers)
    frames = np.zeros((n_source, *array.shape[1::-1], len(present)), dtype=np.uint8)
    for channel, value in enumerate(present):
        frames[source_frame, :, :, channel] = array.transpose(2, 1, 0) == value
    descriptions = [
        _segment_description(number, value, algorithm, corrected)
        for number, value in enumerate(present, start=1)
    ]
    try:
        source_number = int(headers[0].get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        source_number = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PERSON_NAME_WARNING)
        logger = logging.getLogger("highdicom")  # parent of highdicom.image, which warns
        level = logger.level  # "Encoding an empty image ..." for labels without structures
        logger.setLevel(logging.ERROR)
        try:
            seg = hd.seg.Segmentation(
                source_images=headers,
                pixel_array=frames,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=1000 + source_number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer=_MANUFACTURER,
                manufacturer_model_name=algorithm.name if algorithm else _MANUFACTURER,
                software_versions=algorithm.version if algorithm else _MANUFACTURER,
                device_serial_number=algorithm.checkpoint_sha256[:16] if algorithm else "manual",
                content_label=CONTENT_LABEL,
                content_description="Pancreas and pancreatic tumour",
                series_description=_series_description(algorithm, corrected),
                omit_empty_frames=True,
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise VolumeError(f"{path}: the DICOM-SEG cannot be built ({exc})") from exc
        finally:
            logger.setLevel(level)
    # Pixel Measures need a Slice Thickness; highdicom copies the source's, which CT may leave
    # empty (type 2). The slice step is then the thickness each frame stands for.
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if measures.get("SliceThickness", None) in (None, ""):
        measures.SliceThickness = float(reference.spacing[2])
    with atomic_path(path, suffix=".dcm") as temporary:
        seg.save_as(temporary)
    return path


def is_seg_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a DICOM file of the Segmentation SOP classes."""
    path = Path(path)
    if not path.is_file() or not is_dicom_file(path):
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # a damaged header is the series reader's to report
        return False
    return str(ds.get("SOPClassUID", "")) in SEGMENTATION_SOP_CLASSES


def _label_of(item: pydicom.Dataset) -> int:
    """Label value (1 pancreas, 2 tumour) a segment's codes stand for; 0 for anything else."""
    kind = item.SegmentedPropertyTypeCodeSequence[0].CodeValue
    if kind in PANCREAS_TYPES:
        return 1
    if kind in TUMOUR_TYPES:
        return 2
    if kind in FINDING_TYPES:
        regions = {
            region.CodeValue
            for region in [
                *item.get("AnatomicRegionSequence", []),
                *item.SegmentedPropertyTypeCodeSequence[0].get("AnatomicRegionSequence", []),
            ]
        }
        if not regions or regions & PANCREAS_TYPES:
            return 2
    return 0


def _segment_name(item: pydicom.Dataset) -> str:
    code = item.SegmentedPropertyTypeCodeSequence[0]
    return f"#{item.SegmentNumber} '{item.get('SegmentLabel', '')}' ({code.CodeMeaning})"


def _sheared_frames(
    path: Path, seg: hd.seg.Segmentation, numbers: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The SEG's frames as highdicom's (slice, row, column, segment) array and LPS affine, for
    frames stacked by one constant step that need not be along their normal (a tilted gantry,
    whose CT :func:`~src_models.io.dicom.read_dicom_series` reads with a sheared affine).

    The frame positions come from the per-frame functional groups (DICOM PS3.3 C.7.6.16.2.3,
    Plane Position); a SEG may skip slices without labels, so every position must lie a whole
    number of steps from the first.

    Raises
    ------
    VolumeError
        The positions do not lie on one line at whole multiples of one step.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    frames = seg.PerFrameFunctionalGroupsSequence
    orientation = np.asarray(
        _macro(frames[0], shared, "PlaneOrientationSequence").ImageOrientationPatient, float
    )
    row_dir, col_dir = orientation[:3], orientation[3:]
    measures = _macro(frames[0], shared, "PixelMeasuresSequence")
    pixel_spacing = np.array([float(v) for v in measures.PixelSpacing])
    positions = np.array(
        [[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] for f in frames]
    )
    segment_of = [  # per frame, or once for all frames when the SEG has one segment
        int(_macro(f, shared, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        for f in frames
    ]
    normal = np.cross(row_dir, col_dir)
    places = np.unique(np.round(positions, 4), axis=0)
    places = places[np.argsort(places @ normal)]
    origin = places[0]
    steps = np.diff(places, axis=0)
    step = steps[np.argmin(np.linalg.norm(steps, axis=1))] if len(steps) else normal
    index = np.rint((positions - origin) @ step / (step @ step)).astype(int)
    if len(steps):  # least squares over every frame: positions are rounded decimal strings
        design = np.c_[np.ones(len(index)), index]
        (origin, step), *_ = np.linalg.lstsq(design, positions, rcond=None)
        if not np.allclose(origin + np.outer(index, step), positions, atol=0.01):
            raise VolumeError(
                f"{path}: the frames do not form a regularly spaced volume (their positions do "
                "not lie whole steps apart on one line)"
            )
    pixels = np.asarray(seg.pixel_array).reshape(len(frames), int(seg.Rows), int(seg.Columns))
    if str(seg.SegmentationType) == "FRACTIONAL":
        pixels = pixels / float(seg.MaximumFractionalValue)
    stacked = np.zeros((int(index.max()) + 1, *pixels.shape[1:], len(numbers)), pixels.dtype)
    for frame, (slot, number) in enumerate(zip(index, segment_of, strict=True)):
        if number in numbers:
            stacked[slot, :, :, numbers.index(number)] = pixels[frame]
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_dir * pixel_spacing[0]  # rows are PixelSpacing[0] apart
    affine[:3, 2] = row_dir * pixel_spacing[1]
    affine[:3, 3] = origin
    return stacked, affine


def _macro(frame: pydicom.Dataset, shared: pydicom.Dataset, sequence: str) -> pydicom.Dataset:
    """A functional group macro of one frame, or the shared one (DICOM PS3.3 C.7.6.16)."""
    group = frame if sequence in frame else shared
    return group[sequence][0]


def _to_our_axes(array: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """highdicom's (slice, row, column) and LPS affine -> (column, row, slice) and RAS affine.

    The slice axis is flipped where needed so that it runs towards increasing patient
    coordinate along its main direction, as :func:`~src_models.io.dicom.read_dicom_series` does.
    """
    array = array.transpose(2, 1, 0)
    lps = affine_lps[:, [2, 1, 0, 3]].copy()
    step = lps[:3, 2]
    if step[np.argmax(np.abs(step))] < 0:
        lps[:3, 3] += step * (array.shape[2] - 1)
        lps[:3, 2] = -step
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array), LPS_TO_RAS @ lps


def onto_grid(labels: Volume, reference: Volume) -> np.ndarray:
    """Place labels whose grid is part of ``reference``'s grid on the whole of it.

    A SEG holds only the slices with labels; this puts them at their slices of the CT.

    Returns
    -------
    numpy.ndarray
        uint8 of ``reference.shape``, zero outside the labels' slices.

    Raises
    ------
    VolumeError
        The labels' voxels do not coincide with voxels of the reference (another orientation,
        spacing, or a shift by a fraction of a voxel), or lie partly outside it.
    """
    name = labels.source or "labels"
    mapping = np.linalg.inv(reference.affine) @ labels.affine
    offset = mapping[:3, 3]
    whole = np.rint(offset)
    if not (
        np.allclose(mapping[:3, :3], np.eye(3), atol=1e-3) and np.allclose(offset, whole, atol=1e-2)
    ):
        raise VolumeError(
            f"{name}: its voxels do not lie on the voxel grid of {reference.source or 'the CT'} "
            "(another orientation, spacing or position); it belongs to another series"
        )
    start = whole.astype(int)
    stop = start + np.asarray(labels.shape)
    if np.any(start < 0) or np.any(stop > np.asarray(reference.shape)):
        raise VolumeError(
            f"{name}: its frames reach outside {reference.source or 'the CT'} "
            f"(voxels {start.tolist()} to {(stop - 1).tolist()} of a {reference.shape} grid)"
        )
    out = np.zeros(reference.shape, dtype=np.uint8)
    out[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = labels.array
    return out


def read_seg(path: str | os.PathLike[str]) -> Volume:
    """Read a DICOM-SEG file as labels 0/1/2 with the RAS affine of its frames.

    Parameters
    ----------
    path : str or path-like
        A Segmentation instance (binary or fractional; fractional values of at least one half
        count as inside).

    Returns
    -------
    Volume
        uint8 labels, index order (column, row, slice), spanning the SEG's frames (often only
        the slices that hold labels; :func:`onto_grid` places them on the whole series).

    Raises
    ------
    VolumeError
        The file is not a readable Segmentation, holds no pancreas or tumour segment, or its
        frames do not form a regularly spaced volume.
    """
    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # highdicom and pydicom raise many types for foreign files
        raise VolumeError(f"{path}: not a readable DICOM-SEG file ({exc})") from exc
    wanted: dict[int, int] = {}
    ignored = []
    for item in seg.SegmentSequence:
        value = _label_of(item)
        if value:
            wanted[int(item.SegmentNumber)] = value
        else:
            ignored.append(_segment_name(item))
    if not wanted:
        raise VolumeError(
            f"{path}: no pancreas or pancreatic tumour segment among "
            f"{', '.join(ignored) or 'no segments'}"
        )
    if ignored:
        warnings.warn(
            f"{path}: ignoring segments that are neither pancreas nor tumour: {', '.join(ignored)}",
            UserWarning,
            stacklevel=2,
        )
    numbers = sorted(wanted)
    try:
        volume = seg.get_volume(segment_numbers=numbers, combine_segments=False)
        stacked, affine_lps = np.asarray(volume.array), np.asarray(volume.affine, dtype=float)
    except (ValueError, RuntimeError):
        # highdicom stacks frames along their normal only; a tilted gantry's are sheared.
        stacked, affine_lps = _sheared_frames(path, seg, numbers)
    if np.issubdtype(stacked.dtype, np.floating):
        stacked = stacked >= 0.5
    masks = stacked.reshape(*stacked.shape[:3], len(numbers)).astype(bool)
    labels = np.zeros(masks.shape[:3], dtype=np.uint8)
    for value in (1, 2):  # tumour last: it wins where segments overlap
        channels = [i for i, number in enumerate(numbers) if wanted[number] == value]
        if channels:
            labels[masks[..., channels].any(axis=-1)] = value
    array, affine = _to_our_axes(labels, affine_lps)
    references = [str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])]
    info = {
        "format": "DICOM-SEG",
        "modality": "SEG",
        "series_uid": str(seg.SeriesInstanceUID),
        "series_description": str(seg.get("SeriesDescription", "") or ""),
        "referenced_series_uids": references,
        "segments": [
            f"{_segment_name(item)} -> {wanted.get(int(item.SegmentNumber), 'ignored')}"
            for item in seg.SegmentSequence
        ],
        "qform_code": 1,
        "sform_code": 1,
    }
    description = info["series_description"] or path.name
    return Volume(array, affine, str(path), description, info)
