"""Small pieces every panel of the Review dock uses."""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QLabel

from src_models.io import Volume


def refuse(label: QLabel, message: str) -> None:
    """Say why an action did nothing: in the panel's own line and as a notification."""
    label.setText(message)
    show_warning(message)


def canonical_volume(image: np.ndarray, spacing: tuple[float, float, float]) -> Volume:
    """A Volume whose affine puts ``image`` (canonical S, P, L) in the canonical layout as is."""
    sz, sy, sx = spacing
    affine = np.array([[0, 0, -sx, 0], [0, -sy, 0, 0], [sz, 0, 0, 0], [0, 0, 0, 1]], float)
    return Volume(image, affine)
