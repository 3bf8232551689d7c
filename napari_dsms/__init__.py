"""napari glue for the DSMS U-Net family: readers, writers, sample data and dock widgets.

Everything that computes lives in :mod:`src_models`; this package only turns its results into
layers and widgets.
"""

from __future__ import annotations

from src_models.version import __version__

__all__ = ["__version__"]
