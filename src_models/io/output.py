"""One way to write labels in the format a user asks for: NIfTI or DICOM-SEG.

``dsms predict``, ``dsms refine``, napari's Save and the review dock's export all call
:func:`write_output`, so a file name means the same format everywhere: ``.nii`` / ``.nii.gz``
give NIfTI, ``.dcm`` gives DICOM-SEG, and an explicit format overrides the name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .nifti import NIFTI_SUFFIXES, write_labels
from .seg import SEG_SUFFIXES, Algorithm, check_seg_target, write_seg
from .volume import Volume, VolumeError

#: Values of ``format`` (and of the ``--format`` option).
FORMATS = ("auto", "nifti", "seg")


def output_format(path: str | os.PathLike[str], format: str = "auto") -> str:
    """``"nifti"`` or ``"seg"`` for an output file name and a requested format.

    Raises
    ------
    VolumeError
        ``format`` is unknown, or ``"auto"`` and the name ends in neither a NIfTI nor a
        DICOM ending, or the name's NIfTI ending contradicts ``format="seg"``.
    """
    path = Path(path)
    name = path.name.lower()
    if format not in FORMATS:
        raise VolumeError(f"{path}: unknown output format {format!r}; choose one of {FORMATS}")
    if format == "auto":
        if name.endswith(NIFTI_SUFFIXES):
            return "nifti"
        if name.endswith(SEG_SUFFIXES):
            return "seg"
        raise VolumeError(
            f"{path}: output must end in .nii or .nii.gz (NIfTI) or .dcm (DICOM-SEG), "
            "or give the format"
        )
    if format == "seg" and name.endswith(NIFTI_SUFFIXES):
        raise VolumeError(f"{path}: a DICOM-SEG file cannot have a NIfTI name; use .dcm")
    if format == "nifti" and not name.endswith(NIFTI_SUFFIXES):
        raise VolumeError(f"{path}: output must be a NIfTI file ending in .nii or .nii.gz")
    return format


def check_output(
    path: str | os.PathLike[str], reference: Volume | None = None, format: str = "auto"
) -> str:
    """Refuse an output that cannot be written before any time is spent; return its format.

    Parameters
    ----------
    path : str or path-like
        The labels file to be written.
    reference : Volume, optional
        The source volume, when already read: DICOM-SEG is refused for a source that is not a
        DICOM series (a NIfTI file has no SOP instances to reference).
    format : str
        One of :data:`FORMATS`.

    Raises
    ------
    VolumeError
        As :func:`output_format`, or the source cannot give a DICOM-SEG.
    """
    kind = output_format(path, format)
    if kind == "seg":
        check_seg_target(Path(path), reference.source if reference is not None else None)
        if reference is not None and not reference.info.get("sop_instance_uids"):
            raise VolumeError(
                f"{path}: DICOM-SEG output needs a DICOM series as input, but "
                f"{reference.source or 'the source'} is "
                f"{reference.info.get('format', 'not a DICOM series')}; write .nii.gz instead"
            )
    return kind


def write_output(
    path: str | os.PathLike[str],
    labels: np.ndarray | Volume,
    reference: Volume,
    format: str = "auto",
    algorithm: Algorithm | None = None,
    corrected: bool = False,
) -> Path:
    """Write labels on ``reference``'s grid as NIfTI or DICOM-SEG.

    Parameters
    ----------
    path : str or path-like
        Output file; its ending chooses the format when ``format`` is ``"auto"``.
    labels : numpy.ndarray or Volume
        0 background, 1 pancreas, 2 tumour, in ``reference``'s index order and shape.
    reference : Volume
        The CT the labels belong to (a DICOM series for DICOM-SEG).
    format : str
        ``"auto"``, ``"nifti"`` or ``"seg"``.
    algorithm : Algorithm, optional
        The model that made the labels (DICOM-SEG only; ``None`` means drawn by hand).
    corrected : bool
        A person edited the model's labels (DICOM-SEG segment type SEMIAUTOMATIC).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    VolumeError
        Bad name or format, labels not on the reference grid, or DICOM-SEG asked for a source
        that is not a DICOM series.
    """
    if check_output(path, reference, format) == "seg":
        return write_seg(path, labels, reference, algorithm=algorithm, corrected=corrected)
    return write_labels(path, labels, reference)
