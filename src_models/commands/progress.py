"""A progress bar on stderr for the commands that run a job generator."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm


def progress_bar(description: str) -> tuple[tqdm, Callable[[tuple[int, int]], None]]:
    """A tqdm bar on stderr and the callback that moves it with ``(done, total)`` progress.

    Use the bar as a context manager and pass the callback to
    :func:`src_models.jobs.run_to_end`.
    """
    bar = tqdm(unit="slice", desc=description, file=sys.stderr, leave=False)

    def show(progress: tuple[int, int]) -> None:
        bar.total = progress[1]
        bar.update(progress[0] - bar.n)

    return bar, show
