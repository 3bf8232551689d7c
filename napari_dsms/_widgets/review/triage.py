"""Triage panel: which slices to check first, and fill between corrected slices.

*Score slices* runs :func:`src_models.inference.triage.triage` with the model that made the
labels (in a worker; it can be cancelled); the ranked list and a bar chart over the slices show
where the model is least sure of itself, and a click goes there. *Next suspect slice* (also
``Shift-N`` in the viewer) jumps to the most suspect slice the user has neither edited nor
marked reviewed: those leave the queue. *Fill between* interpolates every structure into the
slices between edited or reviewed slices (:func:`src_models.fill_between_slices`) as one napari
undo step.
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtCore import QPointF, QRectF, Qt, Signal
from qtpy.QtGui import QColor, QMouseEvent, QPainter, QPaintEvent
from qtpy.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QWidget,
)

from src_models import fill_between_slices
from src_models.inference.triage import Triage, triage
from src_models.models.store import load_checkpoint
from src_models.refine import MAX_GAP_MM, max_gap_slices

from .._worker import start_job
from ._common import UndoWatch, canonical_volume, refuse
from .refine_round import RefineRoundPanel

if TYPE_CHECKING:
    from ..._session import ReviewSession
    from . import ReviewWidget

#: Viewer key that jumps to the next suspect slice.
NEXT_SUSPECT_KEY = "Shift-N"


def suspect_queue(order: list[int], done: set[int]) -> list[int]:
    """Triage's ranking without the slices the user already edited or reviewed."""
    return [k for k in order if k not in done]


def fill_changes(
    labels: np.ndarray, known: list[int], slice_mm: float
) -> tuple[tuple[np.ndarray, ...], np.ndarray, list[tuple[int, int]]]:
    """Voxels that fill between ``known`` slices changes (indices, new values), canonical.

    Gaps longer than :data:`src_models.refine.MAX_GAP_MM` are left as they are (and returned):
    across them interpolation loses to the model, and between two small end slices it empties
    the organ.
    """
    max_gap = max_gap_slices(slice_mm)
    skipped = [(a, b) for a, b in pairwise(sorted(set(known))) if b - a > max_gap]
    filled = fill_between_slices(labels, known, axis=0, max_gap=max_gap)
    changed = np.nonzero(filled != labels)
    return changed, filled[changed], skipped


class SliceChart(QWidget):
    """Suspicion per slice as bars (slice 0 on the left); a click reports the slice."""

    clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.scores = np.zeros(0)
        self.current = -1
        self.setMinimumHeight(60)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(
            "Triage score per slice, the same as in the list (inferior on the left); click to "
            "go there"
        )

    def set_scores(self, scores: np.ndarray) -> None:
        self.scores = np.asarray(scores, dtype=float)
        self.update()

    def set_current(self, index: int) -> None:
        self.current = index
        self.update()

    def slice_at(self, x: float) -> int:
        """The slice under horizontal position ``x`` (pixels)."""
        n = max(len(self.scores), 1)
        return int(np.clip(x / max(self.width(), 1) * n, 0, n - 1))

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 (Qt's name)
        if len(self.scores):
            self.clicked.emit(self.slice_at(event.position().x()))

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(30, 30, 30))
        n = len(self.scores)
        if n:
            width, height = self.width() / n, float(self.height())
            top = max(float(self.scores.max()), 1e-9)
            for k, score in enumerate(self.scores):
                colour = QColor(255, 200, 0) if k == self.current else QColor(230, 90, 60)
                bar = height * float(score) / top
                painter.fillRect(QRectF(k * width, height - bar, max(width, 1.0), bar), colour)
            if 0 <= self.current < n:
                painter.setPen(QColor(255, 200, 0))
                x = (self.current + 0.5) * width
                painter.drawLine(QPointF(x, 0), QPointF(x, height))
        else:  # a blank box told a tester nothing
            painter.setPen(QColor(160, 160, 160))
            painter.drawText(
                QRectF(self.rect()), Qt.AlignmentFlag.AlignCenter, "Score slices to chart them"
            )
        painter.end()


class TriagePanel(QGroupBox):
    """Score slices, list and chart them, jump to the next suspect, fill between corrections.

    Parameters
    ----------
    review : ReviewWidget
        The dock whose session and viewer this panel works on.
    """

    def __init__(self, review: ReviewWidget) -> None:
        super().__init__("Triage and fill between")
        self.review = review
        self.result: Triage | None = None
        self._worker: Any = None
        self._last_suspect: int | None = None  # where Next suspect slice went last
        grid = QGridLayout(self)
        self.score_button = QPushButton("Score slices")
        self.score_button.setToolTip(
            "Rank the slices by how unsure the model is of them (its probabilities, a zoomed "
            "second look, its reconstruction error, jumps in area, stray fragments)"
        )
        self.score_button.clicked.connect(self.score)
        self.next_button = QPushButton("Next suspect slice")
        self.next_button.setToolTip(
            f"Go to the most suspect slice you have not edited or reviewed ({NEXT_SUSPECT_KEY})"
        )
        self.next_button.clicked.connect(self.next_suspect)
        self.fill_button = QPushButton("Fill between")
        self.fill_button.setToolTip(
            "Interpolate pancreas and tumour into the slices between edited or reviewed slices "
            "(one undo step)"
        )
        self.fill_button.clicked.connect(self.fill_between)
        grid.addWidget(self.score_button, 0, 0)
        grid.addWidget(self.next_button, 0, 1)
        self.chart = SliceChart()
        self.chart.clicked.connect(self.review.go_to_slice)
        grid.addWidget(self.chart, 1, 0, 1, 2)
        self.suspects = QListWidget()
        self.suspects.setMaximumHeight(90)
        self.suspects.setToolTip("Slices to check, most suspect first; click one to go there")
        self.suspects.itemClicked.connect(self._on_item_clicked)
        grid.addWidget(self.suspects, 2, 0, 1, 2)
        grid.addWidget(self.fill_button, 3, 0, 1, 2)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        grid.addWidget(self.status, 4, 0, 1, 2)
        self._undo = UndoWatch(self.status, "the last fill was undone: the labels are as before it")
        review.refreshed.connect(lambda: self._undo.check(self.review.labels_layer))
        self.refine_round = RefineRoundPanel(review)
        grid.addWidget(self.refine_round, 5, 0, 1, 2)
        review.session_changed.connect(self._forget)
        review.refreshed.connect(self._fill_list)
        review.slice_changed.connect(self.chart.set_current)
        review.viewer.bind_key(NEXT_SUSPECT_KEY, lambda viewer: self.next_suspect(), overwrite=True)

    # ------------------------------------------------------------------ scoring

    def score(self) -> Any:
        """Score every slice in a worker; returns the worker, or ``None`` (and says why)."""
        session = self.review.session
        if session is None:
            refuse(self.status, "choose a CT and its labels layer first")
            return None
        if self._worker is not None:
            refuse(self.status, "scoring is already running")
            return None
        checkpoint = (session.model or {}).get("checkpoint")
        if not checkpoint:
            refuse(self.status, "the labels keep no model to ask: segment the CT first")
            return None
        model, meta = load_checkpoint(checkpoint)
        self.review.note_pause()  # the wait for the scores is not editing time
        self.score_button.setEnabled(False)
        self.status.setText("scoring slices…")
        self._worker = start_job(
            triage,
            canonical_volume(session.image, session.spacing),
            model,
            meta,
            description="Scoring slices",
            on_result=lambda result: self._on_scored(result, session),
            on_finished=self._on_finished,
            error_context="Triage",
        )
        return self._worker

    @property
    def is_scoring(self) -> bool:
        return self._worker is not None

    def cancel(self) -> bool:
        """Stop scoring; whether it was running."""
        if self._worker is None:
            return False
        self._worker.quit()
        return True

    def _on_scored(self, result: Triage, scored: ReviewSession) -> None:
        if scored is not self.review.session:
            # Another labels layer (or none) was chosen while the slices were scored: these
            # scores are another layer's and must not rank this one's slices.
            self.status.setText("the labels layer changed while scoring: score again")
            return
        self.result = result
        self.chart.set_scores(result.priority)
        self._fill_list()
        queue = self.queue()
        self.status.setText(
            f"slices ranked; start with slice {', then '.join(map(str, queue[:3]))}"
            if queue
            else "every slice is edited or reviewed"
        )

    def _on_finished(self) -> None:
        self._worker = None
        self.score_button.setEnabled(True)
        self.review.note_pause()  # the next stroke's time starts now

    def _forget(self) -> None:
        self.result = None
        self.chart.set_scores(np.zeros(0))
        self.suspects.clear()

    # ------------------------------------------------------------------ the queue

    def queue(self) -> list[int]:
        """Canonical slices still to check, most suspect first."""
        session = self.review.session
        if self.result is None or session is None:
            return []
        return suspect_queue(self.result.order, set(session.edited) | session.reviewed)

    def _fill_list(self) -> None:
        self.suspects.clear()
        if self.result is None:
            return
        scores = dict(zip(self.result.order, self.result.ranked_scores, strict=True))
        for k in self.queue()[:20]:
            item = QListWidgetItem(f"slice {k}   {scores[k]:.2f}")
            item.setData(Qt.ItemDataRole.UserRole, k)
            self.suspects.addItem(item)

    def _on_item_clicked(self, item: QListWidgetItem) -> None:
        self.review.go_to_slice(int(item.data(Qt.ItemDataRole.UserRole)))

    def next_suspect(self) -> int | None:
        """Go to the most suspect slice not yet edited or reviewed; returns it, or ``None``."""
        if self.result is None:
            refuse(self.status, "score the slices first")
            return None
        self.review.refresh_status()
        queue = self.queue()
        if not queue:
            self.status.setText("every scored slice is edited or reviewed")
            return None
        # Pressed again on the slice it went to, it moves on down the list (a tester stayed on
        # the first suspect, told "next: slice 100"); edits and reviews take slices off it.
        current = self.review.current_slice()
        again = current == self._last_suspect and current in queue
        position = (queue.index(current) + 1) % len(queue) if again else 0
        target = queue[position]
        self.review.go_to_slice(target)
        self._last_suspect = target
        score = self.result.priority[target]
        after = (
            f"next: slice {queue[(position + 1) % len(queue)]}"
            if len(queue) > 1
            else "the last one not checked"
        )
        self.status.setText(f"slice {target} (score {score:.2f}); {after}")
        return target

    # ------------------------------------------------------------------ fill between

    def fill_between(self) -> int:
        """Interpolate between edited and reviewed slices as one undo step; voxels changed."""
        layer, session = self.review.labels_layer, self.review.session
        if layer is None or session is None:
            refuse(self.status, "choose a CT and its labels layer first")
            return 0
        self.review.refresh_status()
        known = sorted(set(session.edited) | session.reviewed)
        if len(known) < 2:
            refuse(self.status, "edit or mark reviewed at least two slices to fill between")
            return 0
        try:
            changed, values, skipped = fill_changes(
                np.asarray(layer.data), known, session.spacing[0]
            )
        except ValueError as error:  # a slice painted with another label than 1 or 2
            refuse(self.status, f"{error}: paint it with label 1 or 2, or erase the rest")
            return 0
        left = ""
        if skipped:
            gaps = ", ".join(f"{a}-{b}" for a, b in skipped)
            left = (
                f"; gaps over {MAX_GAP_MM:.0f} mm left as they were ({gaps}): "
                "correct a slice in each"
            )
        if changed[0].size == 0:
            self.status.setText(f"nothing to fill: the slices between already match{left}")
            return 0
        # Filled slices are the interpolation's guess, not the user's: they are not corrections
        # (fine-tuning never learns from them) until the user edits them or marks them reviewed.
        before = np.asarray(layer.data)[changed]
        session.add_tool_changes(changed, values)
        layer.data_setitem(changed, values)
        self._undo.wrote(layer, changed, before, values)
        count = int(changed[0].size)
        self.status.setText(
            f"filled between slices {known[0]} and {known[-1]}: {count} voxels{left}"
        )
        show_info(f"Fill between changed {count} voxels; Ctrl+Z reverts it")
        self.review.refresh_status()
        self.review.reveal(self.status)  # below the fold at 1366 x 768 once triage has filled
        return count  # its list (a tester saw only the toast)
