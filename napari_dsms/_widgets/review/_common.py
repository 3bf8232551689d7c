"""Small pieces every panel of the Review dock uses."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QLabel

from src_models.io import Volume
from src_models.io.atomic import check_writable_folder
from src_models.models.store import MODEL_DIR_ENV, user_model_dir
from src_models.training.fine_tune import fine_tuned_path

from .._pickers import same_layer


def refuse(label: QLabel, message: str) -> None:
    """Say why an action did nothing: in the panel's own line and as a notification."""
    label.setText(message)
    show_warning(message)


def cancel_after_step(worker: Any, button: Any, status: QLabel) -> bool:
    """Ask a running job to stop after its current step, greying its Cancel ``button`` and
    saying so in ``status``; whether a job was running."""
    if worker is None:
        return False
    button.setEnabled(False)
    status.setText("cancelling after the current step…")
    worker.quit()
    return True


def canonical_volume(
    image: np.ndarray, spacing: tuple[float, float, float], source: str = ""
) -> Volume:
    """A Volume whose affine puts ``image`` (canonical S, P, L) in the canonical layout as is;
    ``source`` names the CT's file (what a refine round's model card names)."""
    sz, sy, sx = spacing
    affine = np.array([[0, 0, -sx, 0], [0, -sy, 0, 0], [sz, 0, 0, 0], [0, 0, 0, 1]], float)
    return Volume(image, affine, source)


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


class UndoWatch:
    """Notices when a tool's last write into a labels layer was undone (Ctrl+Z), or redone.

    A panel's status line otherwise kept reporting the change ("filled between slices 7 and
    100: 54934 voxels") after the user had reverted it, and then said "undone" after a redo
    had brought it back (both found by testers). Call :meth:`wrote` when writing and
    :meth:`check` whenever the labels change.

    Parameters
    ----------
    status
        The panel's status line.
    message
        What it says while the write is undone.
    """

    #: Every watch alive: another tool's write into the same layer ends a watch's say.
    _all: weakref.WeakSet[UndoWatch] = weakref.WeakSet()

    def __init__(self, status: QLabel, message: str) -> None:
        self.status, self.message = status, message
        self._written: tuple[Any, tuple[np.ndarray, ...], np.ndarray, np.ndarray] | None = None
        self._report: str | None = None  # the status the undo replaced, shown again on redo
        UndoWatch._all.add(self)

    def wrote(
        self, layer: Any, voxels: tuple[np.ndarray, ...], before: np.ndarray, after: np.ndarray
    ) -> None:
        """Remember where ``layer`` was written, what those voxels held before and after.

        Other watches on ``layer`` forget theirs: a refine round that rewrote filled slices
        with what they held before the fill made the fill's status say "undone" (a tester).
        """
        for other in list(UndoWatch._all):
            if other is self or other._written is None:
                continue
            if same_layer(other._written[0], layer):
                if other._report is not None:  # its "undone" line is history now (a tester)
                    other.status.setText("")
                other._written, other._report = None, None
        self._written = (layer, voxels, np.array(before, copy=True), np.array(after, copy=True))
        self._report = None

    def check(self, current: Any) -> None:
        """Say :attr:`message` while the write is undone and the report again once it is
        redone; forget it once another layer is the one reviewed (``current``)."""
        if self._written is None:
            return
        layer, voxels, before, after = self._written
        if not same_layer(layer, current):
            self._written = None
            return
        now = np.asarray(layer.data)[voxels]
        if self._report is None and np.array_equal(now, before):
            self._report = self.status.text()
            self.status.setText(self.message)
        elif self._report is not None and np.array_equal(now, after):
            self.status.setText(self._report)
            self._report = None
