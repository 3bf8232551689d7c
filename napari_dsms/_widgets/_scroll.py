"""A dock body that scrolls up and down instead of stretching the window.

napari stacks plugin docks in one column; on a laptop (1366 x 768) three docks with fixed
minimum heights leave the last one a few pixels. Each napari-dsms dock builds its controls in
:attr:`ScrollingDock.content`, so that Qt can share the column between the docks and each one
scrolls what does not fit, never clips it.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QSize
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

#: Height in pixels a dock shows at least before it scrolls: a few rows of controls.
MIN_VISIBLE_HEIGHT = 120


class ScrollingDock(QWidget):
    """A widget whose controls (in :attr:`content`) scroll vertically inside the dock.

    Parameters
    ----------
    grows : bool
        Whether the dock takes the height the others leave (the Review dock, where the work
        happens); the others are at most as tall as their controls.
    """

    def __init__(self, parent: QWidget | None = None, grows: bool = False) -> None:
        super().__init__(parent)
        vertical = QSizePolicy.Policy.Expanding if grows else QSizePolicy.Policy.Maximum
        self.setSizePolicy(QSizePolicy.Policy.Preferred, vertical)
        self.content = QWidget()
        self._scroll = QScrollArea()
        self._scroll.setWidgetResizable(True)
        self._scroll.setFrameShape(QFrame.Shape.NoFrame)
        self._scroll.setWidget(self.content)
        self._scroll.setMinimumHeight(MIN_VISIBLE_HEIGHT)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self._scroll)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        """As tall as the controls: what the dock asks for when there is room."""
        hint = self.content.sizeHint()
        return QSize(hint.width(), hint.height() + 2 * self._scroll.frameWidth())

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        """Make the dock as wide as the controls once napari's style sets their real size.

        Only scrolling up and down is meant: a panel cut off on the right hides buttons.
        """
        scroll = self._scroll
        margins = scroll.verticalScrollBar().sizeHint().width() + 2 * scroll.frameWidth() + 4
        scroll.setMinimumWidth(self.content.minimumSizeHint().width() + margins)
        super().showEvent(event)
