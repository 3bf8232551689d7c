"""Correct panel: set up napari's brush for pancreas, tumour or erasing; clean up islands.

napari's own paint, erase, fill and undo do the editing. This panel picks the label, the brush
size and the mode, hides or shows a structure (a colour change, never a data change), and runs
the clean-up of :meth:`~napari_dsms._session.ReviewSession.cleanup_changes` as one undo step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari.layers import Labels
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QCheckBox, QGridLayout, QGroupBox, QLabel, QPushButton

from ..._layers import ROLE, label_colormap
from .._pickers import same_layer
from ._common import refuse

if TYPE_CHECKING:
    from . import ReviewWidget

#: Brush diameter in mm set by the paint buttons: about a third of the pancreas' thickness,
#: fine enough for its borders, large enough to fill a missed slice in a few strokes.
BRUSH_MM = 6.0


class CorrectPanel(QGroupBox):
    """Paint pancreas / tumour, erase, show or hide a structure, keep the largest component.

    Parameters
    ----------
    review : ReviewWidget
        The dock whose labels layer this panel edits.
    """

    def __init__(self, review: ReviewWidget) -> None:
        super().__init__("Correct")
        self.review = review
        # The labels layer whose newest undo step is this panel's clean-up, else None.
        self._cleanup_on_top: Labels | None = None
        self._cleaned: Labels | None = None  # the layer of the last clean-up, even if edited since
        grid = QGridLayout(self)
        self.paint_pancreas_button = QPushButton("Paint pancreas")
        self.paint_tumour_button = QPushButton("Paint tumour")
        self.erase_button = QPushButton("Erase")
        self.paint_pancreas_button.clicked.connect(self.paint_pancreas)
        self.paint_tumour_button.clicked.connect(self.paint_tumour)
        self.erase_button.clicked.connect(self.erase)
        tip = "napari's brush on the current slice; Ctrl+Z undoes, [ and ] change the size"
        for i, button in enumerate(
            (self.paint_pancreas_button, self.paint_tumour_button, self.erase_button)
        ):
            button.setToolTip(tip)
            grid.addWidget(button, 0, i)
        self.show_pancreas = QCheckBox("Show pancreas")
        self.show_tumour = QCheckBox("Show tumour")
        for column, checkbox in enumerate((self.show_pancreas, self.show_tumour)):
            checkbox.setChecked(True)
            checkbox.toggled.connect(self._apply_visibility)
            grid.addWidget(checkbox, 1, column)
        self.cleanup_button = QPushButton("Keep largest component")
        self.cleanup_button.setToolTip(
            "Remove islands: keep the largest 3D connected pancreas (tumour included) and the "
            "largest tumour inside it. Slices you edited or reviewed, and pieces reaching into "
            "them, are kept. One undo step (Ctrl+Z or the button beside). Not a correction: "
            "slices it changes are not marked edited and are not learnt from."
        )
        self.cleanup_button.clicked.connect(self.clean_up)
        self.undo_cleanup_button = QPushButton("Undo clean-up")
        self.undo_cleanup_button.setEnabled(False)
        self.undo_cleanup_button.clicked.connect(self.undo_clean_up)
        grid.addWidget(self.cleanup_button, 2, 0, 1, 2)
        grid.addWidget(self.undo_cleanup_button, 2, 2)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        grid.addWidget(self.status, 3, 0, 1, 3)
        review.session_changed.connect(self.forget_cleanup)

    def _apply_visibility(self, checked: bool = True) -> None:
        """Hide or show pancreas and tumour by making their colours transparent.

        A colour change, not a data change: the labels stay as they are, and painting still
        works on a hidden structure.
        """
        layer = self.review.labels_layer
        if layer is None:
            return
        shown = {1: self.show_pancreas.isChecked(), 2: self.show_tumour.isChecked()}
        hidden = tuple(value for value, visible in shown.items() if not visible)
        layer.colormap = label_colormap(layer.metadata.get(ROLE), hidden)

    def _prepare_brush(self, label: int, mode: str) -> Labels | None:
        layer = self.review.labels_layer
        if layer is None:
            refuse(self.status, "choose a labels layer first")
            return None
        self.review.viewer.layers.selection.active = layer
        layer.visible = True
        layer.n_edit_dimensions = 2
        layer.preserve_labels = False
        in_plane = min(float(s) for s in layer.scale[-2:])
        layer.brush_size = max(3, round(BRUSH_MM / in_plane))
        if label:
            layer.selected_label = label
            if label == 1 and not self.show_pancreas.isChecked():
                self.show_pancreas.setChecked(True)
            if label == 2 and not self.show_tumour.isChecked():
                self.show_tumour.setChecked(True)
        layer.mode = mode
        return layer

    def paint_pancreas(self) -> None:
        """napari's brush with label 1 (pancreas) on the current slice."""
        self._prepare_brush(1, "paint")

    def paint_tumour(self) -> None:
        """napari's brush with label 2 (tumour) on the current slice."""
        self._prepare_brush(2, "paint")

    def erase(self) -> None:
        """napari's eraser on the current slice."""
        self._prepare_brush(0, "erase")

    def clean_up(self) -> int:
        """Keep the largest component per structure, as one napari undo step.

        The change goes through ``Labels.data_setitem`` with only the changed voxels, so napari
        records it in its undo history like a brush stroke: Ctrl+Z reverts it.

        Returns
        -------
        int
            Number of voxels changed.
        """
        layer, session = self.review.labels_layer, self.review.session
        if layer is None or session is None:
            refuse(self.status, "choose a CT and its labels layer first")
            return 0
        changed, values = session.cleanup_changes()
        if changed[0].size == 0:
            self.status.setText("nothing to remove: the labels are already one piece")
            show_info("Clean-up: nothing to remove, the labels are already one piece")
            return 0
        session.add_tool_changes(changed, values)  # a clean-up is not a correction
        layer.data_setitem(changed, values)
        # Set after the call: the clean-up's own events must not count as a later edit.
        self._cleanup_on_top = self._cleaned = layer
        self.undo_cleanup_button.setEnabled(True)
        count = int(changed[0].size)
        self.status.setText(f"clean-up changed {count} voxels")
        show_info(f"Clean-up changed {count} voxels; Ctrl+Z or 'Undo clean-up' reverts it")
        self.review.refresh_status()
        return count

    def undo_clean_up(self) -> bool:
        """Revert the last clean-up if it is still the newest step of napari's undo history.

        Any edit, undo or redo of the labels after the clean-up ends this button's say: it would
        otherwise undo something else. Returns ``False`` (and says why) then; napari's own undo
        (Ctrl+Z) still steps back through everything.
        """
        layer = self._cleanup_on_top
        if layer is None or not same_layer(layer, self.review.labels_layer):
            if self._cleaned is None or not same_layer(self._cleaned, self.review.labels_layer):
                refuse(self.status, "no clean-up of these labels to undo")
            else:  # Ctrl+Z would first undo the corrections made after it
                refuse(
                    self.status,
                    "the labels changed after the clean-up, so this button cannot tell what "
                    "to undo: Ctrl+Z steps back one change at a time, any edits made after "
                    "the clean-up first",
                )
            self.undo_cleanup_button.setEnabled(False)
            return False
        layer.undo()
        self.forget_cleanup()
        self.review.refresh_status()
        return True

    def forget_cleanup(self) -> None:
        """The clean-up is no longer the newest undo step (something happened after it)."""
        self._cleanup_on_top = None
        self.undo_cleanup_button.setEnabled(False)
