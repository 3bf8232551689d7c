"""The paper's loss: BCE on both channels plus a tenth of the reconstruction BCE."""

from __future__ import annotations

import math

import pytest
import torch

from src_models.nets import SegmentationOutput
from src_models.training.losses import (
    LOSSES,
    build_loss,
    dice_bce_loss,
    paper_loss,
    segmentation_targets,
)


def _bce(probability: float, target: float) -> float:
    return -(target * math.log(probability) + (1 - target) * math.log(1 - probability))


def _logit(probability: float) -> float:
    return math.log(probability / (1 - probability))


def test_targets_follow_the_label_convention() -> None:
    labels = torch.tensor([[[0, 1, 2]]])
    targets = segmentation_targets(labels)
    assert targets[0, :, 0].tolist() == [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    assert torch.equal(segmentation_targets(labels[:, None]), targets)


def test_segmentation_and_reconstruction_weigh_ten_to_one() -> None:
    # One pixel of label 1 (pancreas): both channels predict 0.8; image 0.25 is restored as 0.6.
    logits = torch.full((1, 2, 1, 1), _logit(0.8))
    output = SegmentationOutput(logits, torch.full((1, 1, 1, 1), _logit(0.6)))
    terms = paper_loss(
        output, torch.ones(1, 1, 1, dtype=torch.long), torch.full((1, 1, 1, 1), 0.25)
    )
    segmentation = (_bce(0.8, 1.0) + _bce(0.8, 0.0)) / 2
    reconstruction = _bce(0.6, 0.25)
    assert terms.segmentation.item() == pytest.approx(segmentation, rel=1e-5)
    assert terms.reconstruction.item() == pytest.approx(reconstruction, rel=1e-5)
    assert terms.total.item() == pytest.approx(segmentation + 0.1 * reconstruction, rel=1e-5)
    assert set(terms.as_floats()) == {"loss", "segmentation", "reconstruction"}


def test_no_reconstruction_term_without_a_restoration_decoder() -> None:
    output = SegmentationOutput(torch.zeros(2, 2, 4, 4))
    terms = paper_loss(output, torch.zeros(2, 4, 4, dtype=torch.long), torch.rand(2, 1, 4, 4))
    assert terms.reconstruction is None
    assert terms.total.item() == pytest.approx(math.log(2), rel=1e-6)
    assert set(terms.as_floats()) == {"loss", "segmentation"}


def test_low_precision_logits_give_a_float32_loss() -> None:
    output = SegmentationOutput(
        torch.zeros(1, 2, 4, 4, dtype=torch.bfloat16), torch.zeros(1, 1, 4, 4, dtype=torch.bfloat16)
    )
    terms = paper_loss(output, torch.zeros(1, 4, 4, dtype=torch.long), torch.rand(1, 1, 4, 4))
    assert terms.total.dtype == torch.float32 and torch.isfinite(terms.total)


def test_dice_bce_adds_dice_and_keeps_the_reconstruction_term() -> None:
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6] = 2
    perfect = segmentation_targets(labels) * 40 - 20  # logits of near-certain right answers
    output = SegmentationOutput(perfect, torch.zeros(1, 1, 8, 8))
    image = torch.full((1, 1, 8, 8), 0.5)
    dice_terms, bce_terms = dice_bce_loss(output, labels, image), paper_loss(output, labels, image)
    assert dice_terms.segmentation.item() == pytest.approx(bce_terms.segmentation.item(), abs=1e-4)
    assert dice_terms.reconstruction.item() == pytest.approx(bce_terms.reconstruction.item())
    wrong = SegmentationOutput(-perfect)
    assert dice_bce_loss(wrong, labels, image).segmentation > paper_loss(wrong, labels, image).total


def test_build_loss_by_name() -> None:
    assert build_loss() is paper_loss and build_loss("dice_bce") is dice_bce_loss
    with pytest.raises(KeyError) as excinfo:
        build_loss("focal")
    assert all(name in str(excinfo.value) for name in LOSSES)
