"""Region of interest panel: say where the pancreas is, and clear what the model put elsewhere.

A radiologist knows in two seconds which slices hold the pancreas; the model may paint bowel far
below it. The region is a slice range and, optionally, a box drawn with napari's rectangle tool
in a Shapes layer. It lives in the :class:`~napari_dsms._session.ReviewSession` (fine-tuning
learns nothing outside it), in the labels layer's metadata (it survives closing the dock) and in
export side-cars. **Clear outside** empties the labels outside it as one undoable step, which
is not a correction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Shapes
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QSpinBox,
)

from ..._layers import ROI
from ..._session import RegionOfInterest
from .._pickers import same_layer
from ._common import refuse

if TYPE_CHECKING:
    from . import ReviewWidget

#: Outline colour of the box: neither a label colour nor grey.
BOX_COLOUR = "cyan"


class RegionPanel(QGroupBox):
    """First and last slice, an optional box, Set / Clear outside / Remove.

    Parameters
    ----------
    review : ReviewWidget
        The dock whose session and labels the region applies to.
    """

    def __init__(self, review: ReviewWidget) -> None:
        super().__init__("Region of interest")
        self.review = review
        self._shapes: Shapes | None = None
        grid = QGridLayout(self)
        self.first_spin, self.last_spin = QSpinBox(), QSpinBox()
        for column, (spin, text, tip) in enumerate(
            (
                (self.first_spin, "From this slice", "First slice with pancreas"),
                (self.last_spin, "To this slice", "Last slice with pancreas"),
            )
        ):
            spin.setToolTip(tip)
            button = QPushButton(text)
            button.setToolTip(f"{tip}: the slice shown now")
            button.clicked.connect(lambda _=False, s=spin: s.setValue(review.current_slice()))
            grid.addWidget(spin, 0, 2 * column)
            grid.addWidget(button, 0, 2 * column + 1)
        self.draw_box_button = QPushButton("Draw box…")
        self.draw_box_button.setToolTip(
            "Adds a Shapes layer in rectangle mode: drag a box around the pancreas on any slice"
        )
        self.draw_box_button.clicked.connect(self.draw_box)
        self.use_box = QCheckBox("Only inside the box")
        grid.addWidget(self.draw_box_button, 1, 0, 1, 2)
        grid.addWidget(self.use_box, 1, 2, 1, 2)
        self.set_button = QPushButton("Set region")
        self.set_button.clicked.connect(self.set_region)
        self.clear_button = QPushButton("Clear outside")
        self.clear_button.setToolTip(
            "Erase the labels outside the region: one undo step (Ctrl+Z), not a correction"
        )
        self.clear_button.clicked.connect(self.clear_outside)
        self.remove_button = QPushButton("Remove region")
        self.remove_button.clicked.connect(self.remove_region)
        for column, button in enumerate((self.set_button, self.clear_button, self.remove_button)):
            grid.addWidget(button, 2, column, 1, 2 if column == 2 else 1)
        self.status = QLabel("no region: the whole CT")
        self.status.setWordWrap(True)
        grid.addWidget(self.status, 3, 0, 1, 4)
        review.session_changed.connect(self._on_session_changed)
        review.viewer.layers.events.removed.connect(self._on_layer_removed)

    def _on_layer_removed(self, event: Any) -> None:
        """The box goes with its layer: deleted, it stayed in force unseen, and Clear outside
        erased everything outside it (a tester)."""
        if self._shapes is None or not same_layer(event.value, self._shapes):
            return
        self._shapes = None
        self.use_box.setChecked(False)
        session, labels = self.review.session, self.review.labels_layer
        if session is None or session.roi is None or session.roi.box is None:
            return
        session.roi = RegionOfInterest(session.roi.first, session.roi.last, None)
        if labels is not None:
            labels.metadata[ROI] = session.roi.as_dict()
        self._show(session.roi)
        self.status.setText(f"the box layer was deleted, so the box too: {self.status.text()}")

    def _on_session_changed(self) -> None:
        session = self.review.session
        last = session.n_slices - 1 if session is not None else 0
        for spin in (self.first_spin, self.last_spin):
            spin.setRange(0, max(last, 0))
        roi = session.roi if session is not None else None
        self.first_spin.setValue(roi.first if roi else 0)
        self.last_spin.setValue(roi.last if roi else last)
        self.use_box.setChecked(bool(roi and roi.box))
        self._show(roi)

    def _show(self, roi: RegionOfInterest | None) -> None:
        if roi is None:
            self.status.setText("no region: the whole CT")
            return
        text = f"slices {roi.first} to {roi.last}"
        if roi.box is not None:
            r0, r1, c0, c1 = roi.box
            text += f", rows {r0} to {r1 - 1}, columns {c0} to {c1 - 1}"
        self.status.setText(text + ": nothing is learnt outside it")

    # ------------------------------------------------------------------ the box

    def draw_box(self) -> Shapes | None:
        """Add (or select) the Shapes layer for the box, in rectangle mode."""
        labels = self.review.labels_layer
        if labels is None:
            refuse(self.status, "choose the labels layer first")
            return None
        viewer = self.review.viewer
        if self._box_layer() is None:
            # 2D: napari shows it on every slice, as the region it marks applies to all of them
            # (a box drawn in 3D showed on its own slice only, a tester)
            self._shapes = viewer.add_shapes(
                ndim=2,
                name=f"{labels.name} region",
                scale=labels.scale[-2:],
                translate=labels.translate[-2:],
                edge_color=BOX_COLOUR,
                face_color="transparent",
                edge_width=2,
            )
        viewer.layers.selection.active = self._shapes
        self._shapes.mode = "add_rectangle"
        self.use_box.setChecked(True)
        return self._shapes

    def _box_layer(self) -> Shapes | None:
        """The box's Shapes layer while it is in the viewer (a deleted one held its last box,
        which Set region used again, a tester)."""
        layers = self.review.viewer.layers
        if self._shapes is None or not any(same_layer(x, self._shapes) for x in layers):
            return None
        return self._shapes

    def _box(self) -> tuple[int, int, int, int] | None:
        """The newest rectangle of the box layer, in the labels' rows and columns.

        The newest: a tester's stray click made a 4-pixel box first, then the real one, and
        the first was taken without a word.
        """
        labels, shapes = self.review.labels_layer, self._box_layer()
        if labels is None or shapes is None or not len(shapes.data):
            return None
        world = np.array([shapes.data_to_world(v)[-2:] for v in np.asarray(shapes.data[-1])])
        corners = (world - np.asarray(labels.translate)[-2:]) / np.asarray(labels.scale)[-2:]
        rows, columns = labels.data.shape[-2:]
        r0, c0 = np.floor(corners.min(axis=0)).astype(int)
        r1, c1 = np.ceil(corners.max(axis=0)).astype(int) + 1
        box = (max(r0, 0), min(r1, rows), max(c0, 0), min(c1, columns))
        return box if box[0] < box[1] and box[2] < box[3] else None

    # ------------------------------------------------------------------ actions

    def set_region(self) -> RegionOfInterest | None:
        """Make the slice range (and the box, when ticked) the session's region of interest."""
        session, labels = self.review.session, self.review.labels_layer
        if session is None or labels is None:
            refuse(self.status, "choose a CT and its labels layer first")
            return None
        first, last = sorted((self.first_spin.value(), self.last_spin.value()))
        box = None
        if self.use_box.isChecked():
            box = self._box()
            if box is None:
                refuse(self.status, "no box drawn: press Draw box… and drag a rectangle")
                return None
        session.roi = RegionOfInterest(first, last, box)
        labels.metadata[ROI] = session.roi.as_dict()
        self._show(session.roi)
        drawn = len(self._shapes.data) if box is not None and self._shapes is not None else 0
        if drawn > 1:
            self.status.setText(
                f"{self.status.text()} (the last of {drawn} boxes drawn; delete the others to "
                "avoid confusion)"
            )
        return session.roi

    def clear_outside(self) -> int:
        """Erase the labels outside the region as one napari undo step; returns voxels changed."""
        session, labels = self.review.session, self.review.labels_layer
        if session is None or labels is None or session.roi is None:
            refuse(self.status, "set a region first")
            return 0
        voxels, values = session.outside_roi_changes()
        corrected = sorted(
            (set(session.edited) | session.reviewed) & {int(k) for k in np.unique(voxels[0])}
        )
        if len(voxels[0]):
            session.add_tool_changes(voxels, values)  # the user's region, not a correction
            labels.data_setitem(voxels, values)
            self.review.refresh_status()
        message = f"Cleared {len(voxels[0])} voxels outside the region of interest"
        if corrected:  # a tester's corrections outside the region went without a word
            listed = ", ".join(map(str, corrected))
            show_warning(f"{message}, on your corrected slices {listed} too (Ctrl+Z reverts it)")
        else:
            show_info(message)
        return int(len(voxels[0]))

    def remove_region(self, *_: Any) -> None:
        """Forget the region, and take its box off the screen: the whole CT counts again."""
        session, labels = self.review.session, self.review.labels_layer
        if session is not None:
            session.roi = None
        if labels is not None:
            labels.metadata.pop(ROI, None)
        shapes = self._box_layer()
        if shapes is not None:  # a tester saw the box stay, "Only inside the box" ticked
            self.review.viewer.layers.remove(shapes)
        self._shapes = None
        self.use_box.setChecked(False)
        self._show(None)
