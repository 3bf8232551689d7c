"""A failed or interrupted write leaves the previous file, and no temporary file behind."""

from __future__ import annotations

import errno
import os

import pytest

from src_models.io.atomic import atomic_path, output_place_problem, write_text_atomic


def test_a_failed_write_keeps_the_previous_file_and_cleans_up(tmp_path) -> None:
    target = write_text_atomic(tmp_path / "table.md", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_the_temporary_name_keeps_the_suffix_writers_choose_formats_by(tmp_path) -> None:
    with atomic_path(tmp_path / "sub" / "labels.nii.gz", suffix=".nii.gz") as temporary:
        assert temporary.name.endswith(".nii.gz") and temporary.parent == tmp_path / "sub"
        temporary.write_bytes(b"x")
    assert (tmp_path / "sub" / "labels.nii.gz").read_bytes() == b"x"


def test_a_symbolic_link_is_written_through_and_kept(tmp_path) -> None:
    """A tester's labels.nii.gz linked into a shared results folder became a plain file, and
    the shared copy kept the old labels."""
    shared = tmp_path / "shared"
    shared.mkdir()
    target = write_text_atomic(shared / "labels.txt", "old")
    link = tmp_path / "labels.txt"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in shared.iterdir()) == ["labels.txt"]


def test_a_folder_that_cannot_be_written_is_named_not_the_temporary_file(tmp_path) -> None:
    """/proc refuses new files even to root: the message names the user's file and folder."""
    with pytest.raises(OSError) as raised:
        write_text_atomic("/proc/labels.json", "{}")
    message = str(raised.value)
    assert message.startswith("/proc/labels.json: cannot write into the folder /proc")
    assert ".tmp" not in message


def test_a_full_disk_names_the_file_and_the_reason_not_a_writer_s_traceback(tmp_path) -> None:
    """Full disks said only "[Errno 28] No space left on device" (no file), or, through
    pydicom, its whole traceback in one line (a tester)."""
    target = write_text_atomic(tmp_path / "labels.dcm", "old")
    with pytest.raises(OSError) as raised, atomic_path(target) as temporary:
        temporary.write_text("half")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as disk:  # how pydicom re-raises it (pydicom.tag.tag_in_exception)
            raise OSError("With tag (7FE0,0010) got exception: ...\nTraceback ...") from disk
    assert str(raised.value) == (
        f"{target}: could not be written (No space left on device); nothing was written"
    )
    assert raised.value.errno == errno.ENOSPC
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_a_read_only_file_system_names_the_folder(tmp_path, monkeypatch) -> None:
    """There even removing the (absent) temporary file fails, and that error, naming the
    temporary file, reached a tester instead of the folder's."""
    from pathlib import Path

    def refuse(self, missing_ok=False):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    target = tmp_path / "x.nii.gz"
    with pytest.raises(OSError) as raised, atomic_path(target) as temporary:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(temporary))
    assert str(raised.value) == (
        f"{target}: cannot write into the folder {tmp_path} (Read-only file system)"
    )


def test_an_output_under_a_file_says_the_file_is_not_a_folder(tmp_path) -> None:
    """A tester's afile/labels.nii.gz was said to lie in a folder that does not exist."""
    (tmp_path / "afile").write_text("x")
    assert output_place_problem(tmp_path / "afile" / "l.nii.gz") == (
        f"{tmp_path / 'afile' / 'l.nii.gz'}: {tmp_path / 'afile'} is a file, not a folder"
    )
    assert "does not exist" in output_place_problem(tmp_path / "none" / "l.nii.gz")
    assert "is a folder" in output_place_problem(tmp_path)
    assert output_place_problem(tmp_path / "l.nii.gz") is None
