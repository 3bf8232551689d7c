"""Compare panel: Dice, PPV and sensitivity of two segmentations of the CT under review.

Either side is a labels layer or the model output stored in one (``metadata[PREDICTION]``), so
"what the model said" can be scored against "what the user corrected" without an extra layer.
The figures come from :meth:`~napari_dsms._session.ReviewSession.compare`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels, Layer
from qtpy.QtWidgets import QFormLayout, QGroupBox, QLabel, QPushButton, QVBoxLayout

from ..._layers import PREDICTION
from .._pickers import choose, layer_picker, of_kind
from ._common import refuse

if TYPE_CHECKING:
    from src_models.metrics import StructureMetrics

    from . import ReviewWidget

#: Variant of an entry that stands for the model output stored in a labels layer.
MODEL_OUTPUT = "prediction"


def _prediction_entries(layers: Iterable[Layer]) -> list[tuple[str, tuple[Layer, str]]]:
    entries = []
    for layer in layers:
        if isinstance(layer, Labels):
            if PREDICTION in layer.metadata:
                # the kind first: at 1366 x 768 the menu cuts the end of the name, and both
                # entries read alike (a tester)
                entries.append((f"model output of {layer.name}", (layer, MODEL_OUTPUT)))
            entries.append((layer.name, (layer, "")))
    return entries


def _is_labels(layer: Layer) -> bool:
    return isinstance(layer, Labels)


class ComparePanel(QGroupBox):
    """Two segmentation pickers, a button and the figures, for the volume and this slice.

    Parameters
    ----------
    review : ReviewWidget
        The dock whose session (spacing, current slice) scores the pair.
    """

    def __init__(self, review: ReviewWidget) -> None:
        super().__init__("Compare two segmentations")
        self.review = review
        column = QVBoxLayout(self)
        form = QFormLayout()
        column.addLayout(form)
        self.prediction_combo = layer_picker(
            review.viewer,
            _prediction_entries,
            tooltip="Segmentation to score; 'model output of …' is the prediction kept in a labels "
            "layer before your corrections",
        )
        self.reference_combo = layer_picker(
            review.viewer,
            of_kind(_is_labels),
            tooltip="Segmentation taken as correct (e.g. your corrected labels)",
        )
        form.addRow("Prediction", self.prediction_combo.native)
        form.addRow("Reference", self.reference_combo.native)
        button = QPushButton("Compute Dice, PPV, sensitivity")
        button.clicked.connect(self.compute_metrics)
        form.addRow(button)
        self.metrics_label = QLabel("")
        self.metrics_label.setWordWrap(True)
        column.addWidget(self.metrics_label)  # in a form row wrapped text was cut (fine_tune.py)
        review.session_changed.connect(self._on_session_changed)
        review.edited.connect(self._on_edited)

    def _on_edited(self) -> None:
        """Figures of labels that have changed since are stale: say so rather than show them."""
        if self.metrics_label.text():
            self.metrics_label.setText("the labels changed: compute again")

    def _on_session_changed(self) -> None:
        """Score the model output against the labels under review, by default."""
        self.metrics_label.setText("")
        layer = self.review.labels_layer
        if layer is not None:
            choose(self.prediction_combo, (layer, MODEL_OUTPUT)) or choose(
                self.prediction_combo, (layer, "")
            )
            choose(self.reference_combo, layer)

    def compare_pair(self, prediction: Labels, reference: Labels) -> None:
        """Choose ``prediction`` against ``reference`` (e.g. a re-segmentation vs corrections)."""
        choose(self.prediction_combo, (prediction, ""))
        choose(self.reference_combo, reference)

    @property
    def prediction_choice(self) -> tuple[Layer, str] | None:
        """The chosen prediction: ``(labels layer, "")`` or ``(labels layer, MODEL_OUTPUT)``."""
        return self.prediction_combo.value

    def _prediction_array(self) -> np.ndarray | None:
        choice = self.prediction_choice
        if choice is None:
            return None
        layer, variant = choice
        if variant == MODEL_OUTPUT:
            stored = layer.metadata.get(PREDICTION)
            return None if stored is None else np.asarray(stored)
        return np.asarray(layer.data)

    def compute_metrics(self) -> dict[str, dict[str, StructureMetrics]] | None:
        """Dice, PPV and sensitivity of the two chosen segmentations, volume and current slice.

        Returns
        -------
        dict or None
            ``{"volume": {...}, "slice": {...}}`` of :func:`src_models.metrics.case_metrics`
            results, or ``None`` when the pair cannot be compared (a message says why).
        """
        session = self.review.session
        prediction = self._prediction_array()
        reference = self.reference_combo.value
        if session is None or prediction is None or reference is None:
            refuse(self.metrics_label, "choose two segmentations to compare")
            return None
        current = self.review.slice_on_screen()
        if current is None:
            refuse(self.metrics_label, self.review.outside_message())
            return None
        session.go_to(current)
        try:
            result = session.compare(prediction, np.asarray(reference.data))
        except ValueError as error:
            refuse(self.metrics_label, str(error))
            return None
        self.metrics_label.setText(_describe(result, session.current))
        return result


def _describe(result: dict[str, dict[str, Any]], current: int) -> str:
    lines = []
    for scope, title in (("volume", "volume"), ("slice", f"slice {current}")):
        for structure, m in result[scope].items():
            if not m.in_reference and m.predicted_ml == 0:
                # Dice of two empty masks is 1 by convention; it says nothing about the model.
                lines.append(f"{title}, {structure}: no {structure} in either")
                continue
            # A ratio over nothing is 1 by the metrics' convention (src_models.metrics); shown
            # here it read as a perfect PPV for a model that found no tumour (a tester).
            ppv = f"{m.ppv:.3f}" if m.predicted_ml > 0 else "n/a (none predicted)"
            sens = f"{m.sensitivity:.3f}" if m.in_reference else "n/a (none in the reference)"
            lines.append(f"{title}, {structure}: Dice {m.dice:.3f}  PPV {ppv}  sens. {sens}")
    return "\n".join(lines)
