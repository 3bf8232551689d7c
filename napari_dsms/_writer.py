"""npe2 writer: a Labels layer -> NIfTI or DICOM-SEG on the CT's own voxel grid.

The layer holds canonical data; its metadata (set by the reader, the sample and
:func:`napari_dsms._layers.new_labels_like`) records the CT's affine and native shape, which the
writers need to put every voxel back where the CT has it. ``.nii`` / ``.nii.gz`` give NIfTI with
the CT's affine; ``.dcm`` gives a DICOM-SEG that references the CT's DICOM series
(:func:`src_models.io.write_output` chooses). :func:`export_labels` is meant for every labels
export from napari (Save here, the review dock's export), so all of them name the model and
mark corrections the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from src_models import autosave, corrections
from src_models.io import NIFTI_SUFFIXES, Algorithm, write_output
from src_models.version import __version__

from ._layers import (
    AUTOSAVE_KEY,
    MODEL,
    PREDICTION,
    REVIEWED,
    canonical_to_volume,
    session_from_layer,
)


def provenance(data: Any, metadata: dict[str, Any]) -> tuple[Algorithm | None, bool]:
    """The model that made a labels layer and whether a person changed its labels since.

    Returns
    -------
    algorithm : Algorithm or None
        From ``metadata[MODEL]`` (set by the Segment dock); ``None`` for labels drawn by hand
        or read from a file. A model whose checkpoint file is not known or was moved away
        keeps its name and architecture with the digest ``"unavailable"``.
    corrected : bool
        ``data`` differs from the unedited prediction ``metadata[PREDICTION]``.
    """
    model = metadata.get(MODEL)
    if not model or "arch" not in model:
        return None, False
    try:
        algorithm = Algorithm.from_checkpoint(
            {"path": model["checkpoint"], "arch": model["arch"]}, __version__
        )
    except (KeyError, OSError):
        name = model.get("name") or model["arch"]
        algorithm = Algorithm(name, model["arch"], __version__, "unavailable")
    prediction = metadata.get(PREDICTION)
    corrected = prediction is not None and not np.array_equal(np.asarray(data), prediction)
    return algorithm, corrected


def export_labels(
    path: str | Path,
    data: Any,
    metadata: dict[str, Any],
    name: str = "labels",
    format: str = "auto",
) -> Path:
    """Write a labels layer's data (canonical) on its CT's grid as NIfTI or DICOM-SEG.

    Parameters
    ----------
    path : str or Path
        Output file; ``.nii`` / ``.nii.gz`` -> NIfTI, ``.dcm`` -> DICOM-SEG (``format="auto"``).
    data : array-like
        The layer's canonical uint8 data.
    metadata : dict
        ``layer.metadata``: the CT's geometry, and for model labels ``MODEL`` / ``PREDICTION``,
        which give the SEG's algorithm and AUTOMATIC / SEMIAUTOMATIC segment type.
    name : str
        Layer name for error messages.
    format : str
        ``"auto"``, ``"nifti"`` or ``"seg"``.

    Raises
    ------
    VolumeError
        No CT geometry, data that no longer fits it, values other than 0, 1, 2, the CT's own
        file or folder as the target, or DICOM-SEG for a CT that is not a DICOM series.
    """
    # The returned volume carries the CT's affine, shape, source and info: the reference.
    volume = canonical_to_volume(data, metadata, name)
    algorithm, corrected = provenance(data, metadata)
    written = write_output(
        path, volume.array, volume, format, algorithm=algorithm, corrected=corrected
    )
    # The export now holds the work: its journal goes, and so does a save of this same state
    # still due from a stroke made just before.
    autosave.discard(metadata.get(AUTOSAVE_KEY), data, metadata.get(REVIEWED, ()))
    return written


def write_labels_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari's Save for one Labels layer; ``.nii.gz`` is added when the name has no extension.

    Writes the same side-car as the Review dock's export (:func:`src_models.corrections.
    sidecar`: model, edited, reviewed and tool slices, volumes) from what the layer records; a
    tester's Save had written none, and then removed the autosave journal that held the
    reviewed slices. Refuses (``VolumeError``, shown by napari) what :func:`export_labels`
    refuses; when the side-car cannot be written, the labels file is removed again. After a
    successful write the layer's autosave journal (:mod:`napari_dsms._autosave`) is removed.
    """
    target = Path(path)
    if not target.name.lower().endswith(NIFTI_SUFFIXES) and not target.suffix:
        target = target.with_name(target.name + ".nii.gz")
    metadata = meta.get("metadata") or {}
    name = meta.get("name", "labels")
    labels = np.asarray(data)
    scale = meta.get("scale") or (1.0,) * labels.ndim
    session = session_from_layer(labels, metadata, scale[-3:], name=name)
    written = export_labels(target, data, metadata, name)
    try:
        corrections.write_sidecar(written, session.sidecar(written, "labels"))
    except (ValueError, OSError) as error:
        written.unlink(missing_ok=True)
        raise OSError(f"{error}; the labels file {written} was not kept") from error
    return [str(written)]
