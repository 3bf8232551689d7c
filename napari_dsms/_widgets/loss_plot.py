"""A tiny live loss chart drawn with QPainter, so the plugin needs no plotting library."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

#: Weight of the newest value in the smoothed curve: training losses of single small batches
#: jump around, and the trend is what tells the user that fine-tuning is working.
SMOOTHING = 0.2


class LossPlot(QWidget):
    """Loss per training step as a raw (faint) and an exponentially smoothed (bold) line.

    The y-axis is logarithmic when the values span more than a factor of ten, because a loss
    usually falls fast first and slowly later, and a linear axis would flatten the later part.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._steps: list[int] = []
        self._values: list[float] = []
        self._smoothed: list[float] = []
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Training loss per step (faint) and its running average (bold)")

    @property
    def values(self) -> list[float]:
        """The raw losses added so far, oldest first."""
        return list(self._values)

    @property
    def smoothed(self) -> list[float]:
        """The exponentially smoothed losses, one per raw value."""
        return list(self._smoothed)

    def clear(self) -> None:
        """Forget all points (a new fine-tuning run starts)."""
        self._steps.clear()
        self._values.clear()
        self._smoothed.clear()
        self.update()

    def add(self, step: int, loss: float) -> None:
        """Append the loss of ``step``; non-finite values are skipped to keep the chart drawable."""
        if not math.isfinite(loss):
            return
        previous = self._smoothed[-1] if self._smoothed else loss
        self._steps.append(int(step))
        self._values.append(float(loss))
        self._smoothed.append(previous + SMOOTHING * (float(loss) - previous))
        self.update()

    def _y_transform(self) -> tuple[bool, float, float]:
        lo, hi = min(self._values), max(self._values)
        log = lo > 0 and hi / lo > 10
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        return log, lo, hi

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt's name)
        """Draw the axes box, the two curves and the first / last values."""
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().windowText().color()
        frame = QRectF(self.rect()).adjusted(42, 8, -8, -18)
        painter.setPen(QPen(QColor(text.red(), text.green(), text.blue(), 90)))
        painter.drawRect(frame)
        painter.setPen(text)
        if not self._values:
            painter.drawText(frame, Qt.AlignmentFlag.AlignCenter, "loss appears here")
            painter.end()
            return
        log, lo, hi = self._y_transform()
        first, last = self._steps[0], self._steps[-1]
        span = max(last - first, 1)

        def point(step: int, value: float) -> QPointF:
            y = math.log10(value) if log else value
            return QPointF(
                frame.left() + frame.width() * (step - first) / span,
                frame.bottom() - frame.height() * (y - lo) / (hi - lo),
            )

        for values, colour, width in (
            (self._values, QColor(255, 170, 60, 110), 1.0),
            (self._smoothed, QColor(255, 140, 0), 2.0),
        ):
            path = QPainterPath(point(self._steps[0], values[0]))
            for step, value in zip(self._steps[1:], values[1:], strict=True):
                path.lineTo(point(step, value))
            painter.setPen(QPen(colour, width))
            painter.drawPath(path)
        painter.setPen(text)
        top = 10**hi if log else hi
        bottom = 10**lo if log else lo
        painter.drawText(QPointF(2, frame.top() + 10), f"{top:.3g}")
        painter.drawText(QPointF(2, frame.bottom()), f"{bottom:.3g}")
        painter.drawText(
            QPointF(frame.left(), self.height() - 4),
            f"step {first}..{last}   loss {self._smoothed[-1]:.3g}" + ("   (log)" if log else ""),
        )
        painter.end()
