"""Does napari stay responsive while the Segment widget runs on the CPU?

A QTimer ticks every ``--tick-ms`` in the GUI thread while the widget segments the shared CT
(all of it, including adding the result layers); meanwhile the slider moves one slice per tick,
as a user scrolling would, so the canvas redraws. Any gap between two ticks beyond the interval is
a stall the user feels. Reports, per repeat, the longest stall, the 99th percentile gap and the
run time; the goal is a longest stall under 200 ms.

Usage::

    .venv/bin/python benchmarks/responsiveness.py [--repeats 3] [--slices 101]

Runs under a virtual X screen (pyvirtualdisplay, as the GUI tests) when ``DISPLAY`` is unset.
Uses the bundled ``dsmsc_unet`` when it exists, else fresh weights at width 12 (the bundled width).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def measure(viewer, widget, tick_ms: int) -> dict[str, float]:
    """One segmentation run with the heartbeat; returns stall figures in ms."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    ticks: list[float] = []
    done: list[float] = []
    slices = viewer.dims.range[0]
    n_slices = int(round((slices.stop - slices.start) / slices.step)) + 1

    def beat() -> None:
        ticks.append(time.perf_counter())
        step = list(viewer.dims.current_step)
        step[0] = (step[0] + 1) % n_slices
        viewer.dims.current_step = tuple(step)

    timer = QTimer()
    timer.setInterval(tick_ms)
    timer.timeout.connect(beat)
    widget.segmented.connect(lambda layer: done.append(time.perf_counter()))
    timer.start()
    start = time.perf_counter()
    widget.run()
    run_call = time.perf_counter() - start
    app = QApplication.instance()
    while widget.running or not done:
        app.processEvents()
        time.sleep(0.001)
    # keep ticking briefly: the result layers are drawn after the run
    settle = time.perf_counter() + 1.0
    while time.perf_counter() < settle:
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    gaps = np.diff(ticks) * 1000
    worst = int(np.argmax(gaps))
    return {
        "run_s": done[0] - start,
        "run_call_ms": run_call * 1000,
        # where the longest stall began, relative to the result arriving (negative: during
        # the run, in the worker; around 0: adding the result layers)
        "stall_at_s": ticks[worst] - done[0],
        "longest_stall_ms": float(gaps.max() - tick_ms),
        "p99_gap_ms": float(np.percentile(gaps, 99)),
        "ticks": len(ticks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tick-ms", type=int, default=20)
    parser.add_argument("--slices", type=int, default=101, help="slices of the CT to segment")
    args = parser.parse_args()

    display = None
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(1600, 1000))
        display.start()
    import napari
    import torch

    from napari_dsms._layers import image_layer_data
    from napari_dsms._widgets.segment import SegmentWidget
    from src_models import build_model
    from src_models.inference.preprocessing import DEFAULT_PREPROCESSING
    from src_models.io import Volume, read_volume
    from src_models.models.checkpoints import save_checkpoint
    from src_models.models.store import BUNDLED_DIR

    ct_path = Path(__file__).resolve().parents[2] / "shared/data/nih-pancreas-0001/ct.nii.gz"
    ct = read_volume(ct_path)
    ct = Volume(ct.array[:, :, : args.slices], ct.affine, source=str(ct_path))
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = BUNDLED_DIR / "dsmsc_unet.pt"
        weights = "bundled"
        if not checkpoint.is_file():
            torch.manual_seed(0)
            model = build_model("dsmsc_unet", width=12)
            checkpoint = save_checkpoint(
                Path(folder) / "dsmsc_unet.pt", model, preprocessing=DEFAULT_PREPROCESSING
            )
            weights = "fresh weights, width 12"
        viewer = napari.Viewer(show=True)
        data, kwargs, _ = image_layer_data(ct, name="CT")
        viewer.add_image(data, **kwargs)
        widget = SegmentWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Segment")
        widget.select_checkpoint(checkpoint)
        widget.device_combo.setCurrentText("cpu")
        runs = []
        for repeat in range(args.repeats):
            before = os.getloadavg()[0]
            figures = measure(viewer, widget, args.tick_ms)
            figures["load"] = f"{before:.2f}/{os.getloadavg()[0]:.2f}"
            runs.append(figures)
            print(f"run {repeat + 1}: {figures}", flush=True)
            for layer in [layer for layer in viewer.layers if layer.name != "CT"]:
                viewer.layers.remove(layer)
        viewer.close()
    if display is not None:
        display.stop()
    longest = statistics.median(run["longest_stall_ms"] for run in runs)
    print(
        f"dsmsc_unet ({weights}), 512 x 512 x {args.slices}, cpu, tick {args.tick_ms} ms, "
        f"{args.repeats} runs: median longest stall {longest:.0f} ms, median p99 gap "
        f"{statistics.median(run['p99_gap_ms'] for run in runs):.0f} ms, median run "
        f"{statistics.median(run['run_s'] for run in runs):.1f} s"
    )


if __name__ == "__main__":
    main()
