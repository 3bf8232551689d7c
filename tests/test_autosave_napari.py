"""Autosave in a real viewer: painted corrections survive SIGKILL, and re-opening offers them."""

from __future__ import annotations

import datetime
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from qtpy.QtWidgets import QMainWindow

from napari_dsms import _autosave
from napari_dsms._layers import (
    AUTOSAVE_KEY,
    EDIT_LOG,
    LATEST_MODEL,
    ROI,
    image_layer_data,
    new_labels_like,
)
from napari_dsms._widgets.load_ct import LoadCTWidget
from napari_dsms._widgets.review import ReviewWidget
from napari_dsms._writer import write_labels_layer
from src_models import autosave as journal
from src_models.corrections import CorrectionsError
from src_models.io import read_volume
from src_models.io.orientation import from_canonical
from src_models.phantom import make_phantom

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 60_000

#: A user's session in a separate napari process: open the CT with the Load CT dock, make a
#: labels layer on its grid, paint pancreas and tumour with the brush, keep the viewer running.
SESSION = """
import sys, time
import numpy as np
import napari
from qtpy.QtWidgets import QApplication
from napari_dsms._layers import new_labels_like
from napari_dsms._widgets.load_ct import LoadCTWidget

ct, painted = sys.argv[1:3]
viewer = napari.Viewer()
dock = LoadCTWidget(viewer)
viewer.window.add_dock_widget(dock, name="Load CT")
dock.load(ct)
deadline = time.monotonic() + 120
while len(viewer.layers) == 0 and time.monotonic() < deadline:
    QApplication.processEvents()
    time.sleep(0.01)
data, kwargs, _ = new_labels_like(viewer.layers[0], name="corrections")
labels = viewer.add_labels(data, **kwargs)
labels.mode = "paint"
labels.brush_size = 5
labels.selected_label = 1
for z, y, x in [(2, 14, 16), (2, 15, 18), (3, 14, 17)]:
    labels.paint((z, y, x), 1)
labels.selected_label = 2
labels.paint((3, 20, 24), 2)
np.save(painted + ".tmp.npy", labels.data)
import os; os.replace(painted + ".tmp.npy", painted)
napari.run()
"""


@pytest.fixture(autouse=True)
def journal_dir(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "journal"
    monkeypatch.setenv(journal.AUTOSAVE_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    image, _ = make_phantom(seed=5, shape=(48, 40, 6), spacing=(2.0, 2.0, 3.0))
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image.array, image.affine), path)
    return path


def _open(viewer, qtbot, ct: Path):
    dock = LoadCTWidget(viewer)
    viewer.window.add_dock_widget(dock)
    manager = _autosave.attach(viewer)
    count = len(viewer.layers)
    dock.load(ct)
    qtbot.waitUntil(lambda: len(viewer.layers) > count and not manager.busy, timeout=TIMEOUT_MS)
    return viewer.layers[-1], manager


def _wait_for(condition, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_painted_labels_survive_sigkill_and_reopening_offers_them(
    ct_file, tmp_path, journal_dir, make_napari_viewer, qtbot
):
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs an X display for a napari process (pytest-xvfb provides one)")
    painted_file = tmp_path / "painted.npy"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", SESSION, str(ct_file), str(painted_file)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: painted_file.exists() or process.poll() is not None)
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        painted = np.load(painted_file)
        assert set(np.unique(painted)) == {0, 1, 2}
        # The user stops painting; a few seconds later the work is on disk.
        _wait_for(lambda: bool(journal.list_entries()), timeout=30.0)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()

    out = tmp_path / "out.nii.gz"
    result = subprocess.run(
        [sys.executable, "-m", "src_models", "recover", str(ct_file), "-o", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    source, written = nib.load(ct_file), nib.load(out)
    np.testing.assert_allclose(written.affine, source.affine)
    np.testing.assert_array_equal(
        np.asarray(written.dataobj), from_canonical(painted, source.affine)
    )
    assert "2 edited slices" in result.stdout  # slices 2 and 3 hold the strokes

    # Re-opening the CT offers the same labels, with their time and edited slices.
    messages = []
    from napari.utils.notifications import notification_manager

    notification_manager.notification_ready.connect(messages.append)
    viewer = make_napari_viewer()
    image, manager = _open(viewer, qtbot, ct_file)
    [offer] = manager.offers.values()
    assert offer.edited == [2, 3]
    [toast] = [n for n in messages if n.actions]
    # the decision first (a toast shows about a line), and a source in words, not a repr
    assert toast.message.startswith("Restore 2 edited slices") and toast.source == (
        "napari-dsms autosave"
    )
    restored = manager.restore(offer.digest)
    assert restored.name == "corrections"
    np.testing.assert_array_equal(restored.data, painted)
    assert tuple(restored.scale) == tuple(image.scale)


def _labels_with_prediction(viewer, image):
    data, kwargs, _ = new_labels_like(image, name="ct pancreas/tumour")
    data[1:4, 10:20, 10:20] = 1
    kwargs["metadata"].update(prediction=data.copy(), model={"arch": "unet"})
    return viewer.add_labels(data, **kwargs)


def _labels_saved_on_close(viewer, qtbot, ct: Path):
    """The CT opened and labels with a prediction, journaled by a close, not by the timer."""
    image, manager = _open(viewer, qtbot, ct)
    manager.delay_ms = 60_000  # the close, not the timer, must save
    return image, manager, _labels_with_prediction(viewer, image)


def _painted_and_closed(viewer, qtbot, ct: Path):
    """A stroke of tumour on labels of the CT, journaled by closing the labels layer:
    (image, manager, the painted labels)."""
    image, manager, labels = _labels_saved_on_close(viewer, qtbot, ct)
    labels.paint((4, 5, 5), 2)
    painted = labels.data.copy()
    viewer.layers.remove(labels)
    _wait_for_journal(qtbot, manager)
    return image, manager, painted


def _wait_for_journal(qtbot, manager) -> None:
    qtbot.waitUntil(lambda: bool(journal.list_entries()) and not manager.busy, timeout=TIMEOUT_MS)


def _reopen_and_restore(viewer, qtbot, ct: Path, image, manager):
    """Close the CT, open it again and restore what its journal offers: (offer, labels)."""
    viewer.layers.remove(image)
    _open(viewer, qtbot, ct)
    [offer] = manager.offers.values()
    return offer, manager.restore(offer.digest)


def test_edits_are_journaled_after_a_pause_and_an_undone_edit_is_no_work(
    ct_file, make_napari_viewer, qtbot
):
    viewer = make_napari_viewer()
    image, manager = _open(viewer, qtbot, ct_file)
    manager.delay_ms = 100
    labels = _labels_with_prediction(viewer, image)
    labels.selected_label = 2
    labels.brush_size = 3
    labels.paint((4, 5, 5), 2)
    _wait_for_journal(qtbot, manager)
    [entry] = journal.list_entries()
    assert entry.edited == [4] and entry.record["model"] == {"arch": "unet"}
    assert entry.record["effort"]["strokes"] == 1
    np.testing.assert_array_equal(entry.labels(), labels.data)
    np.testing.assert_array_equal(entry.prediction(), labels.metadata["prediction"])
    assert labels.metadata[AUTOSAVE_KEY] == journal.stamp(entry.digest, entry.session)

    labels.undo()  # back to the model's output: nothing left to recover
    qtbot.waitUntil(lambda: not journal.list_entries() and not manager.busy, timeout=TIMEOUT_MS)


def test_a_full_disk_warns_once_and_leaves_the_labels_alone(
    ct_file, make_napari_viewer, qtbot, monkeypatch, journal_dir
):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    image, manager = _open(viewer, qtbot, ct_file)
    manager.delay_ms = 100
    labels = _labels_with_prediction(viewer, image)
    messages = []
    notification_manager.notification_ready.connect(messages.append)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", disk_full)
    labels.paint((4, 5, 5), 2)
    before = labels.data.copy()
    qtbot.waitUntil(lambda: any("No space" in n.message for n in messages), timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: not manager.busy, timeout=TIMEOUT_MS)
    labels.paint((5, 5, 5), 2)
    qtbot.wait(400)
    qtbot.waitUntil(lambda: not manager.busy, timeout=TIMEOUT_MS)
    assert sum("No space" in n.message for n in messages) == 1
    assert np.array_equal(labels.data[:5], before[:5])
    assert not [p for p in journal_dir.rglob("*") if p.is_file()]  # no half-written file


def test_exporting_the_labels_removes_their_journal(ct_file, tmp_path, make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, manager = _open(viewer, qtbot, ct_file)
    manager.delay_ms = 100
    labels = _labels_with_prediction(viewer, image)
    labels.paint((4, 5, 5), 2)
    _wait_for_journal(qtbot, manager)
    out = tmp_path / "export.nii.gz"
    write_labels_layer(str(out), labels.data, {"metadata": labels.metadata, "name": labels.name})
    assert journal.list_entries() == []
    np.testing.assert_array_equal(
        read_volume(out).array, from_canonical(labels.data, image.metadata["affine"])
    )


def test_closing_the_labels_layer_keeps_its_work_and_reopening_offers_it(
    ct_file, make_napari_viewer, qtbot
):
    viewer = make_napari_viewer()
    image, manager, painted = _painted_and_closed(viewer, qtbot, ct_file)
    offer, restored = _reopen_and_restore(viewer, qtbot, ct_file, image, manager)
    np.testing.assert_array_equal(restored.data, painted)
    assert restored.metadata["model"] == {"arch": "unet"}
    assert restored.metadata[AUTOSAVE_KEY]["session"] == offer.session  # the journal goes on


def test_closing_the_window_right_after_a_stroke_journals_it(ct_file, make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, manager, labels = _labels_saved_on_close(viewer, qtbot, ct_file)
    labels.paint((4, 5, 5), 2)
    painted = labels.data.copy()
    # The manager watches napari's main window; a stand-in window is closed here, because
    # closing napari's own inside the test fixture leaves it unable to clean up.
    assert manager._close_watcher.parent() is viewer.window._qt_window
    window = QMainWindow()
    _autosave._FlushOnClose(manager, window)
    window.close()  # the window's close button
    _wait_for_journal(qtbot, manager)
    [entry] = journal.list_entries()
    np.testing.assert_array_equal(entry.labels(), painted)


def test_a_restored_session_still_tells_corrections_from_what_tools_wrote(
    ct_file, make_napari_viewer, qtbot
):
    # After a crash, a restored fill between counted as corrections: fine-tuning would have
    # learnt the interpolated slices as the user's.
    viewer = make_napari_viewer()
    image, manager, labels = _labels_saved_on_close(viewer, qtbot, ct_file)
    review = ReviewWidget(viewer)
    qtbot.addWidget(review)
    review.select_labels(labels)
    labels.data[1, 10:20, 20:24] = 1  # the user corrects slices 1 and 3...
    labels.data[3, 10:20, 20:24] = 1
    labels.events.data(value=labels.data)
    review.refresh_status()
    assert review.triage.fill_between() > 0  # ...and fills slice 2 between them
    review.refresh_status()
    assert review.edited_slices() == [1, 3]
    # what else the session keeps with its labels: a tester's restore lost the region and the
    # last round's model, and the next round started again from the bundled one
    roi = {"first_slice": 1, "last_slice": 4, "box_rows_columns": None}
    state = {ROI: roi, LATEST_MODEL: "/m/v1.pt"}
    labels.metadata.update(state)
    review.go_to_slice(3)
    labels.paint((3, 12, 21), 1)  # a brush stroke: logged for the effort record
    edit_log = list(labels.metadata[EDIT_LOG])
    assert [k for _, k in edit_log if k is not None] == [3]  # the fill: a pause, no edit
    filled = labels.data.copy()
    viewer.layers.remove(labels)
    _wait_for_journal(qtbot, manager)
    [entry] = journal.list_entries()
    assert entry.edited == [1, 2, 3] and entry.corrected == [1, 3]
    offer, restored = _reopen_and_restore(viewer, qtbot, ct_file, image, manager)
    np.testing.assert_array_equal(restored.data, filled)
    assert {k: restored.metadata[k] for k in state} == state
    assert restored.metadata[EDIT_LOG] == edit_log
    review.select_labels(restored)
    review.refresh_status()
    assert review.edited_slices() == [1, 3]
    with pytest.raises(CorrectionsError, match=r"now 2, 2 edited"):  # the filled one: no
        review.session.fine_tune_inputs()  # correction, and two are too few to check a model
    assert review.session.roi is not None and review.session.roi.first == 1


def test_labels_made_with_napari_s_own_button_are_journaled_on_the_ct_grid(
    ct_file, tmp_path, make_napari_viewer, qtbot
):
    viewer = make_napari_viewer()
    image, manager = _open(viewer, qtbot, ct_file)
    manager.delay_ms = 100
    # What napari's "New labels layer" button makes: the image's shape and placement, no metadata.
    labels = viewer.add_labels(
        np.zeros(image.data.shape, np.uint8), scale=image.scale, translate=image.translate
    )
    labels.brush_size = 3
    labels.paint((2, 10, 10), 1)
    _wait_for_journal(qtbot, manager)
    [entry] = journal.list_entries()
    assert entry.edited == [2]  # no prediction: the slices holding labels
    out = tmp_path / "labels.nii.gz"
    write_labels_layer(str(out), labels.data, {"metadata": labels.metadata, "name": labels.name})
    np.testing.assert_array_equal(
        read_volume(out).array, from_canonical(labels.data, image.metadata["affine"])
    )
    # A script's np.zeros_like(image.data) labels, left at napari's default placement, too.
    plain = viewer.add_labels(np.zeros_like(image.data, dtype=np.uint8), name="script")
    assert plain.metadata["affine"] is image.metadata["affine"]
    # Two CTs of the same shape: no guessing, the labels stay unbound.
    data, kwargs, _ = image_layer_data(read_volume(ct_file), name="copy")
    viewer.add_image(data, **{**kwargs, "translate": (0, 0, 0)})
    assert "affine" not in viewer.add_labels(np.zeros_like(plain.data), name="which?").metadata


def test_labels_only_opened_are_not_journaled(ct_file, make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, manager = _open(viewer, qtbot, ct_file)
    manager.delay_ms = 100
    data, kwargs, _ = new_labels_like(image, name="opened from a file")
    data[2, 10:20, 10:20] = 1
    labels = viewer.add_labels(data, **kwargs)
    labels.visible = False  # refreshes, as undo does, but changes nothing
    labels.visible = True
    manager._save_all()  # the safety sweep
    qtbot.wait(500)
    qtbot.waitUntil(lambda: not manager.busy, timeout=TIMEOUT_MS)
    assert journal.list_entries() == []  # re-opening the CT will offer nothing
    labels.paint((3, 5, 5), 2)
    _wait_for_journal(qtbot, manager)
    assert journal.list_entries()[0].edited == [2, 3]


def test_a_viewer_keeps_its_journal_folder(
    ct_file, tmp_path, journal_dir, make_napari_viewer, qtbot, monkeypatch
):
    viewer = make_napari_viewer()
    image, manager = _open(viewer, qtbot, ct_file)
    manager.delay_ms = 100
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv(journal.AUTOSAVE_DIR_ENV, str(elsewhere))  # as after a test's teardown
    labels = _labels_with_prediction(viewer, image)
    labels.paint((4, 5, 5), 2)
    qtbot.waitUntil(
        lambda: bool(journal.list_entries(root=journal_dir)) and not manager.busy,
        timeout=TIMEOUT_MS,
    )
    assert not elsewhere.exists()
    out = tmp_path / "export.nii.gz"
    write_labels_layer(str(out), labels.data, {"metadata": labels.metadata, "name": labels.name})
    assert journal.list_entries(root=journal_dir) == []  # the export finds it there too


def test_labels_restored_on_a_renamed_ct_take_its_name(ct_file, make_napari_viewer, qtbot):
    """A tester reopened the CT as moved_ct and got back 'ct pancreas/tumour', a name that
    points at another image."""
    viewer = make_napari_viewer()
    image, manager, labels = _labels_saved_on_close(viewer, qtbot, ct_file)
    assert labels.name == f"{image.name} pancreas/tumour"
    labels.paint((4, 5, 5), 2)
    viewer.layers.remove(labels)
    _wait_for_journal(qtbot, manager)
    moved = ct_file.with_name("moved_ct.nii.gz")
    shutil.copyfile(ct_file, moved)
    _, restored = _reopen_and_restore(viewer, qtbot, moved, image, manager)
    assert viewer.layers[0].name == "moved_ct" and restored.name == "moved_ct pancreas/tumour"


def test_reopening_offers_the_session_with_corrections_not_a_newer_one_without(
    ct_file, make_napari_viewer, qtbot
):
    """A later session that only ran tools journals no correction; offering it hid the older
    session's edited slices from the Restore toast (a tester)."""
    viewer = make_napari_viewer()
    image, manager, painted = _painted_and_closed(viewer, qtbot, ct_file)
    [edits] = journal.list_entries()
    tools_only = edits.prediction().copy()  # what a fill between alone leaves: a tool's change
    tools_only[0, 0, 0] = 1
    journal.save(
        tools_only, digest=edits.digest, session=journal.new_session(), affine=edits.affine,
        shape=edits.shape, layer="ct pancreas/tumour", prediction=edits.prediction(),
        baseline=tools_only, now=edits.saved + datetime.timedelta(minutes=5),
    )  # fmt: skip
    newest = journal.latest(edits.digest)
    assert newest.session != edits.session and newest.corrected == []
    offer, restored = _reopen_and_restore(viewer, qtbot, ct_file, image, manager)
    assert offer.session == edits.session
    np.testing.assert_array_equal(restored.data, painted)
