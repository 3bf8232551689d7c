"""A dock body that scrolls up and down instead of stretching the window.

napari stacks plugin docks in one column; on a laptop (1366 x 768) three docks with fixed
minimum heights leave the last one a few pixels. Each napari-dsms dock builds its controls in
:attr:`ScrollingDock.content`, so that Qt can share the column between the docks and each one
scrolls what does not fit, never clips it.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent, QObject, QSize, QTimer
from qtpy.QtWidgets import (
    QDockWidget,
    QFrame,
    QMainWindow,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

#: Height in pixels a dock shows at least before it scrolls: a few rows of controls.
MIN_VISIBLE_HEIGHT = 120

#: Windows less tall than this get the napari-dsms docks as tabs: stacked on a 1366 x 768
#: laptop, the Review dock, where the work happens, would be a strip of about 200 pixels.
TABIFY_BELOW_PX = 900

#: Set this property on napari's main window (True) to keep the docks stacked whatever its
#: height (``make demo`` with ``tabify=False``).
STACK_PROPERTY = "napari_dsms_stack_docks"


class ScrollingDock(QWidget):
    """A widget whose controls (in :attr:`content`) scroll vertically inside the dock.

    Parameters
    ----------
    grows : bool
        Whether the dock takes the height the others leave (the Review dock, where the work
        happens); the others are at most as tall as their controls while stacked, and take
        the column as tabs (:meth:`match_tabs`).
    """

    def __init__(self, parent: QWidget | None = None, grows: bool = False) -> None:
        super().__init__(parent)
        self._grows = grows
        self._set_vertical_policy(grows)
        self.content = QWidget()
        self._scroll = QScrollArea()
        self._scroll.setWidgetResizable(True)
        self._scroll.setFrameShape(QFrame.Shape.NoFrame)
        self._scroll.setWidget(self.content)
        self.content.installEventFilter(self)  # its layout changes: ask the dock for a new height
        self._scroll.setMinimumHeight(MIN_VISIBLE_HEIGHT)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self._scroll)
        self._placed = False
        self._revealing: QWidget | None = None  # what reveal() keeps in view while it settles

    def reveal(self, widget: QWidget) -> None:
        """Scroll so that ``widget`` (a status line a long job just filled) is in view.

        At 1366 x 768 the Review dock scrolls, and a round's or fine-tuning's report could end
        below the fold, unseen (found by a tester). Done once the new text is laid out.
        """
        # The scroll area resizes the controls for the new text a few events later; scroll
        # again then (eventFilter), or the widget ends below the old, shorter controls' end.
        self._revealing = widget
        QTimer.singleShot(0, lambda: self._scroll.ensureWidgetVisible(widget))
        QTimer.singleShot(500, lambda: setattr(self, "_revealing", None))

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        """As tall as the controls at the dock's width: what the dock asks for when there is room.

        Wrapped text is taller in a narrow dock than Qt's width-free hint allows for, so the
        height is the controls' height for the width they are shown at, once shown.
        """
        hint = self.content.sizeHint()
        height = hint.height()
        # the controls' width beside a scroll bar: Qt keeps a scroll bar it once showed when
        # the controls fit only without it
        scroll = self._scroll
        bar = scroll.verticalScrollBar().sizeHint().width()
        width = self.width() - 2 * scroll.frameWidth() - bar
        if self.isVisible() and width > 0 and self.content.hasHeightForWidth():
            height = max(self.content.heightForWidth(width), hint.height())
        return QSize(hint.width(), height + 2 * self._scroll.frameWidth())

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        """A new width wraps the text anew: ask for the height that goes with it."""
        super().resizeEvent(event)
        if event.size().width() != event.oldSize().width():
            self.updateGeometry()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        """Pass a change of the controls' height (new text, a panel shown) on to the dock.

        The scroll area keeps the controls' layout to itself, so without this the dock keeps the
        height of the controls as they were built and scrolls, or leaves blank space, after a
        label grows (the Load CT information once a CT is open).
        """
        if isinstance(watched, QDockWidget) and event.type() == QEvent.Type.Show:
            # napari's menu shows a closed dock again behind whichever tab was in front (a
            # tester clicked Review and saw Segment): bring it to the front
            QTimer.singleShot(0, watched.raise_)
        if watched is self.content and event.type() == QEvent.Type.LayoutRequest:
            self.match_tabs()
            self.updateGeometry()
        if watched is self.content and event.type() == QEvent.Type.Resize and self._revealing:
            revealing = self._revealing
            QTimer.singleShot(0, lambda: self._scroll.ensureWidgetVisible(revealing))
        return super().eventFilter(watched, event)

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        """Make the dock as wide as the controls once napari's style sets their real size.

        Only scrolling up and down is meant: a panel cut off on the right hides buttons.
        """
        scroll = self._scroll
        margins = scroll.verticalScrollBar().sizeHint().width() + 2 * scroll.frameWidth() + 4
        scroll.setMinimumWidth(self.content.minimumSizeHint().width() + margins)
        super().showEvent(event)
        if not self._placed:  # once napari has docked it
            self._placed = True
            QTimer.singleShot(0, self.join_sibling_docks)
            QTimer.singleShot(0, self.match_tabs)  # napari's own tabify=True
            dock = self._dock()
            if dock is not None:  # its later Show events: reopened from the Plugins menu
                dock.installEventFilter(self)

    def _dock(self) -> QDockWidget | None:
        """The dock widget napari put this in, if any."""
        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        return dock

    def join_sibling_docks(self) -> bool:
        """On a window less than :data:`TABIFY_BELOW_PX` tall, become a tab beside an open
        napari-dsms dock, in front; returns whether it did.

        A user who opens the docks one by one from the Plugins menu got them stacked, and at
        1366 x 768 the Review dock showed only its first box (a tester); ``make demo`` tabs them
        the same way.
        """
        dock = self._dock()
        main = dock.parentWidget() if dock is not None else None
        if (
            not isinstance(main, QMainWindow)
            or main.property(STACK_PROPERTY)
            or main.height() >= TABIFY_BELOW_PX
            or dock.isFloating()
            or main.tabifiedDockWidgets(dock)
        ):
            return False
        area = main.dockWidgetArea(dock)
        for other in main.findChildren(QDockWidget):
            if (
                other is dock
                or not other.isVisible()
                or other.isFloating()
                or main.dockWidgetArea(other) != area
                or other.findChild(ScrollingDock) is None
            ):
                continue
            main.tabifyDockWidget(other, dock)
            self.match_tabs()
            dock.show()
            dock.raise_()
            return True
        return False

    def match_tabs(self) -> None:
        """Take the column's height while a tab among other docks, else as built.

        Tabs share one height, so "at most as tall as the controls" only left blank space
        below, and a dock kept the height of its first controls: at 1366 x 768 the Load CT
        information and the Segment readout were cut off until the user switched tabs (a
        tester).
        """
        dock = self._dock()
        main = dock.parentWidget() if dock is not None else None
        tabs = main.tabifiedDockWidgets(dock) if isinstance(main, QMainWindow) else []
        self._set_vertical_policy(self._grows or bool(tabs))
        for other in tabs:  # the dock it joined was alone until now
            body = other.findChild(ScrollingDock)
            if body is not None:
                body._set_vertical_policy(True)

    def _set_vertical_policy(self, expanding: bool) -> None:
        vertical = QSizePolicy.Policy.Expanding if expanding else QSizePolicy.Policy.Maximum
        if self.sizePolicy().verticalPolicy() != vertical:
            self.setSizePolicy(QSizePolicy.Policy.Preferred, vertical)
