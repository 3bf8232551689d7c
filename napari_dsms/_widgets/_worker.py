"""Run a src_models generator in a napari worker thread, with progress, cancel and clean errors.

Every long job (reading a CT, segmentation, training) is a plain generator. The docks start it
here, so the viewer stays responsive, the job's progress shows in the dock and in napari's
activity panel, Cancel stops it between two steps, and failures and warnings become
notifications instead of crashes. :class:`SegmentationRun` adds a segmentation's layers
(:mod:`napari_dsms._results`) after the job, for every dock that segments.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorkerSignals, WorkerBase, create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import notification_manager, show_error, show_warning
from qtpy.QtCore import QEventLoop, QObject, QTimer, Signal

from .._results import SegmentationOutput, result_steps, segmentation_job, volume_of_layer
from ._pickers import same_layer

#: Exceptions that describe bad input or a lack of resources: shown as their message alone.
#: Anything else is a bug and is reported with its traceback (napari's "View traceback").
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, MemoryError)


class JobWorker(WorkerBase):
    """A worker that runs a generator to its end and closes it in the worker thread.

    Built on napari's public ``WorkerBase`` with the generator signals (``yielded``,
    ``aborted``) and its own reference to the generator. superqt's ``GeneratorWorker`` leaves an
    aborted generator suspended until garbage collection, so its ``finally`` blocks (releasing
    accelerator memory) run at an unknown time in an unknown thread; it also hides a
    ``RuntimeError`` raised by the job (torch raises those) behind a warning and never emits
    ``finished``. This loop emits ``errored`` for every exception, ``aborted`` on cancel, and
    always ``finished``.

    Parameters
    ----------
    func
        A generator function; ``func(*args, **kwargs)`` is the job.
    """

    def __init__(self, func: Callable[..., Generator[Any, None, Any]], *args: Any, **kwargs: Any):
        super().__init__(SignalsClass=GeneratorWorkerSignals)
        self._job = func(*args, **kwargs)

    def work(self) -> Any:
        try:
            while not self.abort_requested:
                try:
                    value = next(self._job)
                except StopIteration as stop:
                    return stop.value
                self.yielded.emit(value)
            self.aborted.emit()
            return None
        finally:
            self._job.close()


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
    on_aborted: Callable[[], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
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
    on_aborted
        Called in the GUI thread when the job stopped on ``worker.quit()`` (Cancel).
    on_error
        Called in the GUI thread with the job's exception, after its notification.
    progress_of
        Turns a yielded value into ``(done, total)`` for the progress bar, or ``None``.
    error_context
        Prefix of error notifications, e.g. ``"Segment"``.

    Returns
    -------
    JobWorker
        The started worker; ``worker.quit()`` cancels between two yields. Warnings the job
        issues (e.g. which DICOM series of several was read) become notifications.

    Notes
    -----
    Closing the viewer's window cancels the job (napari cancels the workers it registered),
    but the worker finishes its current step and its last signals arrive after the window's
    widgets are gone. None of them may reach those widgets: a progress update then crashed
    napari (a segmentation fault). napari's activity dialog closes the progress bars it shows
    when it is destroyed with the window, so a closed bar means that the callbacks are skipped.
    """
    bar = napari_progress(total=0, desc=description)
    worker: JobWorker | None = None

    def window_gone() -> bool:
        return bool(bar.disable)  # closed by napari's activity dialog as the window went

    def yielded(value: Any) -> None:
        if window_gone() or (worker is not None and worker.abort_requested):
            return
        step = progress_of(value)
        if step is not None:
            done, total = step
            if bar.total != total:
                bar.total = total
            bar.update(done - bar.n)
        if on_yield is not None:
            on_yield(value)

    def unless_window_gone(callback: Callable[..., None] | None) -> Callable[..., None]:
        def call(*values: Any) -> None:
            if callback is not None and not window_gone():
                callback(*values)

        return call

    def errored(error: BaseException) -> None:
        report_error(error, error_context)
        unless_window_gone(on_error)(error)

    def finished() -> None:
        gone = window_gone()
        bar.close()
        if on_finished is not None and not gone:
            on_finished()

    worker = create_worker(
        job,
        *args,
        _worker_class=JobWorker,
        _connect={
            "yielded": yielded,
            "returned": unless_window_gone(on_result),
            "errored": errored,
            "aborted": unless_window_gone(on_aborted),
            "warned": lambda warning: show_warning(str(warning[0])),
            "finished": finished,
        },
        _ignore_errors=True,
        _start_thread=True,
        **kwargs,
    )
    return worker


def run_responsive(function: Callable[..., Any], *args: Any, description: str) -> Any:
    """``function(*args)`` in a worker thread, waited for here while the viewer stays usable.

    For short jobs whose caller needs the answer at once (an export returns the file it wrote):
    the GUI thread keeps handling events (painting, scrolling, other docks) in a local event
    loop until the worker is done, with a busy bar in napari's activity panel. The result is
    returned, an exception raised, as if ``function`` had run here.
    """
    outcome: dict[str, Any] = {}
    loop = QEventLoop()

    def job() -> Generator[tuple[int, int], None, Any]:
        yield (0, 1)
        return function(*args)

    bar = napari_progress(total=0, desc=description)
    worker = create_worker(
        job,
        _worker_class=JobWorker,
        _connect={
            "returned": lambda value: outcome.update(value=value),
            "errored": lambda error: outcome.update(error=error),
            "finished": loop.quit,
        },
        _ignore_errors=True,
        _start_thread=False,
    )
    worker.start()
    try:
        loop.exec()  # the worker's signals are queued to this thread: none is missed
    finally:
        bar.close()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class SegmentationRun(QObject):
    """Segment a CT image layer in a worker, then add the result's layers one per event-loop turn.

    Shared by every dock that segments (:mod:`napari_dsms._results` makes the layers), so no
    dock needs another to segment. Removing the image layer while it runs cancels the job.

    Signals
    -------
    progressed(object)
        ``(slices done, total)`` while the model runs.
    segmented(object)
        The labels layer, once every layer of the result is in the viewer.
    ended()
        At the very end, whatever happened (done, failed, cancelled, image removed).
    """

    progressed = Signal(object)
    segmented = Signal(object)
    ended = Signal()

    def __init__(self, viewer: Any, image: Any, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.image = image
        self.worker: JobWorker | None = None
        self.output: SegmentationOutput | None = None
        self.cancelled = False
        self._steps: list[Callable[[], Any]] = []
        self._last: Any = None

    @property
    def running(self) -> bool:
        """Whether the model runs or result layers are still being added."""
        return self.worker is not None or bool(self._steps)

    def start(
        self,
        checkpoint: str,
        device: str = "auto",
        batch_size: int | None = None,
        probabilities: bool = False,
        context: str = "Segment",
    ) -> bool:
        """Start the job; ``False`` (with a notification) when the image cannot be segmented."""
        try:
            volume = volume_of_layer(self.image)
        except ValueError as error:  # VolumeError: not 3D, or data off its file grid
            report_error(error, context)
            return False
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.worker = start_job(
            segmentation_job,
            volume,
            checkpoint,
            device,
            batch_size,
            probabilities,
            description=f"Segmenting {self.image.name}",
            on_yield=self.progressed.emit,
            on_result=self._on_result,
            on_finished=self._on_worker_finished,
            on_aborted=self._on_aborted,
            error_context=context,
        )
        return True

    def cancel(self) -> None:
        """Stop after the current batch; no layer is added."""
        self.cancelled = True
        self._steps = []
        if self.worker is not None:
            self.worker.quit()

    @property
    def image_present(self) -> bool:
        """Whether the image layer is still in the viewer."""
        return any(same_layer(layer, self.image) for layer in self.viewer.layers)

    def _on_layer_removed(self, event: Any) -> None:
        if self.running and same_layer(event.value, self.image):
            self.cancel()

    def _on_aborted(self) -> None:
        self.cancelled = True

    def _on_result(self, output: SegmentationOutput) -> None:
        if self.cancelled or not self.image_present:
            return
        self.output = output
        self._steps = result_steps(self.viewer, self.image, output)

    def _on_worker_finished(self) -> None:
        self.worker = None
        if self._steps:
            QTimer.singleShot(0, self._next_step)
        else:
            self._end()

    def _next_step(self) -> None:
        if not self._steps:
            self._end()
            return
        if not self.image_present:
            self.cancel()
            self._end()
            return
        self._last = self._steps.pop(0)()
        if self._steps:
            QTimer.singleShot(0, self._next_step)
            return
        labels, self._last = self._last, None
        self.segmented.emit(labels)
        self._end()

    def _end(self) -> None:
        self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        self.ended.emit()
