"""File > Open Sample: a synthetic abdominal CT with pancreas and tumour labels.

The sample needs no download and no licence, and shows the label colours and the CT window the
real workflow uses.
"""

from __future__ import annotations

from src_models.phantom import make_phantom

from ._layers import REFERENCE, LayerDataTuple, image_layer_data, labels_layer_data


def make_phantom_sample() -> list[LayerDataTuple]:
    """Phantom CT (abdomen window) and its true pancreas / tumour labels (a reference), aligned."""
    image, labels = make_phantom(seed=0)
    return [
        image_layer_data(image, name="phantom CT"),
        labels_layer_data(labels, image, name="phantom labels", role=REFERENCE),
    ]
