"""The one precision policy of the engine: which autocast dtype predict, train and fine-tune use.

One vocabulary everywhere (:data:`PRECISIONS`): ``auto``, ``float32``, ``bfloat16``, ``float16``,
as PyTorch names the dtypes. ``dsms train`` once spoke another (``--amp off|bf16|fp16``);
:func:`precision_from_amp` translates it for the deprecated flag.

``auto`` differs between inference and training only where it was measured to matter:

- CUDA: bfloat16 where the GPU has it, else float16 (training then scales the loss);
- Apple MPS: float16 for inference; float32 for training (no loss scaling there);
- CPU: bfloat16 for inference where the CPU executes it natively (AVX512-BF16 or AMX), else
  float32 (emulated bfloat16 is slower). The rule was set before measuring: bfloat16 only if
  faster and its labels agree with float32 to a pancreas Dice of at least 0.99 with under
  0.01 % of voxels differing. On the shared real CT with the bundled ``dsmsc_unet`` it was 1.4
  to 1.6 times faster, with Dice 0.997 and 0.0015 % of voxels differing (docs/benchmarks.md).
  Training on the CPU stays float32: bfloat16 gradients there were never measured.
"""

from __future__ import annotations

import contextlib

import torch

#: Precisions every command and function accepts.
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")

#: The old ``dsms train --amp`` vocabulary and its translation (deprecated).
AMP_ALIASES: dict[str, str] = {
    "auto": "auto",
    "off": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
}


def autocast_dtype(
    device: torch.device, precision: str = "auto", *, training: bool = False
) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or ``None`` for plain float32.

    Parameters
    ----------
    device
        Where the model runs.
    precision
        One of :data:`PRECISIONS`; ``"auto"`` follows the policy of the module doc.
    training
        Whether gradients are computed (``auto`` is then float32 on CPU and MPS).

    Raises
    ------
    ValueError
        For a precision not in :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return None
    if precision != "auto":
        return getattr(torch, precision)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if training:
        return None
    if device.type == "mps":
        return torch.float16
    if device.type == "cpu" and _cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``; nothing for ``None`` (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    """``"float32"``, ``"bfloat16"`` or ``"float16"`` for an autocast dtype (``None``: float32)."""
    return str(dtype or torch.float32).removeprefix("torch.")


def precision_from_amp(amp: str) -> str:
    """Translate a deprecated ``--amp`` value (``auto``, ``off``, ``bf16``, ``fp16``).

    Raises
    ------
    ValueError
        For a value that was never an ``--amp`` choice.
    """
    try:
        return AMP_ALIASES[amp]
    except KeyError:
        raise ValueError(
            f"unknown amp mode {amp!r}: use --precision {'|'.join(PRECISIONS)}"
        ) from None


def _cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX tiles)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, check, lambda: False)()) for check in checks)
