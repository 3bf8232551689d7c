"""The U-Net family of the paper: U-Net, DRS U-Net, KCMDRS U-Net and DSMSC U-Net in one class."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .blocks import (
    Encoder,
    RestorationDecoder,
    SegmentationOutput,
    UpBlock,
    pad_to_multiple,
)


class UNet(nn.Module):
    """2D U-Net with an optional skip module and an optional restoration decoder.

    The four architectures of the paper differ only in ``skip_module`` and ``restoration``
    (see :mod:`src_models.nets.registry`), so they share this code and their weights are named
    alike.

    Parameters
    ----------
    in_channels
        Image channels (1 for CT).
    num_classes
        Output channels, independent sigmoids: 0 pancreas including tumour, 1 tumour.
    width
        Channels of the first level, doubled at every down-sampling.
    depth
        Number of down-samplings (4: the paper's 16-fold bottom). Inputs of any size are padded to
        a multiple of ``2**depth`` inside and the outputs cropped back.
    skip_module
        Module on every skip connection before concatenation: ``"none"``, ``"same_kernel"``
        (three parallel 3x3 convolutions) or ``"multi_scale"`` (parallel 1x1, 3x3, 5x5).
    restoration
        Whether to build the restoration decoder that restores the input from the bottom.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 32,
        depth: int = 4,
        skip_module: str = "none",
        restoration: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be positive, got depth={depth}, width={width}")
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "width": width,
            "depth": depth,
            "skip_module": skip_module,
            "restoration": restoration,
        }
        self.depth = depth
        self.encoder = Encoder(in_channels, width, depth)
        channels = self.encoder.channels
        self.decoder = nn.ModuleList(
            UpBlock(channels[level], channels[level - 1], skip_module)
            for level in range(depth, 0, -1)
        )
        self.head = nn.Conv2d(channels[0], num_classes, kernel_size=1)
        self.restorer = RestorationDecoder(channels, in_channels) if restoration else None

    @property
    def has_restoration(self) -> bool:
        """Whether the model restores its input (the DRS models)."""
        return self.restorer is not None

    def forward(self, x: Tensor, reconstruct: bool = True) -> SegmentationOutput:
        """Segment ``x`` (B, in_channels, H, W), any H and W.

        Parameters
        ----------
        x
            Images scaled to [0, 1].
        reconstruct
            Run the restoration decoder (if the model has one). ``False`` saves its cost when
            only labels are wanted; the weights are the same either way.
        """
        height, width = x.shape[-2:]
        features = self.encoder(pad_to_multiple(x, 2**self.depth))
        y = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1]), strict=True):
            y = block(y, skip)
        logits = self.head(y)[..., :height, :width]
        restored = None
        if reconstruct and self.restorer is not None:
            restored = self.restorer(features[-1])[..., :height, :width]
        return SegmentationOutput(logits, restored)
