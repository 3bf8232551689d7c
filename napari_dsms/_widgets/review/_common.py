"""Small pieces every panel of the Review dock uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QLabel

from src_models.io import Volume
from src_models.io.atomic import check_writable_folder
from src_models.models.store import MODEL_DIR_ENV, user_model_dir
from src_models.training.fine_tune import fine_tuned_path


def refuse(label: QLabel, message: str) -> None:
    """Say why an action did nothing: in the panel's own line and as a notification."""
    label.setText(message)
    show_warning(message)


def canonical_volume(image: np.ndarray, spacing: tuple[float, float, float]) -> Volume:
    """A Volume whose affine puts ``image`` (canonical S, P, L) in the canonical layout as is."""
    sz, sy, sx = spacing
    affine = np.array([[0, 0, -sx, 0], [0, -sy, 0, 0], [sz, 0, 0, 0], [0, 0, 0, 1]], float)
    return Volume(image, affine)


def new_model_path(label: QLabel, checkpoint: str, image: str, what: str) -> Path | None:
    """A free versioned name for ``what`` (a model fine-tuned from ``checkpoint`` on ``image``)
    in the user model folder, checked writable before any training; ``None`` (and says why in
    ``label``) when it is not, so an unwritable folder costs a second, not the run."""
    output = fine_tuned_path(user_model_dir(), checkpoint, image)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        check_writable_folder(output)
    except OSError as error:
        refuse(
            label,
            f"cannot save {what} in {output.parent}: {error}; set {MODEL_DIR_ENV} to a folder "
            "you can write to",
        )
        return None
    return output
