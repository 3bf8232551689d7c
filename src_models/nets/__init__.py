"""Networks: building blocks, the U-Net family and the FCN baseline."""

from __future__ import annotations

from .blocks import SKIP_MODULES, SegmentationOutput
from .fcn import FCN
from .unet import UNet

__all__ = ["FCN", "SKIP_MODULES", "SegmentationOutput", "UNet"]
