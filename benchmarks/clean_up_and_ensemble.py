"""Does the 3D clean-up help, and does the ensemble win? Pancreas Dice on the shared NIH volume.

Each bundled model segments ``nih-pancreas-0001`` (101 slices; none of the bundled models trained
on it) once with probabilities; from those the script scores, against the manual label, the raw
labels, the labels after :func:`~src_models.inference.postprocess.keep_largest_components`, and
the mean probability of all five models (what ``--model ensemble`` computes) and of chosen
subsets, with and without the clean-up. It also times each model, so the ensemble's cost is the
sum of the members'. Example::

    python benchmarks/clean_up_and_ensemble.py --data ../shared/data/nih-pancreas-0001

One patient is one patient: the table says what helps here, docs/models.md says how far to trust it.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src_models import load_checkpoint, read_volume  # noqa: E402
from src_models.inference.engine import segment  # noqa: E402
from src_models.inference.postprocess import largest_component  # noqa: E402
from src_models.io.orientation import to_canonical  # noqa: E402
from src_models.jobs import run_to_end  # noqa: E402
from src_models.nets.registry import ARCHITECTURES  # noqa: E402


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    total = prediction.sum() + reference.sum()
    return float(2 * (prediction & reference).sum() / total) if total else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/nih-pancreas-0001")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ct = read_volume(args.data / "ct.nii.gz")
    label = read_volume(args.data / "label.nii.gz")
    reference = to_canonical(label.array, label.affine)[0] > 0
    probabilities, seconds = {}, {}
    for arch in ARCHITECTURES:
        model, meta = load_checkpoint(arch)
        started = time.perf_counter()
        result = run_to_end(
            segment(ct, model, meta, device="cpu", reconstruct=False, probabilities=True,
                    clean_up=False)
        )  # fmt: skip
        seconds[arch] = time.perf_counter() - started
        probabilities[arch] = result.canonical_probabilities[..., 0].astype(np.float32)
    print(f"torch {torch.__version__}, {args.threads} threads, {ct.shape} from {args.data}\n")
    print("| model | seconds | Dice raw | Dice after clean-up |")
    print("|---|---|---|---|")
    rows = [((arch,), seconds[arch]) for arch in ARCHITECTURES]
    rows += [(tuple(ARCHITECTURES), sum(seconds.values()))]
    rows += [(pair, seconds[pair[0]] + seconds[pair[1]])
             for pair in itertools.combinations(ARCHITECTURES, 2)]  # fmt: skip
    for members, cost in rows:
        mask = np.mean([probabilities[m] for m in members], axis=0) > 0.5
        name = members[0] if len(members) == 1 else "mean of " + " + ".join(members)
        print(f"| {name} | {cost:.1f} | {dice(mask, reference):.3f} | "
              f"{dice(largest_component(mask), reference):.3f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
