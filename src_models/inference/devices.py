"""Which torch device to run on: CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    """Devices this machine can actually run on, best first, always ending with ``"cpu"``."""
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"`` into a usable device.

    Raises
    ------
    ValueError
        When the requested device is not available here, naming the ones that are.
    """
    if name == "auto":
        return torch.device(available_devices()[0])
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or mps") from error
    if device.type not in available_devices():
        raise ValueError(
            f"device {name!r} is not available on this machine "
            f"(available: {', '.join(available_devices())})"
        )
    return device


def release_memory(device: torch.device) -> None:
    """Return cached accelerator memory to the system after a long job (inference, fine-tuning)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
