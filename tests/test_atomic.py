"""A failed or interrupted write leaves the previous file, and no temporary file behind."""

from __future__ import annotations

import pytest

from src_models.io.atomic import atomic_path, write_text_atomic


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


def test_a_folder_that_cannot_be_written_is_named_not_the_temporary_file(tmp_path) -> None:
    """/proc refuses new files even to root: the message names the user's file and folder."""
    with pytest.raises(OSError) as raised:
        write_text_atomic("/proc/labels.json", "{}")
    message = str(raised.value)
    assert message.startswith("/proc/labels.json: cannot write into the folder /proc")
    assert ".tmp" not in message
