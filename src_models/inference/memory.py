"""Will a segmentation fit? Memory estimates and the early, clear refusal.

Checked before any work, so a volume that cannot fit is refused with a message that says how
much memory it needs, instead of the operating system killing napari halfway through.
"""

from __future__ import annotations

import numpy as np

#: Rough bytes of live activations per model-resolution pixel and first-level channel, in
#: float32 (skip connections of every level plus the largest working tensors); used only to
#: refuse volumes that cannot fit, so it errs on the large side.
_ACTIVATION_BYTES_PER_PIXEL_CHANNEL = 48

#: Margin kept free for the rest of the program (napari, Python, the torch runtime).
_MEMORY_RESERVE_BYTES = 512 * 2**20


class InsufficientMemoryError(OSError):
    """The volume's outputs would not fit in the memory available; the message says how much.

    An ``OSError`` (like the system's own "cannot allocate memory"), so the ``dsms`` command
    reports it as one ``error:`` line.
    """


def _memory_available_bytes() -> int | None:
    """Memory the system can give this process now, or ``None`` where it cannot be told.

    ``MemAvailable`` of /proc/meminfo on Linux (free memory plus reclaimable caches); psutil
    elsewhere when it happens to be installed (napari brings it), no new dependency.
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def estimate_memory_bytes(
    shape: tuple[int, int, int],
    model_hw: tuple[int, int],
    *,
    width: int,
    batch_size: int,
    reconstruction: bool,
    probabilities: bool,
) -> int:
    """Memory a run needs beyond the input volume: the outputs plus one batch of work.

    Parameters
    ----------
    shape
        Canonical shape (slices, rows, columns).
    model_hw
        Slice size the model sees.
    width
        First-level channels of the model (activation memory scales with it).
    batch_size
        Slices per batch.
    reconstruction, probabilities
        Whether those outputs are kept (2 and 4 bytes per voxel).
    """
    voxels = int(np.prod(shape))
    outputs = voxels * (1 + 2 * reconstruction + 4 * probabilities)
    rows, cols = shape[1:]
    pixels = model_hw[0] * model_hw[1]
    per_slice = (
        pixels * width * _ACTIVATION_BYTES_PER_PIXEL_CHANNEL
        + rows * cols * (4 + 2 * 4 + 4 * probabilities)  # input, resampled logits, probabilities
    )
    return outputs + batch_size * per_slice


def check_memory(required: int, what: str) -> None:
    """Refuse early, with a clear message, when ``required`` bytes are not available.

    Raises
    ------
    InsufficientMemoryError
        If the system reports less than ``required`` plus a reserve for the rest of the program.
    """
    available = _memory_available_bytes()
    if available is None or required + _MEMORY_RESERVE_BYTES <= available:
        return
    gib = 2**30
    raise InsufficientMemoryError(
        f"{what}: segmenting it needs about {required / gib:.1f} GiB of memory but only "
        f"{available / gib:.1f} GiB are available; close other programs, crop the volume, "
        "or turn off the probability and reconstruction outputs"
    )
