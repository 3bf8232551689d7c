"""An ensemble of segmentation networks that averages their probabilities.

Averaging the sigmoid probabilities of independently trained models is the plainest ensemble
(nnU-Net averages its folds' softmax outputs the same way). The average is returned as logits, so
the ensemble is used exactly like one network: thresholding at logit 0 is thresholding the mean
probability at 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .blocks import SegmentationOutput

#: Probabilities are clamped to [EPS, 1 - EPS] before the logit, so 0 and 1 stay finite.
EPS = 1e-6


class ProbabilityAverage(nn.Module):
    """Mean of the members' per-channel sigmoid probabilities, as logits.

    Parameters
    ----------
    members
        Networks with the same output channels, each returning a
        :class:`~src_models.nets.blocks.SegmentationOutput`; they must have been trained with the
        same preprocessing (checked by the loader, not here).

    Notes
    -----
    The ensemble has no restoration decoder of its own (``has_restoration`` is ``False``): the
    members' reconstructions restore the input each in its own way, and a mean of them would
    show nothing that one of them does not.
    """

    has_restoration = False

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        widths = [int(getattr(m, "config", {}).get("width", 32)) for m in members]
        #: Summed widths, so memory estimates of the inference engine see every member.
        self.config = {"width": sum(widths)}

    def forward(self, x: Tensor, reconstruct: bool = False) -> SegmentationOutput:
        """``x`` (B, 1, H, W) -> logits (B, C, H, W) of the mean probability; no reconstruction."""
        total = None
        for member in self.members:
            probability = torch.sigmoid(member(x, reconstruct=False).logits.float())
            total = probability if total is None else total + probability
        mean = (total / len(self.members)).clamp(EPS, 1 - EPS)
        return SegmentationOutput(torch.logit(mean))
