"""Write files so that a reader never sees half of one.

Every file the project writes (labels, reconstructions, checkpoints, split files, tables,
side-cars) goes to a temporary name beside its destination and is renamed over it only once it
is complete: a crash, a full disk or a cancelled job leaves the previous file, or nothing.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    Parameters
    ----------
    path : str or path-like
        The destination. Its folder is created when missing.
    suffix : str
        Ending of the temporary name, for writers that choose a format by it (``".nii.gz"``).

    Notes
    -----
    The temporary file is created by the caller's writer, not by :func:`tempfile.mkstemp`, so it
    gets the usual permissions of the user's umask rather than owner-only ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if temporary.name not in f"{error} {error.filename}":
            raise
        # Name what the user chose, not the hidden temporary file they never heard of.
        named = OSError(
            f"{path}: cannot write into the folder {path.parent} "
            f"({error.strerror or type(error).__name__})"
        )
        named.errno = error.errno  # a full disk stays recognisable (ENOSPC)
        raise named from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def check_writable_folder(path: str | os.PathLike[str]) -> None:
    """Raise :class:`PermissionError` naming the folder when a file cannot be created in it.

    Creates and removes one empty hidden file in ``path``'s folder: the only test that holds for
    read-only mounts, ACLs and network shares, where :func:`os.access` guesses. Commands call it
    before slow work, so a read-only folder costs a second, not a segmentation run.

    Parameters
    ----------
    path : str or path-like
        The file that will be written; its folder must exist.
    """
    folder = Path(path).parent
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise PermissionError(
            f"{path}: cannot write into the folder {folder} ({exc.strerror or exc}); "
            "choose a folder you can write to"
        ) from exc
