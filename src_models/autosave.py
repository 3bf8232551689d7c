"""The autosave journal: a correction session kept on disk so that a crash loses nothing.

While a radiologist corrects labels, the napari side (:mod:`napari_dsms._autosave`) writes the
labels here a few seconds after each edit; ``dsms recover`` and re-opening the CT bring them
back. One journal file per correction session (one labels layer of one napari run) holds the
canonical labels, the model's unedited prediction when there is one, and a JSON record (time,
CT source and geometry, edited and reviewed slices, model, effort). Each file is written under
a temporary name and renamed (:mod:`src_models.io.atomic`), so a crash during a save leaves the
previous save intact.

Journals are keyed by the CT's content (:func:`ct_digest`), not by its path: a CT copied or
renamed still finds its corrections, and another CT saved under the same name does not.

Layout: ``<autosave_dir()>/<digest>/<session>.npz`` holds the record and only the slices that
differ from the session's base: the model's prediction, kept once per session in
``<session>.<hash>.base.npz`` (it does not change while the user corrects), or background when
there is none. A save of a 512 x 512 x 1000 session then compresses the edited slices, not
262 MB. :func:`autosave_dir` is the platformdirs user data folder (``.../napari-dsms/autosave``)
unless ``$DSMS_AUTOSAVE_DIR`` is set.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import re
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from .corrections import edited_slices
from .io.atomic import atomic_path
from .io.orientation import affine_of_canonical, from_canonical, to_canonical
from .io.volume import Volume
from .version import __version__

AUTOSAVE_DIR_ENV = "DSMS_AUTOSAVE_DIR"

#: Journals older than this are removed by :func:`prune` (called at every save).
MAX_AGE_DAYS = 30

#: Saves and removals of journals never interleave: an export removed a session's files while an
#: autosave of it was writing, and the journal written after the removal named a base file that
#: was gone, so it could never be restored and was offered again at every opening (a tester).
_LOCK = threading.RLock()

#: Session -> :func:`state_hash` of the labels last exported from it (:func:`discard`); a save
#: of that same state is not journaled (the export holds it).
_EXPORTED: dict[str, str] = {}


def _locked(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` run under :data:`_LOCK`."""

    @functools.wraps(function)
    def under_lock(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return function(*args, **kwargs)

    return under_lock


#: Version of the journal file layout, stored in every record.
JOURNAL_FORMAT = 2

_SUFFIX = ".npz"
_DIGEST = re.compile(r"^[0-9a-f]{32}$")
_SESSION = re.compile(r"^[0-9a-f]{12}$")


class JournalError(ValueError):
    """A journal file that cannot be read (damaged, or written by an incompatible version)."""


def autosave_dir() -> Path:
    """The journal folder: ``$DSMS_AUTOSAVE_DIR`` if set, else platformdirs' user data folder.

    Not created here; :func:`save` creates it.
    """
    override = os.environ.get(AUTOSAVE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_data_dir("napari-dsms")) / "autosave"


def ct_digest(canonical: np.ndarray, affine: np.ndarray) -> str:
    """Content key of a CT: BLAKE2b over its voxels, shape, dtype and affine.

    Parameters
    ----------
    canonical : numpy.ndarray
        The CT in the canonical (S, P, L) layout of :mod:`src_models.io.orientation`, as napari
        layers hold it (a strided view is fine: it is hashed one slice at a time, so no copy of
        the volume is made).
    affine : numpy.ndarray
        4 x 4 affine of the file's own index order (``Volume.affine``), rounded to 1 micrometre
        so that the same file read twice always gives the same key.

    Returns
    -------
    str
        32 hexadecimal digits. About 0.25 s for 512 x 512 x 240 int16 on one core.
    """
    canonical = np.asarray(canonical)
    affine = np.round(np.asarray(affine, dtype=np.float64), 3) + 0.0  # + 0.0 turns -0.0 into 0.0
    h = hashlib.blake2b(digest_size=16)
    h.update(f"dsms-ct-v1 {canonical.shape} {canonical.dtype.str}".encode())
    h.update(np.ascontiguousarray(affine).tobytes())
    for plane in canonical:
        h.update(np.ascontiguousarray(plane).data)
    return h.hexdigest()


def volume_digest(volume: Volume) -> str:
    """:func:`ct_digest` of a :class:`~src_models.io.Volume` in the file's index order."""
    return ct_digest(to_canonical(volume.array, volume.affine)[0], volume.affine)


def content_key(canonical: np.ndarray, affine: np.ndarray) -> str:
    """Key of a CT's content however a file stores it: which patient's scan this is.

    :func:`ct_digest` keys journals to one exact file (its dtype and its own affine); a copy of
    the CT saved in another axis order (RAS instead of LAS) or another type (float32 instead
    of int16) gets another digest, and ``dsms evaluate`` then scored a training patient's copy
    as held out (a tester). This key hashes what the copies share: the HU values as float32
    in the canonical (S, P, L) layout, and that layout's affine rounded to 1 micrometre.

    Parameters
    ----------
    canonical : numpy.ndarray
        The CT in the canonical layout (:mod:`src_models.io.orientation`), in HU.
    affine : numpy.ndarray
        4 x 4 affine of the file's own index order (``Volume.affine``), as for :func:`ct_digest`.

    Returns
    -------
    str
        32 hexadecimal digits, recorded by training (``train_digests``), fine-tuning rounds
        (``source_digest``) and matched by ``dsms evaluate``.
    """
    canonical = np.asarray(canonical)
    world = np.round(affine_of_canonical(affine, canonical.shape), 3) + 0.0
    h = hashlib.blake2b(digest_size=16)
    h.update(f"dsms-ct-content-v1 {canonical.shape}".encode())
    h.update(np.ascontiguousarray(world).tobytes())
    for plane in canonical:
        h.update(np.ascontiguousarray(plane, dtype=np.float32).data)
    return h.hexdigest()


def volume_content_key(volume: Volume) -> str:
    """:func:`content_key` of a :class:`~src_models.io.Volume` in the file's index order."""
    return content_key(to_canonical(volume.array, volume.affine)[0], volume.affine)


def new_session() -> str:
    """A fresh session id (12 hexadecimal digits), one per labels layer being corrected."""
    return uuid.uuid4().hex[:12]


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass(frozen=True)
class JournalEntry:
    """One saved state of a correction session.

    Attributes
    ----------
    path
        The journal file.
    record
        Its JSON record: ``digest``, ``session``, ``saved`` (ISO 8601 UTC), ``source`` (CT
        path when it was opened), ``description``, ``layer`` (labels layer name), ``shape``
        (the CT file's array shape), ``affine`` (its 4 x 4 affine), ``labels_shape`` (canonical),
        ``edited_slices`` (canonical axial indices, 0 = most inferior, that differ from the
        base and are stored in the file), ``reviewed_slices``, ``base`` (``{"kind":
        "prediction", "file": ...}`` or ``{"kind": "background"}``), ``model``, ``effort``,
        ``plugin_version``, ``format``.
    """

    path: Path
    record: dict[str, Any]

    @property
    def digest(self) -> str:
        return str(self.record["digest"])

    @property
    def session(self) -> str:
        return str(self.record["session"])

    @property
    def saved(self) -> _dt.datetime:
        """When the labels were saved (timezone-aware, UTC)."""
        return _dt.datetime.fromisoformat(self.record["saved"])

    @property
    def edited(self) -> list[int]:
        return [int(s) for s in self.record.get("edited_slices", [])]

    @property
    def reviewed(self) -> list[int]:
        return [int(s) for s in self.record.get("reviewed_slices", [])]

    @property
    def tool_slices(self) -> list[int]:
        """Slices a tool wrote into (fill between, clean-up, a refine round)."""
        return [int(s) for s in self.record.get("tool_slices", [])]

    @property
    def corrected(self) -> list[int]:
        """The user's corrections: edited slices less those only tools changed."""
        return [int(s) for s in self.record.get("corrected_slices", self.edited)]

    def baseline(self) -> np.ndarray | None:
        """The prediction with the tools' changes (fill between, clean-up, refine round) folded
        in, as the session measured corrections against; ``None`` without tool changes."""
        prediction = self.prediction()
        if not self.tool_slices or prediction is None:
            return None
        prediction[self.tool_slices] = _load(self.path, "tool")
        return prediction

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.record["affine"], dtype=np.float64)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.record["shape"])

    def prediction(self) -> np.ndarray | None:
        """The model's unedited labels the session started from, if any (canonical)."""
        base = self.record["base"]
        if base["kind"] != "prediction":
            return None
        path = self.path.with_name(base["file"])
        if not path.is_file():
            raise JournalError(f"{self.path}: its prediction file {path.name} is missing")
        return _load(path, "base")

    def labels(self) -> np.ndarray:
        """The saved labels, uint8 (S, P, L) canonical layout (0, 1 pancreas, 2 tumour)."""
        labels = self.prediction()
        if labels is None:
            labels = np.zeros(self.record["labels_shape"], dtype=np.uint8)
        slices = _load(self.path, "slices")
        if len(slices) != len(self.edited) or labels.shape[1:] != slices.shape[1:]:
            raise JournalError(f"{self.path}: the stored slices do not match its record")
        labels[self.edited] = slices
        return labels

    def file_labels(self) -> np.ndarray:
        """The labels in the CT file's own index order (for its affine)."""
        return from_canonical(self.labels(), self.affine)

    @property
    def holds_work(self) -> bool:
        """Whether the user edited or reviewed slices (tools alone, a fill between, are not)."""
        return bool(self.corrected or self.reviewed)

    def work(self) -> str:
        """The user's work in words: ``3 edited slices``, ``3 edited and 2 reviewed slices``,
        ``2 reviewed slices``, ``no edits (tools changed 12 slices)``."""
        edited, reviewed = len(self.corrected), len(set(self.reviewed) - set(self.corrected))
        if edited and reviewed:
            return f"{edited} edited and {reviewed} reviewed slices"
        if edited or reviewed:
            count = edited or reviewed
            return f"{count} {'edited' if edited else 'reviewed'} slice{'s' * (count != 1)}"
        tools = len(set(self.edited) - set(self.corrected))
        if not tools:
            return "no edits"
        return f"no edits (tools changed {tools} slice{'s' * (tools != 1)})"

    def summary(self) -> str:
        """One line for ``dsms recover --list`` and the restore offer."""
        when = self.saved.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        where = self.record.get("source") or self.record.get("description") or "(unnamed CT)"
        layer = self.record.get("layer", "")
        return (
            f"{when}  {where}  {self.work()}  [{layer}]  digest {self.digest[:12]} "
            f"session {self.session}"
        )


def _load(path: Path, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz[key]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise JournalError(f"{path}: the autosave file is damaged ({exc})") from exc


def _journal_path(digest: str, session: str, root: Path | None) -> Path:
    if not _DIGEST.match(digest):
        raise ValueError(f"not a CT digest: {digest!r} (expected 32 hexadecimal digits)")
    if not _SESSION.match(session):
        raise ValueError(f"not a session id: {session!r} (expected 12 hexadecimal digits)")
    return (root or autosave_dir()) / digest / f"{session}{_SUFFIX}"


@_locked
def save(
    labels: np.ndarray,
    *,
    digest: str,
    session: str,
    affine: np.ndarray,
    shape: Sequence[int],
    source: str = "",
    description: str = "",
    layer: str = "",
    image: str = "",
    prediction: np.ndarray | None = None,
    baseline: np.ndarray | None = None,
    reviewed: Iterable[int] = (),
    model: Mapping[str, Any] | None = None,
    effort: Mapping[str, Any] | None = None,
    layer_state: Mapping[str, Any] | None = None,
    now: _dt.datetime | None = None,
    root: Path | None = None,
) -> JournalEntry | None:
    """Journal the current labels of a correction session, replacing its previous save.

    Parameters
    ----------
    labels : numpy.ndarray
        uint8 labels (0, 1, 2) in the canonical (S, P, L) layout.
    digest : str
        :func:`ct_digest` of the CT the labels belong to.
    session : str
        :func:`new_session` id of this correction session.
    affine, shape
        The CT file's affine and array shape, to map the labels back onto its grid.
    source, description, layer
        CT path, its description and the labels layer name, shown by ``dsms recover --list``.
    image
        Name of the CT's image layer, so that a restore under another name renames the labels
        layer with it.
    prediction : numpy.ndarray, optional
        The model's unedited labels (canonical): the session's base, written once; only the
        slices that differ from it (the edited slices) are written at each save. Without a
        prediction the base is background and the slices holding labels are written.
    baseline : numpy.ndarray, optional
        The prediction with the tools' changes folded in (canonical), against which the user's
        corrections are measured; its slices that differ from the prediction are written
        (``tool_slices``), and ``corrected_slices`` lists the slices that differ from it.
    reviewed
        Canonical axial slice indices the user marked as reviewed.
    model, effort
        What produced the prediction and the correction effort record (JSON-serialisable).
    layer_state
        What else the session keeps with its labels and a restore must give back
        (JSON-serialisable: the region of interest, the last refine round's model, the edit
        log); a tester's restore lost the region and the round's model.
    now
        Time of the save (default: now, UTC).
    root
        Journal folder (default :func:`autosave_dir`).

    Returns
    -------
    JournalEntry or None
        The written entry; ``None`` when these labels and reviewed slices are what was last
        exported from the session (:func:`discard`): its journal is removed instead.

    Raises
    ------
    OSError
        The folder cannot be written (full disk, no permission); the previous save is intact.
    """
    exported = _EXPORTED.get(session)  # hashed only for a session that was exported
    if exported is not None and exported == state_hash(labels, reviewed):
        prune(digest, session, max_age_days=None, root=root)
        return None
    path = _journal_path(digest, session, root)
    labels = np.asarray(labels).astype(np.uint8, copy=False)
    if labels.ndim != 3:
        raise ValueError(f"labels must be a 3D volume, got shape {labels.shape}")
    base: dict[str, str] = {"kind": "background"}
    if prediction is not None:
        prediction = np.asarray(prediction).astype(np.uint8, copy=False)
        if prediction.shape != labels.shape:
            raise ValueError(
                f"prediction shape {prediction.shape} differs from labels shape {labels.shape}"
            )
        name = hashlib.blake2b(prediction.data, digest_size=8).hexdigest()
        base = {"kind": "prediction", "file": f"{session}.{name}.base{_SUFFIX}"}
        if not path.with_name(base["file"]).is_file():
            _write_atomic(path.with_name(base["file"]), {"base": prediction})
        differs = np.not_equal(labels, prediction)
    else:
        differs = labels
    edited = np.flatnonzero(differs.reshape(labels.shape[0], -1).any(axis=1))
    corrected, tool_slices = edited, []
    arrays: dict[str, np.ndarray] = {}
    if prediction is not None and baseline is not None and np.shape(baseline) == labels.shape:
        baseline = np.asarray(baseline).astype(np.uint8, copy=False)
        tool_slices = edited_slices(baseline, prediction)
        corrected = edited_slices(labels, baseline)
        arrays["tool"] = baseline[tool_slices]
    record = {
        "format": JOURNAL_FORMAT,
        "digest": digest,
        "session": session,
        "saved": (now or _now()).astimezone(_dt.timezone.utc).isoformat(),
        "source": str(source),
        "description": str(description),
        "layer": str(layer),
        "image": str(image),
        "shape": [int(n) for n in shape],
        "affine": np.asarray(affine, dtype=np.float64).tolist(),
        "layout": "canonical (S, P, L): axis 0 axial slices towards Superior",
        "labels_shape": [int(n) for n in labels.shape],
        "edited_slices": [int(k) for k in edited],
        "corrected_slices": [int(k) for k in corrected],
        "tool_slices": [int(k) for k in tool_slices],
        "reviewed_slices": sorted(int(k) for k in reviewed),
        "base": base,
        "model": dict(model) if model else None,
        "effort": dict(effort) if effort else {},
        "layer_state": dict(layer_state) if layer_state else {},
        "plugin_version": __version__,
    }
    arrays.update(slices=labels[edited], record=np.array(json.dumps(record)))
    _write_atomic(path, arrays)
    for old in path.parent.glob(f"{session}.*.base{_SUFFIX}"):  # bases of earlier predictions
        if old.name != base.get("file"):
            old.unlink(missing_ok=True)
    return JournalEntry(path, record)


def _write_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_path(path, suffix=_SUFFIX) as temporary:
        with open(temporary, "wb") as handle:
            _write_npz(handle, arrays)
            handle.flush()
            os.fsync(handle.fileno())


def _write_npz(handle: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """``numpy.savez_compressed`` at zlib level 1: twice as fast, labels compress well anyway.

    512 x 512 x 240 labels and prediction: 0.6 s and about 0.6 MB, against 1.2 s and 0.2 MB at
    numpy's level 6. The file is a standard ``.npz`` that :func:`numpy.load` reads.
    """
    with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def read_entry(path: str | os.PathLike[str]) -> JournalEntry:
    """Read the record of one journal file (the labels stay on disk until asked for).

    Raises
    ------
    JournalError
        The file is damaged or not a journal.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            record = json.loads(str(npz["record"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise JournalError(f"{path}: not a readable autosave file ({exc})") from exc
    if not isinstance(record, dict) or not {"digest", "session", "saved"} <= set(record):
        raise JournalError(f"{path}: not an autosave record")
    if record.get("format") != JOURNAL_FORMAT:
        raise JournalError(f"{path}: written in another journal format ({record.get('format')})")
    return JournalEntry(path, record)


def _folders(root: Path) -> list[Path]:
    """The per-CT journal folders under ``root``."""
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and _DIGEST.match(p.name)]


def _files(root: Path, digest: str | None = None) -> list[Path]:
    folders = [root / digest] if digest else _folders(root)
    return [
        path
        for folder in folders
        if folder.is_dir()
        for path in folder.glob(f"*{_SUFFIX}")
        if _SESSION.match(path.stem)
    ]


def list_entries(digest: str | None = None, root: Path | None = None) -> list[JournalEntry]:
    """Every readable journal (of one CT when ``digest`` is given), newest first.

    Damaged files are skipped here (:func:`prune` removes them by age).
    """
    entries = []
    for path in _files(root or autosave_dir(), digest):
        try:
            entries.append(read_entry(path))
        except JournalError:
            continue
    return sorted(entries, key=lambda entry: entry.saved, reverse=True)


def latest(digest: str, root: Path | None = None) -> JournalEntry | None:
    """The most recent journal of the CT with this :func:`ct_digest`, or ``None``."""
    entries = list_entries(digest, root)
    return entries[0] if entries else None


def to_restore(entries: Sequence[JournalEntry]) -> JournalEntry | None:
    """The journal a restore takes unless told otherwise (``entries`` newest first): the newest
    with edited slices, else the newest with reviewed slices, else the newest.

    A later session in which only tools ran, or in which slices were only marked reviewed,
    hid an older session's edited slices (testers); napari's Restore offer and ``dsms recover``
    both take this one (they once took different sessions).
    """
    return next(
        (entry for entry in entries if entry.corrected),
        next((entry for entry in entries if entry.holds_work), entries[0] if entries else None),
    )


@_locked
def prune(
    digest: str | None = None,
    session: str | None = None,
    *,
    max_age_days: float | None = MAX_AGE_DAYS,
    now: _dt.datetime | None = None,
    root: Path | None = None,
) -> int:
    """Remove journals: those of a session or a CT, and those older than ``max_age_days``.

    Parameters
    ----------
    digest, session
        Remove every journal of this CT (``digest``), or only this session's (both given).
        With neither, only the age rule applies.
    max_age_days
        Journals last saved longer ago than this are removed too (``None``: no age rule).
        Age is taken from the file's modification time, so damaged files age out as well.
    now, root
        Current time and journal folder, for tests.

    Returns
    -------
    int
        Number of files removed.
    """
    root = root or autosave_dir()
    cutoff = None
    if max_age_days is not None:
        cutoff = (now or _now()).timestamp() - max_age_days * 86400.0
    removed = 0
    for folder in _folders(root):
        # Every file, so that leftovers of a save killed half-way also age out.
        for path in folder.iterdir():
            matches = folder.name == digest and session in (None, path.name.split(".")[0])
            try:
                if matches or (cutoff is not None and path.stat().st_mtime < cutoff):
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # removed by another viewer meanwhile
                continue
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            pass
    return removed


def stamp(digest: str, session: str, root: Path | None = None) -> dict[str, str]:
    """What a labels layer keeps to find its journal again: CT digest, session and folder."""
    return {"digest": digest, "session": session, "folder": str(root or autosave_dir())}


def state_hash(labels: np.ndarray, reviewed: Iterable[int] = ()) -> str:
    """A digest of a session's state: its uint8 labels and the slices marked reviewed."""
    state = hashlib.blake2b(np.ascontiguousarray(labels, dtype=np.uint8).data, digest_size=16)
    state.update(repr(sorted(int(k) for k in reviewed)).encode())
    return state.hexdigest()


def discard(
    stamp: Mapping[str, str] | None,
    labels: np.ndarray | None = None,
    reviewed: Iterable[int] = (),
) -> int:
    """Remove the journal of an exported session, named by a :func:`stamp`.

    napari-dsms keeps the stamp in the labels layer's metadata; once the labels are safely in an
    exported file the journal has done its job. With the exported ``labels`` (canonical) and
    ``reviewed`` slices, a later :func:`save` of that same state (an autosave due from a stroke
    made just before the export) is not journaled either, so exported work is not offered for
    restoring. ``None`` (a layer never journaled) removes nothing. Returns the number of files
    removed.
    """
    if not stamp:
        return 0
    folder = Path(stamp["folder"]) if stamp.get("folder") else None
    with _LOCK:
        if labels is not None:
            _EXPORTED[stamp["session"]] = state_hash(labels, reviewed)
        return prune(stamp["digest"], stamp["session"], root=folder)
