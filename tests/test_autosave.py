"""The autosave journal and ``dsms recover``: corrections survive a crash, on the CT's grid."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from src_models import autosave
from src_models.cli import main
from src_models.io import read_volume
from src_models.io.orientation import from_canonical, to_canonical
from src_models.phantom import make_phantom


@pytest.fixture(autouse=True)
def journal_dir(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "journal"
    monkeypatch.setenv(autosave.AUTOSAVE_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    """A small LPS-stored phantom CT: its canonical layout differs from the file's order."""
    image, _ = make_phantom(seed=3, shape=(40, 36, 6), spacing=(2.0, 2.0, 3.0))
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image.array, image.affine), path)
    return path


def _painted(ct: Path) -> tuple[np.ndarray, np.ndarray]:
    """Canonical labels with a pancreas blob on slices 1-2 and a tumour dot on slice 4."""
    volume = read_volume(ct)
    shape = to_canonical(volume.array, volume.affine)[0].shape
    prediction = np.zeros(shape, np.uint8)
    prediction[1:3, 10:20, 5:15] = 1
    labels = prediction.copy()
    labels[1, 12:14, 20:25] = 1
    labels[4, 3:6, 7:9] = 2
    return labels, prediction


def _save(ct: Path, labels: np.ndarray, session: str, **kwargs) -> autosave.JournalEntry:
    volume = read_volume(ct)
    return autosave.save(
        labels,
        digest=autosave.volume_digest(volume),
        session=session,
        affine=volume.affine,
        shape=volume.shape,
        source=str(ct),
        layer="ct pancreas/tumour",
        **kwargs,
    )


def test_digest_follows_the_content_not_the_path(ct_file, tmp_path):
    volume = read_volume(ct_file)
    digest = autosave.volume_digest(volume)
    copy = tmp_path / "elsewhere" / "renamed.nii.gz"
    copy.parent.mkdir()
    shutil.copy(ct_file, copy)
    assert autosave.volume_digest(read_volume(copy)) == digest
    # What napari holds (the canonical view) gives the same key as the file's order.
    canonical = to_canonical(volume.array, volume.affine)[0]
    assert autosave.ct_digest(canonical, volume.affine) == digest

    changed = volume.array.copy()
    changed[0, 0, 0] += 1
    assert autosave.ct_digest(to_canonical(changed, volume.affine)[0], volume.affine) != digest
    shifted = volume.affine.copy()
    shifted[0, 3] += 1.0
    assert autosave.ct_digest(to_canonical(volume.array, shifted)[0], shifted) != digest


def test_save_latest_and_list(ct_file, journal_dir):
    labels, prediction = _painted(ct_file)
    first = autosave.new_session()
    second = autosave.new_session()
    earlier = dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.timezone.utc)
    _save(ct_file, prediction, first, now=earlier)
    entry = _save(ct_file, labels, second, prediction=prediction, reviewed=[2])
    assert entry.path.parent.parent == journal_dir

    newest = autosave.latest(entry.digest)
    assert newest is not None and newest.session == second
    np.testing.assert_array_equal(newest.labels(), labels)
    np.testing.assert_array_equal(newest.prediction(), prediction)
    assert newest.edited == [1, 4] and newest.reviewed == [2]
    assert [e.session for e in autosave.list_entries()] == [second, first]
    assert "2 edited and 1 reviewed slices" in newest.summary() and str(ct_file) in newest.summary()
    assert autosave.latest("0" * 32) is None


def test_the_prediction_is_kept_once_per_session_and_saves_hold_only_edited_slices(
    ct_file, journal_dir, capsys
):
    labels, prediction = _painted(ct_file)
    session = autosave.new_session()
    first = _save(ct_file, labels, session, prediction=prediction)
    [base] = first.path.parent.glob("*.base.npz")
    written = base.stat().st_mtime_ns
    labels[5, 0:2, 0:2] = 1
    second = _save(ct_file, labels, session, prediction=prediction)
    assert second.edited == [1, 4, 5]
    with np.load(second.path) as npz:
        assert npz["slices"].shape == (3, *labels.shape[1:])  # not the whole volume
    assert base.stat().st_mtime_ns == written  # the unchanged prediction is not written again
    np.testing.assert_array_equal(autosave.latest(second.digest).labels(), labels)

    # Re-segmented: a new base replaces the old one.
    prediction[0, 0, 0] = 1
    third = _save(ct_file, labels, session, prediction=prediction)
    [new_base] = third.path.parent.glob("*.base.npz")
    assert new_base != base and 0 in third.edited
    np.testing.assert_array_equal(third.prediction(), prediction)

    # A journal whose prediction file went missing is refused with its name, not misread.
    new_base.unlink()
    with pytest.raises(autosave.JournalError, match="prediction file"):
        third.labels()
    assert main(["recover", str(ct_file), "-o", str(journal_dir.parent / "out.nii.gz")]) == 2
    assert "is missing" in capsys.readouterr().err
    assert autosave.prune(third.digest, session) == 1 and not any(journal_dir.iterdir())


def test_a_failed_save_keeps_the_previous_one_and_leaves_no_temporary_file(
    ct_file, journal_dir, monkeypatch
):
    labels, prediction = _painted(ct_file)
    session = autosave.new_session()
    entry = _save(ct_file, prediction, session)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", disk_full)
    with pytest.raises(OSError, match="No space"):
        _save(ct_file, labels, session)
    assert [p.name for p in entry.path.parent.iterdir()] == [entry.path.name]
    np.testing.assert_array_equal(autosave.latest(entry.digest).labels(), prediction)


def test_prune_by_session_by_ct_and_by_age(ct_file, journal_dir):
    labels, _ = _painted(ct_file)
    keep, drop = autosave.new_session(), autosave.new_session()
    entry = _save(ct_file, labels, keep)
    _save(ct_file, labels, drop)
    assert autosave.prune(entry.digest, drop) == 1
    assert [e.session for e in autosave.list_entries()] == [keep]

    # A damaged file is skipped by the listing and removed by the age rule with the rest.
    damaged = entry.path.with_name(f"{autosave.new_session()}.npz")
    damaged.write_bytes(b"not a zip")
    assert [e.session for e in autosave.list_entries()] == [keep]
    assert autosave.prune() == 0  # all recent
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=autosave.MAX_AGE_DAYS + 1)
    assert autosave.prune(now=later) == 2
    assert autosave.list_entries() == [] and not any(journal_dir.iterdir())

    _save(ct_file, labels, keep)
    assert autosave.prune(entry.digest) == 1  # after an export of this CT


def test_recover_writes_the_last_labels_on_the_ct_grid_with_a_sidecar(ct_file, tmp_path, capsys):
    labels, prediction = _painted(ct_file)
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    _save(ct_file, prediction, autosave.new_session(), now=old)
    _save(ct_file, labels, autosave.new_session(), prediction=prediction)
    out = tmp_path / "out" / "recovered.nii.gz"
    out.parent.mkdir()

    assert main(["recover", str(ct_file), "-o", str(out)]) == 0
    assert "2 edited slices" in capsys.readouterr().out
    source, written = nib.load(ct_file), nib.load(out)
    assert written.shape == source.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, source.affine)
    expected = from_canonical(labels, source.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected)

    side = json.loads((out.parent / "recovered.json").read_text())
    assert side["edited_slices"]["canonical"] == [1, 4]
    assert side["source_image"] == str(ct_file)
    assert side["recovered_from"]["layer"] == "ct pancreas/tumour"

    assert main(["recover", "--list"]) == 0
    listing = capsys.readouterr().out.strip().splitlines()
    assert len(listing) == 2 and "2 edited slices" in listing[0]


def test_recover_takes_the_session_with_work_and_can_pick_another(ct_file, tmp_path, capsys):
    """A newer session without edits hid an older session's corrections, and napari's Restore
    offer and dsms recover took different sessions (testers): both take the one with work."""
    labels, prediction = _painted(ct_file)
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    corrected = autosave.new_session()
    _save(ct_file, labels, corrected, prediction=prediction, now=old)
    # later: a session where slices were only marked reviewed, then one where only a tool ran
    reviewed_only = autosave.new_session()
    later = old + dt.timedelta(minutes=30)
    _save(ct_file, prediction, reviewed_only, prediction=prediction + 0, reviewed=[2], now=later)
    tools_only = autosave.new_session()
    filled = prediction.copy()
    filled[3] = 1  # what a fill between writes: a tool's change, no correction
    _save(ct_file, filled, tools_only, prediction=prediction + 0, baseline=filled)
    recovered = tmp_path / "recovered.nii.gz"
    assert main(["recover", str(ct_file), "-o", str(recovered)]) == 0
    captured = capsys.readouterr()
    assert "(2 edited slices" in captured.out
    assert f"session {tools_only}: no edits (tools changed 1 slice)" in captured.err
    assert f"session {reviewed_only}: 1 reviewed slice" in captured.err
    assert "--session" in captured.err
    expected = from_canonical(labels, nib.load(ct_file).affine)
    np.testing.assert_array_equal(np.asarray(nib.load(recovered).dataobj), expected)
    newest = tmp_path / "newest.nii.gz"
    assert main(["recover", str(ct_file), "-o", str(newest), "--session", tools_only[:6]]) == 0
    assert "no edits" in capsys.readouterr().out
    # the side-car tells the tool's slice from the model's own (as napari's export does)
    content = json.loads(newest.with_name("newest.json").read_text())
    assert (
        content["tool_slices"]["canonical"] == [3] and content["edited_slices"]["canonical"] == []
    )
    assert main(["recover", str(ct_file), "-o", str(tmp_path / "x.nii.gz"), "--session", "zz"]) == 2
    assert "no autosaved session" in capsys.readouterr().err


def test_recover_errors_are_one_line_and_leave_no_file(ct_file, tmp_path, capsys):
    out = tmp_path / "out.nii.gz"

    assert main(["recover", str(ct_file), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no autosaved" in err[0]

    labels, _ = _painted(ct_file)
    _save(ct_file, labels, autosave.new_session())
    exported = tmp_path / "exported.nii.gz"  # an earlier export: kept unless --overwrite
    exported.write_bytes(b"corrected labels")
    notes = tmp_path / "notes.json"  # the side-car recover would write for notes.nii
    notes.write_text('{"my": "notes"}')
    for argv in (
        ["recover", str(ct_file), "-o", str(exported)],
        ["recover", str(ct_file), "-o", str(tmp_path / "notes.nii")],
        ["recover", str(tmp_path / "missing.nii.gz"), "-o", str(out)],
        ["recover", str(ct_file), "-o", str(tmp_path / "labels.txt")],
        ["recover", str(ct_file), "-o", str(tmp_path / "no" / "such" / "out.nii.gz")],
        ["recover", str(ct_file), "-o", str(ct_file)],
        ["recover", str(ct_file)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ct.nii.gz",
        "exported.nii.gz",
        "journal",
        "notes.json",
    ]
    assert notes.read_text() == '{"my": "notes"}'
    assert exported.read_bytes() == b"corrected labels"


def test_recover_leaves_no_labels_when_the_sidecar_cannot_be_written(
    ct_file, tmp_path, monkeypatch, capsys
):
    from src_models.commands import recover

    labels, _ = _painted(ct_file)
    _save(ct_file, labels, autosave.new_session())

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(recover, "write_sidecar", disk_full)
    out = tmp_path / "out.nii.gz"
    assert main(["recover", str(ct_file), "-o", str(out)]) == 2
    assert "No space left" in capsys.readouterr().err
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_the_journal_folder_defaults_to_the_user_data_folder(monkeypatch):
    monkeypatch.delenv(autosave.AUTOSAVE_DIR_ENV)
    folder = autosave.autosave_dir()
    assert folder.name == "autosave" and "napari-dsms" in str(folder)
    monkeypatch.setenv(autosave.AUTOSAVE_DIR_ENV, os.path.join("~", "j"))
    assert autosave.autosave_dir() == Path.home() / "j"


def test_an_export_during_a_save_leaves_no_broken_journal(ct_file, journal_dir, monkeypatch):
    # An export removed a session's files while an autosave of it was writing; the journal
    # written after the removal named a prediction file that was gone, could never be restored,
    # and was offered at every opening (found by a tester).
    import threading
    import time

    labels, prediction = _painted(ct_file)
    session = autosave.new_session()
    digest = autosave.volume_digest(read_volume(ct_file))
    base_written, go_on = threading.Event(), threading.Event()
    write = autosave._write_atomic

    def slow_write(path, arrays):
        write(path, arrays)
        if ".base" in path.name:
            base_written.set()
            go_on.wait(10)

    monkeypatch.setattr(autosave, "_write_atomic", slow_write)
    saving = threading.Thread(target=_save, args=(ct_file, labels, session),
                              kwargs={"prediction": prediction})  # fmt: skip
    saving.start()
    assert base_written.wait(10)
    stamp = autosave.stamp(digest, session)
    exporting = threading.Thread(target=autosave.discard, args=(stamp,))
    exporting.start()
    time.sleep(0.2)
    assert exporting.is_alive()  # the export's removal waits for the save to end
    go_on.set()
    saving.join(10)
    exporting.join(10)
    assert autosave.list_entries() == [] and not any(journal_dir.iterdir())


def test_the_state_just_exported_is_not_journaled_again(ct_file, journal_dir):
    # A stroke less than the autosave delay before an export left a fresh journal of exported
    # work, offered for restoring at the next opening (found by a tester).
    labels, prediction = _painted(ct_file)
    session = autosave.new_session()
    entry = _save(ct_file, labels, session, prediction=prediction, reviewed=[3])
    autosave.discard(autosave.stamp(entry.digest, session), labels, reviewed=[3])
    assert _save(ct_file, labels, session, prediction=prediction, reviewed=[3]) is None
    assert autosave.list_entries() == []
    labels[5, 0:2, 0:2] = 1  # painting on after the export is journaled again
    assert _save(ct_file, labels, session, prediction=prediction, reviewed=[3]) is not None
    assert [e.session for e in autosave.list_entries()] == [session]
