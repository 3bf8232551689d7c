"""GPU check: the default model's throughput, a 240-slice ``dsms predict`` and fine-tuning speed.

One script to run on a machine with a CUDA GPU; it finishes in under 5 minutes and prints a
Markdown section to paste into docs/benchmarks.md:

1. Slices/s of :func:`src_models.inference.engine.segment` (labels only, as ``dsms predict``
   runs it) on 512 x 512 slices of the shared CT, for every batch size and precision, with the
   peak GPU memory of each run; and the default batch and precision on whole slices
   (``crop_to_body=False``) for comparison.
2. ``python -m src_models predict`` on a 240-slice NIfTI in a fresh process: wall time.
3. Fine-tuning (:func:`src_models.training.fine_tune.fine_tune`, the Review widget's recipe) on
   10 slices: optimiser steps/s and peak GPU memory.
4. The network alone (random weights, no engine) at widths 12 (the bundled models), 16 and 24,
   each precision, in ``channels_last`` and in contiguous layout: slices/s of forward passes.
   It tests the hypothesis of the first H200 runs (docs/benchmarks.md, GPU): width 12 gives
   12 and 36 channels where most pixels are, not multiples of 8, which keeps cuDNN off the
   tensor cores. If width 16 runs faster than 12 despite 1.8 times the arithmetic, the channel
   counts are what holds the GPU back, not the engine. It runs first: it is the part a short
   device lease must not lose.
5. Where the time goes: the model alone (one forward pass per batch on the model grid, no
   engine) against the engine, the host's per-slice work that the GPU waits for (the body's
   boxes and the 3D clean-up, both scipy on the CPU), and the top operations by device time
   (``torch.profiler``) in one batch of the model.

``--device cpu --quick`` runs every part on a few slices and steps on the CPU, so the script is
known to work before a GPU is lent (``tests/test_benchmarks.py`` runs it that way).

Usage::

    .venv/bin/python benchmarks/gpu_check.py [--device cuda] [--quick] [--markdown OUT.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from src_models import build_model
from src_models.inference.body import body_boxes
from src_models.inference.devices import resolve_device
from src_models.inference.engine import default_batch_size, segment
from src_models.inference.postprocess import keep_largest_components
from src_models.inference.precision import autocast_dtype, precision_name
from src_models.inference.preprocessing import model_size
from src_models.io import Volume, read_volume
from src_models.io.orientation import canonical_spacing, to_canonical
from src_models.jobs import run_to_end
from src_models.models.store import load_checkpoint
from src_models.training.fine_tune import fine_tune

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "nih-pancreas-0001"
DEFAULT_MODEL = "dsmsc_unet"

#: What each mode measures: slices per volume, batch sizes, precisions, runs per cell, slices of
#: the ``dsms predict`` volume, fine-tuning steps.
PLANS = {
    "full": {
        "slices": 512,
        # The first H200 run gave float16 the figures of bfloat16 and batch 64 those of 32 and
        # 128 (docs/benchmarks.md), so they are left out to keep the check inside two minutes.
        "batches": (32, 128, 256),
        "precisions": ("float32", "bfloat16"),
        "repeats": 3,
        "predict_slices": 240,
        "fine_tune_steps": 60,
        "widths": (12, 16, 24),
    },
    "quick": {
        "slices": 4,
        "batches": (2,),
        "precisions": ("float32",),
        "repeats": 1,
        "predict_slices": 4,
        "fine_tune_steps": 2,
        "widths": (12,),
    },
}


def stacked(volume: Volume, slices: int) -> Volume:
    """``volume`` repeated along its axial axis up to ``slices`` slices (same affine)."""
    axis = int(np.argmax(np.abs(volume.affine[2, :3])))  # file axis that runs along S
    reps = -(-slices // volume.array.shape[axis])
    array = np.concatenate([volume.array] * reps, axis=axis)
    return Volume(np.ascontiguousarray(np.take(array, range(slices), axis=axis)), volume.affine)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> str:
    """Peak GPU memory allocated since :func:`reset_peak`, or "-" off CUDA."""
    if device.type != "cuda":
        return "-"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


def machine(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return (
        f"{name or 'CPU'}; torch {torch.__version__}, Python {platform.python_version()}, "
        f"{torch.get_num_threads()} CPU threads"
    )


def throughput(device: torch.device, plan: dict, ct: Volume) -> list[str]:
    """Engine slices/s and peak memory over batch sizes and precisions (median of repeats)."""
    model, meta = load_checkpoint(DEFAULT_MODEL)
    volume = stacked(ct, plan["slices"])
    # (batch, precision, crop to body, 3D clean-up): the sweep as ``dsms predict`` runs, then
    # the default cell on whole slices and without the clean-up, which runs on the CPU.
    cells = [(b, p, True, True) for p in plan["precisions"] for b in plan["batches"]]
    cells += [(default_batch_size(device), "auto", False, True)]
    cells += [(default_batch_size(device), "auto", True, False)]
    lines = [
        f"Engine on {plan['slices']} slices of 512 x 512 ({DEFAULT_MODEL}, bundled; labels only; "
        f"median of {plan['repeats']} runs after a warm-up):",
        "",
        "| Precision | Batch | Crop to body | 3D clean-up | Slices/s | Peak GPU memory |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for batch, precision, crop, clean_up in cells:
        options = {
            "batch_size": batch, "precision": precision, "crop_to_body": crop, "clean_up": clean_up
        }  # fmt: skip
        run_to_end(segment(volume, model, meta, device=device, reconstruct=False, **options))
        reset_peak(device)
        rates = []
        for _ in range(plan["repeats"]):
            synchronise(device)
            started = time.perf_counter()
            run_to_end(segment(volume, model, meta, device=device, reconstruct=False, **options))
            synchronise(device)
            rates.append(plan["slices"] / (time.perf_counter() - started))
        name = precision_name(autocast_dtype(device, precision))
        lines.append(
            f"| {name} | {batch} | {'yes' if crop else 'no'} | {'yes' if clean_up else 'no'} "
            f"| {statistics.median(rates):.1f} | {peak_gib(device)} |"
        )
        print(lines[-1], flush=True)
    return lines


def predict_end_to_end(device: torch.device, plan: dict, ct: Volume, workdir: Path) -> list[str]:
    """``python -m src_models predict`` on a stacked NIfTI in a fresh process."""
    volume = stacked(ct, plan["predict_slices"])
    source = workdir / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume.array, volume.affine), source)
    command = [sys.executable, "-m", "src_models", "predict", str(source)]
    command += ["-o", str(workdir / "labels.nii.gz"), "--device", str(device)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return [
        f"`dsms predict` on 512 x 512 x {plan['predict_slices']} (.nii.gz, fresh process): "
        f"{wall:.1f} s wall. Its summary: `{done.stdout.strip()}`",
    ]


def fine_tune_speed(device: torch.device, plan: dict, ct: Volume) -> list[str]:
    """Steps/s of the Review widget's fine-tuning on 10 slices of the shared CT."""
    model, meta = load_checkpoint(DEFAULT_MODEL)
    images, _ = to_canonical(ct.array, ct.affine)
    labels, _ = to_canonical(np.asarray(read_volume(SHARED / "label.nii.gz").array), ct.affine)
    chosen = np.linspace(0, len(images) - 1, 10).round().astype(int)
    steps = plan["fine_tune_steps"]
    reset_peak(device)
    result = run_to_end(
        fine_tune(
            model,
            meta,
            images[chosen],
            labels[chosen],
            canonical_spacing(ct.affine)[1:],
            steps=steps,
            device=str(device),
        )
    )
    return [
        f"Fine-tuning ({DEFAULT_MODEL}, 10 slices, default recipe): {steps} steps in "
        f"{result.elapsed_s:.1f} s, {steps / result.elapsed_s:.1f} steps/s; peak GPU memory "
        f"{peak_gib(device)}.",
    ]


def network_by_width(device: torch.device, plan: dict, ct: Volume) -> list[str]:
    """Forward passes of the default architecture alone by width, precision and memory layout.

    Random weights of the bundled model's configuration with only the width changed; the input
    is a batch at the model grid of the shared CT's 512 x 512 slices, as the engine feeds it.
    """
    default, meta = load_checkpoint(DEFAULT_MODEL)
    config = dict(default.config)
    arch = config.pop("arch")
    grid = model_size((512, 512), canonical_spacing(ct.affine)[1:], meta["preprocessing"])
    batch = min(default_batch_size(device), max(plan["batches"]))
    lines = [
        f"The network alone ({arch}, random weights, batch {batch} at the model grid "
        f"{grid[0]} x {grid[1]}, forward passes only; median of {plan['repeats']} after a "
        "warm-up), slices/s:",
        "",
        "| Width | Precision | channels_last | contiguous |",
        "| --- | --- | ---: | ---: |",
    ]
    for width in plan["widths"]:
        model = build_model(arch, **{**config, "width": width}).eval().to(device)
        for precision in plan["precisions"]:
            dtype = autocast_dtype(device, precision)
            rates = []
            for layout in (torch.channels_last, torch.contiguous_format):
                model.to(memory_format=layout)
                x = torch.rand(batch, 1, *grid, device=device).contiguous(memory_format=layout)
                rates.append(forward_rate(model, x, dtype, plan["repeats"]))
            lines.append(f"| {width} | {precision_name(dtype)} | {rates[0]:.0f} | {rates[1]:.0f} |")
            print(lines[-1], flush=True)
    return lines


def forward_rate(model: torch.nn.Module, x: torch.Tensor, dtype, repeats: int) -> float:
    """Median slices/s of ``model(x)`` over ``repeats`` timed passes, after one untimed pass
    (cuDNN's autotuner picks its kernels there, as in the engine)."""
    device = x.device
    autocast = torch.autocast(device.type, dtype, enabled=dtype is not None)
    with torch.backends.cudnn.flags(enabled=True, benchmark=True), torch.inference_mode():
        with autocast:
            model(x, reconstruct=False)
        rates = []
        for _ in range(repeats):
            synchronise(device)
            started = time.perf_counter()
            with autocast:
                model(x, reconstruct=False)
            synchronise(device)
            rates.append(len(x) / (time.perf_counter() - started))
    return statistics.median(rates)


def where_the_time_goes(device: torch.device, plan: dict, ct: Volume) -> list[str]:
    """The model alone against the engine, the host's share, and the device's top operations.

    When the engine falls short of the model alone, the host work it waits for (measured here
    one function at a time on this machine's CPU) says where; when the model alone is slow, the
    profiler's table says which operations.
    """
    model, meta = load_checkpoint(DEFAULT_MODEL)
    volume = stacked(ct, plan["slices"])
    canonical, _ = to_canonical(np.asarray(volume.array), volume.affine)
    spacing = canonical_spacing(volume.affine)
    batch = min(default_batch_size(device), len(canonical))
    dtype = autocast_dtype(device, "auto")
    grid = model_size(canonical.shape[1:], spacing[1:], meta["preprocessing"])
    model.eval().to(device, memory_format=torch.channels_last)
    x = torch.rand(batch, 1, *grid, device=device).contiguous(memory_format=torch.channels_last)

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype is not None):
            model(x, reconstruct=False)

    forward()
    synchronise(device)
    started = time.perf_counter()
    for _ in range(plan["repeats"]):
        forward()
    synchronise(device)
    model_rate = plan["repeats"] * batch / (time.perf_counter() - started)
    started = time.perf_counter()
    body_boxes(canonical, spacing[1:])
    boxes_s = time.perf_counter() - started
    result = run_to_end(segment(volume, model, meta, device=device, reconstruct=False))
    labels = result.canonical_labels
    started = time.perf_counter()
    keep_largest_components(labels)
    clean_up_s = time.perf_counter() - started
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        forward()
        synchronise(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort_by, row_limit=12)
    slices = len(canonical)
    return [
        f"Where the time goes ({DEFAULT_MODEL}, {precision_name(dtype)}, batch {batch}, model "
        f"grid {grid[0]} x {grid[1]}): the model alone {model_rate:.0f} slices/s (forward "
        f"passes only). Host work per slice on this machine's CPU: body boxes "
        f"{1000 * boxes_s / slices:.2f} ms, 3D clean-up {1000 * clean_up_s / slices:.2f} ms "
        f"(on the engine's labels of {slices} slices). Top operations of one forward pass:",
        "",
        "```",
        table,
        "```",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, cpu or auto")
    parser.add_argument("--quick", action="store_true", help="a few slices and steps only")
    parser.add_argument("--ct", type=Path, default=SHARED / "ct.nii.gz")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as error:  # no GPU here: one line, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    plan = PLANS["quick" if args.quick else "full"]
    ct = read_volume(args.ct)
    started = time.perf_counter()
    print(f"Machine: {machine(device)}.", flush=True)
    report = [f"Machine: {machine(device)}.", ""]
    report += network_by_width(device, plan, ct) + [""]
    report += throughput(device, plan, ct) + [""]
    with tempfile.TemporaryDirectory() as workdir:
        report += predict_end_to_end(device, plan, ct, Path(workdir)) + [""]
    print(report[-2], flush=True)  # each part as it ends: a check stopped at its limit keeps it
    report += fine_tune_speed(device, plan, ct) + [""]
    print(report[-2], flush=True)
    report += where_the_time_goes(device, plan, ct) + [""]
    report.append(f"Whole check: {time.perf_counter() - started:.0f} s.")
    text = "\n".join(report)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
