"""Cross-validation over patients of the bundled-model recipe, then the final model on all data.

The 40 real patients of ``../shared/data`` (39 slice sets and the full volume
``nih-pancreas-0001``) are split into ``--folds`` groups with a fixed seed. For each fold the
recipe trains on the other folds' patients (plus seeded phantoms, the only tumour examples) and
is scored on the fold's patients: mean and spread of per-patient pancreas Dice over the held-out
slice-set patients, and the whole-volume Dice of ``nih-pancreas-0001`` in the fold that holds it
out, without and with the 3D clean-up (largest connected component). The final model then trains
on every patient. Each training run is step-budgeted (``--steps``), so a busy machine makes it
slower, not worse; a run that is interrupted resumes from its last state file when the script is
started again with the same arguments. Example (low priority, in the background)::

    nice -n 19 python scripts/cross_validate.py --work-dir /tmp/dsms-cv \\
        --slices ../shared/data/nih-pancreas-slices --volume ../shared/data/nih-pancreas-0001

Results: ``WORK/cv.json`` (per fold, per patient, and a summary: mean and spread of
per-patient Dice, the volume's Dice) and ``WORK/final.pt`` (float32, the best
checkpoint on 3 inner validation patients).

With ``--init CHECKPOINT`` every run continues training that model (for example the bundled
one) instead of starting from random weights. Its own training patients must then not be
scored, so the folds are built over the patients it never trained on
(``provenance["train_patients"]``) only: each fold's model continues from ``CHECKPOINT`` on every
other patient and is scored on the fold's, which neither it nor its base saw in training. The
base itself is scored on the same patients (``base_folds``, ``base_summary``) for comparison.
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

from train_bundled import export_half  # noqa: E402  (scripts/, first on sys.path)

from src_models.commands.evaluate import predict_case  # noqa: E402
from src_models.inference.postprocess import keep_largest_components  # noqa: E402
from src_models.inference.preprocessing import DEFAULT_PREPROCESSING  # noqa: E402
from src_models.metrics import case_metrics  # noqa: E402
from src_models.models.checkpoints import save_checkpoint  # noqa: E402
from src_models.models.store import load_checkpoint  # noqa: E402
from src_models.training.data import cache_case, find_cases, phantom_cases  # noqa: E402
from src_models.training.loop import TrainConfig, state_path, train  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", required=True, type=Path, help="folder of *.npz slice sets")
    parser.add_argument("--volume", required=True, type=Path, help="the full labelled volume")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/dsms-cv"))
    parser.add_argument("--arch", default="dsmsc_unet")
    parser.add_argument("--width", type=int, default=12)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps per fold")
    parser.add_argument("--final-steps", type=int, default=3000, help="steps of the final model")
    parser.add_argument("--phantoms", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--init", type=Path, help="continue this checkpoint (see the doc)")
    parser.add_argument(
        "--export", type=Path, help="write a model of WORK here as a bundled checkpoint"
    )
    parser.add_argument(
        "--select",
        choices=("best", "last"),
        default="best",
        help="keep each run's best checkpoint on its 3 validation patients, or its last step",
    )
    parser.add_argument("--skip-final", action="store_true")
    return parser.parse_args()


def data_sources(cases: list) -> list[str]:
    """The model card's data line: which of the shared folders a run trained on.

    A fold that holds the volume ``nih-pancreas-0001`` out must not list it (its card said it
    did).
    """
    folders = ["nih-pancreas-slices"] if any(c.kind == "npz" for c in cases) else []
    folders += sorted({c.patient_id for c in cases if c.kind == "nifti"})
    phantoms = sum(c.kind == "phantom" for c in cases)
    return [
        f"{' and '.join(folders)} (NIH Pancreas-CT, TCIA, CC BY 3.0)",
        *([f"{phantoms} seeded phantoms"] if phantoms else []),
    ]


def run(args, cases: list, val: list, out: Path, steps: int, provenance: dict) -> Path:
    """Train (or resume) one run; its best checkpoint lands at ``out``; return the selected one."""
    done = out.with_suffix(".done")
    if not done.exists():  # else finished in an earlier start of the script
        train_run(args, cases, val, out, steps, provenance)
        done.touch()
    return last_step(out) if args.select == "last" else out


def last_step(best: Path) -> Path:
    """The run's weights at its last step (kept in its training state), as ``<run>-last.pt``.

    Three validation patients choose a checkpoint badly: their Dice moved by 0.02 to 0.05 between
    validations while the held-out patients' did not follow.
    """
    path = best.with_name(f"{best.stem}-last.pt")
    if not path.exists():
        state = torch.load(state_path(best), map_location="cpu", weights_only=True)
        model, meta = load_checkpoint(best)
        model.load_state_dict(state["model"])
        loop = state["loop"]
        provenance = {
            **meta["provenance"],
            "steps": loop["step"],
            "elapsed_s": round(loop["elapsed_s"], 1),
            "selected": "last step",
        }
        save_checkpoint(path, model, preprocessing=meta["preprocessing"], provenance=provenance)
    return path


def train_run(args, cases: list, val: list, out: Path, steps: int, provenance: dict) -> None:
    """Train (or resume) one run whose best checkpoint lands at ``out``."""
    config = TrainConfig(
        arch=args.arch, width=args.width, steps=steps, batch_size=4, lr=args.lr, patch_size=160,
        val_every=100, loss="dice_bce", seed=args.seed, device="cpu", precision="float32",
        log_csv=str(out.with_suffix(".csv")), threads=args.threads,
    )  # fmt: skip
    cached = [cache_case(c, DEFAULT_PREPROCESSING) for c in cases]
    cached_val = [cache_case(c, DEFAULT_PREPROCESSING) for c in val]
    resume = state_path(out).exists()
    events = train(config, cached, cached_val, out, init=args.init, resume=resume,
                   provenance=provenance)  # fmt: skip
    for event in events:
        if event.kind == "validation":
            print(f"{out.name} {event.step} {event.elapsed_s:.0f}s {event.metrics}", flush=True)


def score(checkpoint: Path, cases: list) -> dict:
    """Pancreas Dice per held-out case, raw and after the 3D clean-up."""
    model, meta = load_checkpoint(checkpoint)
    scores = {}
    for case in cases:
        prediction, reference, voxel_mm3 = predict_case(case, model, meta, device="cpu")
        raw = case_metrics(prediction, reference, voxel_mm3)["pancreas"].dice
        cleaned = keep_largest_components(prediction)
        cleaned = case_metrics(cleaned, reference, voxel_mm3)["pancreas"].dice
        scores[case.patient_id] = {"kind": case.kind, "dice": raw, "dice_clean_up": cleaned}
        print(f"{checkpoint.name} {case.patient_id}: {raw:.3f} / {cleaned:.3f}", flush=True)
    return scores


def summarise(folds: dict, steps: int) -> dict:
    """Mean and spread of per-patient Dice over the folds' slice-set patients, and the volume's."""
    slices = [s for fold in folds.values() for s in fold.values() if s["kind"] == "npz"]
    volume = [s for fold in folds.values() for s in fold.values() if s["kind"] != "npz"]
    fold_means = [
        float(np.mean([s["dice"] for s in fold.values() if s["kind"] == "npz"]))
        for fold in folds.values()
    ]
    return {
        "slice_patients": len(slices),
        "mean_patient_dice": float(np.mean([s["dice"] for s in slices])),
        "patient_dice_sd": float(np.std([s["dice"] for s in slices])),
        "fold_means": fold_means,
        "fold_spread_sd": float(np.std(fold_means)),
        "volume_dice": volume[0]["dice"] if volume else None,
        "volume_dice_clean_up": volume[0]["dice_clean_up"] if volume else None,
        "steps_per_fold": steps,
    }


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    real = find_cases(args.slices) + find_cases(args.volume)
    phantoms = phantom_cases(args.phantoms, seed=1000 + args.seed)
    scored = real
    if args.init is not None:
        seen = set(load_checkpoint(args.init)[1]["provenance"].get("train_patients", []))
        scored = [c for c in real if c.patient_id not in seen]
        print(f"{len(scored)} patients unseen by {args.init.name}", flush=True)
    order = np.random.default_rng(args.seed).permutation(len(scored))
    folds = [[scored[i] for i in order[f :: args.folds]] for f in range(args.folds)]
    provenance = {
        "recipe": "scripts/cross_validate.py",
        **({"continued_from": str(args.init)} if args.init else {}),
    }
    report_path = args.work_dir / "cv.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {"folds": {}}
    started = time.perf_counter()
    for f, test in enumerate(folds):
        if str(f) in report["folds"]:
            continue
        rest = [c for c in real if c not in test]
        val = [c for c in rest if c.kind == "npz"][:3]
        train_cases = [c for c in rest if c not in val] + phantoms
        out = args.work_dir / f"fold{f}.pt"
        fold = {**provenance, "data": data_sources(train_cases), "fold": f,
                "test_patients": [c.patient_id for c in test]}  # fmt: skip
        chosen = run(args, train_cases, val, out, args.steps, fold)
        report["folds"][str(f)] = score(chosen, test)
        report_path.write_text(json.dumps(report, indent=1) + "\n")
    report["summary"] = summarise(report["folds"], args.steps)
    if args.init is not None:  # the base on the same unseen patients, for a fair comparison
        if "base_folds" not in report:
            report["base_folds"] = {str(f): score(args.init, test) for f, test in enumerate(folds)}
        report["base_summary"] = summarise(report["base_folds"], 0)
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    shown = {key: report[key] for key in ("summary", "base_summary") if key in report}
    print(json.dumps(shown), f"({time.perf_counter() - started:.0f} s)", flush=True)
    if not args.skip_final:
        val = [c for c in real if c.kind == "npz"][:3]
        final = args.work_dir / "final.pt"
        everyone = [c for c in real if c not in val] + phantoms
        final_provenance = {**provenance, "data": data_sources(everyone), "fold": "all"}
        chosen = run(args, everyone, val, final, args.final_steps, final_provenance)
        if args.export is not None:
            export(chosen, args.export, report, args)
    return 0


def export(source: Path, target: Path, report: dict, args: argparse.Namespace) -> Path:
    """A model of the run with float16 weights and the cross-validation, as a bundled checkpoint.

    The model card (:func:`~src_models.models.checkpoints.model_card`) then shows the
    cross-validated Dice instead of the Dice on the final run's validation patients, which a
    continued base may have trained on.
    """
    scored = sorted(patient for fold in report["folds"].values() for patient in fold)
    record = {
        **report["summary"],
        "folds": args.folds,
        "selected": args.select,
        "scored_patients": scored,
        "script": "scripts/cross_validate.py",
    }
    if "base_summary" in report:
        record["base"] = report["base_summary"]
    extra = {
        "phantoms": args.phantoms,
        "bundled": True,
        "cross_validation": record,
        "hardware": f"CPU, {args.threads} threads",
    }
    if args.init is not None:
        base = load_checkpoint(args.init)[1]["provenance"]
        extra["continued_from"] = (
            f"{args.arch} of napari-dsms {base.get('code_version', '?')}, "
            f"trained {str(base.get('date', '?'))[:10]}"
        )
    return export_half(source, target, extra)


if __name__ == "__main__":
    sys.exit(main())
