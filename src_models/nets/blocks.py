"""Building blocks shared by the U-Net family and the FCN.

Every block uses only convolution, GroupNorm, ReLU, max-pooling and transposed convolution, the
operations that run in ``channels_last`` and under bf16 autocast on CPUs and GPUs. The optional
parts of an architecture are switched by a string that maps to a module (``nn.Identity`` for
"none"), so one class covers the whole family and the state-dict keys follow only from the
constructor arguments that are saved with every checkpoint.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Upper bound on GroupNorm groups; the real count divides the channel count (see :func:`norm`).
MAX_GROUPS = 8

#: Skip-module kinds -> kernel sizes of the parallel branches (empty: identity).
SKIP_MODULES: dict[str, tuple[int, ...]] = {
    "none": (),
    "same_kernel": (3, 3, 3),  # paper Fig. 2(b): the width control for the multi-scale module
    "multi_scale": (1, 3, 5),  # paper Fig. 2(a): one-side, 3x3 and 5x5 convolutions
}


@dataclass(frozen=True)
class SegmentationOutput:
    """What every network returns.

    Attributes
    ----------
    logits
        (B, num_classes, H, W) segmentation logits; channel 0 pancreas including tumour, channel 1
        tumour, each an independent sigmoid (the paper's BCE), on the input's own H x W.
    reconstruction_logits
        (B, in_channels, H, W) logits of the restoration decoder, or ``None`` for models without
        one or when the caller skipped it. Losses use these, because BCE on logits is numerically
        safe in low precision.
    """

    logits: Tensor
    reconstruction_logits: Tensor | None = None

    @cached_property
    def reconstruction(self) -> Tensor | None:
        """The restored input in [0, 1] (sigmoid of the logits), or ``None``; computed once."""
        if self.reconstruction_logits is None:
            return None
        return torch.sigmoid(self.reconstruction_logits)


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to :data:`MAX_GROUPS` groups that divide ``channels``.

    GroupNorm computes the same thing in training and evaluation and does not depend on the batch,
    which matters because fine-tuning runs with batches of 2 to 8 and inference slice by slice.
    """
    return nn.GroupNorm(math.gcd(channels, MAX_GROUPS), channels)


class ConvNormReLU(nn.Sequential):
    """Same-padded convolution (no bias: the norm has one), GroupNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two 3x3 :class:`ConvNormReLU`, the unit of every U-Net level."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            ConvNormReLU(in_channels, out_channels), ConvNormReLU(out_channels, out_channels)
        )


class Encoder(nn.Module):
    """Contracting path: a :class:`DoubleConv` per level, 2x2 max-pooling between levels.

    Parameters
    ----------
    in_channels
        Image channels (1 for CT).
    width
        Channels of the first level; level ``i`` has ``width * 2**i``.
    depth
        Number of down-samplings; the bottom is ``2**depth``-fold smaller than the input.
    """

    def __init__(self, in_channels: int, width: int, depth: int) -> None:
        super().__init__()
        self.channels = [width * 2**level for level in range(depth + 1)]
        inputs = [in_channels, *self.channels[:-1]]
        self.stages = nn.ModuleList(
            DoubleConv(i, o) for i, o in zip(inputs, self.channels, strict=True)
        )
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Return the feature maps of every level, full resolution first, bottom last."""
        features = [self.stages[0](x)]
        for stage in self.stages[1:]:
            features.append(stage(self.pool(features[-1])))
        return features


class ParallelConvFusion(nn.Module):
    """Parallel same-padded convolutions, concatenated, fused back by a 1x1 convolution.

    Branches with equal kernel sizes are computed as one wider convolution, which is exactly the
    concatenation of the separate convolutions but runs as one larger, faster matrix product.

    Parameters
    ----------
    channels
        Input and output channels (the skip connection's).
    kernel_sizes
        Kernel size of each parallel branch, e.g. ``(1, 3, 5)``.
    """

    def __init__(self, channels: int, kernel_sizes: tuple[int, ...]) -> None:
        super().__init__()
        counts = Counter(kernel_sizes)
        self.branches = nn.ModuleList(
            ConvNormReLU(channels, channels * n, k) for k, n in counts.items()
        )
        self.fuse = ConvNormReLU(channels * len(kernel_sizes), channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))


def make_skip_module(kind: str, channels: int) -> nn.Module:
    """The module applied to a skip connection before concatenation.

    Raises
    ------
    ValueError
        If ``kind`` is not a key of :data:`SKIP_MODULES`.
    """
    if kind not in SKIP_MODULES:
        raise ValueError(f"skip_module must be one of {sorted(SKIP_MODULES)}, got {kind!r}")
    kernel_sizes = SKIP_MODULES[kind]
    return ParallelConvFusion(channels, kernel_sizes) if kernel_sizes else nn.Identity()


class UpBlock(nn.Module):
    """One expanding-path level: 2x2 up-convolution, skip module, concatenation, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, skip_module: str) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.skip = make_skip_module(skip_module, out_channels)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([self.skip(skip), self.up(x)], dim=1))


class RestorationDecoder(nn.Module):
    """Independent branch that restores the input from the bottom feature maps (paper III-B).

    Per level two 3x3 :class:`ConvNormReLU` and one 2x2 transposed convolution, so ``depth``
    levels bring the bottom back to the input size; a final 1x1 ("one-side") convolution maps to
    the image channels. Returns logits; :class:`SegmentationOutput` applies the sigmoid.

    Parameters
    ----------
    channels
        Channels per level as in :attr:`Encoder.channels`, full resolution first.
    out_channels
        Channels of the restored image.
    """

    def __init__(self, channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.levels = nn.Sequential(
            *(
                nn.Sequential(
                    ConvNormReLU(channels[level], channels[level - 1]),
                    ConvNormReLU(channels[level - 1], channels[level - 1]),
                    nn.ConvTranspose2d(
                        channels[level - 1], channels[level - 1], kernel_size=2, stride=2
                    ),
                )
                for level in range(len(channels) - 1, 0, -1)
            )
        )
        self.head = nn.Conv2d(channels[0], out_channels, kernel_size=1)

    def forward(self, bottom: Tensor) -> Tensor:
        return self.head(self.levels(bottom))


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad the last two axes at the bottom and right up to a multiple of ``multiple``.

    Zero is the lower end of the CT window (air), the value the border of a slice already has,
    and padding only at the far side keeps pixel (0, 0) in place so cropping back is a slice.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h))
