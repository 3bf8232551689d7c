"""Which torch device to run on: CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import os
import time

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
    took 8.7 s on 2 threads against 4.9 s on 1; beside another 2-thread process a tester's
    refine round fitted 20 steps in 2 minutes where 1 thread fits 200 in 38 s, and its guard
    threw the round away. Quiet, the second thread nearly halves a step (2.9 s against 5.3 s;
    ``benchmarks/busy_cpu_threads.py``, docs/benchmarks.md).

    The busy cores are counted now, from the kernel's count of runnable threads (the fourth
    field of ``/proc/loadavg``, less the caller), the least of a few readings 20 ms apart; not
    from the 1-minute load average, which counts this process's own segmenting of the last
    minute too and would halve a quiet machine's speed.

    Parameters
    ----------
    available
        The threads torch would use otherwise (``torch.get_num_threads()``).

    Returns
    -------
    int
        ``available`` less the busy cores, at least 1; ``available`` where the count is
        unknown (no ``/proc``: macOS, Windows).
    """
    readings = []
    for _ in range(_READINGS):
        runnable = _runnable_threads()
        if runnable is None:
            return available
        readings.append(runnable)
        time.sleep(0.02)
    busy = max(min(readings) - 1, 0)  # the thread reading it is one of them
    cores = os.cpu_count() or available
    return max(1, min(available, cores - busy))


#: Readings of the runnable threads: the least is taken (a blip, or this process's own torch
#: threads still spinning after its last parallel region, shows in one of them).
_READINGS = 5


def _runnable_threads() -> int | None:
    """Threads runnable on the machine now (``/proc/loadavg``), ``None`` where unknown."""
    try:
        with open("/proc/loadavg", encoding="ascii") as handle:
            return int(handle.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
