"""CT windows: display presets and the HU -> [0, 1] scaling the models use.

Inference and training both call :func:`hu_to_unit`, so a model always sees intensities scaled
the same way as when it was trained.
"""

from __future__ import annotations

import numpy as np

#: Display presets as (lower, upper) HU, from the usual (width, level) pairs.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (-160.0, 240.0),  # W400 / L40
    "pancreas": (-100.0, 240.0),
    "liver": (-25.0, 175.0),  # W200 / L75
    "bone": (-450.0, 1050.0),  # W1500 / L300
    "lung": (-1350.0, 150.0),  # W1500 / L-600
}

DEFAULT_WINDOW = "abdomen"


def hu_to_unit(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip ``hu`` to ``window`` and scale it linearly to float32 values in [0, 1]."""
    lower, upper = float(window[0]), float(window[1])
    if not upper > lower:
        raise ValueError(f"HU window must have upper > lower, got {window}")
    out = np.asarray(hu, dtype=np.float32) - np.float32(lower)
    out *= np.float32(1.0 / (upper - lower))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def unit_to_hu(unit: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """The inverse of :func:`hu_to_unit` inside the window: [0, 1] values back to int16 HU.

    The restoration decoder (DRS models) restores its input in the model's [0, 1] window
    scale; a radiologist reads HU, and int16 holds them in half the bytes of float32 (the
    window's resolution is well under 1 HU per step of float16 input, so rounding loses nothing).

    Raises
    ------
    ValueError
        The window does not fit int16 or has ``upper <= lower``.
    """
    lower, upper = float(window[0]), float(window[1])
    if not upper > lower:
        raise ValueError(f"HU window must have upper > lower, got {window}")
    info = np.iinfo(np.int16)
    if lower < info.min or upper > info.max:
        raise ValueError(f"HU window {window} does not fit 16-bit integers")
    hu = np.asarray(unit, dtype=np.float32) * np.float32(upper - lower) + np.float32(lower)
    return np.rint(np.clip(hu, lower, upper)).astype(np.int16)
