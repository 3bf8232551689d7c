"""3D clean-up of a segmentation: what a radiologist would otherwise erase by hand.

The models segment slice by slice, so nothing stops them from marking bowel or vessels far from
the pancreas (issue 14 saw pancreas on 170 slices of a scan whose pancreas spans 69). The pancreas
is one organ: its largest 26-connected 3D component is kept and the rest becomes background
(the usual post-processing of pancreas segmentation, e.g. nnU-Net's "remove all but the largest
component"). Measured gains are in ``docs/models.md``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: 26-connectivity: predictions are made slice by slice, so a structure that shifts by a voxel
#: between slices still touches itself diagonally and must count as one component.
CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


def largest_component(mask: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """The largest 26-connected component of a boolean (S, P, L) mask, as a new array.

    Components that hold a voxel of the boolean ``keep`` mask (same shape) are kept as well.
    """
    components, count = ndimage.label(mask, structure=CONNECTIVITY)
    if count <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    kept = np.zeros(count + 1, dtype=bool)
    kept[int(np.argmax(sizes))] = True
    if keep is not None:
        kept[components[keep]] = True
        kept[0] = False
    return kept[components]


def keep_largest_components(labels: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Keep the largest connected component of the pancreas and of the tumour inside it.

    The pancreas including tumour is one structure (the paper's target), so its largest 3D
    component is kept first and everything outside it becomes background. Within that, the
    largest tumour component stays tumour and smaller tumour islands become pancreas: they lie
    inside the kept pancreas, which the model's pancreas channel vouches for, so erasing them
    would punch holes in it.

    Parameters
    ----------
    labels : numpy.ndarray
        Label volume (S, P, L) with values 0, 1, 2, whose slices are neighbours in space (not a
        set of unrelated 2D slices); not modified.
    keep : numpy.ndarray, optional
        Boolean (S, P, L) mask of voxels a user confirmed (their corrected slices): every
        component of pancreas or tumour that reaches into it is kept too, so a missed tail
        painted apart from the model's pancreas is not erased as an island.

    Returns
    -------
    numpy.ndarray
        A new uint8 array of the same shape.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.uint8)
    box = foreground_box(labels)
    if box is None:
        return out
    # Components are labelled inside the foreground's box only: the organ fills a few percent
    # of a CT, and labelling all of it took 2 s of CPU for 240 slices, more than a GPU needs to
    # segment them (docs/benchmarks.md).
    part = labels[box]
    confirmed = None if keep is None else np.asarray(keep, dtype=bool)[box]
    pancreas = largest_component(part > 0, confirmed)
    tumour = largest_component((part == 2) & pancreas, confirmed)
    block = pancreas.astype(np.uint8)
    block[tumour] = 2
    out[box] = block
    return out


def foreground_box(labels: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box (one slice per axis) that holds every non-zero voxel, or ``None``."""
    box = []
    for axis in range(labels.ndim):
        others = tuple(a for a in range(labels.ndim) if a != axis)
        present = np.flatnonzero(np.any(labels, axis=others))
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)
