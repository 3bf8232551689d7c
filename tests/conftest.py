"""Shared fixtures: where the real CT lives, and skips with a reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NIH_0001 = SHARED_DATA / "nih-pancreas-0001"
NIH_SLICES = SHARED_DATA / "nih-pancreas-slices"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real CT not available: {path} is missing (it sits in ../shared/data)")
    return path


@pytest.fixture
def nih_ct() -> Path:
    """The shared 512 x 512 x 101 NIfTI CT of NIH Pancreas-CT patient 0001 (CC BY 3.0)."""
    return _require(NIH_0001 / "ct.nii.gz")


@pytest.fixture
def nih_label() -> Path:
    """Manual pancreas label on the grid of :func:`nih_ct`."""
    return _require(NIH_0001 / "label.nii.gz")


@pytest.fixture
def nih_dicom() -> Path:
    """24 original DICOM slices equal to ``ct.nii.gz[:, :, 38:62]``."""
    return _require(NIH_0001 / "dicom")


@pytest.fixture
def nih_slices() -> Path:
    """2D slices with pancreas masks of 39 more patients, one ``.npz`` per patient."""
    return _require(NIH_SLICES)
