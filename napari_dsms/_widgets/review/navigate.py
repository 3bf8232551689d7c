"""Navigate panel: jump to slices worth looking at, list edited and reviewed slices.

Slices come from the :class:`~napari_dsms._session.ReviewSession`; this panel only moves the
viewer there and marks the current slice as reviewed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
)

from ._common import refuse

if TYPE_CHECKING:
    from . import ReviewWidget


FOREGROUND_TIP = (
    "{} slice where the foreground starts, changes (tumour appears or ends) or ends; "
    "the arrow keys Left / Right step one slice"
)


class NavigatePanel(QGroupBox):
    """Buttons to the next and previous foreground or edited slice, and the slice lists.

    Parameters
    ----------
    review : ReviewWidget
        The dock whose session and viewer this panel works on.
    """

    def __init__(self, review: ReviewWidget) -> None:
        super().__init__("Navigate")
        self.review = review
        grid = QGridLayout(self)
        buttons = (
            ("◀ Foreground", FOREGROUND_TIP.format("Previous"), self.previous_foreground),
            ("Foreground ▶", FOREGROUND_TIP.format("Next"), self.next_foreground),
            ("◀ Edited", "Previous slice you changed", self.previous_edited),
            ("Edited ▶", "Next slice you changed", self.next_edited),
        )
        for i, (text, tip, slot) in enumerate(buttons):
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            grid.addWidget(button, i // 2, i % 2)
        self.slice_label = QLabel("")
        grid.addWidget(self.slice_label, 2, 0, 1, 2)
        self.edited_list = QListWidget()
        self.edited_list.setMaximumHeight(80)
        self.edited_list.setToolTip(
            "Slices that differ from the model's output (found by comparing, so undoing an "
            "edit removes the slice again); click one to go there"
        )
        self.reviewed_list = QListWidget()
        self.reviewed_list.setMaximumHeight(80)
        self.reviewed_list.setToolTip("Slices you marked as reviewed; click one to go there")
        for widget in (self.edited_list, self.reviewed_list):
            widget.itemClicked.connect(self._on_list_clicked)
        grid.addWidget(QLabel("Edited slices"), 3, 0)
        grid.addWidget(QLabel("Reviewed slices"), 3, 1)
        grid.addWidget(self.edited_list, 4, 0)
        grid.addWidget(self.reviewed_list, 4, 1)
        self.review_button = QPushButton("Mark slice reviewed")
        self.review_button.setToolTip(
            "Record that you checked the current slice (toggles); stored with the labels layer "
            "and written into export side-cars"
        )
        self.review_button.clicked.connect(self.toggle_reviewed)
        grid.addWidget(self.review_button, 5, 0, 1, 2)
        review.refreshed.connect(self._fill_lists)
        review.slice_changed.connect(self._on_slice_changed)

    # ------------------------------------------------------------------ display

    def _fill_lists(self) -> None:
        session = self.review.session
        _fill(self.edited_list, session.edited if session else [])
        if session is not None and session.prediction is None:
            self.edited_list.addItem("(no stored model output)")
        _fill(self.reviewed_list, sorted(session.reviewed) if session else [])

    def _on_list_clicked(self, item: QListWidgetItem) -> None:
        target = item.data(Qt.ItemDataRole.UserRole)
        if target is not None:
            self.review.go_to_slice(int(target))

    def _on_slice_changed(self, current: int) -> None:
        session = self.review.session
        if session is None:
            self.slice_label.setText("")
            return
        outside = self.review.slice_on_screen() is None
        self.review_button.setEnabled(not outside)
        if outside:
            self.slice_label.setText(self.review.outside_message())
            return
        notes = []
        if current in session.edited:
            notes.append("edited")
        reviewed = current in session.reviewed
        if reviewed:
            notes.append("reviewed")
        # napari's status bar gives the position in mm along the body, which can be negative:
        # say how it relates to the slice number.
        position = self.review.viewer.dims.point[self.review.viewer.dims.ndim - 3]
        where = f"slice {current} of {session.n_slices}; {position:g} mm along the body"
        self.slice_label.setText(where + (f" ({', '.join(notes)})" if notes else ""))
        self.review_button.setText("Unmark reviewed" if reviewed else "Mark slice reviewed")

    # ------------------------------------------------------------------ actions

    def _jump(self, kind: str, step: int) -> int | None:
        session = self.review.sync_session()
        if session is None:
            refuse(self.slice_label, "choose a CT and its labels layer first")
            return None
        session.go_to(self.review.current_slice())
        target = session.neighbour(kind, step)
        if target is None:
            direction = "after" if step > 0 else "before"
            self.slice_label.setText(f"no {kind} slice {direction} slice {session.current}")
            return None
        self.review.go_to_slice(target)
        return target

    def next_foreground(self) -> int | None:
        """Jump to the next slice where the foreground starts, changes or ends, if any."""
        return self._jump("foreground changes", +1)

    def previous_foreground(self) -> int | None:
        """Jump to the previous slice where the foreground starts, changes or ends, if any."""
        return self._jump("foreground changes", -1)

    def next_edited(self) -> int | None:
        """Jump to the next slice that differs from the model's output."""
        self.review.refresh_status()
        return self._jump("edited", +1)

    def previous_edited(self) -> int | None:
        """Jump to the previous slice that differs from the model's output."""
        self.review.refresh_status()
        return self._jump("edited", -1)

    def toggle_reviewed(self) -> None:
        """Mark the current slice as reviewed, or unmark it if it already is."""
        session = self.review.session
        if session is None:
            refuse(self.slice_label, "choose a labels layer first")
            return
        current = self.review.slice_on_screen()
        if current is None:
            refuse(self.slice_label, f"nothing marked: {self.review.outside_message()}")
            return
        session.go_to(current)
        session.toggle_reviewed()
        self.review.store_reviewed()
        self.review.refresh_status()  # the Volumes line counts reviewed slices (a tester)
        _fill(self.reviewed_list, sorted(session.reviewed))
        self._on_slice_changed(session.current)


def _fill(widget: QListWidget, slices: list[int]) -> None:
    widget.clear()
    for s in slices:
        item = QListWidgetItem(f"slice {s}")
        item.setData(Qt.ItemDataRole.UserRole, s)
        widget.addItem(item)
