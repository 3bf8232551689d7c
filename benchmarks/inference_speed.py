"""Inference speed of the five models: engine vs a naive loop, GFLOP/s vs the matmul peak, RSS.

What it measures, all in one run so that the ratios compare like with like:

1. The machine's matmul peak (GFLOP/s) in the engine's precision, from large square matrix
   products timed in turn with each model.
2. For every architecture (``<arch>.pt`` from ``--checkpoints``, else the bundled checkpoint,
   else fresh weights at ``--width`` with the default preprocessing; the table says which), on
   the shared CT and on a 240-slice volume stacked from it: slices/s of
   :func:`src_models.inference.engine.segment` (labels only, as ``dsms predict`` runs) and of a
   naive
   loop on the same model (batch 1, NCHW, float32, ``torch.no_grad`` instead of
   ``inference_mode``), with the same pre- and post-processing, over the first
   ``--naive-slices`` slices.
3. Achieved GFLOP/s of the engine (model FLOPs of convolutions per slice times slices/s) as a
   share of the peak of the precision used.
4. End to end for the default model: ``python -m src_models predict`` on the 240-slice volume in
   a fresh process: the command's own "from reading to writing" time, the process wall time and
   its peak RSS (``os.wait4``).
5. ``--precision-check``: float32 against bfloat16 on the shared CT, speed and label agreement.
6. ``--monai``: the default model through MONAI's ``SliceInferer`` (float32 and bfloat16
   autocast), timed in turn with the engine with and without its crop to the body, on every
   ``--slices`` volume; needs the ``bench`` extra (``pip install -e .[bench]``).

Usage::

    .venv/bin/python benchmarks/inference_speed.py [--device cpu|cuda] [--repeats 3]
        [--models dsmsc_unet unet] [--checkpoints DIR] [--precision-check] [--monai]
        [--markdown OUT.md]

Medians over ``--repeats``; the load average before and after each block is printed, because
a shared machine's other jobs slow every figure.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from src_models import ARCHITECTURES, build_model
from src_models.inference.devices import resolve_device
from src_models.inference.engine import segment
from src_models.inference.precision import autocast_dtype
from src_models.inference.preprocessing import (
    DEFAULT_PREPROCESSING,
    labels_from_logits,
    model_size,
    to_model_input,
    to_source_size,
)
from src_models.io import Volume, read_volume
from src_models.io.orientation import canonical_spacing, to_canonical
from src_models.jobs import run_to_end
from src_models.models.checkpoints import save_checkpoint
from src_models.models.store import BUNDLED_DIR, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED_CT = REPO.parent / "shared" / "data" / "nih-pancreas-0001" / "ct.nii.gz"
DEFAULT_MODEL = "dsmsc_unet"


def machine(device: torch.device) -> str:
    """One paragraph describing where the numbers come from."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model n")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parts = [
        f"{cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}",
        f"{memory:.0f} GiB RAM",
        f"torch {torch.__version__}, Python {platform.python_version()}",
    ]
    if device.type == "cuda":
        parts.insert(0, torch.cuda.get_device_name(device))
    return "; ".join(parts)


def load() -> str:
    """The 1-minute load average, to show contention next to the timings."""
    return f"{os.getloadavg()[0]:.2f}"


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_run(device: torch.device, dtype: torch.dtype) -> tuple[Callable[[], None], float]:
    """Ten large square matrix products in ``dtype`` and their FLOPs: the ceiling of the machine.

    Timed in turn with the models (see :func:`interleaved_seconds`), so that the share of the
    peak compares the two under the same background load.
    """
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def run() -> None:
        for _ in range(10):
            torch.mm(a, b)

    return run, 10 * 2 * n**3


def axial_slices(volume: Volume) -> int:
    """Number of axial slices (the canonical first axis)."""
    return to_canonical(volume.array, volume.affine)[0].shape[0]


def stacked(volume: Volume, slices: int) -> Volume:
    """``volume`` repeated along its axial axis up to ``slices`` slices (same affine)."""
    canonical, _ = to_canonical(volume.array, volume.affine)
    axis = int(np.argmax(np.abs(volume.affine[2, :3])))  # file axis that runs along S
    reps = -(-slices // canonical.shape[0])
    array = np.concatenate([volume.array] * reps, axis=axis)
    index = [slice(None)] * 3
    index[axis] = slice(0, slices)
    return Volume(np.ascontiguousarray(array[tuple(index)]), volume.affine, source="stacked")


def model_for(
    arch: str, width: int, folder: Path | None = None
) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """``arch``'s checkpoint from ``folder``, else the bundled one, else fresh weights."""
    for directory, kind in ((folder, "checkpoint"), (BUNDLED_DIR, "bundled")):
        if directory is not None and (directory / f"{arch}.pt").is_file():
            model, meta = load_checkpoint(directory / f"{arch}.pt")
            return model, meta, f"{kind} (width {model.config['width']})"
    torch.manual_seed(0)
    model = build_model(arch, width=width)
    meta = {"arch": arch, "preprocessing": dict(DEFAULT_PREPROCESSING)}
    return model, meta, f"fresh weights (width {width})"


def gflop_per_slice(model: torch.nn.Module, size: tuple[int, int]) -> float:
    """Convolution GFLOP of one labels-only forward pass at the model's slice size."""
    x = torch.zeros(1, 1, *size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        copy.deepcopy(model).cpu()(x, reconstruct=False)
    return counter.get_total_flops() / 1e9


def naive_run(
    model: torch.nn.Module, volume: Volume, meta: dict[str, Any], slices: int, device: torch.device
) -> Callable[[], None]:
    """The loop one writes first: a slice at a time, NCHW, float32, under ``no_grad`` only."""
    naive = copy.deepcopy(model).to(device, memory_format=torch.contiguous_format).eval()
    canonical, _ = to_canonical(volume.array, volume.affine)
    spacing = canonical_spacing(volume.affine)[1:]
    prep = meta["preprocessing"]
    shape_hw = canonical.shape[1:]

    def run() -> None:
        with torch.no_grad():
            for i in range(slices):
                x = to_model_input(canonical[i : i + 1], spacing, prep).to(device)
                logits = to_source_size(naive(x).logits, shape_hw)
                labels_from_logits(logits).cpu().numpy()

    return run


def engine_run(
    model: torch.nn.Module,
    volume: Volume,
    meta: dict[str, Any],
    device: torch.device,
    batch_size: int | None = None,
    crop_to_body: bool = True,
) -> Callable[[], None]:
    """``segment`` as ``dsms predict`` runs it (labels only, default batch and precision)."""

    def run() -> None:
        run_to_end(
            segment(
                volume,
                model,
                meta,
                device=device,
                reconstruct=False,
                batch_size=batch_size,
                crop_to_body=crop_to_body,
            )
        )

    return run


def monai_run(
    model: torch.nn.Module,
    volume: Volume,
    meta: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype | None,
) -> Callable[[], None]:
    """The same model through MONAI's ``SliceInferer``, from the HU array to labels.

    What a MONAI user writes with the best settings anyone adds: the volume windowed and
    resampled by our own preprocessing (so both see identical slices), one window per axial
    slice (``roi_size`` = the model's slice size), 4 slices per batch as the engine on the CPU,
    a ``channels_last`` model under ``torch.inference_mode``, autocast in ``dtype`` (``None``:
    float32); the logits resampled back to the slice size and turned into labels 16 slices at a
    time, the engine's post-processing.
    """
    from monai.inferers import SliceInferer

    peer = copy.deepcopy(model).to(device, memory_format=torch.channels_last).eval()
    canonical, _ = to_canonical(volume.array, volume.affine)
    spacing = canonical_spacing(volume.affine)[1:]
    prep = meta["preprocessing"]
    size = model_size(canonical.shape[1:], spacing, prep)
    inferer = SliceInferer(roi_size=size, sw_batch_size=4, spatial_dim=0, progress=False)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return peer(x, reconstruct=False).logits

    def run() -> None:
        x = to_model_input(canonical, spacing, prep).to(device)  # (D, 1, h, w)
        x = x.permute(1, 0, 2, 3)[None]  # (1, 1, D, h, w)
        with torch.inference_mode():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = inferer(x, predictor)[0].permute(1, 0, 2, 3)  # (D, 2, h, w)
            for start in range(0, len(logits), 16):
                chunk = to_source_size(logits[start : start + 16].float(), canonical.shape[1:])
                labels_from_logits(chunk).cpu().numpy()

    return run


def interleaved_seconds(
    runs: dict[str, Callable[[], None]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Wall times of every run, taking turns repeat by repeat after one warm-up each.

    Taking turns exposes all runs to the same background load, so that their ratios hold even
    when other jobs come and go on a shared machine.
    """
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronise(device)
            start = time.perf_counter()
            run()
            synchronise(device)
            times[name].append(time.perf_counter() - start)
    return times


def speed_table(args: argparse.Namespace, device: torch.device, ct: Volume) -> list[str]:
    dtype = autocast_dtype(device, "auto")
    precision = str(dtype or torch.float32).removeprefix("torch.")
    peak_run, peak_flop = matmul_run(device, dtype or torch.float32)
    lines = [
        f"Engine precision: {precision}; the peak is a {precision} matmul timed in turn with each "
        f"model. Cells: median (best) of {args.repeats} runs.",
        "",
        "| Model | Weights | Slices | GFLOP/slice | Engine slices/s | Naive slices/s | Ratio "
        f"| Engine GFLOP/s | {precision} peak GFLOP/s | % of peak | Load before/after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    volumes = {n: ct if n == axial_slices(ct) else stacked(ct, n) for n in args.slices}
    for arch in args.models:
        model, meta, weights = model_for(arch, args.width, args.checkpoints)
        spacing = canonical_spacing(ct.affine)[1:]
        size = model_size(ct.shape[:2], spacing, meta["preprocessing"])
        gflop = gflop_per_slice(model, size)
        runs = {"peak": peak_run, "naive": naive_run(model, ct, meta, args.naive_slices, device)}
        runs |= {n: engine_run(model, volume, meta, device) for n, volume in volumes.items()}
        before = load()
        times = interleaved_seconds(runs, args.repeats, device)
        after = load()
        peak = statistics.median(peak_flop / t / 1e9 for t in times.pop("peak"))
        naive = [args.naive_slices / t for t in times.pop("naive")]
        for slices, seconds in times.items():
            rates = [slices / t for t in seconds]
            rate, best = statistics.median(rates), max(rates)
            ratio = rate / statistics.median(naive)
            lines.append(
                f"| {arch} | {weights} | {slices} | {gflop:.2f} | {rate:.1f} ({best:.1f}) | "
                f"{statistics.median(naive):.1f} ({max(naive):.1f}) | {ratio:.1f}x | "
                f"{gflop * rate:.0f} ({gflop * best:.0f}) | {peak:.0f} | "
                f"{100 * gflop * rate / peak:.0f} % | {before}/{after} |"
            )
            print(lines[-1], flush=True)
    return lines


def end_to_end(args: argparse.Namespace, ct: Volume, workdir: Path) -> list[str]:
    """``dsms predict`` on a 240-slice NIfTI in fresh processes: time and peak RSS."""
    volume = stacked(ct, 240)
    source = workdir / "ct240.nii.gz"
    nib.save(nib.Nifti1Image(volume.array, volume.affine), source)
    model, meta, weights = model_for(DEFAULT_MODEL, args.width, args.checkpoints)
    checkpoint = str(meta.get("path", DEFAULT_MODEL))
    if "path" not in meta:
        checkpoint = str(
            save_checkpoint(
                workdir / f"{DEFAULT_MODEL}.pt", model, preprocessing=meta["preprocessing"]
            )
        )
    command = [sys.executable, "-m", "src_models", "predict", str(source)]
    command += ["-o", str(workdir / "labels.nii.gz"), "--model", checkpoint]
    command += ["--device", args.device, "--overwrite"]  # the same file each repeat
    runs = []
    for _ in range(args.repeats):
        before = load()
        start = time.perf_counter()
        with open(workdir / "stderr.txt", "w+", encoding="utf-8") as stderr:
            process = subprocess.Popen(
                command, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
            summary = process.stdout.read().strip()
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - start
            process.stdout.close()
            if status != 0:
                stderr.seek(0)
                raise RuntimeError(f"{' '.join(command)} failed:\n{stderr.read()}")
        inner = float(summary.rsplit(";", 1)[1].split("s from")[0])
        runs.append((inner, wall, usage.ru_maxrss / 1024, before, load(), summary))
        print(summary, flush=True)
    inner, wall, rss = (statistics.median(r[i] for r in runs) for i in range(3))
    return [
        f"`{' '.join(['python', *command[1:]])}` ({DEFAULT_MODEL}, {weights}, "
        f"512 x 512 x 240 .nii.gz, {args.repeats} runs):",
        "",
        "| Read to labels written (median) | Process wall (median) | Peak RSS (median) "
        "| Load before/after |",
        "| --- | --- | --- | --- |",
        f"| {inner:.1f} s | {wall:.1f} s | {rss:.0f} MiB | "
        f"{', '.join(f'{r[3]}/{r[4]}' for r in runs)} |",
        "",
        f"Last summary line: `{runs[-1][5]}`",
    ]


def batch_sweep(args: argparse.Namespace, device: torch.device, ct: Volume) -> list[str]:
    """Slices/s of the default model at several batch sizes, taking turns."""
    model, meta, weights = model_for(DEFAULT_MODEL, args.width, args.checkpoints)
    runs = {b: engine_run(model, ct, meta, device, b) for b in args.batch_sweep}
    times = interleaved_seconds(runs, args.repeats, device)
    slices = axial_slices(ct)
    cells = [f"{statistics.median(slices / t for t in times[b]):.1f}" for b in args.batch_sweep]
    return [
        f"Batch size ({DEFAULT_MODEL}, {weights}, {slices} slices, median slices/s of "
        f"{args.repeats} runs, load {load()}):",
        "",
        "| " + " | ".join(f"batch {b}" for b in args.batch_sweep) + " |",
        "| " + " | ".join("---" for _ in args.batch_sweep) + " |",
        "| " + " | ".join(cells) + " |",
    ]


def precision_check(args: argparse.Namespace, device: torch.device, ct: Volume) -> list[str]:
    """float32 vs bfloat16 autocast on the shared CT: speed and how far the labels agree."""
    model, meta, weights = model_for(DEFAULT_MODEL, args.width, args.checkpoints)
    results = {}
    for precision in ("float32", "bfloat16"):
        seconds = []
        for _ in range(args.repeats):
            result = run_to_end(
                segment(ct, model, meta, device=device, reconstruct=False, precision=precision)
            )
            seconds.append(result.stats.seconds)
        results[precision] = (statistics.median(seconds), result.canonical_labels)
    (t32, l32), (t16, l16) = results["float32"], results["bfloat16"]
    p32, p16 = l32 > 0, l16 > 0
    dice = 2 * np.count_nonzero(p32 & p16) / max(1, np.count_nonzero(p32) + np.count_nonzero(p16))
    differ = np.count_nonzero(l32 != l16)
    return [
        f"float32 vs bfloat16 on the shared CT ({DEFAULT_MODEL}, {weights}, {axial_slices(ct)} "
        f"slices, {args.repeats} runs):",
        "",
        "| float32 s | bfloat16 s | Speed-up | Voxels differing | Pancreas voxels fp32 / bf16 "
        "| Dice(bf16, fp32) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {t32:.2f} | {t16:.2f} | {t32 / t16:.2f}x | {differ} ({100 * differ / l32.size:.4f} %) "
        f"| {np.count_nonzero(p32)} / {np.count_nonzero(p16)} | {dice:.4f} |",
    ]


def monai_table(args: argparse.Namespace, device: torch.device, ct: Volume) -> list[str]:
    """The engine, with and without the crop, against MONAI's ``SliceInferer``, taking turns."""
    model, meta, weights = model_for(DEFAULT_MODEL, args.width, args.checkpoints)
    bf16 = autocast_dtype(device, "bfloat16")
    lines = [
        f"Engine against MONAI `SliceInferer` ({DEFAULT_MODEL}, {weights}; median (best) "
        f"slices/s of {args.repeats} runs taken in turn; ratios of medians):",
        "",
        "| Slices | Engine (crop to body) | Engine (whole slices) | MONAI float32 "
        "| MONAI bfloat16 | Engine / faster MONAI | Crop speed-up | Load before/after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for slices in args.slices:
        volume = ct if slices == axial_slices(ct) else stacked(ct, slices)
        runs = {
            "crop": engine_run(model, volume, meta, device),
            "whole": engine_run(model, volume, meta, device, crop_to_body=False),
            "monai32": monai_run(model, volume, meta, device, None),
            "monai16": monai_run(model, volume, meta, device, bf16),
        }
        before = load()
        times = interleaved_seconds(runs, args.repeats, device)
        rates = {name: [slices / t for t in seconds] for name, seconds in times.items()}
        median = {name: statistics.median(r) for name, r in rates.items()}
        cells = [f"{median[name]:.1f} ({max(rates[name]):.1f})" for name in runs]
        monai = max(median["monai32"], median["monai16"])
        lines.append(
            f"| {slices} | {' | '.join(cells)} | {median['crop'] / monai:.2f}x "
            f"| {median['crop'] / median['whole']:.2f}x | {before}/{load()} |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--slices", type=int, nargs="+", default=[101, 240])
    parser.add_argument("--naive-slices", type=int, default=8)
    parser.add_argument(
        "--width", type=int, default=12, help="width of fresh models (the bundled width)"
    )
    parser.add_argument("--ct", type=Path, default=SHARED_CT)
    parser.add_argument(
        "--checkpoints", type=Path, help="folder of <arch>.pt to use before the bundled ones"
    )
    parser.add_argument("--skip-speed", action="store_true", help="skip the per-model table")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--precision-check", action="store_true")
    parser.add_argument(
        "--monai", action="store_true", help="also time MONAI's SliceInferer (extra 'bench')"
    )
    parser.add_argument(
        "--batch-sweep", type=int, nargs="+", metavar="N", help="also time these batch sizes"
    )
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    device = resolve_device(args.device)
    ct = read_volume(args.ct)
    report = [f"Machine: {machine(device)}.", ""]
    print(report[0], flush=True)
    if not args.skip_speed:
        report += speed_table(args, device, ct) + [""]
    if args.batch_sweep:
        report += batch_sweep(args, device, ct) + [""]
        print("\n".join(report[-6:]), flush=True)
    if args.precision_check:
        report += precision_check(args, device, ct) + [""]
        print("\n".join(report[-6:]), flush=True)
    if args.monai:
        report += monai_table(args, device, ct) + [""]
    if not args.skip_end_to_end:
        with tempfile.TemporaryDirectory() as workdir:
            report += end_to_end(args, ct, Path(workdir)) + [""]
    text = "\n".join(report)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
