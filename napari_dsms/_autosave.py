"""Autosave in the viewer: every labels layer bound to a CT is journaled while it is corrected.

:func:`attach` gives a viewer one :class:`Autosave` (the napari-dsms docks call it when they
open). From then on:

- each CT image layer that napari-dsms opened (it carries the file's affine and shape in its
  metadata) is keyed by its content (:func:`src_models.autosave.ct_digest`, hashed in a worker
  thread), and if a journal of that CT exists the user is offered to restore it: a napari
  notification with the time of the save and the number of edited slices, and a Restore button;
- each labels layer on such a CT's grid (the docks' labels, and labels made with napari's own
  *New labels layer* button, which get the CT's file geometry) is journaled
  (:func:`src_models.autosave.save`)
  :data:`DELAY_MS` after the last paint, fill, erase, undo or data change. A worker thread copies,
  compresses and writes the labels atomically, so the viewer does not wait (copying 512 x 512 x
  1000 labels in the GUI thread stalled it by up to 0.7 s) and a crash at any moment leaves the
  previous save. A save that fails (full disk) shows a warning once; the labels in the viewer
  are never touched.

Edited slices are those where the labels differ from the model's stored prediction
(``metadata["prediction"]``, set by the Segment dock), or hold any foreground when there is no
prediction; reviewed slices come from ``metadata["reviewed"]``. Exporting the labels (the
napari-dsms writer) removes the session's journal: the export now holds the work.
"""

from __future__ import annotations

import atexit
import json
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.qt.threading import create_worker
from napari.utils.notifications import Notification, notification_manager, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QThreadPool, QTimer

from src_models import autosave as journal

from ._layers import (
    AFFINE,
    AUTOSAVE_KEY,
    BASELINE,
    DESCRIPTION,
    METADATA_KEYS,
    MODEL,
    PREDICTION,
    RESTORED_KEYS,
    REVIEWED,
    SHAPE,
    SOURCE,
    is_ct_layer,
    labels_layer_data,
)

if TYPE_CHECKING:
    import napari

#: Quiet time after the last edit before the labels are journaled, in milliseconds.
DELAY_MS = 2000

#: Interval of the safety sweep that also catches edits made without a layer event (a script or
#: another plugin writing into ``layer.data``): unchanged labels cost a copy and a hash, no write.
SWEEP_MS = 15_000

#: How long an exiting Python waits for journal writes still running (milliseconds).
EXIT_WAIT_MS = 30_000


@atexit.register
def _finish_writes_at_exit() -> None:
    """Let journal writes still running end before Python tears Qt down.

    A script that closed the viewer within the autosave delay of a stroke and then exited
    (without napari's event loop, whose end waits for workers) left the write running during
    interpreter shutdown: its Qt signals object was deleted under it and the process aborted
    with exit status 134.
    """
    QThreadPool.globalInstance().waitForDone(EXIT_WAIT_MS)


#: Edits closer together than this count as one stretch of work in the effort record (seconds).
_WORK_GAP_S = 60.0

_MANAGERS: weakref.WeakKeyDictionary[Any, Autosave] = weakref.WeakKeyDictionary()


class _Offer(Notification):
    """A notification whose toast names its source in words.

    napari's toast prints ``Source: <event source>``, which for a dispatched notification is
    the notification manager's repr; users saw that instead of where the offer came from.
    """

    @property
    def source(self) -> str:
        return "napari-dsms autosave"


class _FlushOnClose(QObject):
    """Saves the strokes still waiting for their quiet time when the viewer's window closes.

    Closing the window (its close button) within the 2 s after a stroke lost that stroke from
    the journal: the window went without removing its layers, so no save was ever started.
    """

    def __init__(self, manager: Autosave, window: QObject) -> None:
        super().__init__(window)  # goes with the window
        self._manager = manager
        window.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Close:
            self._manager.flush()
        return False


def attach(viewer: napari.viewer.Viewer) -> Autosave:
    """The viewer's :class:`Autosave`, created on first use (idempotent)."""
    manager = _MANAGERS.get(viewer)
    if manager is None:
        manager = _MANAGERS[viewer] = Autosave(viewer)
    return manager


def _geometry_key(metadata: dict[str, Any]) -> tuple[str, tuple[int, ...], bytes] | None:
    """What ties a labels layer to its CT layer: source, file shape and affine."""
    if AFFINE not in metadata or SHAPE not in metadata:
        return None
    affine = np.round(np.asarray(metadata[AFFINE], dtype=np.float64), 3) + 0.0
    shape = tuple(int(n) for n in metadata[SHAPE])
    return str(metadata.get(SOURCE, "")), shape, affine.tobytes()


def _is_ct(layer: Layer) -> bool:
    """A CT image layer with its file geometry: the only kind a journal can be keyed by."""
    return is_ct_layer(layer) and _geometry_key(layer.metadata) is not None


def _is_bound_labels(layer: Layer) -> bool:
    return (
        isinstance(layer, Labels) and layer.ndim == 3 and _geometry_key(layer.metadata) is not None
    )


def _lies_on(labels: Labels, image: Image) -> bool:
    """Whether a labels layer is placed exactly over ``image`` (scale and translate)."""
    return np.allclose(labels.scale, image.scale) and np.allclose(labels.translate, image.translate)


@dataclass
class _Tracked:
    """Autosave state of one labels layer."""

    layer: Labels
    session: str
    timer: QTimer
    busy: bool = False
    dirty: bool = False
    saved_hash: str = ""
    worked: bool = False  # painted, or its data replaced: labels opened and left alone are not
    failure: str = ""
    strokes: int = 0
    editing_s: float = 0.0
    last_edit: float | None = None

    def effort(self) -> dict[str, Any]:
        return {"strokes": self.strokes, "editing_seconds": round(self.editing_s, 1)}


def _journal_job(
    live: np.ndarray,
    prediction: np.ndarray | None,
    saved_hash: str,
    kwargs: dict[str, Any],
) -> tuple[journal.JournalEntry | None, str]:
    """Worker-thread part of a save: copy, skip an unchanged state, write.

    ``live`` is the layer's own array. The copy made here (numpy copies without holding the GIL)
    may catch a stroke half-applied if the user paints meanwhile; that stroke's paint event
    schedules the next save, which holds all of it. The state is the labels and the reviewed
    slices. Labels equal to the model's prediction hold no work: the session's journal is
    removed instead, so nobody is offered to "restore" an unedited prediction.
    """
    labels = np.array(live, dtype=np.uint8, copy=True)
    if kwargs.get("baseline") is not None:  # copied here too, off the GUI thread
        kwargs = {**kwargs, "baseline": np.array(kwargs["baseline"], dtype=np.uint8, copy=True)}
    digest = journal.state_hash(labels, kwargs["reviewed"])
    if digest == saved_hash:
        return None, digest
    fits = prediction is not None and np.shape(prediction) == labels.shape
    if fits and np.array_equal(labels, prediction):
        journal.prune(kwargs["digest"], kwargs["session"], root=kwargs["root"])
        return None, digest
    journal.prune(root=kwargs["root"])  # the age rule, so the folder does not grow for ever
    entry = journal.save(labels, prediction=prediction if fits else None, **kwargs)
    return entry, digest


class Autosave:
    """Journals a viewer's CT-bound labels layers and offers to restore them.

    Use :func:`attach` rather than this constructor, so that a viewer has one.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Held through a weak reference: the autosave never keeps a closed viewer alive.
    delay_ms : int
        Quiet time after the last edit before a save.
    root : Path, optional
        Journal folder; by default :func:`src_models.autosave.autosave_dir` when the viewer is
        attached, kept for the viewer's life so that its journals never change folder.

    Attributes
    ----------
    offers : dict
        CT digest -> :class:`~src_models.autosave.JournalEntry` offered for restoring and not
        yet restored.
    on_saved : list of callable
        Called with each written :class:`~src_models.autosave.JournalEntry` (GUI thread).
    """

    def __init__(
        self, viewer: napari.viewer.Viewer, delay_ms: int = DELAY_MS, root: Path | None = None
    ):
        self._viewer = weakref.ref(viewer)
        self.delay_ms = delay_ms
        self.root = root or journal.autosave_dir()
        self.offers: dict[str, journal.JournalEntry] = {}
        self.on_saved: list[Callable[[journal.JournalEntry], None]] = []
        self._digests: dict[tuple, str] = {}  # geometry key -> CT digest
        self._hashing: set[tuple] = set()
        self._tracked: dict[int, _Tracked] = {}  # id(layer) -> state
        self._workers: set[Any] = set()
        self._sweep = QTimer()
        self._sweep.timeout.connect(self._save_all)
        self._sweep.start(SWEEP_MS)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)
        # napari's main window (a QWidget), from the viewer itself: docks are handed napari's
        # public-only proxy of it.
        window = getattr(getattr(viewer, "__wrapped__", viewer).window, "_qt_window", None)
        if isinstance(window, QObject):
            self._close_watcher = _FlushOnClose(self, window)
        for layer in list(viewer.layers):
            self._adopt(layer)

    # ------------------------------------------------------------------ layers

    @property
    def busy(self) -> bool:
        """Whether a CT is being hashed or labels are being written."""
        return bool(self._workers)

    def _on_inserted(self, event: Any) -> None:
        self._adopt(event.value)

    def _adopt(self, layer: Layer) -> None:
        if _is_ct(layer):
            self._key_ct(layer)
            return
        if isinstance(layer, Labels) and layer.ndim == 3 and not _is_bound_labels(layer):
            self._bind(layer)
        if _is_bound_labels(layer) and id(layer) not in self._tracked:
            self._track(layer)

    def _bind(self, labels: Labels) -> None:
        """Give labels made without napari-dsms the file geometry of their CT, so they are
        journaled and export on the CT's grid like the docks' own labels.

        Their CT is the one CT layer of the same shape, or of those the one they are placed
        exactly over (napari's *New labels layer* button copies scale and translate); with no
        single answer the labels stay unbound.
        """
        viewer = self._viewer()
        if viewer is None:
            return
        shape = labels.data.shape
        cts = [layer for layer in viewer.layers if _is_ct(layer) and layer.data.shape == shape]
        placed = [layer for layer in cts if _lies_on(labels, layer)]
        chosen = placed if len(placed) == 1 else cts
        if len(chosen) == 1:
            metadata = chosen[0].metadata
            labels.metadata.update({key: metadata[key] for key in METADATA_KEYS if key in metadata})

    def _on_removed(self, event: Any) -> None:
        tracked = self._tracked.pop(id(event.value), None)
        if tracked is not None and tracked.timer.isActive():
            tracked.timer.stop()
            self._save(tracked)  # the layer object still holds the labels: save them now

    def _key_ct(self, image: Image) -> None:
        key = _geometry_key(image.metadata)
        if key in self._digests:
            self._offer(self._digests[key])
            return
        if key in self._hashing:
            return
        self._hashing.add(key)
        affine = np.asarray(image.metadata[AFFINE], dtype=np.float64)

        def done(digest: str) -> None:
            self._digests[key] = digest
            self._offer(digest)

        self._run(
            journal.ct_digest,
            image.data,
            affine,
            on_result=done,
            on_finished=lambda: self._hashing.discard(key),
        )

    def _track(self, layer: Labels) -> None:
        # A restored layer continues its journal; a copy of a tracked layer starts its own.
        session = (layer.metadata.get(AUTOSAVE_KEY) or {}).get("session")
        if not session or session in self._live_sessions():
            session = journal.new_session()
        tracked = _Tracked(layer, str(session), QTimer())
        tracked.timer.setSingleShot(True)
        tracked.timer.timeout.connect(lambda: self._save(tracked))
        self._tracked[id(layer)] = tracked
        layer.events.paint.connect(lambda event: self._edited(tracked, stroke=True))
        layer.events.data.connect(lambda event: self._edited(tracked, worked=True))
        # undo and in-place writes announce themselves only by a refresh (so do visibility and
        # opacity changes, hence a refresh alone does not count as work)
        layer.events.set_data.connect(lambda event: self._edited(tracked))

    def _edited(self, tracked: _Tracked, stroke: bool = False, worked: bool = False) -> None:
        now = time.monotonic()
        tracked.worked = tracked.worked or stroke or worked
        if stroke:
            tracked.strokes += 1
            if tracked.last_edit is not None and now - tracked.last_edit < _WORK_GAP_S:
                tracked.editing_s += now - tracked.last_edit
            tracked.last_edit = now
        tracked.timer.start(self.delay_ms)

    # ------------------------------------------------------------------ saving

    def schedule(self, layer: Labels) -> None:
        """Journal ``layer`` after the usual quiet time: for changes no layer event announces,
        such as a slice marked reviewed. Layers not bound to a CT are ignored."""
        tracked = self._tracked.get(id(layer))
        if tracked is not None:
            tracked.worked = True
            tracked.timer.start(self.delay_ms)

    def flush(self) -> None:
        """Save every labels layer with a pending save now (for example before closing)."""
        for tracked in list(self._tracked.values()):
            if tracked.timer.isActive():
                tracked.timer.stop()
                self._save(tracked)

    def _save_all(self) -> None:
        viewer = self._viewer()
        if viewer is None:
            self._sweep.stop()
            return
        for tracked in list(self._tracked.values()):
            if tracked.layer in viewer.layers and not tracked.timer.isActive():
                self._save(tracked)

    def _save(self, tracked: _Tracked) -> None:
        layer = tracked.layer
        if not tracked.worked and layer.metadata.get(PREDICTION) is None:
            return  # labels opened and not edited: nothing of the user's to keep
        if tracked.busy:
            tracked.dirty = True
            return
        key = _geometry_key(layer.metadata)
        digest = self._digests.get(key)
        if digest is None:
            if key in self._hashing:  # its CT is still being hashed: try again shortly
                tracked.timer.start(self.delay_ms)
            else:
                self._fail(tracked, "its CT is not open in the viewer, so it cannot be keyed")
            return
        prediction = layer.metadata.get(PREDICTION)
        layer.metadata[AUTOSAVE_KEY] = journal.stamp(digest, tracked.session, self.root)
        kwargs = {
            "root": self.root,
            "digest": digest,
            "session": tracked.session,
            "affine": np.asarray(layer.metadata[AFFINE], dtype=np.float64),
            "shape": tuple(int(n) for n in layer.metadata[SHAPE]),
            "source": str(layer.metadata.get(SOURCE, "")),
            "description": str(layer.metadata.get(DESCRIPTION, "")),
            "layer": layer.name,
            "image": getattr(self._ct_layer(digest), "name", ""),
            "reviewed": sorted(int(s) for s in layer.metadata.get(REVIEWED, ())),
            "baseline": layer.metadata.get(BASELINE),
            "model": layer.metadata.get(MODEL),
            "effort": tracked.effort(),
            # copied here, on the GUI thread: the edit log grows with every stroke
            "layer_state": json.loads(
                json.dumps({k: layer.metadata[k] for k in RESTORED_KEYS if k in layer.metadata})
            ),
        }
        tracked.busy = True

        def saved(result: tuple[journal.JournalEntry | None, str]) -> None:
            entry, labels_hash = result
            tracked.saved_hash = labels_hash
            tracked.failure = ""
            if entry is not None:
                for callback in self.on_saved:
                    callback(entry)

        def finished() -> None:
            tracked.busy = False
            if tracked.dirty:
                tracked.dirty = False
                self._save(tracked)

        self._run(
            _journal_job,
            layer.data,
            prediction,
            tracked.saved_hash,
            kwargs,
            on_result=saved,
            on_error=lambda error: self._fail(tracked, str(error)),
            on_finished=finished,
        )

    def _fail(self, tracked: _Tracked, reason: str) -> None:
        if reason != tracked.failure:  # once per distinct problem, not at every stroke
            tracked.failure = reason
            show_warning(
                f"Autosave of {tracked.layer.name} failed: {reason}. The labels in the viewer "
                "are unchanged; export them (File > Save Selected Layers) to keep them."
            )

    def _run(
        self,
        function: Callable[..., Any],
        *args: Any,
        on_result: Callable[[Any], None],
        on_error: Callable[[BaseException], None] | None = None,
        on_finished: Callable[[], None] | None = None,
    ) -> None:
        worker = create_worker(function, *args, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(on_result)
        worker.errored.connect(on_error or (lambda error: show_warning(f"Autosave: {error}")))
        self._workers.add(worker)

        def finished() -> None:
            self._workers.discard(worker)
            if on_finished is not None:
                on_finished()

        worker.finished.connect(finished)
        worker.start()

    # ------------------------------------------------------------------ restoring

    def _live_sessions(self) -> set[str]:
        return {tracked.session for tracked in self._tracked.values()}

    def _offer(self, digest: str) -> None:
        """Offer the newest journal of CT ``digest`` that holds corrections (else the newest).

        A later session that only ran tools (a fill between, a refine round) journals no
        correction; offering it hid an older session's edited slices (a tester lost them to
        the toast and found them with ``dsms recover --session``).
        """
        entries = journal.list_entries(digest, root=self.root)
        entry = journal.to_restore(entries)
        if entry is None or entries[0].session in self._live_sessions():
            return
        self.offers[digest] = entry
        when = entry.saved.astimezone().strftime("%Y-%m-%d %H:%M")
        others = len(entries) - 1
        # What to decide on first: a toast shows about one line before it is expanded.
        message = (
            f"Restore {entry.work()} of this CT, autosaved {when}? "
            f"(layer {entry.record.get('layer') or 'labels'}"
            + (
                f"; {others} other autosaved session{'s' * (others != 1)}: dsms recover --list)"
                if others
                else ")"
            )
        )
        notification_manager.dispatch(
            _Offer(message, "info", actions=[("Restore", lambda *_: self.restore(digest))])
        )

    def _ct_layer(self, digest: str) -> Image | None:
        viewer = self._viewer()
        for layer in list(viewer.layers) if viewer is not None else []:
            if _is_ct(layer) and self._digests.get(_geometry_key(layer.metadata)) == digest:
                return layer
        return None

    def restore(self, digest: str) -> Labels | None:
        """Add the offered journal of CT ``digest`` as a labels layer, continuing its session.

        Returns the new layer, or ``None`` (with a notification) when there is nothing to
        restore or its CT is no longer open.
        """
        entry = self.offers.pop(digest, None)
        image = self._ct_layer(digest)
        viewer = self._viewer()
        if entry is None:  # the toast's button pressed again
            show_warning("Restore: these corrections were restored already")
            return None
        if image is None or viewer is None:
            show_warning("Restore: the CT of these corrections is no longer open")
            return None
        try:
            data, kwargs, _ = labels_layer_data(entry.labels(), image, name=entry.record["layer"])
            prediction = entry.prediction()
        except ValueError as error:  # a damaged journal or one that does not fit
            show_warning(f"Restore: {error}")
            return None
        saved_image = str(entry.record.get("image") or "")
        if saved_image and saved_image != image.name and kwargs["name"].startswith(saved_image):
            # the CT reopened under another name: the labels follow it (a tester saw them keep
            # the old CT's name)
            kwargs["name"] = image.name + kwargs["name"][len(saved_image) :]
        if kwargs["name"] in viewer.layers:
            kwargs["name"] = f"{kwargs['name']} (restored)"
        kwargs["metadata"][AUTOSAVE_KEY] = journal.stamp(digest, entry.session, self.root)
        kwargs["metadata"][REVIEWED] = entry.reviewed
        if prediction is not None:
            kwargs["metadata"][PREDICTION] = prediction
            # What tools wrote stays theirs: without it a restored fill between counted as
            # dozens of corrections, and fine-tuning learnt the interpolation as the user's.
            kwargs["metadata"][BASELINE] = entry.baseline()
        if entry.record.get("model"):
            kwargs["metadata"][MODEL] = entry.record["model"]
        # the region of interest, the last round's model, the edit log (a tester's restore
        # lost the region, and the next round started again from the bundled model)
        kwargs["metadata"].update(entry.record.get("layer_state") or {})
        layer = viewer.add_labels(data, **kwargs)
        edited = len(entry.corrected)
        reviewed = len(set(entry.reviewed) - set(entry.corrected))
        show_info(
            f"Restored {layer.name}: {_count(edited, 'edited slice')}"
            + (f", {reviewed} reviewed" if reviewed else "")
        )
        return layer


def _count(n: int, noun: str) -> str:
    """``"1 edited slice"``, ``"3 edited slices"``."""
    return f"{n} {noun}{'s' * (n != 1)}"
