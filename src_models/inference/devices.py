"""Which torch device to run on: CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import os

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


def threads_beside_load(available: int) -> int:
    """CPU threads to train on without sharing cores that other processes keep busy.

    torch's thread pool waits at every parallel region until each thread has done its part; a
    thread that shares its core with another busy process arrives a time slice late, and the
    whole step waits. On the workplace's 2-core CPU with one core busy, 20 fine-tuning steps
    took 7.7 to 9.7 s on 2 threads against 3.8 to 3.9 s on 1; beside another 2-thread process
    a tester's refine round fitted 20 steps in 2 minutes where 1 thread fits 200 in 38 s, and
    its guard threw the round away. Quiet, the second thread nearly halves a step
    (``benchmarks/busy_cpu_threads.py``, docs/benchmarks.md).

    Parameters
    ----------
    available
        The threads torch would use otherwise (``torch.get_num_threads()``).

    Returns
    -------
    int
        ``available`` less the cores the 1-minute load average (``os.getloadavg``) keeps busy,
        rounded, and at least 1; ``available`` where the load is unknown (Windows). The load
        counts this process's own work of the last minute too (segmenting just before):
        then one thread fewer, which on a quiet machine makes a step up to 1.8 times longer.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return available
    cores = os.cpu_count() or available
    return max(1, min(available, cores - int(load + 0.5)))
