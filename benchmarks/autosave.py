"""What autosave costs the viewer, and whether a very long CT fits: stall, times, peak memory.

A CT of 512 x 512 x ``--slices`` is built by tiling the shared NIH volume (101 slices) along its
slice axis and written as NIfTI. napari then opens it through the Load CT dock (timed); with
``--segment`` the Segment dock runs the bundled ``dsmsc_unet`` on all of it (timed), otherwise
the labels layer is the shared manual label tiled the same way, stored as the model's prediction.
Then, ``--saves`` times, a brush stroke is painted and the autosave journals the labels after
its debounce, while a QTimer ticks every ``--tick-ms`` in the GUI thread: the longest gap between
ticks beyond the interval, from the stroke to the end of the save, is the stall the user feels;
the time the save itself spends in the GUI thread (copying the labels) is reported beside it.
The same window without a save (an idle wait of the same length) is the baseline: Mesa's software
OpenGL and other jobs on the shared cores stall the loop on their own.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/autosave.py --slices 240
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/autosave.py --slices 1000 --segment --saves 3

Peak memory is the process's maximum resident set size (``getrusage``), which includes napari,
torch and the OpenGL driver. Runs under a virtual X screen (pyvirtualdisplay) when ``DISPLAY``
is unset; the journal goes to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # measure this checkout's code, not an installed copy
SHARED = REPO.parent / "shared/data/nih-pancreas-0001"


def tiled(path: Path, slices: int):
    """The shared volume repeated along its slice axis (axis 2) to ``slices`` slices."""
    from src_models.io import Volume, read_volume

    volume = read_volume(path)
    reps = -(-slices // volume.shape[2])
    array = np.concatenate([volume.array] * reps, axis=2)[:, :, :slices]
    return Volume(np.ascontiguousarray(array), volume.affine, str(path), path.name, volume.info)


def process_events_until(condition, timeout: float = 3600.0) -> float:
    """Run the event loop until ``condition()``; returns the seconds it took."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("timed out")
        app.processEvents()
        time.sleep(0.001)
    return time.perf_counter() - start


def heartbeat_gaps(tick_ms: int, action, until) -> tuple[float, float]:
    """Longest gap beyond ``tick_ms`` while ``action()`` runs and until ``until()``; and seconds."""
    from qtpy.QtCore import QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(tick_ms)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    process_events_until(lambda: len(ticks) >= 3)  # steady ticking first
    start = time.perf_counter()
    action()
    process_events_until(until)
    elapsed = time.perf_counter() - start
    process_events_until(lambda: ticks[-1] > start + elapsed + 0.1)
    timer.stop()
    gaps = np.diff([t for t in ticks if t >= start - tick_ms / 1000]) * 1000
    return float(gaps.max() - tick_ms), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=240)
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--tick-ms", type=int, default=10)
    parser.add_argument("--segment", action="store_true", help="segment with the bundled model")
    args = parser.parse_args()

    display = None
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(1600, 1000))
        display.start()
    import napari
    import nibabel as nib

    from napari_dsms import _autosave
    from napari_dsms._layers import labels_layer_data
    from napari_dsms._widgets.load_ct import LoadCTWidget
    from napari_dsms._widgets.segment import SegmentWidget
    from src_models import autosave as journal
    from src_models.io.orientation import to_canonical
    from src_models.models.store import BUNDLED_DIR

    with tempfile.TemporaryDirectory() as folder:
        os.environ[journal.AUTOSAVE_DIR_ENV] = str(Path(folder) / "journal")
        started = time.perf_counter()
        ct = tiled(SHARED / "ct.nii.gz", args.slices)
        ct_path = Path(folder) / f"ct_{args.slices}.nii"  # uncompressed: gzip is not the topic
        nib.save(nib.Nifti1Image(ct.array, ct.affine), ct_path)
        print(f"built {ct_path.name} {ct.shape} in {time.perf_counter() - started:.1f} s")
        del ct

        viewer = napari.Viewer(show=True)
        dock = LoadCTWidget(viewer)
        viewer.window.add_dock_widget(dock, name="Load CT")
        manager = _autosave.attach(viewer)
        dock.load(ct_path)
        open_s = process_events_until(lambda: len(viewer.layers) == 1 and not manager.busy)
        image = viewer.layers[0]
        print(f"opened and keyed (CT digest) in {open_s:.1f} s")

        segment_s = None
        if args.segment:
            widget = SegmentWidget(viewer)
            viewer.window.add_dock_widget(widget, name="Segment")
            widget.select_checkpoint(BUNDLED_DIR / "dsmsc_unet.pt")
            widget.device_combo.setCurrentText("cpu")
            done: list = []
            widget.segmented.connect(done.append)
            widget.run()
            segment_s = process_events_until(lambda: bool(done) and not widget.running)
            labels = done[0]
            print(f"segmented in {segment_s:.1f} s")
        else:
            truth = tiled(SHARED / "label.nii.gz", args.slices)
            canonical = np.ascontiguousarray(to_canonical(truth.array, truth.affine)[0], np.uint8)
            data, kwargs, _ = labels_layer_data(canonical, image, name="labels")
            kwargs["metadata"]["prediction"] = data.copy()
            labels = viewer.add_labels(data, **kwargs)

        saved: list = []
        manager.on_saved.append(lambda entry: saved.append(time.perf_counter()))
        gui_ms: list[float] = []  # the save's own time in the GUI thread (the labels copy)
        save = manager._save

        def timed_save(tracked) -> None:
            start = time.perf_counter()
            save(tracked)
            gui_ms.append((time.perf_counter() - start) * 1000)

        manager._save = timed_save
        labels.brush_size = 20
        labels.selected_label = 2
        n, h, w = labels.data.shape
        stalls, idle, seconds = [], [], []
        for k in range(args.saves):
            z = (k * 37 + n // 2) % n
            count = len(saved)
            stall, elapsed = heartbeat_gaps(
                args.tick_ms,
                lambda z=z, k=k: labels.paint((z, h // 2 + 10 * k, w // 2), 2),
                lambda count=count: len(saved) > count and not manager.busy,
            )
            stalls.append(stall)
            seconds.append(elapsed)
            idle.append(heartbeat_idle(args.tick_ms, elapsed))
            print(
                f"save {k + 1}: stroke to journal {elapsed:.2f} s (debounce "
                f"{manager.delay_ms / 1000:.0f} s), in the GUI thread {gui_ms[-1]:.0f} ms, "
                f"longest stall {stall:.0f} ms, idle baseline {idle[-1]:.0f} ms",
                flush=True,
            )
        size_kb = journal.list_entries()[0].path.stat().st_size / 1024
        viewer.close()
    if display is not None:
        display.stop()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    summary = (
        f"512 x 512 x {args.slices}: open + digest {open_s:.1f} s"
        + (f", segment {segment_s:.1f} s" if segment_s is not None else "")
        + f"; {args.saves} saves: median stroke-to-journal {statistics.median(seconds):.2f} s, "
        f"median GUI-thread time per save {statistics.median(gui_ms):.0f} ms, "
        f"median longest stall {statistics.median(stalls):.0f} ms (idle baseline "
        f"{statistics.median(idle):.0f} ms), journal {size_kb:.0f} kB; peak RSS {peak_gb:.2f} GB"
    )
    print(summary)


def heartbeat_idle(tick_ms: int, seconds: float) -> float:
    """Longest gap beyond ``tick_ms`` while nothing happens for ``seconds``."""
    end: list[float] = []
    return heartbeat_gaps(
        tick_ms,
        lambda: end.append(time.perf_counter() + seconds),
        lambda: time.perf_counter() >= end[0],
    )[0]


if __name__ == "__main__":
    main()
