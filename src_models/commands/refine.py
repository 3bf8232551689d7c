"""``dsms refine INPUT --labels LABELS --corrected K1,K2,... -o OUT``: one round of the loop.

Fine-tunes the model on the corrected slices (guarded: a round that makes held-out corrected
slices worse keeps the previous model), fills the slices between corrections and segments those
beyond them (:mod:`src_models.refine`), and writes the labels on INPUT's grid with the corrected
slices bit-identical to LABELS. ``K`` indexes the slice axis of ``read_volume(INPUT).array``
closest to head-feet, 0-based, as ``dsms triage`` prints it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..autosave import content_key
from ..inference.devices import resolve_device
from ..io import (
    FORMATS,
    Algorithm,
    Volume,
    VolumeError,
    check_ct,
    check_output,
    label_array,
    on_grid_of,
    read_labels,
    read_volume,
    write_output,
)
from ..io.atomic import check_writable_folder
from ..io.orientation import head_feet_axis, to_canonical
from ..jobs import run_to_end
from ..models.store import load_checkpoint
from ..refine import (
    LEARN_HELD_OUT,
    ROUND_TRAINING,
    check_corrections,
    learns,
    refine,
    split_round,
)
from ..training.fine_tune import MIN_SLICES_FOR_HOLDOUT
from ..training.loop import TrainEvent
from ..version import __version__
from .common import DEFAULT_MODEL, add_overwrite, check_outputs, progress_bar


def _slice_list(text: str) -> list[int]:
    # Spaces around a number are fine ("12, 20"); inside one they are not: "3 5" read as 35
    # once turned slices 3 and 5 into slice 35 with exit 0 (found by a tester).
    parts = [part.strip() for part in text.split(",")]
    if "" in parts[:-1]:  # a trailing comma is harmless; "20,,35" may have lost a number
        raise argparse.ArgumentTypeError(
            f"{text!r} has an empty entry between commas: give each slice once"
        )
    try:
        slices = [int(part) for part in parts if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of slice numbers, e.g. 12,20,31"
        ) from None
    if not slices:
        raise argparse.ArgumentTypeError("give at least one slice, e.g. 12,20,31")
    repeated = sorted({k for k in slices if slices.count(k) > 1})
    if repeated:  # "22,22,25" may be a typo for 22,23,25: the round would learn from fewer
        raise argparse.ArgumentTypeError(
            f"{text!r} gives slice {', '.join(map(str, repeated))} more than once: give each "
            "slice once"
        )
    return slices


def read_corrections(path: Path, volume: Volume, corrected: list[int]) -> np.ndarray:
    """The labels file on ``volume``'s grid (file index order), as a round reads it.

    Only the corrected slices must hold labels (0, 1, 2); the other slices may hold anything
    (the round replaces them all) and are clipped into 0..2.

    Raises
    ------
    VolumeError
        The file is not on ``volume``'s grid, or a corrected slice holds something other than
        labels (the message names the slice).
    """
    raw = read_volume(path)
    if raw.info.get("format") == "DICOM-SEG":  # labels only, placed on the series' slices
        return read_labels(path, reference=volume).array
    raw = on_grid_of(raw, volume, what="label file")
    axis, _ = head_feet_axis(volume.affine)
    array = np.asarray(raw.array)
    along = np.moveaxis(array, axis, 0)  # views: np.take copies a Fortran-ordered array whole
    for k in corrected:
        if 0 <= k < array.shape[axis]:
            label_array(along[k], f"{path} (corrected slice {k})")
    return np.clip(np.nan_to_num(array), 0, 2).astype(np.uint8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="CT volume: a .nii / .nii.gz file or a DICOM series folder")
    parser.add_argument(
        "--labels", required=True, metavar="LABELS", help="labels holding the corrected slices"
    )
    parser.add_argument(
        "--corrected",
        required=True,
        type=_slice_list,
        metavar="K1,K2,...",
        help="corrected slices along the head-feet axis of INPUT's array, 0-based",
    )
    parser.add_argument(
        "--reviewed",
        type=_slice_list,
        default=[],
        metavar="K1,K2,...",
        help="those of --corrected you accepted unchanged (the model's own labels there): "
        "learnt from, never held out to judge the round",
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="refined labels (.nii.gz or .dcm)"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="auto", help="labels format (default: from OUT)"
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME_OR_PATH",
        help=f"the latest model: bundled name, user model name or checkpoint (default: "
        f"{DEFAULT_MODEL})",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help=f"fine-tuning steps, no time limit (default {ROUND_TRAINING.steps} within "
        f"{ROUND_TRAINING.time_budget_s:.0f} s; 0: none); a model the check keeps then makes "
        f"{LEARN_HELD_OUT:g} times as many on all corrected slices",
    )
    length.add_argument(
        "--seconds",
        type=float,
        metavar="S",
        help=f"time limit of the fine-tuning, the steps after the check included; it adds no "
        f"steps (default {ROUND_TRAINING.time_budget_s:.0f} s for {ROUND_TRAINING.steps} steps, "
        f"then {LEARN_HELD_OUT:g} times as many; for more steps use --steps)",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--save-model", metavar="PATH", help="write the model the round ends with (a new .pt)"
    )
    add_overwrite(parser)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    input_path, labels_path = Path(args.input), Path(args.labels)
    output = Path(args.output)
    for path in (input_path, labels_path):
        if not path.exists():
            raise VolumeError(f"{path}: no such file or folder")
    if args.steps is not None and args.steps < 0:
        raise ValueError(f"--steps must be 0 or more, got {args.steps}")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        raise ValueError(f"--seconds must be a number of seconds above 0, got {args.seconds}")
    check_output(output, format=args.format)
    if output.resolve() == labels_path.resolve():  # even with --overwrite
        raise VolumeError(
            f"{output}: refusing to overwrite the corrected labels {labels_path}; choose "
            "another name"
        )
    check_outputs(input_path, [output], overwrite=args.overwrite)
    save_model = Path(args.save_model) if args.save_model else None
    if save_model is not None and save_model.resolve() == output.resolve():
        raise ValueError(  # the labels would be written over the model just saved
            f"{save_model}: -o and --save-model need different file names"
        )
    if save_model is not None and save_model.suffix != ".pt":
        # the model menus and --model list checkpoints by this ending (a tester saved m.txt)
        raise ValueError(f"{save_model}: --save-model writes a checkpoint; name it *.pt")
    if save_model is not None and save_model.exists():
        raise ValueError(f"{save_model}: exists already; --save-model writes a new file")
    if save_model is not None and not save_model.parent.is_dir():
        what = "is a file, not a folder" if save_model.parent.exists() else "does not exist"
        raise ValueError(f"{save_model}: its folder {save_model.parent} {what}")
    stray = sorted(set(args.reviewed) - set(args.corrected))
    if stray:
        raise ValueError(
            f"--reviewed slice{'s' * (len(stray) > 1)} {', '.join(map(str, stray))} "
            "not in --corrected: a reviewed slice is one of the corrected slices"
        )
    learn = learns(args.steps, args.corrected, args.reviewed)
    if save_model is not None and not learn:
        raise ValueError(
            f"--save-model: the round does not fine-tune (--steps 0, fewer than "
            f"{MIN_SLICES_FOR_HOLDOUT} corrected slices, or fewer than 2 of them edited rather "
            "than --reviewed: none could be held out to check it), so "
            "there is no new model to save; use --model's checkpoint as it is"
        )
    if save_model is not None:
        check_writable_folder(save_model)  # before minutes of fine-tuning, not after
    device = resolve_device(args.device)
    volume = read_volume(input_path)
    check_output(output, volume, args.format)
    doubts = check_ct(volume)
    labels = read_corrections(labels_path, volume, args.corrected)
    try:
        _, slices = check_corrections(volume, labels, args.corrected, learn=learn)
    except ValueError as error:
        raise ValueError(f"{labels_path}: {error}") from None
    model, meta = load_checkpoint(args.model)
    key = content_key(to_canonical(np.asarray(volume.array), volume.affine)[0], volume.affine)
    if learn and not split_round(volume, slices, args.reviewed, meta, key)[1]:
        if save_model is not None:  # a tester's chain of rounds broke at a missing r3.pt
            raise ValueError(
                "--save-model: the model has learnt from every edited slice in an earlier "
                "round, so this round does not fine-tune and there is no new model to save; "
                "correct more slices, or use --model's checkpoint as it is"
            )
        learn = False  # the round says why; no bar counts steps that will not come
    for text in doubts:  # once the run will go ahead: a refused run gets one error line
        print(f"warning: {text}", file=sys.stderr)
    # As the round's fine-tuning reads them: --seconds (both parts), else the default cap and
    # the steps on the held-out slices after it, unless --steps.
    limit = args.seconds if args.seconds is not None else (
        ROUND_TRAINING.time_budget_s * (1 + LEARN_HELD_OUT) if args.steps is None else None
    )  # fmt: skip
    # The bar's remaining time counts all steps; on a busy CPU it read 19:55 for a 40 s round.
    tuning = "fine-tuning" + (f" (about {limit:.0f} s)" if limit is not None else "")
    bar, show_slices = progress_bar(tuning, unit="step") if learn else progress_bar("segmenting")

    def show(progress) -> None:
        # One bar, counting steps while fine-tuning, then slices while segmenting.
        if isinstance(progress, TrainEvent):
            bar.total = progress.total_steps
            bar.update(progress.step - bar.n)
        else:
            if bar.unit != "slice":
                bar.unit = "slice"
                bar.set_description("segmenting", refresh=False)
                bar.reset(total=progress[1])
            show_slices(progress)

    try:
        with bar:
            job = refine(
                volume, labels, args.corrected, model, meta, steps=args.steps,
                reviewed=args.reviewed, source_digest=key,
                seconds=args.seconds, device=str(device),
                out=str(save_model) if save_model else None,
            )  # fmt: skip
            result = run_to_end(job, show)
        used = result.fine_tune.meta if result.fine_tune is not None else meta
        algorithm = Algorithm.from_checkpoint(used, __version__)
        write_output(output, result.labels, volume, args.format, algorithm, corrected=True)
    except BaseException:
        if save_model is not None:
            save_model.unlink(missing_ok=True)
        raise
    print(f"{output}: {result.summary()}; {time.perf_counter() - started:.0f} s in all")
    return 0
