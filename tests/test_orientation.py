"""Every file layout reaches the same radiological slices and maps back exactly."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from src_models.io.orientation import (
    CANONICAL_AXCODES,
    canonical_origin,
    canonical_spacing,
    from_canonical,
    to_canonical,
)


def _world(affine: np.ndarray, index: tuple[int, int, int]) -> np.ndarray:
    return (affine @ np.array([*index, 1.0]))[:3]


def _layouts():
    """All 48 axis-aligned layouts of one RAS volume, as (array, affine) pairs."""
    rng = np.random.default_rng(0)
    ras = rng.integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)
    ras_affine = np.diag([0.8, 0.9, 2.5, 1.0])
    ras_affine[:3, 3] = (-100.0, 50.0, 20.0)
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((False, True), repeat=3):
            array, affine = ras, ras_affine.copy()
            for axis, flip in enumerate(flips):
                if flip:
                    array = np.flip(array, axis)
                    offset = affine[:3, axis] * (array.shape[axis] - 1)
                    affine[:3, 3] += offset
                    affine[:3, axis] *= -1
            array = np.transpose(array, perm)
            affine = affine[:, [*perm, 3]]
            yield ras, ras_affine, array, affine


@pytest.mark.parametrize("case", range(48))
def test_every_layout_gives_the_same_canonical_volume_and_maps_back(case: int) -> None:
    ras, ras_affine, array, affine = list(_layouts())[case]
    reference, reference_affine = to_canonical(ras, ras_affine)
    canonical, canonical_affine = to_canonical(array, affine)
    assert nib.aff2axcodes(canonical_affine) == CANONICAL_AXCODES
    np.testing.assert_array_equal(canonical, reference)
    np.testing.assert_allclose(canonical_affine, reference_affine)
    np.testing.assert_array_equal(from_canonical(canonical, affine), array)
    assert canonical_spacing(affine) == pytest.approx((2.5, 0.9, 0.8))
    assert canonical_origin(affine, array.shape) == pytest.approx(
        canonical_origin(ras_affine, ras.shape)
    )


def test_canonical_slice_shows_anterior_up_and_patient_right_on_the_left() -> None:
    affine = np.diag([1.0, 1.0, 1.0, 1.0])  # RAS
    volume = np.zeros((4, 4, 2), dtype=np.int16)
    volume[3, 3, :] = 7  # patient's right (x grows towards the right in RAS), anterior
    canonical, canonical_affine = to_canonical(volume, affine)
    assert canonical[0, 0, 0] == 7  # top-left of the screen
    corner = _world(canonical_affine, (0, 0, 0))
    assert corner[0] == 3.0 and corner[1] == 3.0


def test_trailing_axes_travel_with_the_volume() -> None:
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    probabilities = np.random.default_rng(1).random((3, 4, 5, 2))
    canonical = to_canonical(probabilities[..., 0], affine)[0]
    stacked = np.stack([to_canonical(probabilities[..., c], affine)[0] for c in range(2)], -1)
    np.testing.assert_array_equal(stacked[..., 0], canonical)
    np.testing.assert_array_equal(from_canonical(stacked, affine), probabilities)


def test_two_dimensional_input_is_refused() -> None:
    with pytest.raises(ValueError, match="3D"):
        to_canonical(np.zeros((4, 4)), np.eye(4))
