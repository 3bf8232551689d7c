"""One canonical voxel layout shared by display, inference and training.

A file may store its voxels in any order (LAS NIfTI, LPS DICOM, flipped series). Models are
trained on axial slices laid out the way a radiologist reads them, and napari shows the same
layout, so every consumer goes through :func:`to_canonical`. Only axis permutations and flips are
used, never interpolation, so :func:`from_canonical` maps results back onto the file's grid
exactly.
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

#: axis 0 slices towards Superior, axis 1 rows towards Posterior (anterior at the top of the
#: screen), axis 2 columns towards the patient's Left (patient's right on the screen's left).
CANONICAL_AXCODES: tuple[str, str, str] = ("S", "P", "L")


def _transform(affine: np.ndarray) -> np.ndarray:
    """Orientation transform (nibabel ``ornt``) from the array's layout to the canonical one."""
    return ornt_transform(io_orientation(affine), axcodes2ornt(CANONICAL_AXCODES))


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``array`` in the canonical layout and the affine of that layout.

    Parameters
    ----------
    array : numpy.ndarray
        3D voxel array in the file's index order.
    affine : numpy.ndarray
        4 x 4 matrix mapping ``array``'s indices to RAS millimetres.

    Returns
    -------
    canonical_array : numpy.ndarray
        A view (no copy) of ``array`` with axes permuted and flipped.
    canonical_affine : numpy.ndarray
        Maps the canonical indices to the same RAS millimetres.
    """
    if array.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {array.shape}")
    transform = _transform(affine)
    canonical = apply_orientation(array, transform)
    canonical_affine = affine @ inv_ornt_aff(transform, array.shape)
    return canonical, canonical_affine


def from_canonical(canonical_array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map an array in the canonical layout back onto the grid described by ``affine``.

    ``canonical_array`` may carry trailing axes (for example class probabilities); only the first
    three are reoriented.
    """
    inverse = ornt_transform(axcodes2ornt(CANONICAL_AXCODES), io_orientation(affine))
    return apply_orientation(canonical_array, inverse)


def affine_of_canonical(affine: np.ndarray, canonical_shape: tuple[int, ...]) -> np.ndarray:
    """The affine (RAS mm) of the canonical layout of an array whose file affine is ``affine``.

    What :func:`to_canonical` returns beside the array, from the canonical array's shape alone:
    for callers that hold the canonical array (a napari layer) and the file's affine but not the
    file's array.
    """
    transform = _transform(affine)
    file_shape = [int(canonical_shape[int(axis)]) for axis in transform[:, 0]]
    return np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(transform, file_shape)


def head_feet_axis(affine: np.ndarray) -> tuple[int, bool]:
    """The array axis closest to the patient's head-feet axis, and whether it runs to the feet.

    Canonical slice ``k`` (axis 0, towards Superior) is index ``k`` along that axis of the
    file's array, or ``length - 1 - k`` when it runs towards the feet (nibabel's
    ``io_orientation`` picks the axis).
    """
    ornt = io_orientation(np.asarray(affine, dtype=float))
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    return axis, bool(ornt[axis, 1] < 0)


def canonical_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """The affine (RAS mm) of an array already in the canonical layout, origin at 0.

    ``spacing`` is the voxel size in mm along (slice, row, column); :func:`to_canonical` of an
    array with this affine returns the array unchanged. Lets a stack of canonical slices (held-out
    corrected slices, for instance) go through code that takes a volume.
    """
    slice_mm, row_mm, column_mm = (float(s) for s in spacing)
    affine = np.eye(4)
    # S along axis 0 (+z), P along axis 1 (-y), L along axis 2 (-x): CANONICAL_AXCODES.
    affine[:3, :3] = [[0.0, 0.0, -column_mm], [0.0, -row_mm, 0.0], [slice_mm, 0.0, 0.0]]
    return affine


def canonical_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing in mm along the canonical axes (slice, row, column)."""
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    order = [int(axis) for axis in _transform(affine)[:, 0]]
    canonical = np.empty(3)
    canonical[order] = spacing
    return tuple(float(s) for s in canonical)


def canonical_origin(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[float, float, float]:
    """World position of canonical voxel (0, 0, 0) in (S, P, L) millimetres.

    napari's ``translate`` for a layer holding the canonical array, so that volumes of one patient
    on different grids overlay in the viewer.
    """
    transform = _transform(affine)
    canonical_affine = affine @ inv_ornt_aff(transform, shape[:3])
    r, a, s = canonical_affine[:3, 3]
    return float(s), float(-a), float(-r)
