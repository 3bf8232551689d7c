"""How well fill between slices guesses a slice from two labelled ones, on many patients.

The NIH Pancreas-CT slice sets (``nih-pancreas-slices``: 1 to 11 labelled slices per patient,
each with its instance number) give, for every three labelled slices of a patient at most
``--max-gap`` slices apart, a test of interpolation: fill the middle one from the outer two
(:func:`src_models.fill_between_slices` on a stack with the two known slices at the ends) and
score its pancreas Dice against the manual label. Printed for several values of
:data:`src_models.fill.GROWTH` (0: plain shape-based interpolation). Example::

    python benchmarks/fill_between.py --slices ../shared/data/nih-pancreas-slices

Prints a Markdown table for the module doc of ``src_models/fill.py`` and docs/correction-loop.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src_models import fill  # noqa: E402
from src_models.metrics import structure_dice  # noqa: E402


def triples(folder: Path, max_gap: int) -> list[tuple[str, np.ndarray, int, np.ndarray]]:
    """``(patient, stack, k, label)``: the outer masks at the ends of a stack, and slice ``k``'s."""
    found = []
    for path in sorted(folder.glob("*.npz")):
        data = np.load(path)
        order = np.argsort(data["instance"])
        instances, masks = data["instance"][order], data["mask"][order] > 0
        for i in range(len(instances) - 2):
            gap = int(instances[i + 2] - instances[i])
            if gap > max_gap or not (masks[i].any() and masks[i + 1].any() and masks[i + 2].any()):
                continue
            stack = np.zeros((gap + 1, *masks[i].shape), dtype=np.uint8)
            stack[0], stack[-1] = masks[i], masks[i + 2]
            found.append((path.stem, stack, int(instances[i + 1] - instances[i]), masks[i + 1]))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--slices", type=Path, default=ROOT.parent / "shared/data/nih-pancreas-slices"
    )
    parser.add_argument("--max-gap", type=int, default=20, help="slices between the outer two")
    parser.add_argument("--growth", type=float, nargs="+", default=[0.0, 0.2, 0.3, 0.4, 0.5])
    args = parser.parse_args()
    cases = triples(args.slices, args.max_gap)
    patients = len({patient for patient, *_ in cases})
    print(f"{len(cases)} triples of {patients} patients, outer slices at most {args.max_gap} apart")
    print("| GROWTH | mean pancreas Dice of the middle slice |")
    print("| ---: | ---: |")
    default = fill.GROWTH
    try:
        for growth in args.growth:
            fill.GROWTH = growth
            scores = [
                structure_dice(
                    fill.fill_between_slices(stack, [0, len(stack) - 1], axis=0)[k] > 0, label
                )
                for _, stack, k, label in cases
            ]
            mark = " (default)" if growth == default else ""
            print(f"| {growth:g}{mark} | {np.mean(scores):.3f} |")
    finally:
        fill.GROWTH = default
    return 0


if __name__ == "__main__":
    sys.exit(main())
