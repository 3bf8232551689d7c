"""npe2 writer: a Labels layer -> uint8 NIfTI on the CT's own voxel grid, with the CT's affine.

The layer holds canonical data; its metadata (set by the reader, the sample and
:func:`napari_dsms._layers.new_labels_like`) records the CT's affine and native shape, which
:func:`src_models.io.write_labels` needs to put every voxel back where the CT has it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from src_models import autosave
from src_models.io import NIFTI_SUFFIXES, write_labels

from ._layers import AUTOSAVE_KEY, canonical_to_volume


def write_labels_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer as NIfTI; ``.nii.gz`` is added when the name has no extension.

    Refuses (``VolumeError``, shown by napari) layers without CT geometry, data that no longer
    fits it, values other than 0, 1, 2, and the CT's own file as the target. After a successful
    write the layer's autosave journal (:mod:`napari_dsms._autosave`) is removed.
    """
    target = Path(path)
    if not target.name.lower().endswith(NIFTI_SUFFIXES) and not target.suffix:
        target = target.with_name(target.name + ".nii.gz")
    # The returned volume carries the CT's affine, shape, source and form codes: the reference.
    metadata = meta.get("metadata") or {}
    volume = canonical_to_volume(data, metadata, meta.get("name", "labels"))
    written = write_labels(target, volume.array, volume)
    journaled = metadata.get(AUTOSAVE_KEY)
    if journaled:  # the export now holds the work: its autosave journal is no longer needed
        autosave.prune(journaled["digest"], journaled["session"])
    return [str(written)]
