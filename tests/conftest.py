"""Shared fixtures: where the real CT lives, and skips with a reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NIH_0001 = SHARED_DATA / "nih-pancreas-0001"
NIH_SLICES = SHARED_DATA / "nih-pancreas-slices"


@pytest.fixture(autouse=True)
def _autosave_dir(tmp_path_factory, monkeypatch) -> None:
    """Keep the autosave journals of every test (docks journal edits) out of the user's folder."""
    monkeypatch.setenv("DSMS_AUTOSAVE_DIR", str(tmp_path_factory.mktemp("autosave")))


#: The fixtures that hand out real data, and the file or folder each needs.
REAL_DATA = {
    "nih_ct": NIH_0001 / "ct.nii.gz",
    "nih_label": NIH_0001 / "label.nii.gz",
    "nih_dicom": NIH_0001 / "dicom",
    "nih_slices": NIH_SLICES,
}


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real CT not available: {path} is missing (it sits in ../shared/data)")
    return path


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test that needs absent real data before any of its fixtures is set up.

    Skipping from the data fixture itself comes too late for a test that also opens a viewer:
    napari's ``make_napari_viewer`` has then started, and its teardown fails on the missing call
    report.
    """
    for name in getattr(item, "fixturenames", ()):
        if name in REAL_DATA:
            _require(REAL_DATA[name])


@pytest.fixture
def nih_ct() -> Path:
    """The shared 512 x 512 x 101 NIfTI CT of NIH Pancreas-CT patient 0001 (CC BY 3.0)."""
    return _require(REAL_DATA["nih_ct"])


@pytest.fixture
def nih_label() -> Path:
    """Manual pancreas label on the grid of :func:`nih_ct`."""
    return _require(REAL_DATA["nih_label"])


@pytest.fixture
def nih_dicom() -> Path:
    """24 original DICOM slices equal to ``ct.nii.gz[:, :, 38:62]``."""
    return _require(REAL_DATA["nih_dicom"])


@pytest.fixture
def nih_slices() -> Path:
    """2D slices with pancreas masks of 39 more patients, one ``.npz`` per patient."""
    return _require(REAL_DATA["nih_slices"])


@pytest.fixture
def slice_with_body() -> np.ndarray:
    """A (120, 160) int16 HU slice: air, an elliptic body (fat, organ, lung), a table below."""
    rows, cols = np.mgrid[:120, :160]
    hu = np.full((120, 160), -1000, dtype=np.int16)
    body = ((rows - 50) / 35.0) ** 2 + ((cols - 80) / 50.0) ** 2 <= 1  # rows 15..85, cols 30..130
    hu[body] = -100
    hu[((rows - 50) / 12.0) ** 2 + ((cols - 70) / 15.0) ** 2 <= 1] = 150
    hu[((rows - 35) / 8.0) ** 2 + ((cols - 105) / 10.0) ** 2 <= 1] = -850
    hu[100:106, 10:150] = 50  # the table: a separate, smaller component
    return hu
