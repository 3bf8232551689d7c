"""Write files so that a reader never sees half of one.

Every file the project writes (labels, reconstructions, checkpoints, split files, tables,
side-cars) goes to a temporary name beside its destination and is renamed over it only once it
is complete: a crash, a full disk or a cancelled job leaves the previous file, or nothing.
"""

from __future__ import annotations

import contextlib
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
        The destination. Its folder is created when missing. A symbolic link is written
        through: its target is replaced and the link kept, as ``cp`` does (renaming onto the
        link itself would have replaced it with a file, leaving the target unchanged).
    suffix : str
        Ending of the temporary name, for writers that choose a format by it (``".nii.gz"``).

    Notes
    -----
    The temporary file is created by the caller's writer, not by :func:`tempfile.mkstemp`, so it
    gets the usual permissions of the user's umask rather than owner-only ones.
    """
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        _remove(temporary)
        # Name what the user chose, not the hidden temporary file they never heard of, nor
        # nothing at all (a full disk said only "[Errno 28] No space left on device").
        number, reason = _reason(error)
        if temporary.name in f"{error} {error.filename}":
            named = OSError(f"{path}: cannot write into the folder {path.parent} ({reason})")
        else:
            named = OSError(f"{path}: could not be written ({reason}); nothing was written")
        named.errno = number  # a full disk stays recognisable (ENOSPC)
        raise named from error
    except BaseException:
        _remove(temporary)
        raise


def _remove(temporary: Path) -> None:
    """Remove a temporary file if it is there; a read-only file system refuses even to look
    (EROFS), and that must not hide why the write failed (a tester read the temporary name)."""
    with contextlib.suppress(OSError):
        temporary.unlink(missing_ok=True)


def _reason(error: BaseException) -> tuple[int | None, str]:
    """The operating system's error number and words for a failed write (``No space left on
    device``).

    Writers wrap the error: pydicom re-raises it with its whole traceback in the message, which
    a user then read as one long line; the system's reason sits at the end of the chain.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.errno, seen.strerror
        seen = seen.__cause__ or seen.__context__
    return None, str(error).splitlines()[0] if str(error) else type(error).__name__


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def output_place_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be an output file name, or ``None``: its folder is missing, or is a
    file (a tester's ``afile/labels.nii.gz`` was said to lie in a missing folder), or ``path``
    is itself a folder. The message starts with ``path``."""
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        return f"{path}: {path.parent} is a file, not a folder"
    if not path.parent.is_dir():
        return f"{path}: the folder {path.parent} does not exist"
    if path.is_dir():
        return f"{path}: is a folder, not a file name"
    return None


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
