"""The slices a model sees are windowed and resampled the same way in training and inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src_models.inference.preprocessing import (
    DEFAULT_PREPROCESSING,
    labels_from_logits,
    model_size,
    resample_labels,
    to_model_input,
    to_source_size,
)
from src_models.io.windows import CT_WINDOWS, hu_to_unit


def test_window_clips_and_scales_to_unit_range() -> None:
    hu = np.array([-1000, 0, 127.5, 255, 3000], dtype=np.float32)
    np.testing.assert_allclose(hu_to_unit(hu, (0, 255)), [0, 0, 0.5, 1, 1], atol=1e-3)
    assert hu_to_unit(hu, (0, 255)).dtype == np.float32


def test_window_presets_are_the_usual_width_and_level() -> None:
    lower, upper = CT_WINDOWS["abdomen"]
    assert (upper - lower, (upper + lower) / 2) == (400, 40)


def test_inverted_window_is_refused() -> None:
    with pytest.raises(ValueError, match="upper > lower"):
        hu_to_unit(np.zeros(3), (100, 0))


def test_slices_are_resampled_to_the_model_spacing_and_back() -> None:
    hu = np.full((3, 512, 480), 100, dtype=np.int16)
    batch = to_model_input(hu, (0.85, 0.85), DEFAULT_PREPROCESSING)
    assert batch.shape == (3, 1, 256, 240)
    assert torch.allclose(batch, torch.full_like(batch, 100 / 255), atol=1e-4)
    assert to_source_size(batch, (512, 480)).shape == (3, 1, 512, 480)


def test_unknown_spacing_uses_the_fallback_and_no_spacing_keeps_the_size() -> None:
    assert model_size((512, 512), None, DEFAULT_PREPROCESSING) == (241, 241)
    assert model_size((61, 83), (0.7, 0.7), {"hu_window": [0, 255], "spacing_mm": None}) == (61, 83)


def test_resampled_labels_keep_their_values() -> None:
    labels = np.zeros((1, 8, 8), dtype=np.uint8)
    labels[0, 2:6, 2:6] = 1
    labels[0, 3:5, 3:5] = 2
    small = resample_labels(labels, (4, 4))
    assert set(np.unique(small)) == {0, 1, 2}


def test_tumour_is_only_kept_inside_the_pancreas() -> None:
    logits = torch.tensor([[[[5.0, 5.0, -5.0]], [[5.0, -5.0, 5.0]]]])  # (1, 2, 1, 3)
    assert labels_from_logits(logits).tolist() == [[[2, 1, 0]]]
