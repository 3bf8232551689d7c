"""Review and fine-tune: walk through a segmentation, correct it, export it, learn from it.

The dock binds one CT image layer and one labels layer (normally a Segment result) into a
Qt-free :class:`~napari_dsms._session.ReviewSession`, and shows panels over it, one module each:
:mod:`.navigate` (slices worth looking at, reviewed marks), :mod:`.roi` (where the pancreas is),
:mod:`.triage` (the most suspect slices first, fill between corrected slices),
:mod:`.correct` (brush set-up,
clean-up), :mod:`.compare` (Dice, PPV, sensitivity of two segmentations), :mod:`.export`
(NIfTI and side-car) and :mod:`.fine_tune` (learn from the corrections, re-segment). napari's own
paint, erase, fill and undo stay the editing tools.

This module keeps the session in step with the layers: it follows the newest model result for
the chosen CT (a labels layer with a stored prediction; a reference opened earlier is never
taken for it), says which layer is being edited, rebuilds the session when another image or
labels layer is chosen (``session_changed``), recomputes it a moment after an edit or an undo
(``refreshed``), and follows the viewer's slice (``slice_changed``). A new panel connects to
these signals and reads ``review.session``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_info
from qtpy.QtCore import QEvent, QTimer, Signal
from qtpy.QtWidgets import QFormLayout, QGroupBox, QLabel, QVBoxLayout, QWidget

from src_models import corrections
from src_models.io.volume import format_ml

from ..._autosave import attach as attach_autosave
from ..._layers import (
    AFFINE,
    BASELINE,
    EDIT_LOG,
    MODEL,
    PREDICTION,
    REFERENCE,
    REVIEWED,
    ROLE,
    SOURCE,
    is_ct_layer,
    session_from_layer,
    style_labels,
)
from ..._orientation import attach as attach_orientation
from ..._results import model_name
from ..._session import ReviewSession
from .._pickers import choose, layer_picker, of_kind, same_layer
from .._scroll import ScrollingDock
from .compare import ComparePanel
from .correct import CorrectPanel
from .export import ExportPanel
from .fine_tune import FineTunePanel
from .navigate import NavigatePanel
from .roi import RegionPanel
from .triage import TriagePanel

if TYPE_CHECKING:
    import napari

__all__ = ["ReviewWidget"]

#: Quiet time after the last edit before volumes and edited slices are recomputed: a brush
#: stroke fires many events and a full-volume comparison takes tens of milliseconds.
REFRESH_DELAY_MS = 250


def _is_labels(layer: Layer) -> bool:
    return isinstance(layer, Labels)


def _painted_slices(atoms: Any) -> list[int]:
    """Canonical slices (axis 0) a napari paint event's history atoms changed; empty when the
    event does not say (the caller then takes the slice shown)."""
    slices: set[int] = set()
    try:
        for atom in atoms or ():
            key = getattr(atom, "slice_key", None)  # napari's masked atom: a bounding box
            if key is not None:
                start = key[0].start or 0
                if atom.mask is None:
                    slices.update(range(start, key[0].stop))
                else:
                    rows = atom.mask.reshape(atom.mask.shape[0], -1).any(axis=1)
                    slices.update(int(k) + start for k in np.flatnonzero(rows))
            else:  # (indices, old values, new values)
                slices.update(int(k) for k in np.unique(np.asarray(atom[0][0])))
    except (TypeError, IndexError, AttributeError, ValueError):
        return []
    return sorted(slices)


def other_ct_sources(image: Image | None, layers: Any) -> frozenset[str]:
    """The files of the CT layers in ``layers`` other than ``image`` (by their source)."""
    own = "" if image is None else str(image.metadata.get(SOURCE, ""))
    sources = (str(layer.metadata.get(SOURCE, "")) for layer in layers if is_ct_layer(layer))
    return frozenset(source for source in sources if source and source != own)


def _belongs_to(layer: Layer, image: Image, elsewhere: frozenset[str] = frozenset()) -> bool:
    """Whether ``layer`` is a labels layer on ``image``'s grid (same shape and file affine),
    and not one made on another open CT (its source among ``elsewhere``): two phases of one
    study can share a grid, and a tester's labels of one were taken for the other's."""
    if not isinstance(layer, Labels) or layer.data.shape != image.data.shape:
        return False
    if str(layer.metadata.get(SOURCE, "")) in elsewhere:
        return False
    ours, theirs = layer.metadata.get(AFFINE), image.metadata.get(AFFINE)
    return ours is None or theirs is None or np.allclose(ours, theirs, atol=1e-4)


def preferred_labels(
    image: Image | None, layers: list[Layer], elsewhere: frozenset[str] = frozenset()
) -> Labels | None:
    """The labels to review for ``image``: its newest model result, else its newest labels that
    are not a reference read from a file (a manual reference is never taken for the labels to
    correct; choosing one in the menu is the user's own decision). Labels made on another open
    CT (their source among ``elsewhere``) are never taken either."""
    if image is None:
        return None
    fitting = [layer for layer in layers if _belongs_to(layer, image, elsewhere)]
    results = [layer for layer in fitting if PREDICTION in layer.metadata]
    drawn = [layer for layer in fitting if layer.metadata.get(ROLE) != REFERENCE]
    return (results or drawn or [None])[-1]


def describe_labels(layer: Labels | None, elsewhere: frozenset[str] = frozenset()) -> str:
    """Which layer is edited, and what it is, in a line; a warning first when it was made on
    another open CT (its source among ``elsewhere``)."""
    if layer is None:
        return "no labels layer: segment the CT (Segment dock) or open labels"
    source = str(layer.metadata.get(SOURCE, ""))
    if source in elsewhere:
        return (
            f"Warning: {layer.name!r} was made on another open CT ({Path(source).name}); "
            "review, export and fine-tuning pair it with the CT chosen above"
        )
    if PREDICTION in layer.metadata:
        model = layer.metadata.get(MODEL)
        made_by = f" made by {model_name(model)}" if isinstance(model, dict) else ""
        return f"editing {layer.name!r}, a model result{made_by}"
    if layer.metadata.get(ROLE) == REFERENCE:
        return f"editing {layer.name!r}, a reference read from a file (no model output)"
    return f"editing {layer.name!r} (no model output: edits cannot be told apart)"


def session_for(image: Image, labels: Labels) -> ReviewSession:
    """A review session over an image layer and a labels layer (their arrays, not copies)."""
    return session_from_layer(
        np.asarray(labels.data),
        labels.metadata,
        labels.scale[-3:],
        image=np.asarray(image.data),
        geometry=image.metadata,
        name=image.name,
    )


class ReviewWidget(ScrollingDock):
    """Dock widget to review, correct, export and fine-tune from a segmentation.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose layers are reviewed (napari passes it in).

    Signals
    -------
    session_changed()
        Another image or labels layer was chosen; ``session`` is new (or ``None``).
    refreshed()
        The session was recomputed from the labels as they are now.
    edited()
        The labels under review changed (a brush stroke, a tool, an undo); ``refreshed``
        follows a moment later.
    slice_changed(int)
        The viewer shows another canonical slice.
    """

    session_changed = Signal()
    refreshed = Signal()
    slice_changed = Signal(int)
    edited = Signal()

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent, grows=True)
        self.viewer = napari_viewer
        self.autosave = attach_autosave(napari_viewer)  # journals corrections, offers restoring
        attach_orientation(napari_viewer)  # A/P, R/L on the canvas
        self.session: ReviewSession | None = None
        self._retired = False  # napari took the dock away (see event())
        self._watched: Labels | None = None
        self._last_point = tuple(self.viewer.dims.point)
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_DELAY_MS)
        self._refresh_timer.timeout.connect(self.refresh_status)

        self.navigate = NavigatePanel(self)
        self.region = RegionPanel(self)
        self.triage = TriagePanel(self)
        self.correct = CorrectPanel(self)
        self.compare = ComparePanel(self)
        self.export = ExportPanel(self)
        self.fine_tune = FineTunePanel(self)
        self.fine_tune.resegmented.connect(self.compare.compare_pair)

        # The panel is taller than a laptop screen: it scrolls instead of stretching the window.
        layout = QVBoxLayout(self.content)
        layout.addWidget(self._build_layers_box())
        panels = (self.navigate, self.triage, self.region, self.correct, self.compare)
        for panel in (*panels, self.export, self.fine_tune):
            layout.addWidget(panel)
        layout.addStretch(1)

        self.viewer.dims.events.point.connect(self._on_point_changed)
        # After the pickers' own handlers, so that these see the refreshed choices.
        self._losing_current = False
        self.viewer.layers.events.removing.connect(self._on_layer_removing)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        for layer in self.viewer.layers:
            style_labels(layer)
        self._follow_newest()
        self._on_labels_changed()

    def _build_layers_box(self) -> QGroupBox:
        box = QGroupBox("Layers")
        form = QFormLayout(box)
        self.image_combo = layer_picker(
            self.viewer, of_kind(is_ct_layer), tooltip="The CT the labels belong to"
        )
        self.labels_combo = layer_picker(
            self.viewer,
            of_kind(_is_labels),
            tooltip="The labels you correct: normally the Segment widget's result, which keeps "
            "the model's output to tell which slices you edited",
        )
        form.addRow("Image", self.image_combo.native)
        form.addRow("Labels", self.labels_combo.native)
        self.image_combo.changed.connect(self._on_image_changed)
        self.labels_combo.changed.connect(self._on_labels_changed)
        self.editing_label = QLabel("")
        self.editing_label.setWordWrap(True)
        self.editing_label.setToolTip(
            "The layer that Paint, Erase, clean-up, export and fine-tuning work on"
        )
        form.addRow(self.editing_label)
        self.volumes_label = QLabel("")
        self.volumes_label.setWordWrap(True)
        form.addRow("Volumes", self.volumes_label)
        return box

    # ------------------------------------------------------------------ the chosen layers

    @property
    def image_layer(self) -> Image | None:
        """The CT image layer under review."""
        return self.image_combo.value

    @property
    def labels_layer(self) -> Labels | None:
        """The labels layer under review."""
        return self.labels_combo.value

    def select_labels(self, layer: Labels) -> bool:
        """Review ``layer``; ``False`` when it is not a labels layer of this viewer."""
        return choose(self.labels_combo, layer)

    def _elsewhere(self) -> frozenset[str]:
        return other_ct_sources(self.image_layer, self.viewer.layers)

    def _follow_newest(self) -> bool:
        """Review the newest model result of the chosen CT; whether the choice changed."""
        layers = [layer for layer in self.labels_combo.choices if layer is not None]
        wanted = preferred_labels(self.image_layer, layers, self._elsewhere())
        if wanted is None or same_layer(wanted, self.labels_layer):
            return False
        return choose(self.labels_combo, wanted)

    def _on_image_changed(self, *_: Any) -> None:
        """Review the labels that belong to the chosen image."""
        if not self._follow_newest():
            self._on_labels_changed()

    def _on_layer_inserted(self, event: Any) -> None:
        layer, image = event.value, self.image_layer
        style_labels(layer)  # references as contours, wherever they were opened
        if self._retired:
            return
        ct = self._ct_of_new_result(layer)
        if ct is not None:  # segmented another open CT: review that one (a tester's DICOM
            choose(self.image_combo, ct)  # result was paired with the NIfTI CT and refused)
            return
        if same_layer(layer, self.labels_layer):  # chosen as it came (a restored session):
            return  # it is no newer result than itself (a tester's dock said it was)
        if (
            PREDICTION in layer.metadata
            and image is not None
            and _belongs_to(layer, image, self._elsewhere())
        ):
            if self._holds_corrections():  # segmenting again, with another model to compare:
                # the corrections stay the layer reviewed (a tester's next stroke went into
                # the new result)
                self.editing_label.setText(
                    f"{describe_labels(self.labels_layer, self._elsewhere())}\nA newer result, "
                    f"{layer.name!r}, is open: your corrections stay here; choose it under "
                    "Labels to review it instead."
                )
                return
            self._follow_newest()

    def _ct_of_new_result(self, layer: Layer) -> Image | None:
        """The open CT, other than the one reviewed, that a new model result was made on; not
        while a job of this dock runs on the reviewed one (a round would be stopped)."""
        source = str(layer.metadata.get(SOURCE, ""))
        if PREDICTION not in layer.metadata or not source or self._busy():
            return None
        for ct in self.image_combo.choices:
            if ct is None or same_layer(ct, self.image_layer):
                continue
            if str(ct.metadata.get(SOURCE, "")) == source and _belongs_to(layer, ct):
                return ct
        return None

    def _holds_corrections(self) -> bool:
        """Whether the labels under review hold slices the user edited or reviewed (counted
        now: the last stroke's refresh may still be due)."""
        self.refresh_status()
        session = self.session
        return session is not None and bool(session.edited or session.reviewed)

    def _busy(self) -> bool:
        triage = self.triage
        return triage.refine_round.is_running or self.fine_tune.is_busy or triage.is_scoring

    def _on_layer_removing(self, event: Any) -> None:
        # Noted before the pickers move on to another layer (they do so on "removed").
        self._losing_current = same_layer(self.viewer.layers[event.index], self.labels_layer)

    def _on_layer_removed(self, event: Any) -> None:
        if self._losing_current:
            self._losing_current = False
            # With no labels layer left the picker empties without a word: the session (and a
            # round running on it) must end all the same, and the editing line with it (a
            # tester's round trained on for 33 s under a line naming the removed layer).
            if not self._follow_newest() and not same_layer(self.labels_layer, self._watched):
                self._on_labels_changed()

    def event(self, event: QEvent) -> bool:
        """Retire when napari takes the dock away, and come back when docked again.

        Closing the dock (or ``remove_dock_widget``) unparents this widget without deleting
        it. Left as it was, it kept its own session on the labels beside that of a Review dock
        opened again: its baseline, without the round's writes, overwrote the new one's in
        the layer's metadata, and the autosave journaled a round's 56 slices as the user's
        edits (a tester). Retired, it holds no session, writes nothing, and stops its jobs.
        """
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is None and not self._retired:
                self._retire()
            elif self.parent() is not None and self._retired:
                self._retired = False
                self._on_labels_changed()
        return super().event(event)

    def _retire(self) -> None:
        running = [
            name
            for name, job in (
                ("the refine round", self.triage.refine_round.cancel),
                ("fine-tuning", self.fine_tune.cancel_fine_tune),
                ("slice scoring", self.triage.cancel),
            )
            if job()
        ]
        self._retired = True
        self._refresh_timer.stop()
        self.session = None
        self.session_changed.emit()
        if running:
            show_info(
                f"Review dock closed: {' and '.join(running)} stopped; the labels are as before it"
            )

    def _on_labels_changed(self, *_: Any) -> None:
        if self._retired:
            return
        layer = self.labels_layer
        if self._watched is not None and not same_layer(self._watched, layer):
            self._watched.events.paint.disconnect(self._on_paint)
            self._watched.events.data.disconnect(self._schedule_refresh)
            self._watched.events.set_data.disconnect(self._on_set_data)
        if layer is not None and not same_layer(layer, self._watched):
            # paint: brush strokes and clean-up; data: a new array; set_data: undo / redo.
            layer.events.paint.connect(self._on_paint)
            layer.events.data.connect(self._schedule_refresh)
            layer.events.set_data.connect(self._on_set_data)
        self._watched = layer
        self.editing_label.setText(describe_labels(layer, self._elsewhere()))
        image = self.image_layer
        self.session = session_for(image, layer) if image is not None and layer else None
        self.session_changed.emit()
        self.refresh_status()

    # ------------------------------------------------------------------ keeping in step

    def _on_paint(self, event: Any = None) -> None:
        """A brush stroke or a tool's write: the user's strokes go into the edit log, a tool's
        write as a pause (the wait for it is not the user's editing time)."""
        session = self.session
        if session is not None:
            if session.tool_write_pending:
                session.tool_write_pending = False
                self.note_pause()
            else:  # the slices the stroke changed: in a coronal view, many
                slices = _painted_slices(getattr(event, "value", None))
                now = round(time.time(), 2)
                self._log([[now, k] for k in slices or [self.current_slice()]])
        self._schedule_refresh(event)

    def note_pause(self) -> None:
        """Mark in the edit log that a tool runs or ran: the time up to now is not editing."""
        self._log([[round(time.time(), 2), None]])

    def _log(self, entries: list[list[Any]]) -> None:
        """Append to the labels layer's edit log; the session reads it in :meth:`sync_session`."""
        if self.labels_layer is not None and not self._retired:
            self.labels_layer.metadata.setdefault(EDIT_LOG, []).extend(entries)

    def _schedule_refresh(self, event: Any = None) -> None:
        self.correct.forget_cleanup()
        self.edited.emit()
        self._refresh_timer.start()

    def _on_set_data(self, event: Any = None) -> None:
        """Refresh after undo / redo, but not when the layer merely shows another slice.

        napari signals both with ``set_data``; moving through slices changes the viewer's point,
        undo does not. Recomputing the whole volume on every slice change would make scrolling
        through a long series stutter.
        """
        point = tuple(self.viewer.dims.point)
        if point != self._last_point:
            self._last_point = point
            return
        self._schedule_refresh()  # undo or redo (or a display change, harmlessly)

    def sync_session(self) -> ReviewSession | None:
        """The session, following the labels layer's current array and stored model output.

        Cheap (no full-volume pass): a brush paints into the same array, but a new run or a
        script may replace the layer's data or its prediction.
        """
        session, layer = self.session, self.labels_layer
        if session is not None and layer is not None:
            session.set_prediction(layer.metadata.get(PREDICTION))
            model = layer.metadata.get(MODEL)
            session.model = dict(model) if isinstance(model, dict) else None
            session.labels = np.asarray(layer.data)
            session.edits = [tuple(edit) for edit in layer.metadata.get(EDIT_LOG) or ()]
        return session

    def refresh_status(self) -> None:
        """Recompute volumes and edited slices from the labels as they are now."""
        self._refresh_timer.stop()
        if self._retired:
            return
        session = self.sync_session()
        if session is None:
            self.volumes_label.setText("choose a CT and its labels layer")
        else:
            session.refresh()
            if self.labels_layer is not None:  # the autosave journals it with the labels
                self.labels_layer.metadata[BASELINE] = session.baseline
            session.tool_write_pending = False  # a tool that wrote nothing
            volumes = session.volumes()
            seconds = corrections.seconds_per_slice(session.edits)
            listed = set(session.edited) | session.reviewed  # as the side-car's totals
            minutes = sum(seconds.get(k, 0.0) for k in listed) / 60.0
            self.volumes_label.setText(
                f"pancreas (incl. tumour) {format_ml(volumes['pancreas'])}, "
                f"tumour {format_ml(volumes['tumour'])}\n{len(session.edited)} "
                f"slice{'s' * (len(session.edited) != 1)} edited, "
                f"{len(session.reviewed - set(session.edited))} reviewed; {minutes:.1f} min "
                "editing"
            )
        self.refreshed.emit()
        self._on_point_changed()

    def edited_slices(self) -> list[int]:
        """Canonical slices of the labels that differ from the stored model output."""
        return list(self.session.edited) if self.session is not None else []

    def reviewed_slices(self) -> list[int]:
        """Canonical slices marked as reviewed (kept in ``labels.metadata[REVIEWED]``)."""
        return sorted(self.session.reviewed) if self.session is not None else []

    def store_reviewed(self) -> None:
        """Write the session's reviewed slices into the labels layer, where exports find them."""
        if self.session is not None and self.labels_layer is not None:
            self.labels_layer.metadata[REVIEWED] = sorted(self.session.reviewed)
            self.autosave.schedule(self.labels_layer)  # the journal records reviewed slices

    # ------------------------------------------------------------------ slices

    def _reference_layer(self) -> Layer | None:
        return self.labels_layer if self.labels_layer is not None else self.image_layer

    def current_slice(self) -> int:
        """Canonical axial slice shown in the viewer (of the labels layer's data), or the
        nearest one when the viewer shows a position outside it (where to start a jump)."""
        layer = self._reference_layer()
        if layer is None:
            return 0
        return int(np.clip(self._position(layer), 0, layer.data.shape[-3] - 1))

    def slice_on_screen(self) -> int | None:
        """Canonical axial slice shown in the viewer, ``None`` when the viewer's position lies
        outside the labels (another, longer CT is open and the slider is beyond this one).

        Actions on "this slice" take it: a tester marked slice 0 reviewed, unseen, while the
        viewer showed a position 34 mm beyond it, and fill between used it as an anchor.
        """
        layer = self._reference_layer()
        if layer is None:
            return None
        index = self._position(layer)
        return index if 0 <= index < layer.data.shape[-3] else None

    def _position(self, layer: Layer) -> int:
        return round(float(layer.world_to_data(self.viewer.dims.point)[-3]))

    def outside_message(self) -> str:
        """What the panels say when :meth:`slice_on_screen` is ``None``."""
        layer = self._reference_layer()
        name = "the labels" if layer is None else repr(layer.name)
        return f"no slice of {name} here: the viewer shows a position beyond it"

    def go_to_slice(self, index: int) -> None:
        """Show canonical axial slice ``index``."""
        layer = self._reference_layer()
        if layer is None:
            return
        world = layer.data_to_world((int(index), 0, 0))
        axis = self.viewer.dims.ndim - 3
        self.viewer.dims.set_point(axis, float(world[-3]))

    def _on_point_changed(self, event: Any = None) -> None:
        current = self.current_slice()
        if self.session is not None:
            self.session.go_to(current)
        self.slice_changed.emit(current)
