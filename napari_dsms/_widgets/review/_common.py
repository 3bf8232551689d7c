"""Small pieces every panel of the Review dock uses."""

from __future__ import annotations

from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QLabel


def refuse(label: QLabel, message: str) -> None:
    """Say why an action did nothing: in the panel's own line and as a notification."""
    label.setText(message)
    show_warning(message)
