"""Fine-tuning beside another busy process: 2 threads against 1, side by side.

Why :func:`src_models.inference.devices.threads_beside_load` trains on the cores other
processes leave free: a thread that shares its core with a busy process arrives late at every
parallel region, and the whole step waits. This starts ``--busy`` processes that each keep one
core busy, then times ``--steps`` steps of the refine round's fine-tuning
(:data:`src_models.refine.ROUND_TRAINING`, 128-pixel patches) of a width-16 DSMSC U-Net on
synthetic slices, alternating 2 threads and 1 thread ``--repeats`` times; prints the medians.

Usage::

    .venv/bin/python benchmarks/busy_cpu_threads.py [--busy 1] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from src_models.inference.preprocessing import DEFAULT_PREPROCESSING
from src_models.jobs import run_to_end
from src_models.nets.registry import build_model
from src_models.refine import ROUND_TRAINING
from src_models.training.fine_tune import fine_tune


def _spin() -> None:
    """Keep one core busy until terminated."""
    while True:
        pass


def _seconds(threads: int, steps: int) -> float:
    """Wall seconds of ``steps`` fine-tuning steps on ``threads`` torch threads."""
    torch.manual_seed(0)
    model = build_model("dsmsc_unet", width=16)
    meta = {"preprocessing": dict(DEFAULT_PREPROCESSING), "provenance": {}, "path": None}
    rng = np.random.default_rng(0)
    images = rng.normal(40.0, 50.0, size=(8, 256, 256)).astype(np.float32)
    labels = np.zeros(images.shape, dtype=np.uint8)
    labels[:, 100:140, 100:150] = 1
    config = replace(ROUND_TRAINING, threads=threads)  # not chosen by load: fixed here
    started = time.perf_counter()
    run_to_end(fine_tune(model, meta, images, labels, (0.8, 0.8), steps=steps,
                         time_budget_s=1e6, device="cpu", config=config))  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=1, help="processes keeping a core busy")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for hog in hogs:
        hog.start()
    try:
        times: dict[int, list[float]] = {2: [], 1: []}
        for _ in range(args.repeats):
            for threads in times:
                times[threads].append(_seconds(threads, args.steps))
    finally:
        for hog in hogs:
            hog.terminate()
    two, one = statistics.median(times[2]), statistics.median(times[1])
    print(f"{os.cpu_count()} cores, {args.busy} kept busy, {args.steps} steps, "
          f"medians of {args.repeats}: 2 threads {two:.1f} s, 1 thread {one:.1f} s, "
          f"ratio {two / one:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
