"""Running the engine's long jobs: every one is a plain generator that yields progress.

Segmentation (:func:`~src_models.inference.engine.segment`), training and fine-tuning
(:mod:`src_models.training`) and refinement yield progress and *return* their result, which
Python hands over as ``StopIteration.value`` (napari's worker emits it as ``returned``). A widget
runs such a generator in a worker thread; scripts, tests and the ``dsms`` commands run it here.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

Result = TypeVar("Result")


def run_to_end(
    job: Generator[Any, Any, Result], on_progress: Callable[[Any], None] | None = None
) -> Result:
    """Run a generator to its end and return its return value.

    Parameters
    ----------
    job
        A started or fresh generator, e.g. ``segment(volume, model, meta)``.
    on_progress
        Called with every yielded value (a progress bar); ``None`` ignores them.

    Returns
    -------
    The generator's return value.

    The generator is closed on the way out, so an exception raised by ``on_progress`` (or a
    ``KeyboardInterrupt``) still runs its clean-up (releasing accelerator memory) at once.
    """
    try:
        while True:
            try:
                value = next(job)
            except StopIteration as stop:
                return stop.value
            if on_progress is not None:
                on_progress(value)
    finally:
        job.close()


def relay(
    job: Generator[tuple[int, int], Any, Result], offset: int, total: int
) -> Generator[tuple[int, int], None, Result]:
    """Yield ``job``'s ``(done, total)`` progress as part of a larger job, and return its result.

    ``(done, _)`` of ``job`` becomes ``(offset + done, total)``, so a job made of several
    passes (triage, refine) reports one progress over all of them:
    ``result = yield from relay(segment(...), offset, total)``.
    """
    try:
        while True:
            try:
                done, _ = next(job)
            except StopIteration as stop:
                return stop.value
            yield offset + done, total
    finally:
        job.close()
