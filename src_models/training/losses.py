"""Training losses: the paper's BCE(segmentation) + 0.1 * BCE(reconstruction), and Dice + BCE.

The paper (III-D) sums Loss 1 (segmentation against the annotation) and Loss 2 (restored image
against the input) "by a ratio of 10 to 1": weights :data:`SEGMENTATION_WEIGHT` and
:data:`RECONSTRUCTION_WEIGHT`. Both terms are computed on logits with
``binary_cross_entropy_with_logits`` in float32: it is the same BCE as on sigmoid outputs, but it
never takes ``log(0)`` and stays exact when the forward pass ran under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nets import SegmentationOutput

SEGMENTATION_WEIGHT = 1.0
RECONSTRUCTION_WEIGHT = 0.1
#: Additive smoothing of the soft Dice; keeps an empty tumour channel from dominating.
DICE_SMOOTH = 1.0


@dataclass(frozen=True)
class LossTerms:
    """A loss and its parts, so training can log what it optimises.

    Attributes
    ----------
    total
        ``SEGMENTATION_WEIGHT * segmentation + RECONSTRUCTION_WEIGHT * reconstruction``; the
        tensor to call ``backward()`` on.
    segmentation
        Unweighted segmentation term (Loss 1).
    reconstruction
        Unweighted reconstruction term (Loss 2), ``None`` for models without a restoration
        decoder.
    """

    total: Tensor
    segmentation: Tensor
    reconstruction: Tensor | None

    def as_floats(self) -> dict[str, float]:
        """The terms as Python floats (detached) for logs and progress reports."""
        values = {"loss": self.total, "segmentation": self.segmentation}
        if self.reconstruction is not None:
            values["reconstruction"] = self.reconstruction
        return {key: float(value.detach()) for key, value in values.items()}


def segmentation_targets(labels: Tensor) -> Tensor:
    """Channel targets from label values: (B, H, W) or (B, 1, H, W) -> (B, 2, H, W) float.

    Channel 0 is pancreas including tumour (label > 0), channel 1 tumour (label == 2).
    """
    if labels.ndim == 4:
        labels = labels[:, 0]
    return torch.stack([labels > 0, labels == 2], dim=1).float()


def _reconstruction_term(output: SegmentationOutput, image_unit: Tensor) -> Tensor | None:
    if output.reconstruction_logits is None:
        return None
    return F.binary_cross_entropy_with_logits(
        output.reconstruction_logits.float(), image_unit.float().clamp(0.0, 1.0)
    )


def _combine(segmentation: Tensor, reconstruction: Tensor | None) -> LossTerms:
    total = SEGMENTATION_WEIGHT * segmentation
    if reconstruction is not None:
        total = total + RECONSTRUCTION_WEIGHT * reconstruction
    return LossTerms(total, segmentation, reconstruction)


def paper_loss(output: SegmentationOutput, target_labels: Tensor, image_unit: Tensor) -> LossTerms:
    """The paper's loss: BCE on both channels + 0.1 * BCE(reconstruction, input).

    Parameters
    ----------
    output
        What the model returned for ``image_unit``.
    target_labels
        (B, H, W) or (B, 1, H, W) label values 0 background, 1 pancreas, 2 tumour.
    image_unit
        (B, 1, H, W) the model's input, intensities in [0, 1]: the restoration target.
    """
    targets = segmentation_targets(target_labels)
    segmentation = F.binary_cross_entropy_with_logits(output.logits.float(), targets)
    return _combine(segmentation, _reconstruction_term(output, image_unit))


def soft_dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """``1 - soft Dice`` per channel over the whole batch, averaged over channels.

    Summing over the batch before dividing lets a slice without tumour count as part of the
    batch instead of yielding 0/0, which is what makes Dice usable for small tumours.
    """
    probabilities = torch.sigmoid(logits.float())
    dims = (0, 2, 3)
    intersection = (probabilities * targets).sum(dims)
    denominator = probabilities.sum(dims) + targets.sum(dims)
    dice = (2 * intersection + DICE_SMOOTH) / (denominator + DICE_SMOOTH)
    return 1 - dice.mean()


def dice_bce_loss(
    output: SegmentationOutput, target_labels: Tensor, image_unit: Tensor
) -> LossTerms:
    """Soft Dice + BCE for segmentation, plus the paper's 0.1 * BCE reconstruction term.

    A variant for small tumours, whose pixels are too few for BCE alone to weigh. Arguments as
    for :func:`paper_loss`.
    """
    targets = segmentation_targets(target_labels)
    logits = output.logits.float()
    segmentation = F.binary_cross_entropy_with_logits(logits, targets) + soft_dice_loss(
        logits, targets
    )
    return _combine(segmentation, _reconstruction_term(output, image_unit))


LossFunction = Callable[[SegmentationOutput, Tensor, Tensor], LossTerms]

#: Loss names for configuration and the ``dsms train`` command; "bce" is the paper's.
LOSSES: dict[str, LossFunction] = {"bce": paper_loss, "dice_bce": dice_bce_loss}


def build_loss(name: str = "bce") -> LossFunction:
    """The loss function called ``name``.

    Raises
    ------
    KeyError
        Unknown ``name``; the message lists the valid names.
    """
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; valid names are: {', '.join(LOSSES)}")
    return LOSSES[name]
