"""Simulate a radiologist correcting the shared CT, round by round, and measure what it ends with.

On the NIH volume 0001 (which no bundled model saw) with the bundled default model: rounds of
picking slices (by ``dsms triage``'s ranking, evenly spaced over the pancreas, or at random),
replacing them with the manual reference (the "correction"), then one :func:`src_models.refine.
refine` round (guarded fine-tuning from the latest model, fill between, re-segment). Reported
after 0, 5, 10 and 20 corrected slices: pancreas Dice over the whole volume (what the user ends
with, corrected slices included), Dice on the untouched slices, and cumulative CPU seconds of the
process; beside it, interpolation alone (fill between the same evenly spaced slices, nothing
beyond them) and fine-tuning alone (the round's model, corrected slices pasted in).

Usage::

    python benchmarks/correction_loop.py [--seconds 40] [--plot docs/images/correction-loop.png]
    python benchmarks/correction_loop.py --goal     # one dsms-refine round, 10 slices, defaults
    python benchmarks/correction_loop.py --ranking  # where to correct: triage against even spacing
    python benchmarks/correction_loop.py --choice-round  # the same, 10 slices and one round
    python benchmarks/correction_loop.py --placements 200 400  # round length by placement

Prints a Markdown table for docs/benchmarks.md; with matplotlib installed, ``--plot`` draws it.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from src_models import fill_between_slices, load_checkpoint, read_labels, read_volume
from src_models.inference.engine import segment
from src_models.inference.triage import triage
from src_models.io.orientation import (
    canonical_spacing,
    from_canonical,
    head_feet_axis,
    to_canonical,
)
from src_models.jobs import run_to_end
from src_models.metrics import structure_dice
from src_models.refine import refine

REPO = Path(__file__).resolve().parents[1]
CASE = REPO.parent / "shared" / "data" / "nih-pancreas-0001"
COUNTS = (5, 10, 20)


def even_slices(extent: np.ndarray, count: int) -> list[int]:
    """``count`` slices spread evenly from the first to the last slice of ``extent``."""
    positions = np.linspace(0, len(extent) - 1, count).round().astype(int)
    return sorted({int(extent[i]) for i in positions})


def pick(
    strategy: str, taken: list[int], count: int, extent: np.ndarray, ranking, rng
) -> list[int]:
    """The corrected slices after adding slices up to ``count`` by ``strategy`` (canonical)."""
    if strategy == "even":
        return even_slices(extent, count)
    if strategy == "triage":
        order = [k for k in ranking if k not in taken]
    else:
        order = [int(k) for k in rng.permutation(extent) if k not in taken]
    return sorted(taken + order[: count - len(taken)])


def scores(labels: np.ndarray, reference: np.ndarray, corrected: list[int]) -> tuple[float, float]:
    """(whole-volume Dice, Dice on the slices not corrected)."""
    untouched = np.setdiff1d(np.arange(len(reference)), corrected)
    return (
        structure_dice(labels, reference),
        structure_dice(labels[untouched], reference[untouched]),
    )


def loop(strategy: str, volume, reference, extent, ranking, args) -> list[dict]:
    """Rounds of one strategy; each round refines from the model the last round ended with."""
    model, meta = load_checkpoint(args.model)
    rng = np.random.default_rng(args.seed)
    taken: list[int] = []
    rows = []
    for count in COUNTS:
        taken = pick(strategy, taken, count, extent, ranking, rng)
        user = np.zeros_like(reference)  # the user's labels: only the corrections count
        user[taken] = reference[taken]
        started = time.process_time()
        result = run_to_end(
            refine(volume, from_canonical(user, volume.affine), file_slices(taken, volume),
                   model, meta, seconds=args.seconds, device="cpu", seed=args.seed)
        )  # fmt: skip
        cpu = time.process_time() - started
        model, meta = result.fine_tune.model, result.fine_tune.meta
        whole, untouched = scores(result.canonical_labels, reference, taken)
        model_only = run_to_end(segment(volume, model, meta, device="cpu", reconstruct=False))
        alone = model_only.canonical_labels.copy()
        alone[taken] = reference[taken]
        rows.append(
            {
                "strategy": strategy,
                "corrected": count,
                "whole": whole,
                "untouched": untouched,
                "model_alone": scores(alone, reference, taken)[0],
                "cpu_s": cpu,
                "steps": result.fine_tune.steps,
                "kept_previous": result.fine_tune.kept_previous,
            }
        )
        print(rows[-1], flush=True)
    for i in range(1, len(rows)):
        rows[i]["cpu_s"] += rows[i - 1]["cpu_s"]
    return rows


def file_slices(canonical: list[int], volume) -> list[int]:
    """Canonical slice numbers as indices along the file's head-feet axis (as dsms takes them)."""
    axis, flipped = head_feet_axis(volume.affine)
    length = volume.array.shape[axis]
    return [length - 1 - k if flipped else k for k in canonical]


def goal(volume, reference: np.ndarray, extent: np.ndarray, model: str) -> None:
    """The issue's goal run: ``dsms refine`` with its defaults after 10 evenly spaced slices.

    The labels file holds the bundled model's prediction with the 10 slices replaced by the
    reference, as a user's file would; timed from the command's start to its end (wall).
    """
    import tempfile

    from src_models.cli import main as dsms
    from src_models.io import write_labels

    bundled, meta = load_checkpoint(model)
    prediction = run_to_end(segment(volume, bundled, meta, reconstruct=False)).canonical_labels
    corrected = even_slices(extent, 10)
    user = prediction.copy()
    user[corrected] = reference[corrected]
    with tempfile.TemporaryDirectory() as folder:
        labels = Path(folder) / "labels.nii.gz"
        write_labels(labels, np.ascontiguousarray(from_canonical(user, volume.affine)), volume)
        out = Path(folder) / "refined.nii.gz"
        argv = ["refine", str(CASE / "ct.nii.gz"), "--labels", str(labels), "--corrected",
                ",".join(map(str, file_slices(corrected, volume))), "-o", str(out),
                "--model", model]  # fmt: skip
        wall, cpu = time.perf_counter(), time.process_time()
        assert dsms(argv) == 0
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        refined = to_canonical(np.asarray(read_labels(out).array), volume.affine)[0]
    whole, untouched = scores(refined, reference, corrected)
    print(
        f"goal: 10 corrected slices {corrected}, one dsms refine round: whole-volume Dice "
        f"{whole:.3f}, untouched {untouched:.3f}; {wall:.0f} s wall, {cpu:.0f} CPU s"
    )


def ranking(volume, reference: np.ndarray, extent: np.ndarray, model: str) -> None:
    """Which slices to correct, without fine-tuning: Dice after the first n of each choice.

    The corrections are the manual label on the chosen slices; the rest is what ``dsms refine``
    makes of them with the model's labels and no fine-tuning (:func:`src_models.refine.combine`):
    fill between, the model tapering beyond. Choices: ``dsms triage``'s ranking, slices evenly
    spaced over the model's pancreas, and evenly spaced over the true pancreas (which a user
    only gets by finding where the organ starts and ends).
    """
    from src_models.inference.triage import _largest_component
    from src_models.refine import combine

    bundled, meta = load_checkpoint(model)
    result = run_to_end(triage(volume, bundled, meta, device="cpu"))
    spacing = canonical_spacing(volume.affine)
    main = _largest_component(result.labels > 0)
    predicted = np.flatnonzero(main.reshape(len(main), -1).any(axis=1))
    print(f"pancreas: true slices {extent[0]}-{extent[-1]}, model's {predicted[0]}-{predicted[-1]}")
    print("| slices | triage | even over the model's pancreas | even over the true pancreas |")
    print("| ---: | ---: | ---: | ---: |")
    for count in (5, 10, 15, 20):
        row = []
        for chosen in (sorted(result.order[:count]), even_slices(predicted, count),
                       even_slices(extent, count)):  # fmt: skip
            user = np.zeros_like(reference)
            user[chosen] = reference[chosen]
            row.append(structure_dice(combine(user, chosen, result.labels, spacing), reference))
        print(f"| {count} | " + " | ".join(f"{v:.3f}" for v in row) + " |")


def choice_round(volume, reference: np.ndarray, extent: np.ndarray, model: str) -> None:
    """Where to correct, with the round: one :func:`refine` from the model after 10 slices.

    As a user of ``dsms triage`` then ``dsms refine`` would: the labels are the model's with the
    10 slices replaced by the reference; 200 steps whatever the machine's load (the round's
    default, which its 40 s cap fits on an idle 2-core CPU). Choices as for ``--ranking``.
    """
    from src_models.inference.triage import _largest_component

    bundled, meta = load_checkpoint(model)
    result = run_to_end(triage(volume, bundled, meta, device="cpu"))
    main = _largest_component(result.labels > 0)
    predicted = np.flatnonzero(main.reshape(len(main), -1).any(axis=1))
    print("| slices chosen | slices | whole-volume Dice | untouched slices | round's model |")
    print("| --- | --- | ---: | ---: | --- |")
    choices = {
        "by dsms triage": sorted(result.order[:10]),
        "evenly over the true pancreas": even_slices(extent, 10),
        "evenly over the model's pancreas": even_slices(predicted, 10),
    }
    for name, chosen in choices.items():
        tuned, tuned_meta = load_checkpoint(model)
        user = result.labels.copy()
        user[chosen] = reference[chosen]
        job = refine(volume, from_canonical(user, volume.affine), file_slices(chosen, volume),
                     tuned, tuned_meta, steps=200, seconds=1e6, device="cpu")  # fmt: skip
        round_ = run_to_end(job)
        whole, untouched = scores(round_.canonical_labels, reference, chosen)
        kept = "previous kept" if round_.fine_tune.kept_previous else "learnt"
        print(f"| {name} | {chosen} | {whole:.3f} | {untouched:.3f} | {kept} |", flush=True)


def placements(volume, reference: np.ndarray, extent: np.ndarray, model: str, steps) -> None:
    """One round's length against where the 10 corrections lie: whole-volume Dice after one
    :func:`refine` round of each of ``steps`` steps (no time cap, so the machine's load does not
    change the figures), with 10 evenly spaced corrections shifted by -2 to 2 slices."""
    base, meta = load_checkpoint(model)
    prediction = run_to_end(segment(volume, base, meta, device="cpu", reconstruct=False))
    print("| shift | " + " | ".join(f"{n} steps: whole (untouched), CPU s" for n in steps) + " |")
    print("| ---: |" + " ---: |" * len(steps))
    means = {n: [] for n in steps}
    for shift in (-2, -1, 0, 1, 2):
        chosen = [int(np.clip(k + shift, extent[0], extent[-1])) for k in even_slices(extent, 10)]
        cells = []
        for n in steps:
            tuned, tuned_meta = load_checkpoint(model)
            user = prediction.canonical_labels.copy()
            user[chosen] = reference[chosen]
            started = time.process_time()
            job = refine(volume, from_canonical(user, volume.affine), file_slices(chosen, volume),
                         tuned, tuned_meta, steps=n, seconds=1e6, device="cpu")  # fmt: skip
            whole, untouched = scores(run_to_end(job).canonical_labels, reference, chosen)
            means[n].append(whole)
            cells.append(f"{whole:.4f} ({untouched:.4f}), {time.process_time() - started:.0f}")
        print(f"| {shift} | " + " | ".join(cells) + " |", flush=True)
    print("| mean | " + " | ".join(f"{np.mean(means[n]):.4f}" for n in steps) + " |")


def interpolation_alone(reference: np.ndarray, extent: np.ndarray) -> dict[int, float]:
    """Whole-volume Dice of fill between evenly spaced reference slices, nothing beyond."""
    out = {}
    for count in COUNTS:
        known = even_slices(extent, count)
        given = np.zeros_like(reference)
        given[known] = reference[known]
        out[count] = structure_dice(fill_between_slices(given, known, axis=0), reference)
    return out


def table(rows: list[dict], interpolation: dict[int, float], baseline: float) -> str:
    lines = [
        "| strategy | corrected slices | whole-volume Dice | Dice on untouched slices | "
        "fine-tuning alone | interpolation alone (even) | cumulative CPU s | steps per round |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| (bundled model) | 0 | {baseline:.3f} | {baseline:.3f} | | | | |",
    ]
    for row in rows:
        kept = " (kept previous)" if row["kept_previous"] else ""
        lines.append(
            f"| {row['strategy']} | {row['corrected']} | {row['whole']:.3f} | "
            f"{row['untouched']:.3f} | {row['model_alone']:.3f} | "
            f"{interpolation[row['corrected']]:.3f} | {row['cpu_s']:.0f} | "
            f"{row['steps']}{kept} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], interpolation: dict[int, float], baseline: float, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: table only")
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == strategy]
        axis.plot([0] + [r["corrected"] for r in mine], [baseline] + [r["whole"] for r in mine],
                  marker="o", label=f"loop, {strategy}")  # fmt: skip
    axis.plot(list(interpolation), list(interpolation.values()), "k--", marker="s",
              label="interpolation alone (even)")  # fmt: skip
    axis.set_xlabel("corrected slices")
    axis.set_ylabel("whole-volume pancreas Dice")
    axis.set_title("NIH Pancreas-CT 0001, bundled dsmsc_unet, 2-core CPU")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dsmsc_unet")
    parser.add_argument("--seconds", type=float, default=40.0, help="fine-tuning per round")
    parser.add_argument("--strategies", nargs="+", default=["triage", "even", "random"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", type=Path, help="PNG of whole-volume Dice against slices")
    parser.add_argument("--goal", action="store_true", help="only the one-round goal run")
    parser.add_argument("--ranking", action="store_true", help="only the choice of slices")
    parser.add_argument(
        "--choice-round", action="store_true", help="10 chosen slices, then one refine round"
    )
    parser.add_argument(
        "--placements", type=int, nargs="+", metavar="STEPS",
        help="one round of each length over 5 placements of 10 evenly spaced slices",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    volume = read_volume(CASE / "ct.nii.gz")
    reference = np.ascontiguousarray(
        to_canonical(np.asarray(read_labels(CASE / "label.nii.gz").array), volume.affine)[0]
    )
    extent = np.flatnonzero(reference.reshape(len(reference), -1).any(axis=1))
    if args.goal:
        goal(volume, reference, extent, args.model)
        return
    if args.ranking:
        ranking(volume, reference, extent, args.model)
        return
    if args.choice_round:
        choice_round(volume, reference, extent, args.model)
        return
    if args.placements:
        placements(volume, reference, extent, args.model, args.placements)
        return
    model, meta = load_checkpoint(args.model)
    started = time.process_time()
    first = run_to_end(triage(volume, model, meta, device="cpu"))
    print(f"triage: {time.process_time() - started:.0f} CPU s")
    baseline = structure_dice(first.labels, reference)  # canonical, like reference
    interpolation = interpolation_alone(reference, extent)
    rows = []
    for strategy in args.strategies:
        rows += loop(strategy, volume, reference, extent, first.order, args)
    print(table(rows, interpolation, baseline))
    if args.plot:
        plot(rows, interpolation, baseline, args.plot)


if __name__ == "__main__":
    main()
