"""Triage panel of the Review dock: ranked slices, next suspect, fill between as one undo step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_dsms._layers import image_layer_data, labels_layer_data
from napari_dsms._widgets.review import ReviewWidget
from napari_dsms._widgets.review.refine_round import LATEST_MODEL, changed_slices, model_line
from napari_dsms._widgets.review.triage import fill_changes
from src_models import build_model, save_checkpoint
from src_models.io.orientation import to_canonical
from src_models.phantom import make_phantom


@pytest.fixture
def dock(make_napari_viewer, qtbot, tmp_path):
    """A phantom CT and its labels as a Segment result would leave them, and the dock."""
    image, truth = make_phantom(seed=1, shape=(64, 64, 20), spacing=(4.0, 4.0, 3.0))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "tiny.pt", build_model("unet", width=4),
        preprocessing={"hu_window": [-100.0, 250.0], "spacing_mm": 4.0},
    )  # fmt: skip
    viewer = make_napari_viewer()
    data, kwargs, _ = image_layer_data(image, name="ct")
    ct = viewer.add_image(data, **kwargs)
    prediction = np.array(to_canonical(truth.array, truth.affine)[0])
    data, kwargs, _ = labels_layer_data(prediction.copy(), ct, name="ct pancreas/tumour")
    kwargs["metadata"].update(
        prediction=prediction.copy(), model={"arch": "unet", "checkpoint": str(checkpoint)}
    )
    labels = viewer.add_labels(data, **kwargs)
    widget = ReviewWidget(viewer)
    qtbot.addWidget(widget)
    return widget, labels, prediction


def test_scored_slices_form_a_queue_that_edits_and_reviews_leave(dock, qtbot):
    widget, labels, _ = dock
    panel = widget.triage
    assert panel.next_suspect() is None  # nothing scored yet: says so
    worker = panel.score()
    assert worker is not None
    qtbot.waitUntil(lambda: panel.result is not None and panel._worker is None, timeout=60_000)
    assert len(panel.chart.scores) == labels.data.shape[0]
    queue = panel.queue()
    # the chart's tallest bars are the list's first slices (a tester saw two different scores)
    listed = [float(panel.suspects.item(i).text().split()[-1]) for i in range(3)]
    assert [round(panel.chart.scores[k], 2) for k in queue[:3]] == listed
    assert panel.chart.scores[queue[0]] == panel.chart.scores.max()
    assert sorted(queue) == list(range(labels.data.shape[0]))
    assert panel.suspects.count() == min(20, len(queue))
    first = panel.next_suspect()
    assert first == queue[0] and widget.current_slice() == first
    assert f"next: slice {queue[1]}" in panel.status.text()
    assert panel.next_suspect() == queue[1]  # pressed again: on down the list, as it said
    widget.go_to_slice(first)
    labels.data[first] = np.where(labels.data[first] == 0, 1, 0)  # the user corrects it
    widget.session.go_to(queue[1])
    widget.session.toggle_reviewed()  # and accepts the next one as it is
    widget.refresh_status()
    assert panel.queue() == queue[2:]
    assert panel.next_suspect() == queue[2]


def test_scores_of_a_layer_left_while_scoring_rank_nothing(dock, qtbot):
    widget, labels, prediction = dock
    panel = widget.triage
    data, kwargs, _ = labels_layer_data(prediction.copy(), widget.image_layer, name="other")
    kwargs["metadata"].update(prediction=prediction.copy(), model=labels.metadata["model"])
    other = widget.viewer.add_labels(data, **kwargs)
    widget.select_labels(labels)
    assert panel.score() is not None
    widget.select_labels(other)  # the user reviews another layer while the slices are scored
    qtbot.waitUntil(lambda: panel._worker is None, timeout=60_000)
    assert panel.result is None and "changed while scoring" in panel.status.text()
    assert panel.next_suspect() is None


def test_fill_between_is_one_undo_step(dock):
    widget, labels, prediction = dock
    with_pancreas = np.flatnonzero(prediction.reshape(len(prediction), -1).any(axis=1))
    low, high = int(with_pancreas[2]), int(with_pancreas[2]) + 4
    labels.data[low] = np.roll(prediction[low], 3, axis=1)  # two corrected slices
    labels.data[high] = np.roll(prediction[high], 3, axis=1)  # the model's slices between
    labels.events.data(value=labels.data)
    widget.refresh_status()
    before = np.array(labels.data)
    changed = widget.triage.fill_between()
    assert changed > 0
    between = labels.data[low + 1 : high]
    assert (between != before[low + 1 : high]).any() and between.any()  # moved with them
    np.testing.assert_array_equal(labels.data[[low, high]], before[[low, high]])
    widget.refresh_status()
    # interpolated slices are not corrections: fine-tuning learns only from low and high
    assert widget.session.edited == [low, high]
    filled = np.array(labels.data)
    assert "filled between slices" in widget.triage.status.text()
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
    widget.refresh_status()
    assert "the last fill was undone" in widget.triage.status.text()  # not its stale report
    labels.redo()  # Ctrl+Shift+Z: the fill is back, and still not a correction
    np.testing.assert_array_equal(labels.data, filled)
    widget.refresh_status()
    assert widget.session.edited == [low, high]
    assert "filled between slices" in widget.triage.status.text()  # not "undone" any more


def _correct(labels, prediction, slices):
    """The user shifts the model's pancreas by 3 pixels on ``slices``."""
    for k in slices:
        labels.data[k] = np.roll(prediction[k], 3, axis=1)
    labels.events.data(value=labels.data)


def _correct_every_third(widget, labels, prediction) -> list[int]:
    """Correct every third slice holding pancreas (from the second) and let the dock see it."""
    with_pancreas = np.flatnonzero(prediction.reshape(len(prediction), -1).any(axis=1))
    corrected = [int(k) for k in with_pancreas[1::3]]
    _correct(labels, prediction, corrected)
    widget.refresh_status()
    return corrected


def test_refine_round_fills_and_resegments_in_one_undo_step(dock, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("DSMS_MODEL_DIR", str(tmp_path / "models"))
    widget, labels, prediction = dock
    with_pancreas = np.flatnonzero(prediction.reshape(len(prediction), -1).any(axis=1))
    corrected = _correct_every_third(widget, labels, prediction)
    before = np.array(labels.data)
    panel = widget.triage.refine_round
    worker = panel.start()
    assert worker is not None and panel.button.text() == "Cancel round"
    touched = int(with_pancreas[-1]) if int(with_pancreas[-1]) not in corrected else 0
    labels.data[touched, :2, :2] = 2  # the user paints while the round runs
    assert widget.fine_tune.fine_tune() is None  # one training at a time
    assert "refine round is running" in widget.fine_tune.fine_tune_label.text()
    qtbot.waitUntil(lambda: not panel.is_running, timeout=120_000)
    after = np.array(labels.data)
    np.testing.assert_array_equal(after[corrected], before[corrected])  # corrections kept
    np.testing.assert_array_equal(after[touched, :2, :2], 2)  # and what was painted meanwhile
    np.testing.assert_array_equal(after[touched, 2:], before[touched, 2:])
    between = [k for k in range(corrected[0] + 1, corrected[-1]) if k not in corrected]
    assert (after[between] != before[between]).any()  # filled between the shifted slices
    assert "and 1 painted meanwhile kept" in panel.status.text()
    assert "changed" in panel.status.text()
    latest = Path(labels.metadata[LATEST_MODEL])
    assert latest.is_file() and latest.parent == tmp_path / "models"
    assert panel.latest_checkpoint() == str(latest)  # the next round starts from it
    sidecar = widget.session.sidecar(tmp_path / "out.nii.gz", "labels")
    assert sidecar["model"]["refine_rounds"] == [str(latest)]  # the export names it
    widget.refresh_status()
    assert set(widget.session.edited) == set(corrected) | {touched}  # the round's labels are
    labels.undo()  # not corrections, and one Ctrl+Z takes them back
    widget.refresh_status()
    assert "undone" in panel.status.text()  # the round's report no longer stands
    undone = np.array(labels.data)
    np.testing.assert_array_equal(np.delete(undone, touched, 0), np.delete(before, touched, 0))


def test_refine_round_without_corrections_says_what_to_do(dock):
    widget, _, _ = dock
    panel = widget.triage.refine_round
    assert panel.start() is None
    assert "no corrected slices" in panel.status.text()
    assert panel.button.text() == "Refine round"


def test_the_round_lists_changed_slices_as_ranges():
    assert changed_slices(np.array([3, 1, 2, 7])) == "slices 1-3, 7"
    assert changed_slices(np.array([1, 3, 5, 7, 9])) == "5 slices from 1 to 9"


def test_the_round_status_tells_of_the_steps_on_the_held_out_slices():
    """The dock's line never said the model went on to learn from the held-out slices (the
    CLI did), and called 297 of 299 steps "stopped by the time limit" (a tester)."""
    from src_models.refine import RefineResult
    from src_models.training.fine_tune import FineTuneResult

    tuned = FineTuneResult(
        None, None, 297, 61.0, {"dice_pancreas": 0.425}, {"dice_pancreas": 0.715},
        planned_steps=299, held_out_steps=99,
    )  # fmt: skip
    line = model_line(RefineResult(np.zeros((2, 2, 2), np.uint8), np.eye(4), [0], [], tuned))
    assert "then 99 steps on every corrected slice, the held-out ones too" in line
    assert "time limit" not in line


def test_fill_between_leaves_gaps_over_30_mm_as_they_were():
    model = np.zeros((40, 20, 20), dtype=np.uint8)
    model[:, 4:16, 4:16] = 1  # the organ as the model labelled it
    labels = model.copy()
    labels[[0, 12, 39]] = 0
    labels[[0, 12, 39], 9:11, 9:11] = 1  # three small corrections: 24 mm, then 54 mm apart
    changed, values, skipped = fill_changes(labels, [0, 12, 39], slice_mm=2.0)
    assert skipped == [(12, 39)]
    assert changed[0].size and set(np.unique(changed[0])) <= set(range(1, 12))


def test_a_round_on_two_slices_does_not_learn_and_says_so(dock, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("DSMS_MODEL_DIR", str(tmp_path / "models"))
    widget, labels, prediction = dock
    with_pancreas = np.flatnonzero(prediction.reshape(len(prediction), -1).any(axis=1))
    _correct(labels, prediction, [int(with_pancreas[0]), int(with_pancreas[-1])])
    widget.refresh_status()
    panel = widget.triage.refine_round
    assert panel.start() is not None
    qtbot.waitUntil(lambda: not panel.is_running, timeout=120_000)
    assert "did not learn" in panel.status.text() and LATEST_MODEL not in labels.metadata
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_a_round_whose_labels_changed_meanwhile_leaves_no_model(dock, qtbot, tmp_path, monkeypatch):
    """A tester switched layers during two rounds: nothing was written, but both rounds'
    models stayed in the model folder and its menus."""
    monkeypatch.setenv("DSMS_MODEL_DIR", str(tmp_path / "models"))
    widget, labels, prediction = dock
    with_pancreas = np.flatnonzero(prediction.reshape(len(prediction), -1).any(axis=1))
    _correct(labels, prediction, [int(k) for k in with_pancreas[1::3]])
    widget.refresh_status()
    panel = widget.triage.refine_round
    before = np.array(labels.data)
    assert panel.start() is not None
    panel._started["session"] = object()  # as after choosing another CT or labels layer
    qtbot.waitUntil(lambda: not panel.is_running, timeout=120_000)
    assert "nothing was written" in panel.status.text()
    np.testing.assert_array_equal(labels.data, before)
    assert not list((tmp_path / "models").glob("*.pt"))

    # cancelled: whenever the Cancel lands, no model of the round stays
    assert panel.start() is not None
    saved = Path(panel._started["model_path"])
    panel._on_clicked()  # the second click of a double click: not a cancel
    assert panel.is_running and panel.button.isEnabled()
    panel._started_at -= 2.0  # a deliberate click on Cancel round, later
    panel._on_clicked()
    qtbot.waitUntil(lambda: not panel.is_running, timeout=120_000)
    assert "cancelled" in panel.status.text() and not saved.exists()
    # Cancel that lands as the round ends, after it saved its model: napari then reports
    # neither its result nor an abort (superqt emits "returned" only when no abort was asked);
    # the round ends as cancelled all the same, and its model goes (CI caught the status stuck
    # at "cancelling")
    monkeypatch.setattr(panel, "_on_done", lambda result: None)  # no "returned" signal
    assert panel.start() is not None
    saved = Path(panel._started["model_path"])
    qtbot.waitUntil(lambda: not panel.is_running, timeout=120_000)
    assert "cancelled" in panel.status.text() and not saved.exists()
    np.testing.assert_array_equal(labels.data, before)


def test_a_round_names_corrections_outside_the_region_and_ends_with_its_layer(
    dock, qtbot, tmp_path, monkeypatch
):
    """A tester's slice 90, outside the region, was left out without a word; and deleting the
    last labels layer let the round train on for 33 s under a line naming the removed layer."""
    from napari_dsms._session import RegionOfInterest

    monkeypatch.setenv("DSMS_MODEL_DIR", str(tmp_path / "models"))
    widget, labels, prediction = dock
    with_pancreas = np.flatnonzero(prediction.reshape(len(prediction), -1).any(axis=1))
    corrected = [int(k) for k in with_pancreas[::2]]
    _correct(labels, prediction, corrected)
    widget.refresh_status()
    widget.session.roi = RegionOfInterest(corrected[0], corrected[-2])
    panel = widget.triage.refine_round
    assert panel.start() is not None
    assert f"Slice {corrected[-1]} lies outside the region of interest" in panel.status.text()
    widget.viewer.layers.remove(labels)
    assert widget.session is None and "no labels layer" in widget.editing_label.text()
    qtbot.waitUntil(lambda: not panel.is_running, timeout=120_000)
    # says why, not "the labels and the model are unchanged" about a layer just deleted
    text = panel.status.text()
    assert f"its labels layer {labels.name!r} was removed" in text or (
        "nothing was written" in text
    )


def test_a_later_tool_write_ends_the_fill_reports_undo_watch(qtbot):
    """A refine round that rewrote filled slices with what they held before the fill made the
    fill's status say "undone" (a tester): the round's write supersedes the fill's."""
    from types import SimpleNamespace

    from qtpy.QtWidgets import QLabel

    from napari_dsms._widgets.review._common import UndoWatch

    layer = SimpleNamespace(data=np.zeros((3, 4, 4), dtype=np.uint8))
    fill_status, round_status = QLabel("filled between slices 0 and 2"), QLabel("round: done")
    fill = UndoWatch(fill_status, "the last fill was undone")
    round_ = UndoWatch(round_status, "the round was undone")
    voxels = (np.array([1, 1]), np.array([0, 1]), np.array([0, 0]))
    fill.wrote(layer, voxels, np.array([0, 0]), np.array([1, 1]))
    layer.data[voxels] = 1
    round_.wrote(layer, voxels, np.array([1, 1]), np.array([0, 0]))  # back to the fill's before
    layer.data[voxels] = 0
    fill.check(layer)
    round_.check(layer)
    assert fill_status.text() == "filled between slices 0 and 2"
    layer.data[voxels] = 1  # Ctrl+Z of the round
    round_.check(layer)
    assert round_status.text() == "the round was undone"
    # a fill undone, then a round: the fill's "undone" line is history, not left above the
    # round's report (a tester)
    fill.wrote(layer, voxels, np.array([1, 1]), np.array([2, 2]))
    fill.check(layer)
    assert fill_status.text() == "the last fill was undone"
    round_.wrote(layer, voxels, np.array([1, 1]), np.array([0, 0]))
    assert fill_status.text() == ""


def test_a_closed_review_dock_leaves_the_labels_to_the_one_opened_again(dock, qtbot):
    # napari unparents a closed dock without deleting it: the old one kept a session whose
    # baseline lacked a tool's writes and overwrote the new dock's in the layer, so the
    # autosave counted the filled slices as the user's edits (a tester, after a round).
    old, labels, prediction = dock
    viewer = old.viewer
    viewer.window.add_dock_widget(old, name="Review and fine-tune")
    viewer.window.remove_dock_widget(old)  # the dock's close button does the same
    assert old.session is None
    new = ReviewWidget(viewer)
    qtbot.addWidget(new)
    viewer.window.add_dock_widget(new, name="Review and fine-tune")
    with_pancreas = np.flatnonzero(prediction.reshape(len(prediction), -1).any(axis=1))
    low, high = int(with_pancreas[2]), int(with_pancreas[2]) + 4
    labels.data[low] = np.roll(prediction[low], 3, axis=1)
    labels.data[high] = np.roll(prediction[high], 3, axis=1)
    labels.events.data(value=labels.data)
    new.refresh_status()
    assert new.triage.fill_between() > 0
    new.refresh_status()
    old.refresh_status()  # its timer, or a script: it must not write its view of the labels
    qtbot.wait(600)  # both docks' refresh timers have fired
    from src_models.corrections import edited_slices

    baseline = labels.metadata["baseline"]  # what the autosave journals the edits against
    assert edited_slices(np.asarray(labels.data), baseline) == [low, high]
    assert new.session.edited == [low, high] and old.session is None
    # docked again (a script may do that), it reviews again
    viewer.window.remove_dock_widget(new)
    viewer.window.add_dock_widget(old, name="Review and fine-tune")
    assert old.session is not None


def test_closing_the_review_dock_stops_its_round(dock, qtbot, tmp_path, monkeypatch):
    # The round went on unseen and wrote 56 slices into the labels, its report lost (a tester).
    monkeypatch.setenv("DSMS_MODEL_DIR", str(tmp_path / "models"))
    widget, labels, prediction = dock
    widget.viewer.window.add_dock_widget(widget, name="Review and fine-tune")
    _correct_every_third(widget, labels, prediction)
    before = np.array(labels.data)
    panel = widget.triage.refine_round
    assert panel.start() is not None
    widget.viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(lambda: not panel.is_running, timeout=120_000)
    np.testing.assert_array_equal(labels.data, before)
    assert "cancelled" in panel.status.text()
    assert not list((tmp_path / "models").glob("*.pt"))  # no model of a round nobody saw


def test_a_round_that_changes_nothing_offers_no_undo(dock, qtbot, tmp_path, monkeypatch):
    """After a round that wrote nothing, the status said "Ctrl+Z reverts them": a tester's
    Ctrl+Z then undid the correction painted just before (no undo step had been added)."""
    from napari_dsms._session import RegionOfInterest

    monkeypatch.setenv("DSMS_MODEL_DIR", str(tmp_path / "models"))
    widget, labels, prediction = dock
    with_pancreas = np.flatnonzero(prediction.reshape(len(prediction), -1).any(axis=1))
    k = int(with_pancreas[len(with_pancreas) // 2])
    _correct(labels, prediction, [k])
    widget.refresh_status()
    widget.session.roi = RegionOfInterest(k, k)  # the round may write nowhere else
    before = np.array(labels.data)
    panel = widget.triage.refine_round
    assert panel.start() is not None
    qtbot.waitUntil(lambda: not panel.is_running, timeout=120_000)
    np.testing.assert_array_equal(labels.data, before)
    assert "no other slice changed (0 voxels)" in panel.status.text()
    assert "Ctrl+Z" not in panel.status.text()
