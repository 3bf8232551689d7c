"""One round of the correction loop, timed: fine-tune on corrected slices, then re-segment.

The Review widget's round on the shared CT (``nih-pancreas-0001``, a patient the bundled models
never saw): ``--slices`` slices spread evenly over the pancreas play the corrected slices (their
manual label is the correction), :func:`src_models.training.fine_tune.fine_tune` trains the
bundled default model on them with the recipe given on the command line, and pancreas Dice is
measured at model resolution on every other slice that holds pancreas, before and after (the
figure of docs/training.md). Then the fine-tuned model re-segments a ``--resegment-slices``
volume stacked from the same CT, as the widget's "re-segment" does.

Usage::

    .venv/bin/python benchmarks/fine_tune_speed.py [--steps 400] [--patch-size 160]
        [--batch-size 4] [--lr 1e-3] [--precision auto|float32|bfloat16] [--threads N]

Prints one Markdown table row with wall seconds and CPU seconds of this process (user +
system): on a shared machine other jobs stretch the wall time, while the CPU time of a run with
``--threads 1`` is what it takes on one idle core. The 1-minute load average is in the row too.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from src_models.inference.engine import segment
from src_models.io import Volume, read_volume
from src_models.io.orientation import canonical_spacing, to_canonical
from src_models.jobs import run_to_end
from src_models.models.store import load_checkpoint
from src_models.training.fine_tune import FINE_TUNE_DEFAULTS, fine_tune

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-pancreas-0001"


def stacked(volume: Volume, slices: int) -> Volume:
    """``volume`` repeated along its axial axis up to ``slices`` slices (same affine)."""
    axis = int(np.argmax(np.abs(volume.affine[2, :3])))  # file axis that runs along S
    reps = -(-slices // volume.array.shape[axis])
    array = np.concatenate([volume.array] * reps, axis=axis)
    return Volume(np.ascontiguousarray(np.take(array, range(slices), axis=axis)), volume.affine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, default=SHARED / "ct.nii.gz")
    parser.add_argument("--label", type=Path, default=SHARED / "label.nii.gz")
    parser.add_argument("--model", default="dsmsc_unet")
    parser.add_argument("--slices", type=int, default=10, help="corrected slices")
    parser.add_argument("--steps", type=int, default=FINE_TUNE_DEFAULTS.steps)
    parser.add_argument("--patch-size", type=int, default=FINE_TUNE_DEFAULTS.patch_size)
    parser.add_argument("--batch-size", type=int, default=FINE_TUNE_DEFAULTS.batch_size)
    parser.add_argument("--lr", type=float, default=FINE_TUNE_DEFAULTS.lr)
    parser.add_argument("--precision", default=FINE_TUNE_DEFAULTS.precision)
    parser.add_argument("--no-reconstruction", action="store_true", help="skip Loss 2")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resegment-slices", type=int, default=240)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ct = read_volume(args.ct)
    images, _ = to_canonical(ct.array, ct.affine)
    labels, _ = to_canonical(np.asarray(read_volume(args.label).array), ct.affine)
    spacing = canonical_spacing(ct.affine)[1:]
    with_pancreas = np.flatnonzero(labels.reshape(len(labels), -1).max(1) > 0)
    chosen = with_pancreas[np.linspace(0, len(with_pancreas) - 1, args.slices).round().astype(int)]
    held_out = np.setdiff1d(with_pancreas, chosen)
    config = replace(
        FINE_TUNE_DEFAULTS,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        lr=args.lr,
        precision=args.precision,
        reconstruction=not args.no_reconstruction,
    )
    model, meta = load_checkpoint(args.model)
    load_before = os.getloadavg()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_to_end(
        fine_tune(
            model,
            meta,
            images[chosen],
            labels[chosen],
            spacing,
            steps=args.steps,
            device="cpu",
            seed=args.seed,
            val_images_hu=images[held_out],
            val_labels=labels[held_out],
            config=config,
        )
    )
    tuned, tuned_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    volume = stacked(ct, args.resegment_slices)
    started, cpu_started = time.perf_counter(), time.process_time()
    run_to_end(segment(volume, result.model, result.meta, device="cpu", reconstruct=False))
    resegment, resegment_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    before, after = result.metrics_before["dice_pancreas"], result.metrics_after["dice_pancreas"]
    print(
        "| Recipe | Dice before -> after | Fine-tune s wall (CPU) | Re-segment s wall (CPU) "
        "| Round s wall (CPU) | Threads | Load before/after |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {args.steps} x {args.batch_size} x {args.patch_size}px, lr {args.lr:g}, "
        f"{args.precision}{', no Loss 2' * args.no_reconstruction} | {before:.3f} -> {after:.3f} "
        f"| {tuned:.0f} ({tuned_cpu:.0f}) "
        f"| {resegment:.1f} ({resegment_cpu:.1f}) | {tuned + resegment:.0f} "
        f"({tuned_cpu + resegment_cpu:.0f}) | {torch.get_num_threads()} "
        f"| {load_before:.1f}/{os.getloadavg()[0]:.1f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
