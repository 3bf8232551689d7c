"""The docks under faults: layers or docks closed mid-run, impatient clicks, full disks.

Each case checks what a user would notice: the viewer still works, the labels they painted are
untouched, no half-written file is left, and a message says what happened.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from napari.layers import Image, Labels
from napari.utils.notifications import notification_manager
from qtpy import sip
from qtpy.QtWidgets import QWidget
from test_review_widget import CORRECTED, _correct, _open, case  # noqa: F401 (its fixture)
from test_segment_widget import _phantom_layer, _run, _widget, model_dir  # noqa: F401 (fixture)

from napari_dsms._layers import AUTOSAVE_KEY
from napari_dsms._widgets._worker import start_job
from napari_dsms._widgets.review import ReviewWidget
from napari_dsms._writer import write_labels_layer
from src_models import autosave

TIMEOUT_MS = 120_000


@pytest.fixture
def messages():
    """Every notification napari shows during the test."""
    seen: list[str] = []

    def keep(notification):
        seen.append(notification.message)

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- segmentation


@pytest.fixture
def models(request) -> Path:
    """test_segment_widget's folder of tiny checkpoints (no bundled ones)."""
    return request.getfixturevalue("model_dir")


def _slow_run(viewer, models: Path):
    """A Segment dock on a 40-slice phantom, one slice per batch, so a run lasts a while."""
    image = _phantom_layer(viewer, slices=40)
    widget = _widget(viewer, models)
    widget.batch_spin.setValue(1)
    return image, widget


def _when_running(qtbot, widget, action) -> None:
    """Start a run and call ``action`` once the model has done its first batch."""
    widget.run()
    done = []
    widget.worker.yielded.connect(lambda value: done.append(value) or (len(done) == 1 and action()))
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


def test_closing_the_image_while_segmenting_adds_nothing_and_says_so(
    make_napari_viewer, qtbot, models, messages
):
    viewer = make_napari_viewer()
    image, widget = _slow_run(viewer, models)
    _when_running(qtbot, widget, lambda: viewer.layers.remove(image))
    assert len(viewer.layers) == 0
    assert "was removed" in widget.readout.text()
    # The viewer and the dock still work.
    _phantom_layer(viewer, slices=6)
    labels = _run(qtbot, widget)
    assert isinstance(labels, Labels) and labels in viewer.layers


def test_closing_edited_labels_while_segmenting_keeps_them_apart(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    image, widget = _slow_run(viewer, models)
    first = _run(qtbot, widget)
    first.data[3, 5:9, 5:9] = 2  # the user's correction
    edited = np.array(first.data)
    _when_running(qtbot, widget, lambda: viewer.layers.remove(first))
    result = viewer.layers[first.name]
    assert result is not first  # the new prediction went into a layer of its own
    np.testing.assert_array_equal(first.data, edited)
    np.testing.assert_array_equal(result.data, result.metadata["prediction"])


def test_closing_the_dock_while_segmenting_leaves_a_working_viewer(
    make_napari_viewer, qtbot, models
):
    viewer = make_napari_viewer()
    image, widget = _slow_run(viewer, models)
    dock = viewer.window.add_dock_widget(widget, name="Segment")
    widget.run()
    worker = widget.worker
    qtbot.waitSignal(worker.yielded, timeout=TIMEOUT_MS).wait()
    viewer.window.remove_dock_widget(dock)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=TIMEOUT_MS)
    qtbot.wait(200)  # let queued result steps run, if any
    assert image in viewer.layers
    again = _widget(viewer, models)
    labels = _run(qtbot, again)
    assert labels.data.shape == image.data.shape


def test_closing_the_viewer_mid_job_reaches_no_widget_after_it_is_gone(make_napari_viewer, qtbot):
    # The job's last progress, its cancellation and its end arrive after the window's widgets
    # were deleted: a progress update then crashed napari with a segmentation fault.
    viewer = make_napari_viewer()
    dock = QWidget()
    viewer.window.add_dock_widget(dock, name="job owner")
    release, ended, calls = threading.Event(), threading.Event(), []

    def job():
        try:
            yield (0, 2)
            release.wait(30)  # the window goes while the job computes its next step
            yield (1, 2)
            return "result"
        finally:
            ended.set()

    worker = start_job(
        job,
        description="a job",
        on_result=lambda value: calls.append("result"),
        on_yield=lambda value: calls.append("yield"),
        on_finished=lambda: calls.append("finished"),
        on_aborted=lambda: calls.append("aborted"),
        on_error=lambda error: calls.append("error"),
    )
    qtbot.waitUntil(lambda: calls == ["yield"], timeout=TIMEOUT_MS)
    viewer.close()
    qtbot.waitUntil(lambda: sip.isdeleted(dock), timeout=TIMEOUT_MS)
    assert worker.abort_requested  # napari cancels the workers of the window it closes
    release.set()
    assert ended.wait(30)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=TIMEOUT_MS)
    qtbot.wait(200)  # deliver everything the worker queued
    assert calls == ["yield"]


def test_start_and_cancel_fifty_times_then_a_full_run(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    image, widget = _slow_run(viewer, models)
    for _ in range(50):
        widget.run()
        widget.cancel()
        qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
        assert "Cancelled" in widget.readout.text()
    assert [type(layer) for layer in viewer.layers] == [Image]
    assert widget.run_button.isEnabled()
    widget.batch_spin.setValue(8)
    labels = _run(qtbot, widget)
    assert [layer.name for layer in viewer.layers].count(labels.name) == 1


def test_a_second_segment_click_while_running_starts_nothing(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    image, widget = _slow_run(viewer, models)
    widget.run()
    worker = widget.worker
    assert not widget.run_button.isEnabled()
    widget.run_button.click()
    widget.run()
    assert widget.worker is worker
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    labels = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert len(labels) == 1


# ---------------------------------------------------------------- review: fine-tune and export


@pytest.fixture
def review(case, make_napari_viewer, qtbot):  # noqa: F811 (the imported fixture)
    """A Review dock over test_review_widget's real CT crop, with eight corrected slices."""
    real = case
    viewer = make_napari_viewer()
    image, labels, reference = _open(viewer, real)
    widget = ReviewWidget(viewer)
    qtbot.addWidget(widget)
    _correct(labels, reference)
    widget.refresh_status()
    return widget, viewer, image, labels, real["checkpoint"]


def test_fine_tune_into_an_unwritable_model_folder_is_refused_at_once(
    review, tmp_path, monkeypatch, messages
):
    widget, viewer, image, labels, checkpoint = review
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the model folder should be")
    monkeypatch.setenv("DSMS_MODEL_DIR", str(blocker / "models"))
    before = np.array(labels.data)
    assert widget.fine_tune.fine_tune() is None  # refused before any training step
    assert "model" in widget.fine_tune.fine_tune_label.text()
    assert any("not-a-folder" in message for message in messages)
    assert not widget.fine_tune.is_busy and widget.fine_tune.fine_tune_button.isEnabled()
    np.testing.assert_array_equal(labels.data, before)
    assert _files(checkpoint.parent) == ["tiny.pt"]


def test_closing_the_layers_while_fine_tuning_keeps_the_viewer_working(review, qtbot):
    widget, viewer, image, labels, _ = review
    widget.fine_tune.steps_spin.setValue(20)
    widget.fine_tune.budget_spin.setValue(0)
    worker = widget.fine_tune.fine_tune()
    assert worker is not None
    viewer.layers.remove(labels)
    viewer.layers.remove(image)
    qtbot.waitUntil(lambda: not widget.fine_tune.is_busy, timeout=TIMEOUT_MS)
    # What was corrected before the layers closed still taught the model.
    assert widget.fine_tune.last_checkpoint is not None
    assert widget.fine_tune.last_checkpoint.is_file()
    assert len(viewer.layers) == 0
    assert widget.image_layer is None and widget.labels_layer is None
    assert widget.export.export_labels(widget.fine_tune.last_checkpoint.with_suffix(".nii")) is None
    assert "choose the image" in widget.export.export_label.text()


def test_export_on_a_full_disk_keeps_no_file_and_no_labels_change(
    review, tmp_path, monkeypatch, messages
):
    widget, viewer, image, labels, _ = review
    before = np.array(labels.data)
    out = tmp_path / "export"
    out.mkdir()
    monkeypatch.setattr(nib, "save", _disk_full)
    assert widget.export.export_labels(out / "labels.nii.gz") is None
    assert "No space left" in widget.export.export_label.text()
    assert any("No space left" in message for message in messages)
    assert _files(out) == []
    np.testing.assert_array_equal(labels.data, before)

    monkeypatch.undo()
    monkeypatch.setattr("src_models.corrections.write_text_atomic", _disk_full)
    assert widget.export.export_labels(out / "labels.nii.gz") is None
    assert "was not kept" in widget.export.export_label.text()
    assert _files(out) == []  # labels without their side-car are not left behind


def test_a_full_disk_in_the_napari_writer_leaves_no_file(review, tmp_path, monkeypatch):
    widget, viewer, image, labels, _ = review
    monkeypatch.setattr(nib, "save", _disk_full)
    with pytest.raises(OSError, match="No space"):
        write_labels_layer(
            str(tmp_path / "labels.nii.gz"), labels.data, {"metadata": labels.metadata}
        )
    assert [p for p in tmp_path.iterdir() if "labels" in p.name] == []


def test_a_successful_export_discards_the_journal_a_failed_one_keeps_it(
    review, qtbot, tmp_path, monkeypatch
):
    widget, viewer, image, labels, _ = review
    widget.autosave.delay_ms = 50
    widget.autosave.schedule(labels)
    qtbot.waitUntil(
        lambda: bool(autosave.list_entries()) and not widget.autosave.busy, timeout=TIMEOUT_MS
    )
    [entry] = autosave.list_entries()
    assert entry.edited == CORRECTED
    assert labels.metadata[AUTOSAVE_KEY]["session"] == entry.session

    with monkeypatch.context() as patch:
        patch.setattr(nib, "save", _disk_full)
        assert widget.export.export_labels(tmp_path / "labels.nii.gz") is None
    assert len(autosave.list_entries()) == 1
    assert widget.export.export_labels(tmp_path / "labels.nii.gz") is not None
    assert autosave.list_entries() == []
