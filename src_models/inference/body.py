"""Where the body is on a CT slice: the box the engine crops to before running the model.

A 512 x 512 abdominal CT slice is mostly air, table and the scanner's field-of-view border; on
the shared NIH Pancreas-CT volume the body's bounding box covers about 37 % of the slice. The
model only has to see the body (it was trained on 192-pixel patches, so a crop is what it knows),
so the engine runs it on the body's box and pastes the result back (see
:mod:`src_models.inference.engine`).

The body is the largest 8-connected component of voxels above :data:`BODY_THRESHOLD_HU`
(``scipy.ndimage.label``), the usual first step of CT body masking: air is about -1000 HU, lung
-900 to -500 (enclosed by the chest wall, so inside the box), fat -100, soft tissue 0 to 100. The
table is a separate component, smaller than the body, and is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Voxels above this many HU count as body (soft tissue, fat, bone, the table); air and the
#: scanner's padding (-1024, -2048, -3024 HU) do not.
BODY_THRESHOLD_HU = -500.0

#: A slice whose largest component above the threshold is smaller than a square centimetre holds
#: no body, only noise, a wire or a blank border; anything larger is run (a table-only slice
#: costs a small crop and gives background).
MIN_BODY_AREA_MM2 = 100.0

#: Pixel size (mm) of the coarse grid the mask is computed on: the box is 2 mm accurate, well
#: inside the margin the engine adds, at a quarter of the labelling work of a 0.8 mm grid.
MASK_PIXEL_MM = 2.0


def body_boxes(
    hu_slices: np.ndarray,
    spacing_yx: Sequence[float] | None = None,
    *,
    threshold_hu: float = BODY_THRESHOLD_HU,
    min_area_mm2: float = MIN_BODY_AREA_MM2,
) -> np.ndarray:
    """Bounding box of the body on each axial slice, in source pixels.

    Parameters
    ----------
    hu_slices
        (N, H, W) Hounsfield units, slices along the first axis (the engine's canonical layout).
    spacing_yx
        In-plane pixel spacing (rows, columns) in mm; ``None`` assumes 0.8 mm.
    threshold_hu
        Voxels above it count as body.
    min_area_mm2
        Smallest largest-component area that counts as body.

    Returns
    -------
    numpy.ndarray
        int64 (N, 4): ``row_start, row_stop, col_start, col_stop`` (stop exclusive) of the largest
        component's box; all four are 0 for a slice without body. The mask is computed on every
        ``k``-th pixel (``k`` from :data:`MASK_PIXEL_MM`), so an edge may lie up to ``k - 1``
        pixels outside the box; callers add a margin.
    """
    sy, sx = (float(s) for s in spacing_yx) if spacing_yx is not None else (0.8, 0.8)
    step = max(1, int(MASK_PIXEL_MM // min(sy, sx)))
    min_pixels = min_area_mm2 / (sy * step * sx * step)
    rows, cols = hu_slices.shape[-2:]
    boxes = np.zeros((len(hu_slices), 4), dtype=np.int64)
    eight_connected = np.ones((3, 3), dtype=bool)
    for index, hu in enumerate(hu_slices):
        components, count = ndimage.label(hu[::step, ::step] > threshold_hu, eight_connected)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        largest = int(sizes.argmax())
        if sizes[largest] < min_pixels:
            continue
        row, col = ndimage.find_objects(components, max_label=largest)[largest - 1]
        boxes[index] = (
            row.start * step,
            min(rows, row.stop * step),
            col.start * step,
            min(cols, col.stop * step),
        )
    return boxes


def has_body(boxes: np.ndarray) -> np.ndarray:
    """(N,) bool: which of :func:`body_boxes`' rows hold a body."""
    return boxes[:, 1] > boxes[:, 0]


def model_box(
    boxes: np.ndarray,
    shape_hw: Sequence[int],
    model_hw: Sequence[int],
    *,
    margin: int,
    multiple: int,
) -> tuple[slice, slice] | None:
    """The one crop, in model pixels, that holds every body box of a batch of slices.

    A source slice of ``shape_hw`` pixels is resampled to ``model_hw`` by
    :func:`~src_models.inference.preprocessing.to_model_input` (``align_corners=False``: source
    edge ``e`` lies at model coordinate ``e * h / H``), so the union of ``boxes`` is scaled the
    same way, widened by ``margin`` model pixels, and its start rounded down to a multiple of
    ``multiple``: the network pools by 2 ``log2(multiple)`` times and pads its input at the
    bottom and right only, so a crop that starts on that grid pools exactly the pixels the whole
    slice would. The stop is rounded up to a multiple too, or is the slice's own edge.

    Parameters
    ----------
    boxes
        int (N, 4) from :func:`body_boxes`; rows without body are ignored.
    shape_hw
        Source slice size (rows, columns).
    model_hw
        Slice size the model sees.
    margin
        Model pixels of context around the body.
    multiple
        The network's input multiple (``2 ** depth``).

    Returns
    -------
    tuple of slice or None
        (rows, columns) on the model grid, or ``None`` when no slice holds a body.
    """
    inside = boxes[has_body(boxes)]
    if len(inside) == 0:
        return None
    union = (inside[:, 0].min(), inside[:, 1].max(), inside[:, 2].min(), inside[:, 3].max())
    crop = []
    for axis in range(2):
        scale = model_hw[axis] / shape_hw[axis]
        start = np.floor(union[2 * axis] * scale) - margin
        stop = np.ceil(union[2 * axis + 1] * scale) + margin
        start = max(0, int(start // multiple) * multiple)
        stop = min(int(model_hw[axis]), int(-(-stop // multiple)) * multiple)
        crop.append(slice(start, stop))
    return crop[0], crop[1]
