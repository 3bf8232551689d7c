"""Dice, PPV, sensitivity and volumes against counts worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src_models.metrics import (
    Counts,
    case_metrics,
    confusion,
    dice,
    ppv,
    sensitivity,
    structure_counts,
    summarise,
    volume_ml,
)


def _pair() -> tuple[np.ndarray, np.ndarray]:
    """A 1 x 4 x 5 case with known counts.

    Reference: pancreas (1) at 6 voxels, tumour (2) at 2 voxels -> 8 voxels of pancreas incl.
    tumour. Prediction: 8 voxels of pancreas incl. tumour, of which 6 overlap the reference;
    tumour predicted at 3 voxels, 1 of them on the reference tumour.
    """
    reference = np.array(
        [[0, 1, 1, 1, 0],
         [0, 1, 2, 2, 0],
         [0, 1, 1, 0, 0],
         [0, 0, 0, 0, 0]], dtype=np.uint8,
    )[None]  # fmt: skip
    prediction = np.array(
        [[0, 0, 1, 1, 0],
         [0, 2, 2, 1, 0],
         [0, 1, 0, 0, 2],
         [0, 0, 0, 0, 1]], dtype=np.uint8,
    )[None]  # fmt: skip
    return prediction, reference


def test_confusion_matrix_counts_every_voxel():
    prediction, reference = _pair()
    matrix = confusion(prediction, reference)
    assert matrix.sum() == prediction.size
    assert matrix[2, 2] == 1  # tumour on tumour
    assert matrix[1, 2] == 1  # pancreas predicted where the reference has tumour


def test_pancreas_and_tumour_counts_by_hand():
    prediction, reference = _pair()
    matrix = confusion(prediction, reference)
    # pancreas incl. tumour: reference 8 voxels, prediction 8 voxels, overlap 6
    assert structure_counts(matrix, "pancreas") == Counts(tp=6, fp=2, fn=2)
    # tumour: reference at (1,2), (1,3); prediction at (1,1), (1,2), (2,4)
    assert structure_counts(matrix, "tumour") == Counts(tp=1, fp=2, fn=1)


def test_figures_by_hand():
    prediction, reference = _pair()
    result = case_metrics(prediction, reference, spacing=(2.0, 1.0, 0.5))
    assert result["pancreas"].dice == pytest.approx(12 / 16)
    assert result["pancreas"].ppv == pytest.approx(6 / 8)
    assert result["pancreas"].sensitivity == pytest.approx(6 / 8)
    assert result["tumour"].dice == pytest.approx(2 / 5)
    assert result["tumour"].ppv == pytest.approx(1 / 3)
    assert result["tumour"].sensitivity == pytest.approx(1 / 2)
    # 1 mm3 per voxel = 0.001 mL
    assert result["pancreas"].reference_ml == pytest.approx(8 * 1e-3)
    assert result["tumour"].predicted_ml == pytest.approx(3 * 1e-3)
    assert result["tumour"].in_reference


def test_empty_denominators_count_as_one():
    """The documented rule: a ratio with nothing in its denominator is 1."""
    empty = np.zeros((2, 3, 3), dtype=np.uint8)
    both_empty = case_metrics(empty, empty)["tumour"]
    assert (both_empty.dice, both_empty.ppv, both_empty.sensitivity) == (1.0, 1.0, 1.0)
    assert not both_empty.in_reference

    false_alarm = empty.copy()
    false_alarm[0, 1, 1] = 2
    alarm = case_metrics(false_alarm, empty)["tumour"]
    assert (alarm.dice, alarm.ppv, alarm.sensitivity) == (0.0, 0.0, 1.0)

    missed = case_metrics(empty, false_alarm)["tumour"]
    assert (missed.dice, missed.ppv, missed.sensitivity) == (0.0, 1.0, 0.0)
    assert dice(Counts(0, 0, 0)) == ppv(Counts(0, 0, 0)) == sensitivity(Counts(0, 0, 0)) == 1.0


def test_volume_in_millilitres():
    mask = np.ones((10, 10, 10), dtype=bool)
    assert volume_ml(mask, (0.5, 0.8, 0.8)) == pytest.approx(1000 * 0.32 / 1000)
    assert volume_ml(1000, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    # a count as numpy gives it: it read as a mask of one voxel (0.001 mL, a tester)
    assert volume_ml(mask.sum(), 1.0) == pytest.approx(1.0)
    assert volume_ml(np.count_nonzero(mask), 1.0) == pytest.approx(1.0)
    with pytest.raises(TypeError, match="whole number"):
        volume_ml(np.float64(12.5), 1.0)
    # np.diag(affine) of an LAS file starts with -0.8: a direction, not a size (a tester got
    # a negative volume); and a spacing per axis, not fewer
    assert volume_ml(mask, (-0.5, 0.8, -0.8)) == pytest.approx(0.32)
    with pytest.raises(ValueError, match="2 voxel spacings given for a 3D mask"):
        volume_ml(mask, (0.5, 0.8))


def test_summary_averages_cases_equally():
    prediction, reference = _pair()
    empty = np.zeros_like(reference)
    cases = [case_metrics(prediction, reference), case_metrics(empty, empty)]
    summary = summarise(cases)
    assert summary["pancreas"]["dice"].mean == pytest.approx((0.75 + 1.0) / 2)
    assert summary["tumour"]["dice"].cases == 2
    assert summary["tumour"]["dice"].cases_with_structure == 1
    assert math.isnan(summarise([])["pancreas"]["ppv"].mean)


def test_refuses_mismatched_shapes_and_values():
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="0, 1 or 2"):
        confusion(np.full((2, 2), 3), np.zeros((2, 2)))
    # a probability map passed the range check and scored Dice 0 (a tester)
    with pytest.raises(ValueError, match="probability map"):
        case_metrics(np.full((2, 2), 0.7), np.ones((2, 2)))
    assert case_metrics(np.ones((2, 2)), np.ones((2, 2), np.uint8))["pancreas"].dice == 1.0


def test_large_volume_is_fast():
    """bincount over a full CT-sized volume stays well under a second."""
    import time

    rng = np.random.default_rng(0)
    prediction = rng.integers(0, 3, size=(100, 512, 512), dtype=np.uint8)
    reference = rng.integers(0, 3, size=(100, 512, 512), dtype=np.uint8)
    started = time.perf_counter()
    case_metrics(prediction, reference)
    assert time.perf_counter() - started < 3.0


def test_volumes_read_by_people_keep_small_ones_visible():
    from src_models.io.volume import format_ml

    # a 37-voxel tumour read "0.0 mL", as if the stroke had done nothing (a tester)
    assert [format_ml(v) for v in (0.0, 0.00007, 0.027, 0.996, 1.0, 57.85)] == [
        "0.0 mL", "< 0.001 mL", "0.027 mL", "0.996 mL", "1.0 mL", "57.9 mL"
    ]  # fmt: skip
