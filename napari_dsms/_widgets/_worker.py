"""Run a src_models generator in a napari worker thread, with progress, cancel and clean errors.

Every long job of the engine (segmentation, training) is a plain generator. The widgets start it
here, so the viewer stays responsive, the job's progress shows in the widget and in napari's
activity panel, Cancel stops it between two steps, and failures become notifications instead of
crashes. Shared by the Segment and the Review and fine-tune widgets.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import notification_manager, show_error
from superqt.utils import GeneratorWorker

#: Exceptions that describe bad input or a lack of resources: shown as their message alone.
#: Anything else is a bug and is reported with its traceback (napari's "View traceback").
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, MemoryError)


class JobWorker(GeneratorWorker):
    """A generator worker that closes its generator in the worker thread when it stops.

    superqt's worker leaves an aborted generator suspended until garbage collection, so its
    ``finally`` blocks (releasing accelerator memory) run at an unknown time in an unknown
    thread; it also hides a ``RuntimeError`` raised by the job (torch raises those) behind a
    warning and never emits ``finished``. This loop emits ``errored`` for every exception,
    ``aborted`` on cancel, and always ``finished``.
    """

    def work(self) -> Any:
        try:
            while not self.abort_requested:
                try:
                    value = next(self._gen)
                except StopIteration as stop:
                    return stop.value
                self.yielded.emit(value)
            self.aborted.emit()
            return None
        finally:
            self._gen.close()


def _as_progress(value: Any) -> tuple[int, int] | None:
    """``(done, total)`` from a yielded value, if it is one (what ``segment`` yields)."""
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value
    return None


def report_error(error: BaseException, context: str = "") -> None:
    """Show ``error`` as a napari notification: the message for user errors, else a traceback."""
    if isinstance(error, USER_ERRORS):
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        show_error(f"{context}: {message}" if context else str(message))
    else:
        notification_manager.receive_error(type(error), error, error.__traceback__)


def start_job(
    job: Callable[..., Generator[Any, None, Any]],
    *args: Any,
    description: str,
    on_result: Callable[[Any], None],
    on_yield: Callable[[Any], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    progress_of: Callable[[Any], tuple[int, int] | None] = _as_progress,
    error_context: str = "",
    **kwargs: Any,
) -> JobWorker:
    """Start ``job(*args, **kwargs)`` in a worker thread and wire its signals.

    Parameters
    ----------
    job
        A generator function; its return value goes to ``on_result`` (not after a cancel).
    description
        Label of the progress bar in napari's activity panel.
    on_result
        Called in the GUI thread with the job's return value.
    on_yield
        Called in the GUI thread with every yielded value.
    on_finished
        Called in the GUI thread at the very end, whether the job returned, failed or was
        cancelled: where a widget re-enables its buttons.
    progress_of
        Turns a yielded value into ``(done, total)`` for the progress bar, or ``None``.
    error_context
        Prefix of error notifications, e.g. ``"Segment"``.

    Returns
    -------
    JobWorker
        The started worker; ``worker.quit()`` cancels between two yields.
    """
    bar = napari_progress(total=0, desc=description)

    def yielded(value: Any) -> None:
        step = progress_of(value)
        if step is not None:
            done, total = step
            if bar.total != total:
                bar.total = total
            bar.update(done - bar.n)
        if on_yield is not None:
            on_yield(value)

    def finished() -> None:
        bar.close()
        if on_finished is not None:
            on_finished()

    return create_worker(
        job,
        *args,
        _worker_class=JobWorker,
        _connect={
            "yielded": yielded,
            "returned": on_result,
            "errored": lambda error: report_error(error, error_context),
            "finished": finished,
        },
        _ignore_errors=True,
        _start_thread=True,
        **kwargs,
    )
