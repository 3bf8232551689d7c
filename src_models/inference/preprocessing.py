"""The one path from HU slices to model input, and from model output back to labels.

Inference and training both call these functions, so a model always sees slices windowed and
resampled exactly as it was trained on them. Slices are in the canonical layout of
:mod:`src_models.io.orientation` (anterior at the top, patient's right on the left).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..io.windows import hu_to_unit

#: Preprocessing of models trained by this project: the HU window lies inside [0, 255] so that
#: the 2D slice sets (HU clipped to [0, 255]) look exactly like full CT to the model, and slices
#: are resampled to 1.7 mm in-plane, where a width-16 U-Net still separates the pancreas from
#: its neighbours at a quarter of the cost of the native 0.7 to 0.9 mm.
DEFAULT_PREPROCESSING: dict[str, Any] = {"hu_window": [0.0, 255.0], "spacing_mm": 1.7}

#: In-plane spacing assumed for slices whose spacing is unknown (the 2D slice sets, 0.66 to
#: 0.98 mm): the middle of the usual range of abdominal CT.
FALLBACK_SPACING_MM = 0.8


def model_size(
    shape_hw: Sequence[int],
    spacing_yx: Sequence[float] | None,
    preprocessing: Mapping[str, Any],
) -> tuple[int, int]:
    """Size (rows, columns) the model sees for a slice of ``shape_hw`` at ``spacing_yx`` mm."""
    target = preprocessing.get("spacing_mm")
    if not target:
        return int(shape_hw[0]), int(shape_hw[1])
    sy, sx = spacing_yx if spacing_yx is not None else (FALLBACK_SPACING_MM,) * 2
    return (
        max(1, round(shape_hw[0] * float(sy) / float(target))),
        max(1, round(shape_hw[1] * float(sx) / float(target))),
    )


def to_model_input(
    hu_slices: np.ndarray,
    spacing_yx: Sequence[float] | None,
    preprocessing: Mapping[str, Any],
) -> torch.Tensor:
    """Window and resample HU slices (N, H, W) into a model batch (N, 1, h, w) in [0, 1]."""
    unit = torch.from_numpy(hu_to_unit(hu_slices, preprocessing["hu_window"]))[:, None]
    size = model_size(hu_slices.shape[-2:], spacing_yx, preprocessing)
    if size == tuple(unit.shape[-2:]):
        return unit
    return F.interpolate(unit, size=size, mode="bilinear", antialias=True, align_corners=False)


def resample_labels(labels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resample integer labels (N, H, W) to ``size`` by nearest neighbour (training targets)."""
    tensor = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.uint8))[:, None]
    if tuple(size) == tuple(tensor.shape[-2:]):
        return labels.astype(np.uint8, copy=False)
    return F.interpolate(tensor, size=tuple(size), mode="nearest-exact")[:, 0].numpy()


def to_source_size(maps: torch.Tensor, shape_hw: Sequence[int]) -> torch.Tensor:
    """Resample model-resolution maps (N, C, h, w) back to the slice size (N, C, H, W)."""
    if tuple(maps.shape[-2:]) == tuple(shape_hw):
        return maps
    return F.interpolate(maps, size=tuple(shape_hw), mode="bilinear", align_corners=False)


def labels_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Label values 0/1/2 (uint8) from the two independent logit channels.

    Channel 0 is pancreas including tumour and channel 1 tumour; tumour is only kept inside the
    pancreas channel, as the reference annotations define it.
    """
    pancreas = logits[:, 0] > 0
    tumour = pancreas & (logits[:, 1] > 0)
    return pancreas.to(torch.uint8) + tumour.to(torch.uint8)
