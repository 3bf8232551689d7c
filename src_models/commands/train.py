"""``dsms train``: train or fine-tune one architecture on folders of CT and/or phantoms.

Runs on one process, or on several under ``torchrun --nproc_per_node=N -m src_models train``
(DistributedDataParallel; only rank 0 prints, logs and writes files).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..inference.devices import resolve_device
from ..inference.precision import AMP_ALIASES, PRECISIONS, precision_from_amp
from ..models.checkpoints import CheckpointError, read_metadata
from ..models.store import resolve_checkpoint
from ..nets.registry import ARCHITECTURES
from ..training.data import (
    SPLIT_FRACTIONS,
    cache_case,
    gather_cases,
    read_split,
    split_patients,
    training_sets,
    write_split,
)
from ..training.loop import TrainConfig, default_threads, state_path, train, warn_if_tiny


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="DIR",
        help="MSD Task07 folder, folder of NAME.nii.gz + NAME_label.nii.gz pairs, or folder of "
        "*.npz slice sets; repeat to mix",
    )
    parser.add_argument("--phantoms", type=int, default=0, metavar="N", help="add N phantoms")
    parser.add_argument("--arch", required=True, choices=ARCHITECTURES)
    parser.add_argument("--out", required=True, metavar="CKPT", help="best checkpoint (.pt)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument(
        "--width", type=int, help=f"base width of a new model (default {defaults.width})"
    )
    parser.add_argument(
        "--init", metavar="NAME_OR_PATH", help="fine-tune from a bundled model or a checkpoint"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--accumulate", type=int, default=1, help="batches per optimiser step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    parser.add_argument("--patch-size", type=int, default=defaults.patch_size)
    parser.add_argument(
        "--time-budget", type=float, metavar="MINUTES", help="stop after this many minutes"
    )
    parser.add_argument("--val-every", type=int, default=defaults.val_every, metavar="STEPS")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run whose state is beside --out"
    )
    parser.add_argument(
        "--split",
        metavar="FILE",
        help="patient split JSON: read if it exists, else written there (default: beside --out)",
    )
    parser.add_argument("--loss", choices=("bce", "dice_bce"), default=defaults.loss)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=defaults.precision,
        help="autocast precision (default auto: bfloat16 or float16 on GPUs, float32 on CPU)",
    )
    parser.add_argument("--amp", choices=tuple(AMP_ALIASES), help="deprecated: use --precision")
    parser.add_argument(
        "--log-csv",
        "--log",
        dest="log",
        metavar="CSV",
        help="CSV log of losses and validation figures (under torchrun use --log-csv: torchrun "
        "takes --log as an abbreviation of its own --log-dir)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads per process")


def _split(args: argparse.Namespace, patient_ids: list[str], rank: int) -> tuple[dict, Path]:
    path = Path(args.split) if args.split else Path(args.out).with_suffix(".split.json")
    if path.is_file():
        return read_split(path), path
    split = split_patients(patient_ids, SPLIT_FRACTIONS, seed=args.seed)
    if rank == 0:
        write_split(path, split)
    return split, path


def _check_before_data(args: argparse.Namespace) -> None:
    """Refuse what would fail or do harm later, before minutes of reading and caching data.

    Raises
    ------
    ValueError
        The device is not available here, or ``--init`` holds another architecture.
    FileNotFoundError
        ``--resume`` without a training state beside ``--out``.
    FileExistsError
        ``--out`` exists and ``--resume`` was not given: the run would replace a trained model
        (fine-tuned models never replace a file either).
    """
    resolve_device(args.device)
    out = Path(args.out)
    if args.resume and not state_path(out).is_file():
        raise FileNotFoundError(f"{state_path(out)}: no training state to resume from")
    if not args.resume and out.exists():
        raise FileExistsError(
            f"{out}: already exists; --resume continues its run, or choose another --out "
            "(a new run never replaces a trained model)"
        )
    if args.init:
        meta = read_metadata(resolve_checkpoint(args.init))
        if meta["arch"] != args.arch:
            raise CheckpointError(
                f"{args.init}: holds a {meta['arch']!r} model, but --arch is {args.arch!r}"
            )


def run(args: argparse.Namespace) -> int:
    rank = int(os.environ.get("RANK", "0"))
    if args.steps < 1 or args.batch_size < 1 or args.accumulate < 1:
        raise ValueError("--steps, --batch-size and --accumulate must be at least 1")
    if not args.data and args.phantoms <= 0:
        raise ValueError("no data: give --data DIR and/or --phantoms N")
    precision = args.precision
    if args.amp is not None:
        precision = precision_from_amp(args.amp)
        print(f"warning: --amp is deprecated; use --precision {precision}", file=sys.stderr)
    config = TrainConfig(
        arch=args.arch,
        width=args.width or TrainConfig().width,
        steps=args.steps,
        batch_size=args.batch_size,
        accumulate=args.accumulate,
        lr=args.lr,
        patch_size=args.patch_size,
        val_every=args.val_every,
        time_budget_s=args.time_budget * 60 if args.time_budget else None,
        loss=args.loss,
        seed=args.seed,
        device=args.device,
        precision=precision,
        log_csv=args.log,
        threads=args.threads or default_threads(),
    )
    _check_before_data(args)
    cases = gather_cases(args.data, args.phantoms, phantom_seed=args.seed)
    split, split_file = _split(args, [c.patient_id for c in cases], rank)
    train_list, val_list = training_sets(cases, split)
    preprocessing = dict(config.preprocessing)
    if args.init:
        from ..models.store import load_checkpoint

        base = load_checkpoint(args.init)[1]
        preprocessing = dict(base["preprocessing"])
        width = base["config"].get("width")
        if args.width not in (None, width) and rank == 0:  # a tester's --width 8, unremarked
            print(f"note: --init keeps the model's width {width}; --width {args.width} is "
                  "not used", file=sys.stderr)  # fmt: skip
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"caching {len(train_list)} training and {len(val_list)} validation cases ...")
    cached_train = [cache_case(c, preprocessing) for c in train_list]
    cached_val = [cache_case(c, preprocessing) for c in val_list]
    warn_if_tiny(cached_train)
    provenance = {
        "data": [str(Path(d).resolve()) for d in args.data],
        "phantoms": args.phantoms,
        "split_file": str(split_file),
    }
    events = train(
        config,
        cached_train,
        cached_val,
        args.out,
        init=args.init,
        resume=args.resume,
        provenance=provenance,
    )
    from tqdm import tqdm

    bar = tqdm(total=config.steps, disable=rank != 0, file=sys.stderr, unit="step")
    if args.resume:
        say(f"resuming the run saved in {state_path(args.out)}", file=sys.stderr)
    try:
        for event in events:
            if event.kind == "step":
                bar.n = event.step
                bar.set_postfix(loss=f"{event.losses.get('loss', 0):.4f}", lr=f"{event.lr:.2e}")
            elif event.kind == "validation" and rank == 0:
                bar.write(
                    f"step {event.step}: val Dice {event.metrics['dice_pancreas']:.4f} "
                    f"(best {event.metrics['best_dice_pancreas']:.4f})"
                )
            elif event.kind == "done":
                say(
                    f"best checkpoint {event.checkpoint}: val Dice "
                    f"{event.metrics.get('dice_pancreas', float('nan')):.4f}; "
                    f"{event.step} steps in {event.elapsed_s / 60:.1f} min"
                )
    except BaseException:  # Ctrl-C, SIGTERM: the loop saved its state (a tester was not told)
        if rank == 0 and state_path(args.out).is_file():
            bar.write(
                f"training state saved at step {bar.n} in {state_path(args.out)}: the same "
                "command with --resume continues it",
                file=sys.stderr,
            )
        raise
    finally:
        bar.close()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0
