"""Screen-less engine of napari-dsms: models, volumes, inference, training, metrics.

Never imports napari or Qt, so it runs on GPU servers and in the ``dsms`` command.
"""

from __future__ import annotations

from .fill import fill_between_slices
from .io import Volume, VolumeError, read_labels, read_volume, write_image, write_labels
from .models.checkpoints import CheckpointError, save_checkpoint
from .models.store import load_checkpoint
from .nets import SegmentationOutput
from .nets.registry import ARCHITECTURES, DESCRIPTIONS, build_model
from .version import __version__

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "DESCRIPTIONS",
    "SegmentationOutput",
    "Volume",
    "__version__",
    "VolumeError",
    "build_model",
    "fill_between_slices",
    "load_checkpoint",
    "read_labels",
    "read_volume",
    "save_checkpoint",
    "write_image",
    "write_labels",
]
