"""Train the five bundled checkpoints (``src_models/models/weights/<arch>.pt``) and evaluate them.

The bundled models are trained on the little real CT this project may redistribute: the 2D
slice sets of NIH Pancreas-CT patients (``nih-pancreas-slices``) plus seeded phantoms (the only
source of tumour labels). Patients are held out for an honest measurement: a few slice-set
patients for checkpoint selection (validation), more for the test figures, and the one full
volume (``nih-pancreas-0001``) entirely, so its Dice is an unseen-patient 3D figure.

Each architecture trains for a fixed wall-time budget (the learning-rate schedule follows the
clock), so the whole run ends on time however busy the machine is. Example::

    python scripts/train_bundled.py \\
        --slices ../shared/data/nih-pancreas-slices --volume ../shared/data/nih-pancreas-0001 \\
        --work-dir /tmp/dsms-bundled --out-dir src_models/models/weights

Weights are stored as float16 (about 4 MB for width 12) and load into float32 models.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src_models.inference.preprocessing import DEFAULT_PREPROCESSING  # noqa: E402
from src_models.models.checkpoints import save_checkpoint  # noqa: E402
from src_models.models.store import load_checkpoint  # noqa: E402
from src_models.nets.registry import ARCHITECTURES  # noqa: E402
from src_models.training.data import cache_case, find_cases, phantom_cases, write_split  # noqa: E402
from src_models.training.loop import TrainConfig, train  # noqa: E402

#: Training order: the default model first, so it gets its budget even if the run is cut short.
ORDER = ("dsmsc_unet", "unet", "fcn", "drs_unet", "kcmdrs_unet")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", required=True, type=Path, help="folder of *.npz slice sets")
    parser.add_argument("--volume", required=True, type=Path, help="held-out full-volume case")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "src_models" / "weights")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/dsms-bundled"))
    parser.add_argument("--archs", nargs="+", default=list(ORDER), choices=ARCHITECTURES)
    parser.add_argument("--minutes-default", type=float, default=20.0, help="dsmsc_unet budget")
    parser.add_argument("--minutes-other", type=float, default=11.0, help="budget of the others")
    parser.add_argument(
        "--second-stage-minutes",
        type=float,
        default=28.0,
        help="a second dsmsc_unet run from the first one's best checkpoint at lr 6e-4 (0: none)",
    )
    parser.add_argument("--width", type=int, default=12)
    parser.add_argument("--phantoms", type=int, default=6)
    parser.add_argument("--val-patients", type=int, default=3)
    parser.add_argument("--test-patients", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-training", action="store_true", help="only evaluate")
    parser.add_argument(
        "--fine-tune-only", action="store_true", help="only the fine-tuning check on --volume"
    )
    parser.add_argument("--fine-tune-slices", type=int, default=10)
    return parser.parse_args()


def make_split(slice_ids: list[str], volume_id: str, phantom_ids: list[str], args) -> dict:
    """Hold out slice-set patients (fixed seed) and the full volume; phantoms always train."""
    order = [slice_ids[i] for i in np.random.default_rng(args.seed).permutation(len(slice_ids))]
    test = sorted(order[: args.test_patients]) + [volume_id]
    val = sorted(order[args.test_patients : args.test_patients + args.val_patients])
    train_ids = sorted(order[args.test_patients + args.val_patients :]) + phantom_ids
    return {"seed": args.seed, "train": train_ids, "val": val, "test": test}


def export_half(source: Path, target: Path, extra: dict) -> Path:
    """Re-save a checkpoint with float16 weights (half the size; loads into float32 models)."""
    model, meta = load_checkpoint(source)
    model.half()
    return save_checkpoint(
        target,
        model,
        preprocessing=meta["preprocessing"],
        provenance={**meta["provenance"], **extra, "weights_dtype": "float16"},
        metrics=meta["metrics"],
    )


def fine_tune_check(checkpoint: Path, volume_case, slices: int, seed: int) -> dict:
    """The Review widget's loop on the held-out volume: ``slices`` corrected slices, spread
    evenly over the pancreas, train :func:`fine_tune` with its defaults; Dice is measured on
    every other slice of the volume that holds pancreas, before and after."""
    from src_models.jobs import run_to_end
    from src_models.training.data import load_case
    from src_models.training.fine_tune import fine_tune

    arrays = load_case(volume_case)
    with_pancreas = np.flatnonzero(arrays.labels.reshape(len(arrays.labels), -1).max(1) > 0)
    chosen = with_pancreas[np.linspace(0, len(with_pancreas) - 1, slices).round().astype(int)]
    held_out = np.setdiff1d(with_pancreas, chosen)
    model, meta = load_checkpoint(checkpoint)
    started = time.perf_counter()
    result = run_to_end(
        fine_tune(
            model, meta, arrays.image_hu[chosen], arrays.labels[chosen], arrays.spacing_yx,
            val_images_hu=arrays.image_hu[held_out], val_labels=arrays.labels[held_out],
            seed=seed,
        )
    )  # fmt: skip
    report = {
        "checkpoint": str(checkpoint),
        "train_slices": [int(i) for i in chosen],
        "held_out_slices": len(held_out),
        "steps": result.steps,
        "train_seconds": round(result.elapsed_s, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
        "dice_before": result.metrics_before["dice_pancreas"],
        "dice_after": result.metrics_after["dice_pancreas"],
    }
    print("fine-tune check:", json.dumps(report), flush=True)
    return report


def run_stage(
    args: argparse.Namespace,
    arch: str,
    minutes: float,
    lr: float,
    seed: int,
    cached_train: list,
    cached_val: list,
    work: Path,
    provenance: dict,
    init: Path | None = None,
) -> None:
    """One time-budgeted training run of ``arch`` whose best checkpoint lands at ``work``."""
    config = TrainConfig(
        arch=arch,
        width=args.width,
        steps=100_000,
        batch_size=4,
        lr=lr,
        patch_size=160,
        val_every=40,
        time_budget_s=minutes * 60,
        loss="dice_bce",
        seed=seed,
        device="cpu",
        precision="float32",
        log_csv=str(work.with_suffix(".csv")),
        threads=args.threads,
    )
    events = train(config, cached_train, cached_val, work, init=init, provenance=provenance)
    for event in events:
        if event.kind == "step" and event.step % 20 == 0:
            print(
                f"{arch} step {event.step} {event.elapsed_s:.0f}s lr {event.lr:.2e} "
                f"loss {event.losses['loss']:.4f}",
                flush=True,
            )
        elif event.kind == "validation":
            print(f"{arch} step {event.step} val {event.metrics}", flush=True)
        elif event.kind == "done":
            print(f"{arch} done: {event.step} steps {event.elapsed_s:.0f}s", flush=True)


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.fine_tune_only:
        volume = find_cases(args.volume)[0]
        fine_tune_check(args.out_dir / "dsmsc_unet.pt", volume, args.fine_tune_slices, args.seed)
        return 0
    slice_cases = find_cases(args.slices)
    volume_case = find_cases(args.volume)[0]
    phantoms = phantom_cases(args.phantoms, seed=1000 + args.seed)
    split = make_split(
        [c.patient_id for c in slice_cases],
        volume_case.patient_id,
        [c.patient_id for c in phantoms],
        args,
    )
    split_file = write_split(args.out_dir / "bundled-split.json", split)
    print(f"split: {len(split['train'])} train, val {split['val']}, test {split['test']}")

    if not args.skip_training:
        all_cases = {c.patient_id: c for c in [*slice_cases, *phantoms]}
        started = time.perf_counter()
        cached_train = [cache_case(all_cases[p], DEFAULT_PREPROCESSING) for p in split["train"]]
        cached_val = [cache_case(all_cases[p], DEFAULT_PREPROCESSING) for p in split["val"]]
        print(f"cached in {time.perf_counter() - started:.0f} s", flush=True)
        provenance = {
            "data": ["nih-pancreas-slices (NIH Pancreas-CT, TCIA, CC BY 3.0)"],
            "phantoms": args.phantoms,
            "split_file": split_file.name,
            "test_patients": split["test"],
            "hardware": f"CPU, {args.threads} threads (shared machine)",
        }
        for arch in args.archs:
            minutes = args.minutes_default if arch == "dsmsc_unet" else args.minutes_other
            work = args.work_dir / f"{arch}.pt"
            run_stage(args, arch, minutes, 2e-3, args.seed, cached_train, cached_val, work,
                      provenance)  # fmt: skip
            if arch == "dsmsc_unet" and args.second_stage_minutes > 0:
                second = args.work_dir / f"{arch}-stage2.pt"
                run_stage(
                    args, arch, args.second_stage_minutes, 6e-4, args.seed + 1, cached_train,
                    cached_val, second, {**provenance, "second_stage_of": work.name}, init=work,
                )  # fmt: skip
                work = second
            export_half(work, args.out_dir / f"{arch}.pt", {"bundled": True})

    from src_models.commands.evaluate import evaluate_to_files

    models = [str(args.out_dir / f"{arch}.pt") for arch in ORDER]
    slice_test = [c for c in slice_cases if c.patient_id in set(split["test"])]
    evaluate_to_files(models, slice_test, args.work_dir / "table-slices.md", names=list(ORDER))
    evaluate_to_files(models, [volume_case], args.work_dir / "table-volume.md", names=list(ORDER))
    report = fine_tune_check(
        args.out_dir / "dsmsc_unet.pt", volume_case, args.fine_tune_slices, args.seed
    )
    (args.work_dir / "fine-tune-check.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(split), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
