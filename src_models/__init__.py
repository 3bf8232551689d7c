"""Screen-less engine of napari-dsms: models, volumes, inference, training, metrics.

Never imports napari or Qt, so it runs on GPU servers and in the ``dsms`` command.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .nets import SegmentationOutput
from .registry import ARCHITECTURES, DESCRIPTIONS, build_model
from .volumes import Volume, VolumeError, read_labels, read_volume, write_image, write_labels

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "DESCRIPTIONS",
    "SegmentationOutput",
    "Volume",
    "VolumeError",
    "build_model",
    "load_checkpoint",
    "read_labels",
    "read_volume",
    "save_checkpoint",
    "write_image",
    "write_labels",
]
