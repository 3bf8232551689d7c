"""Fill between slices: shape-based interpolation of each structure between corrected slices."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from src_models import fill_between_slices
from src_models.metrics import structure_dice as dice


def _disc(radius: float, size: int = 40, centre: tuple[float, float] = (20, 20)) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def test_a_growing_disc_is_filled_in_between_and_nothing_else_changes():
    labels = np.full((9, 40, 40), 7, dtype=np.int16)  # 7: "anything" the fill must leave alone
    labels[2] = np.where(_disc(4), 1, 0)
    labels[6] = np.where(_disc(12), 1, 0)
    out = fill_between_slices(labels, [6, 2], axis=0)
    assert out is not labels and out.dtype == labels.dtype
    np.testing.assert_array_equal(labels[[0, 1, 2, 6, 7, 8]], out[[0, 1, 2, 6, 7, 8]])
    areas = [int((out[k] == 1).sum()) for k in range(2, 7)]
    assert areas == sorted(areas) and len(set(areas)) == 5  # grows steadily
    assert dice(out[4] == 1, _disc(8)) > 0.95  # half-way: the radius half-way
    assert set(np.unique(out[3:6])) <= {0, 1}
    assert (labels[3:6] == 7).all()  # the input is untouched


def test_a_shape_that_moves_between_the_slices_stays_whole_half_way():
    """Plain signed-distance interpolation makes a disc that moves by its width vanish half-way."""
    labels = np.zeros((9, 40, 40), dtype=np.uint8)
    labels[0][_disc(6, centre=(20, 13))] = 1
    labels[8][_disc(6, centre=(20, 27))] = 1
    out = fill_between_slices(labels, [0, 8], axis=0)
    areas = [int(out[k].sum()) for k in range(9)]
    assert min(areas) >= areas[0]  # the organ neither thins nor breaks apart
    assert dice(out[4] == 1, _disc(6, centre=(20, 20))) > 0.7  # and sits half-way


def test_tumour_stays_inside_the_pancreas_and_a_structure_tapers_off():
    labels = np.zeros((40, 40, 11), dtype=np.uint8)  # slice axis last
    labels[..., 0][_disc(10)] = 1
    labels[..., 0][_disc(4)] = 2
    labels[..., 10][_disc(10)] = 1  # the tumour ends before slice 10
    out = fill_between_slices(labels, [0, 10])
    tumour = [int((out[..., k] == 2).sum()) for k in range(11)]
    assert tumour[0] > tumour[3] > 0 and tumour[-1] == 0
    assert tumour == sorted(tumour, reverse=True)
    for k in range(1, 10):
        assert dice(out[..., k] >= 1, _disc(10)) > 0.97  # pancreas incl. tumour unchanged
    assert not ((out == 2) & ~_disc(10)[..., None]).any()


def test_fewer_than_two_known_slices_change_nothing_and_bad_indices_are_refused():
    labels = np.zeros((5, 8, 8), dtype=np.uint8)
    labels[1, 2:5, 2:5] = 1
    np.testing.assert_array_equal(fill_between_slices(labels, [1], axis=0), labels)
    with pytest.raises(ValueError, match="outside"):
        fill_between_slices(labels, [1, 5], axis=0)
    with pytest.raises(ValueError, match="3D"):
        fill_between_slices(labels[0], [0, 1])
    with pytest.raises(ValueError, match="whole numbers, got \\[2.5\\]"):
        fill_between_slices(labels, [1, 2.5], axis=0)  # not quietly slice 2
    mask = np.zeros(5, bool)
    mask[[1, 3]] = True  # read as the indices 0 and 1 it filled nothing, without a word
    with pytest.raises(ValueError, match="boolean mask; pass np.flatnonzero"):
        fill_between_slices(labels, mask, axis=0)
    with pytest.raises(ValueError, match="got booleans"):
        fill_between_slices(labels, [np.True_, 3], axis=0)  # was slice 1
    odd = labels.copy()
    odd[1, 0, 0] = 3
    with pytest.raises(ValueError, match="known slice 1 holds \\[3\\]"):
        fill_between_slices(odd, [1, 3], axis=0)
    filled = fill_between_slices(labels, [1.0, np.int64(3)], axis=0)  # whole, in any type
    np.testing.assert_array_equal(filled, fill_between_slices(labels, [1, 3], axis=0))


@pytest.mark.slow
def test_every_fifth_slice_of_a_real_reference_fills_the_rest(nih_label):
    """The issue's goal: Dice >= 0.82 on the slices between (measured 0.865, was 0.861 without
    the growth of moving shapes)."""
    reference = np.asarray(nib.load(nih_label).dataobj)  # LAS: slices along axis 2
    with_pancreas = np.flatnonzero(reference.any(axis=(0, 1)))
    known = list(range(with_pancreas[0], with_pancreas[-1] + 1, 5))
    given = np.zeros_like(reference)
    given[..., known] = reference[..., known]
    out = fill_between_slices(given, known, axis=2)
    between = np.setdiff1d(np.arange(known[0], known[-1] + 1), known)
    assert dice(out[..., between] > 0, reference[..., between] > 0) >= 0.82
    np.testing.assert_array_equal(out[..., known], reference[..., known])
