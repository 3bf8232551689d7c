"""Test-time variants: does averaging a model's probabilities over cheap variants of its input help?

Issue 12 asks to measure test-time variants for the bundled models. Each variant is one more
full pass of the engine (``segment``), so a variant must win clearly to be worth its cost. The
variants:

- ``finer`` / ``coarser``: the slices resampled 1.15 times finer or coarser than the model's
  training resolution (``preprocessing["spacing_mm"]`` divided or multiplied by 1.15), the
  probabilities back on the case's own grid;
- ``flip``: the slices mirrored left-right, the probabilities mirrored back (the models never
  saw a mirrored abdomen: a control).

Combinations average the pancreas probability of their members and threshold at 0.5, as
``--model ensemble`` does across models; full volumes are then cleaned up in 3D as
``dsms predict`` does (slice sets are unrelated slices and are not). One more row fills the
holes of the plain pass's pancreas in each slice (``scipy.ndimage.binary_fill_holes``), the
other 3D post-processing issue 12 names. The score is pancreas Dice
per patient on the real patients the model never trained on (those not in its provenance's
``train_patients``), the mean over the slice-set patients and the volume's apart.

Usage::

    python benchmarks/test_time_variants.py --model /tmp/first-release-dsmsc.pt [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from src_models.commands.evaluate import _CanonicalVolume
from src_models.inference.engine import segment
from src_models.inference.postprocess import keep_largest_components
from src_models.inference.preprocessing import FALLBACK_SPACING_MM
from src_models.jobs import run_to_end
from src_models.metrics import structure_dice
from src_models.models.store import load_checkpoint
from src_models.training.data import find_cases, load_case

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: name -> (factor on the model's spacing, mirrored left-right)
VARIANTS = {
    "plain": (1.0, False),
    "finer": (1 / 1.15, False),
    "coarser": (1.15, False),
    "flip": (1.0, True),
}

#: What is scored: the plain pass alone, then averages of several passes.
COMBINATIONS = {
    "plain (today)": ("plain",),
    "plain + finer": ("plain", "finer"),
    "plain + coarser": ("plain", "coarser"),
    "plain + finer + coarser": ("plain", "finer", "coarser"),
    "plain + flip": ("plain", "flip"),
}


HOLES_FILLED = "plain, holes filled in each slice"


def pancreas_probability(case, model, meta: dict, factor: float, mirrored: bool) -> np.ndarray:
    """The pancreas probability (slices, rows, columns) of one variant, on the case's grid."""
    arrays = load_case(case)
    spacing = arrays.spacing or (1.0, FALLBACK_SPACING_MM, FALLBACK_SPACING_MM)
    image = arrays.image_hu[..., ::-1] if mirrored else arrays.image_hu
    variant = copy.deepcopy(meta)
    variant["preprocessing"]["spacing_mm"] = meta["preprocessing"]["spacing_mm"] * factor
    volume = _CanonicalVolume(np.ascontiguousarray(image), spacing)
    result = run_to_end(
        segment(volume, model, variant, device="cpu", reconstruct=False, probabilities=True)
    )
    probability = result.canonical_probabilities[..., 0].astype(np.float32)
    return probability[..., ::-1] if mirrored else probability


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint path or bundled name")
    parser.add_argument("--slices", type=Path, default=DATA / "nih-pancreas-slices")
    parser.add_argument("--volume", type=Path, default=DATA / "nih-pancreas-0001")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, meta = load_checkpoint(args.model)
    seen = set(meta.get("provenance", {}).get("train_patients", []))
    real = find_cases(args.slices) + find_cases(args.volume)
    cases = [c for c in real if c.patient_id not in seen]
    print(f"{len(cases)} patients unseen by {args.model}", flush=True)
    rows = [*COMBINATIONS, HOLES_FILLED]
    scores: dict[str, dict[str, float]] = {name: {} for name in rows}
    seconds = {name: 0.0 for name in VARIANTS}
    for case in cases:
        reference = load_case(case).labels > 0
        probabilities = {}
        for name, (factor, mirrored) in VARIANTS.items():
            started = time.process_time()
            probabilities[name] = pancreas_probability(case, model, meta, factor, mirrored)
            seconds[name] += time.process_time() - started
        for combination, members in COMBINATIONS.items():
            mean = np.mean([probabilities[m] for m in members], axis=0)
            labels = (mean > 0.5).astype(np.uint8)
            if case.kind != "npz":
                labels = keep_largest_components(labels)
            scores[combination][case.patient_id] = structure_dice(labels > 0, reference)
            if members == ("plain",):
                filled = np.stack([ndimage.binary_fill_holes(s) for s in labels > 0])
                scores[HOLES_FILLED][case.patient_id] = structure_dice(filled, reference)
        line = ", ".join(f"{c} {scores[c][case.patient_id]:.3f}" for c in rows)
        print(f"{case.patient_id}: {line}", flush=True)
    print("\n| test-time variants | mean per-patient Dice, slice sets (n) | full volume(s) |")
    print("| --- | ---: | ---: |")
    volumes = [c.patient_id for c in cases if c.kind != "npz"]
    slice_sets = [c.patient_id for c in cases if c.kind == "npz"]
    for combination in rows:
        per = scores[combination]
        flat = statistics.mean(per[p] for p in slice_sets) if slice_sets else float("nan")
        vol = ", ".join(f"{per[p]:.3f}" for p in volumes)
        print(f"| {combination} | {flat:.3f} ({len(slice_sets)}) | {vol} |")
    cost = ", ".join(f"{name} {s:.0f}" for name, s in seconds.items())
    print(f"\nCPU seconds per variant over all cases: {cost}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
