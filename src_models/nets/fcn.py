"""FCN-8s-style baseline (Long et al.), scaled by the same width as the U-Nets."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .blocks import Encoder, SegmentationOutput, pad_to_multiple


def _bilinear_upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Learned ``factor``-fold up-sampling initialised to bilinear interpolation, as in FCN."""
    kernel = 2 * factor
    layer = nn.ConvTranspose2d(
        channels, channels, kernel, stride=factor, padding=factor // 2, bias=False
    )
    centre = (kernel - 1) / 2
    ramp = 1 - torch.abs(torch.arange(kernel, dtype=torch.float32) - centre) / factor
    with torch.no_grad():
        layer.weight.zero_()
        for c in range(channels):
            layer.weight[c, c] = ramp[:, None] * ramp[None, :]
    return layer


class FCN(nn.Module):
    """Fully convolutional network with three score layers fused by learned up-sampling.

    The encoder is the U-Net's contracting path (same width and depth), so the comparison with
    the U-Nets is about the decoder. Class scores (1x1 convolutions) are taken at the bottom and
    the two levels above it; the bottom scores are up-sampled 2x by a transposed convolution and
    added to the next scores, twice, and the sum is up-sampled ``2**(depth-2)``-fold to the input
    size: FCN-8s with the paper's 16-fold bottom instead of VGG's 32-fold one.

    Parameters
    ----------
    in_channels, num_classes, width, depth
        As for :class:`~src_models.nets.unet.UNet`; ``depth`` must be at least 3.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 2, width: int = 32, depth: int = 4
    ) -> None:
        super().__init__()
        if depth < 3 or width < 1:
            raise ValueError(f"FCN needs depth >= 3 and width >= 1, got {depth=}, {width=}")
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "width": width,
            "depth": depth,
        }
        self.depth = depth
        self.encoder = Encoder(in_channels, width, depth)
        channels = self.encoder.channels
        self.scores = nn.ModuleList(
            nn.Conv2d(channels[level], num_classes, kernel_size=1)
            for level in (depth, depth - 1, depth - 2)
        )
        self.fusion_ups = nn.ModuleList(_bilinear_upsampler(num_classes, 2) for _ in range(2))
        self.final_up = _bilinear_upsampler(num_classes, 2 ** (depth - 2))

    has_restoration = False

    def forward(self, x: Tensor, reconstruct: bool = True) -> SegmentationOutput:
        """Segment ``x`` (B, in_channels, H, W), any H and W; ``reconstruct`` is accepted for a
        uniform call signature and ignored (an FCN has no restoration decoder)."""
        height, width = x.shape[-2:]
        features = self.encoder(pad_to_multiple(x, 2**self.depth))
        bottom, middle, low = self.scores
        score = bottom(features[-1])
        score = self.fusion_ups[0](score) + middle(features[-2])
        score = self.fusion_ups[1](score) + low(features[-3])
        logits = self.final_up(score)[..., :height, :width]
        return SegmentationOutput(logits)
