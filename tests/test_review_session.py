"""The review session without a viewer: edits, navigation, volumes, comparison, exports, inputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_dsms._session import ReviewSession
from src_models.corrections import CorrectionsError

SPACING = (2.0, 0.5, 0.5)


def _volume() -> tuple[np.ndarray, np.ndarray]:
    """A 12-slice CT (HU) and a model prediction with pancreas on slices 3..8."""
    rng = np.random.default_rng(0)
    image = rng.normal(40.0, 20.0, size=(12, 16, 16)).astype(np.float32)
    prediction = np.zeros((12, 16, 16), np.uint8)
    prediction[3:9, 4:10, 4:10] = 1
    prediction[5:7, 6:8, 6:8] = 2
    return image, prediction


def _session(**overrides) -> ReviewSession:
    image, prediction = _volume()
    fields = {
        "image": image,
        "labels": prediction.copy(),
        "spacing": SPACING,
        "prediction": prediction,
        "model": {"arch": "unet", "checkpoint": "/models/unet.pt"},
        "source": "/data/ct.nii.gz",
        "name": "ct",
        "affine": np.diag([-0.5, -0.5, 2.0, 1.0]),
        "source_shape": (16, 16, 12),
    }
    fields.update(overrides)
    return ReviewSession(**fields)


def test_edits_are_found_by_comparing_with_the_prediction() -> None:
    session = _session()
    assert session.edited == []
    session.labels[2, 5, 5] = 1
    session.labels[10, 0, 0] = 2
    assert session.refresh() == [2, 10] == session.edited
    session.labels[2, 5, 5] = 0  # undone by hand: no longer an edit
    assert session.refresh() == [10]


def test_without_a_prediction_nothing_is_edited_or_learnt() -> None:
    session = _session(prediction=None)
    session.labels[4] = 0
    assert session.refresh() == []
    with pytest.raises(CorrectionsError, match="no model output"):
        session.fine_tune_inputs()
    wrong_grid = _session(prediction=np.zeros((3, 4, 4), np.uint8))
    assert wrong_grid.prediction is None


def test_navigation_and_reviewed_marks() -> None:
    session = _session()
    session.labels[[6, 9]] = 0
    session.labels[[2, 9], 1, 1] = 1
    session.refresh()
    assert session.edited == [2, 6, 9]
    session.go_to(0)
    assert session.neighbour("edited", +1) == 2
    session.go_to(6)
    assert session.neighbour("edited", +1) == 9 and session.neighbour("edited", -1) == 2
    session.go_to(9)
    assert session.neighbour("edited", +1) is None
    assert session.slices("foreground") == [2, 3, 4, 5, 7, 8, 9]
    # pancreas 2..5 (tumour on 5), 7..9: starts, changes and ends
    assert session.slices("foreground changes") == [2, 5, 7, 9]
    assert session.go_to(99) == 11  # clipped to the volume
    assert session.toggle_reviewed(4) and session.toggle_reviewed(7)
    assert not session.toggle_reviewed(4)
    assert session.slices("reviewed") == [7]
    with pytest.raises(KeyError, match="edited"):
        session.slices("interesting")


def test_volumes_and_comparison() -> None:
    session = _session()
    voxel_ml = 2.0 * 0.5 * 0.5 / 1000
    volumes = session.volumes()
    assert volumes["pancreas"] == pytest.approx(6 * 6 * 6 * voxel_ml)
    assert volumes["tumour"] == pytest.approx(2 * 2 * 2 * voxel_ml)
    session.go_to(4)
    same = session.compare(session.prediction, session.labels)
    assert same["volume"]["pancreas"].dice == pytest.approx(1.0)
    shrunk = session.labels.copy()
    shrunk[3:9, 4:10, 7:10] = 0  # half of the pancreas
    result = session.compare(shrunk, session.labels)
    assert result["volume"]["pancreas"].ppv == pytest.approx(1.0)
    assert result["volume"]["pancreas"].sensitivity == pytest.approx(0.5)
    assert result["slice"]["pancreas"].dice == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="different images"):
        session.compare(shrunk[:5], session.labels)


def test_clean_up_changes_are_computed_not_applied() -> None:
    session = _session()
    session.labels[10, 0:2, 0:2] = 1  # an island the model made
    session.prediction[10, 0:2, 0:2] = 1
    before = session.labels.copy()
    changed, values = session.cleanup_changes()
    np.testing.assert_array_equal(session.labels, before)
    assert len(changed[0]) == 4 and set(changed[0].tolist()) == {10}
    assert not values.any()


def test_clean_up_keeps_what_the_user_painted_and_the_pieces_reaching_into_it() -> None:
    session = _session()
    session.prediction[1, 12:14, 12:14] = 1  # the model's island: removed
    session.prediction[9:11, 0:2, 0:2] = 1  # the model's piece of a missed tail...
    session.labels[...] = session.prediction
    session.labels[8, 0:2, 0:2] = 1  # ...which the user painted on slice 8, apart from the organ
    session.labels[5, 13:15, 13:15] = 2  # and a tumour island the user drew on slice 5
    session.toggle_reviewed(1)
    session.toggle_reviewed(1)  # reviewed, then unmarked: slice 1 is the model's again
    painted = session.labels.copy()
    changed, values = session.cleanup_changes()
    session.add_tool_changes(changed, values)
    session.labels[changed] = values
    assert set(changed[0].tolist()) == {1} and not values.any()  # only the model's island
    np.testing.assert_array_equal(session.labels[5], painted[5])  # the user's slices untouched
    np.testing.assert_array_equal(session.labels[8:11], painted[8:11])  # the tail kept whole
    assert session.refresh() == [5, 8]


def test_tool_changes_are_not_edits_until_undone() -> None:
    session = _session()
    session.labels[10, 0:2, 0:2] = 1  # an island the model made...
    session.prediction[10, 0:2, 0:2] = 1  # ...so it is in its output too
    session.labels[4, 5, 5] = 0  # and one correction by the user
    assert session.refresh() == [4]
    changed, values = session.cleanup_changes()
    session.add_tool_changes(changed, values)
    session.labels[changed] = values
    assert session.refresh() == [4]  # the island's slice is not a correction
    with pytest.raises(CorrectionsError, match=r"now 1, 1 edited"):  # slice 10 is not one
        session.fine_tune_inputs()
    session.labels[10, 0:2, 0:2] = 1  # undone (napari's Ctrl+Z)
    assert session.refresh() == [4]
    session.labels[10, 0:2, 0:2] = 0  # redone (Ctrl+Shift+Z): the tool's change again
    assert session.refresh() == [4]
    session.labels[10, 0:2, 0:2] = 1  # undone once more
    assert session.refresh() == [4]
    session.labels[10, 0, 0] = 0  # now part of it erased by the user: a correction
    assert session.refresh() == [4, 10]


def test_sidecar_records_model_edits_reviews_and_volumes() -> None:
    session = _session()
    session.labels[4, 0, 0] = 1
    session.refresh()
    session.toggle_reviewed(6)
    content = session.sidecar("/out/labels.nii.gz", "labels")
    assert content["edited_slices"]["canonical"] == [4]
    assert content["reviewed_slices"]["canonical"] == [6]
    assert content["tool_slices"]["canonical"] == []
    # a tool (fill between, a refine round) writes into slices 2 and 4: the export says which
    # slices are neither the model's output nor the user's drawing (4 stays an edit)
    voxels = (np.array([2, 4]), np.array([1, 1]), np.array([1, 1]))
    session.add_tool_changes(voxels, np.array([1, 1], np.uint8))
    session.labels[voxels] = 1
    session.refresh()
    content = session.sidecar("/out/labels.nii.gz", "labels")
    assert content["tool_slices"]["canonical"] == [2]
    assert content["edited_slices"]["canonical"] == [4]
    session.toggle_reviewed(2)  # checked by the user: reviewed, no longer a tool's alone
    assert session.sidecar("/out/labels.nii.gz", "labels")["tool_slices"]["canonical"] == []
    assert content["model"]["checkpoint"] == "/models/unet.pt"
    assert content["source_image"] == "/data/ct.nii.gz"
    assert content["volumes_ml"]["pancreas"] > 0
    with pytest.raises(ValueError, match="file geometry"):
        _session(affine=None).sidecar("/out/x.nii.gz", "labels")


def test_fine_tune_needs_slices_to_check_the_model_and_labels_it_can_learn() -> None:
    """A tester's Fine-tune on two corrected end slices saved, unchecked, a model that took the
    other slices' Dice from 0.73 to 0.31, and the Segment dock chose it; a slice painted with
    label 3 was learnt from without a word. A refine round refuses both; so does the button."""
    session = _session()
    for k in (3, 8):
        session.labels[k, 0:3, 0:3] = 1
    session.refresh()
    with pytest.raises(CorrectionsError, match=r"at least 3 corrected slices.*now 2, 2 edited"):
        session.fine_tune_inputs()
    session.toggle_reviewed(5)  # accepted unchanged: learnt from, never held out
    inputs = session.fine_tune_inputs(include_reviewed=True)
    assert len(inputs.holdout) == 1 and 5 in inputs.train
    session.labels[8] = session.prediction[8]  # one correction undone: one edited slice left
    session.toggle_reviewed(7)
    session.refresh()
    with pytest.raises(CorrectionsError, match=r"2 of them edited \(now 3, 1 edited\)"):
        session.fine_tune_inputs(include_reviewed=True)
    session.labels[6, 0:3, 0:3] = 1
    session.refresh()
    assert session.fine_tune_inputs(include_reviewed=True).holdout
    # slices the base model learnt in an earlier round are not held out: it would score them
    # from memory; with no other edited slice, it is said
    assert session.fine_tune_inputs(True, learnt=[3]).holdout == [6]
    with pytest.raises(CorrectionsError, match="learnt from every edited slice"):
        session.fine_tune_inputs(True, learnt=[3, 6])
    session.labels[6, 0, 0] = 3
    session.refresh()
    with pytest.raises(CorrectionsError, match=r"corrected slice 6 hold.* other than 0"):
        session.fine_tune_inputs()


def test_fine_tune_inputs_hold_the_corrected_slices_and_keep_some_out() -> None:
    session = _session()
    with pytest.raises(CorrectionsError, match="no corrected slices"):
        session.fine_tune_inputs()
    for k in (1, 3, 5, 7, 9):
        session.labels[k, 0:3, 0:3] = 1
    session.refresh()
    inputs = session.fine_tune_inputs()
    assert sorted(inputs.train + inputs.holdout) == [1, 3, 5, 7, 9]
    assert len(inputs.holdout) == 1
    np.testing.assert_array_equal(inputs.labels, session.labels[inputs.train])
    np.testing.assert_array_equal(inputs.holdout_images, session.image[inputs.holdout])
    assert inputs.spacing_yx == (0.5, 0.5)
    assert inputs.provenance()["source_image"] == "/data/ct.nii.gz"
    session.toggle_reviewed(11)
    with_reviewed = session.fine_tune_inputs(include_reviewed=True)
    assert 11 in with_reviewed.train + with_reviewed.holdout
    other = _session(labels=np.zeros((5, 16, 16), np.uint8), prediction=None)
    with pytest.raises(CorrectionsError, match="another image"):
        other.fine_tune_inputs()


def test_the_fine_tune_report_says_what_it_measured_and_advises() -> None:
    session = _session()
    for k in (3, 4, 5, 6, 7):
        session.labels[k, 10:12, 10:12] = 1  # corrections on five slices
    session.refresh()
    inputs = session.fine_tune_inputs()
    assert inputs.holdout == [5]
    better = inputs.report({"dice_pancreas": 0.70}, {"dice_pancreas": 0.80})
    assert "did not train on (slice 5)" in better[0] and better[-1].startswith("Keep the new")
    worse = inputs.report({"dice_pancreas": 0.718}, {"dice_pancreas": 0.650})
    assert "keep the previous one." in worse[-1]
    assert "About the same" in inputs.report({"dice_pancreas": 0.7}, {"dice_pancreas": 0.71})[-1]
    assert "Nothing was measured" in inputs.report({}, {})[0]

    session.labels[5] = 0
    session.labels[5, 4:6, 4:6] = 1  # the held-out slice only partly painted
    session.refresh()
    partly = session.fine_tune_inputs()
    assert partly.unfinished_holdout() == [5]
    lines = partly.report({"dice_pancreas": 0.718}, {"dice_pancreas": 0.650})
    assert any("Slice 5 looks unfinished" in line for line in lines)
    assert "unless those slices are unfinished" in lines[-1]


def test_region_of_interest_clears_outside_limits_learning_and_is_recorded() -> None:
    from napari_dsms._session import RegionOfInterest

    session = _session()
    session.labels[1, 0:2, 0:2] = 1  # the model's bowel, far below the pancreas
    session.prediction[1, 0:2, 0:2] = 1
    session.labels[10, 12:14, 12:14] = 1  # and a correction the user made up there
    for k in (3, 4, 5, 6, 7):
        session.labels[k, 4:6, 4:6] = 0  # corrections inside
    session.refresh()
    assert session.outside_roi_changes()[1].size == 0  # no region yet: nothing to clear
    session.roi = RegionOfInterest(3, 8, box=(2, 12, 2, 12))
    voxels, values = session.outside_roi_changes()
    assert set(voxels[0].tolist()) == {1, 10} and not values.any()
    session.add_tool_changes(voxels, values)
    session.labels[voxels] = values
    assert session.refresh() == [3, 4, 5, 6, 7]  # clearing outside is not a correction
    inputs = session.fine_tune_inputs()
    assert all(3 <= k <= 8 for k in inputs.train + inputs.holdout)
    assert inputs.images.shape[1:] == (10, 10)  # nothing learnt outside the box
    content = session.sidecar("/out/labels.nii.gz", "labels")
    assert content["region_of_interest"]["first_slice"] == 3
    assert content["region_of_interest"]["box_rows_columns"] == [2, 12, 2, 12]
    assert RegionOfInterest.from_dict(session.roi.as_dict()) == session.roi
    session.roi = RegionOfInterest(10, 11)
    with pytest.raises(CorrectionsError, match="inside the region of interest"):
        session.fine_tune_inputs()


def test_the_session_module_needs_no_qt_and_no_napari() -> None:
    code = (
        "import sys, napari_dsms._session\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'superqt')]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
