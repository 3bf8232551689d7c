"""Fine-tuning a model on a few corrected slices of one patient, and saving it as a new version.

The Review widget's Fine-tune button and ``dsms refine`` both run :func:`fine_tune`: the loop,
augmentation and preprocessing of :func:`~src_models.training.loop.train`, on the slices a user
corrected, with a few corrected slices held out to measure pancreas Dice before and after. With
``guard=True`` a round that makes the held-out Dice worse hands back the previous weights, so
repeated rounds never lose ground. The result is one :class:`FineTuneResult`; a checkpoint is
written only by :func:`fine_tune` itself (``out``), atomically, never over an existing file;
:func:`fine_tuned_path` names a new version beside the earlier ones.

Fine-tuning is a generator of :class:`~src_models.training.loop.TrainEvent`: run it in a worker
and close it to stop (:func:`src_models.jobs.run_to_end` runs it in scripts).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..corrections import image_stem, slug
from ..inference.devices import release_memory, resolve_device, threads_beside_load
from ..inference.engine import segment
from ..inference.preprocessing import FALLBACK_SPACING_MM
from ..io import Volume
from ..io.orientation import canonical_affine
from ..jobs import run_to_end
from ..metrics import METRICS, STRUCTURES, case_metrics, summarise
from ..models.checkpoints import save_checkpoint
from ..models.store import load_checkpoint
from .data import CachedCase, SliceSampler, cache_arrays
from .loop import LEARNT_KEYS, TrainConfig, TrainEvent, _Loop

#: Fine-tuning defaults, measured on 2 shared CPU cores (docs/training.md): the bundled
#: dsmsc_unet fine-tuned on 10 slices of the unseen NIH volume 0001 went from Dice 0.53 to 0.82 on
#: its 61 other pancreas slices in 400 steps (about 2 minutes); 150 steps gave 0.68, and a
#: learning rate of 3e-4 reached only 0.77 in the same 400 steps. The time budget keeps the
#: button at 3 minutes on a slower or busier machine.
FINE_TUNE_DEFAULTS = TrainConfig(
    steps=400,
    batch_size=4,
    lr=1e-3,
    warmup_fraction=0.05,
    patch_size=160,
    val_every=0,
    loss="dice_bce",
    time_budget_s=180.0,
)

#: Share of the corrected slices kept out of fine-tuning to measure Dice before and after.
HOLDOUT_FRACTION = 0.2

#: Fewest corrected slices from which one is held out; below it every slice is needed to train.
MIN_SLICES_FOR_HOLDOUT = 3

#: Provenance keys of the base's patient split (moved under ``fine_tune["base_split"]``).
_SPLIT_KEYS = (*(k for k in LEARNT_KEYS if k != "fine_tune"), "test_patients", "split_file")

#: Keys :func:`~src_models.models.checkpoints.save_checkpoint` stamps itself; a base checkpoint's
#: values must not pass for the fine-tuned model's own.
_STAMP_KEYS = ("date", "code_version", "torch_version")

#: Facts of the base checkpoint's file, not of a model fine-tuned from it: a tester's
#: fine-tuned copy said it was bundled and stored in float16 (it is neither).
_FILE_KEYS = ("bundled", "weights_dtype")

#: Fields of a :class:`TrainConfig` that fine-tuning never uses: the network and its
#: preprocessing are the base checkpoint's. Recorded, they read as the model's own (a tester
#: found ``width: 32`` in the provenance of a width-16 model).
_UNUSED_CONFIG_KEYS = ("arch", "width", "preprocessing")

_VERSIONED = re.compile(r"^(?P<base>.+?)-ft-.+-v\d+$")


@dataclass(frozen=True)
class FineTuneResult:
    """What :func:`fine_tune` returns.

    Attributes
    ----------
    checkpoint
        The new checkpoint when ``out`` was given, else ``None``.
    base_checkpoint
        The checkpoint fine-tuned from (``meta["path"]`` of the input); never modified.
    steps, elapsed_s
        Optimiser steps done and seconds spent.
    metrics_before, metrics_after
        Figures on the held-out slices (``dice_pancreas``, ``dice_tumour``, ...) before and
        after, as segmenting labels them (:func:`held_out_metrics`); empty without held-out
        slices.
    planned_steps
        Steps asked for; more than ``steps`` when the time budget ended the run first.
    model
        The model passed in, on the CPU in evaluation mode, holding the fine-tuned weights (or
        the previous ones when :attr:`kept_previous`).
    meta
        Its metadata: the input's, with the round recorded under ``provenance["fine_tune"]``
        (``kept_previous`` included).
    kept_previous
        The guard restored the previous weights: the held-out Dice was worse after the round,
        or the round finished too few steps (:attr:`too_few_steps`).
    too_few_steps
        The guarded round ended before :data:`MIN_GUARDED_STEPS` steps (a busy CPU, a short
        time limit, ``steps`` set low).
    held_out_steps
        Of :attr:`steps`, those made after the guard kept the model, on every corrected slice
        with the held-out ones (``learn_held_out`` of :func:`fine_tune`); 0 when none.
    """

    checkpoint: Path | None
    base_checkpoint: Path | None
    steps: int
    elapsed_s: float
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    planned_steps: int = 0
    model: nn.Module | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    kept_previous: bool = False
    too_few_steps: bool = False
    held_out_steps: int = 0

    @property
    def stopped_by_time(self) -> bool:
        """Whether the time budget ended the run before the planned steps."""
        return self.steps < self.planned_steps

    def summary(self) -> str:
        """A line or two for the widget, the log and ``dsms refine``."""
        if self.kept_previous:
            text = (
                f"only {self.steps} steps in {self.elapsed_s:.0f} s, fewer than the "
                f"{MIN_GUARDED_STEPS} a kept model needs"
                if self.too_few_steps
                else f"{self.steps} steps in {self.elapsed_s:.0f} s made the model worse"
            )
            if self.checkpoint is not None:
                text += f" (saved the previous one as {self.checkpoint.name})"
        elif self.checkpoint is not None:
            text = f"saved {self.checkpoint.name}: {self.steps} steps in {self.elapsed_s:.0f} s"
        else:
            text = f"fine-tuned: {self.steps} steps in {self.elapsed_s:.0f} s"
        if self.metrics_before and self.metrics_after:
            text += (
                f"; held-out pancreas Dice {self.metrics_before['dice_pancreas']:.3f} -> "
                f"{self.metrics_after['dice_pancreas']:.3f}"
            )
        if self.kept_previous:
            text += ": kept the previous model"
        if self.held_out_steps:
            text += f"; the last {self.held_out_steps} steps learnt from the held-out slices too"
        if self.stopped_by_time:
            text += f". The time limit stopped it at {self.steps} of {self.planned_steps} steps"
            if self.steps < 0.9 * self.planned_steps:  # not for the last few (a tester's 198)
                text += ": allow more time (or use a GPU) for a better model"
        return text


def split_holdout(
    slices: Sequence[int],
    fraction: float = HOLDOUT_FRACTION,
    min_slices: int = MIN_SLICES_FOR_HOLDOUT,
    *,
    accepted: Iterable[int] = (),
    learnt: Iterable[int] = (),
) -> tuple[list[int], list[int]]:
    """Split corrected slices into those to fine-tune on and those to measure on.

    The held-out slices are spread evenly over the sorted list rather than drawn at random, so
    the before/after Dice covers the pancreas from head to tail and the split is the same each
    time the user presses the button.

    Parameters
    ----------
    slices
        Corrected slice indices.
    fraction
        Share to hold out, rounded, at least one when there are ``min_slices`` or more.
    min_slices
        Below this many slices nothing is held out: every slice is needed to learn from.
    accepted
        Those of ``slices`` the user reviewed and accepted unchanged. They are never held out:
        the model drew them, so they score it near 1 before any learning and any change as a
        loss (a tester's round fell from 0.999 to 0.755 on one and kept the previous model).
        Held-out slices come from the others, and at least one of those is trained on.
    learnt
        Slices the model has learnt from in an earlier round (:func:`learnt_slices`). Never
        held out either: it would score them high before learning, and judge the round
        against its memory (a tester's second round fell from 0.884 on such a slice and was
        thrown away). With only such slices left, nothing is held out.

    Returns
    -------
    train, holdout : list of int
        Disjoint sorted lists whose union is ``slices``.
    """
    ordered = sorted(set(int(s) for s in slices))
    n = len(ordered)
    if n < max(min_slices, 2):
        return ordered, []
    skipped = {int(s) for s in accepted}
    drawn = [s for s in ordered if s not in skipped]
    seen = {int(s) for s in learnt}
    fresh = [s for s in drawn if s not in seen]
    count = min(len(drawn) - 1, len(fresh), max(1, round(n * fraction)))
    if count < 1:
        return ordered, []
    # The centre of each of ``count`` equal bins over the sorted list.
    positions = {int((k + 0.5) * len(fresh) / count) for k in range(count)}
    holdout = [fresh[p] for p in sorted(positions)]
    held = set(holdout)
    return [s for s in ordered if s not in held], holdout


def learnt_slices(meta: Mapping[str, Any], source_key: str) -> set[int]:
    """Canonical slices of one CT that a fine-tuned model has learnt from, round after round.

    Read from ``meta["provenance"]["fine_tune"]`` and the rounds before it (``earlier``):
    the slices each round trained on, and its held-out slices when the model went on to learn
    them too (``held_out_steps``); rounds the guard threw away taught nothing.

    Parameters
    ----------
    meta
        A checkpoint's metadata (:func:`~src_models.models.store.load_checkpoint`).
    source_key
        :func:`~src_models.autosave.content_key` of the CT: rounds on other CTs do not count.
    """
    found: set[int] = set()
    if not source_key:  # a CT without its file geometry: its rounds cannot be told apart
        return found
    record = (meta.get("provenance") or {}).get("fine_tune")
    while isinstance(record, Mapping):
        if record.get("source_digest") == source_key and not record.get("kept_previous"):
            trained = record.get("slices")
            if isinstance(trained, list):  # a count in records of plain fine_tune calls
                found.update(int(k) for k in trained)
            if record.get("held_out_steps"):
                found.update(int(k) for k in record.get("holdout_slices") or ())
        record = record.get("earlier")
    return found


def fine_tuned_path(model_dir: str | Path, base_checkpoint: str | Path, image: str) -> Path:
    """A new, never existing ``<base>-ft-<image>-v<N>.pt`` in ``model_dir``.

    Fine-tuning a fine-tuned model keeps the original base name and counts on, so versions of
    one patient's model line up as v1, v2, ... instead of growing ever longer names.
    """
    model_dir = Path(model_dir)
    base = Path(str(base_checkpoint)).name
    if base.endswith(".pt"):
        base = base[:-3]
    match = _VERSIONED.match(base)
    base = slug(match.group("base") if match else base)
    stem = f"{base}-ft-{image_stem(image)}-v"
    taken = [
        int(p.name[len(stem) : -3])
        for p in model_dir.glob(f"{stem}*.pt")
        if p.name[len(stem) : -3].isdigit()
    ]
    return model_dir / f"{stem}{max(taken, default=0) + 1}.pt"


#: A guarded round that finished fewer optimiser steps than this keeps the previous model,
#: whatever the held-out slices say. On the NIH volume 0001 with four corrections 5 slices
#: apart and a model that never saw it (whole-volume Dice 0.676 before), one ``dsms refine``
#: round ended at 0.545 after 7 steps although its held-out Dice rose from 0.56 to 0.78 (the
#: model now marked stomach and liver: twice the pancreas outside the corrections), 0.685 after
#: 50, 0.800 after 100 and 0.808 after 200. A few steps at the round's learning rate throw the
#: model far before the schedule anneals it, and a held-out slice beside the training slices
#: cannot see it. Short rounds happen on a busy CPU (7 steps in 40 s, found by a tester).
MIN_GUARDED_STEPS = 100


def _is_worse(before: Mapping[str, float], after: Mapping[str, float]) -> bool:
    """Whether the held-out pancreas Dice fell (unknown without held-out slices: not worse)."""
    if "dice_pancreas" not in before or "dice_pancreas" not in after:
        return False
    return after["dice_pancreas"] < before["dice_pancreas"]


def held_out_metrics(
    model: nn.Module,
    meta: Mapping[str, Any],
    images_hu: np.ndarray,
    labels: np.ndarray,
    spacing_yx: Sequence[float] | None,
    device: torch.device,
) -> dict[str, float]:
    """Dice, PPV and sensitivity of held-out corrected slices as the user will get them.

    The slices go through the inference engine (:func:`~src_models.inference.engine.segment`:
    cropped to the body, at the model's resolution and back) and are scored on their own grid;
    only the 3D clean-up is left out, as the slices are not neighbours. The training loop's
    :func:`~src_models.training.loop.validate` runs whole slices instead, and after a quick
    fine-tuning on 128-pixel patches the two parted: on the NIH volume 0001 it measured the
    held-out Dice falling from 0.84 to 0.66 while the engine's rose from 0.78 to 0.86 (whole
    slices, air and table around the body, are not what the round learnt from), and the guard
    threw away a model whose Dice on the 61 untouched pancreas slices had risen from 0.70 to
    0.83.

    Parameters
    ----------
    images_hu, labels
        (N, H, W) canonical axial slices in HU and their labels 0/1/2.
    spacing_yx
        In-plane spacing in mm (``None``: :data:`~src_models.inference.preprocessing.
        FALLBACK_SPACING_MM`).

    Returns
    -------
    dict
        ``{"dice_pancreas": ..., "ppv_pancreas": ..., ..., "sensitivity_tumour": ...}``: the
        keys of :func:`~src_models.training.loop.validate`, all slices pooled as one case.
    """
    row_mm, column_mm = spacing_yx if spacing_yx is not None else (FALLBACK_SPACING_MM,) * 2
    slices = Volume(np.asarray(images_hu), canonical_affine((1.0, row_mm, column_mm)))
    result = run_to_end(segment(slices, model, meta, device=device, reconstruct=False,
                                clean_up=False))  # fmt: skip
    summary = summarise([case_metrics(result.canonical_labels, np.asarray(labels))])
    return {f"{m}_{s}": summary[s][m].mean for s in STRUCTURES for m in METRICS}


def fine_tune(
    model: nn.Module,
    meta: Mapping[str, Any],
    images_hu: np.ndarray,
    labels: np.ndarray,
    spacing_yx: Sequence[float] | None = None,
    *,
    steps: int | None = None,
    time_budget_s: float | None = None,
    device: str = "auto",
    seed: int = 0,
    val_images_hu: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    out: str | os.PathLike[str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    guard: bool = False,
    config: TrainConfig | None = None,
    learn_held_out: float = 0.0,
) -> Generator[TrainEvent, None, FineTuneResult]:
    """Fine-tune ``model`` in place on a few corrected slices; a generator of ``TrainEvent``.

    Run it in a worker, show ``event.step / event.total_steps``, and close the generator to
    stop: nothing is saved, and the model keeps the weights of the last finished step, or with
    ``guard`` the weights it was handed (nothing checked the steps it made).

    Parameters
    ----------
    model, meta
        From :func:`~src_models.models.store.load_checkpoint`; ``meta["preprocessing"]`` prepares
        the slices exactly as for inference.
    images_hu, labels
        (N, H, W) canonical axial slices in HU and their corrected labels (0/1/2). Slices without
        any label are kept: they teach the model where the pancreas is not.
    spacing_yx
        In-plane spacing in mm of the slices (``None``: unknown, 0.8 mm assumed).
    steps, time_budget_s
        Stop after this many steps or seconds, whichever comes first; by default 400 steps or
        180 s (:data:`FINE_TUNE_DEFAULTS`).
    device, seed
        As for :func:`~src_models.training.loop.train`.
    val_images_hu, val_labels
        Held-out corrected slices of the same patient: measured before and after.
    out
        Save the fine-tuned model there (atomically) when it finishes; it must not exist
        (:func:`fine_tuned_path` gives a free versioned name).
    provenance
        Facts about the corrections (source image, slice indices) recorded in the checkpoint
        under ``provenance["fine_tune"]``.
    guard
        If the held-out pancreas Dice is lower after the round than before, or the round
        finished fewer than :data:`MIN_GUARDED_STEPS` steps, restore the weights the model had
        (:attr:`FineTuneResult.kept_previous`); ``out`` then holds those
        weights, with the round recorded, so a caller always finds the model it was handed.
    config
        Full control of the loop; ``steps``, ``time_budget_s``, ``device`` and ``seed`` given
        explicitly still win.
    learn_held_out
        With ``guard`` (else ignored): after a round the guard kept, go on for this share of
        its steps on every slice, the held-out ones included: they have judged the round, and
        the user corrected them too (:data:`src_models.refine.LEARN_HELD_OUT`). These steps
        are not judged again, so ``metrics_after`` stays the guard's figure. A
        ``time_budget_s`` given covers both parts: the guarded one first (shortened, it
        could fall below :data:`MIN_GUARDED_STEPS`; a tester's 30 s round did), then what
        time is left.

    Yields
    ------
    TrainEvent
        ``"validation"`` (step 0, only with held-out slices), ``"step"`` per step,
        ``"validation"`` at the end (held-out slices), ``"done"``.

    Returns
    -------
    FineTuneResult

    Raises
    ------
    FileExistsError
        ``out`` exists (it could be a model someone relies on); raised before any training.
    ValueError
        ``guard`` without held-out slices (nothing could judge the round: it was kept
        unchecked, found by a tester), or held-out images without their labels.
    """
    if out is not None and Path(out).exists():
        raise FileExistsError(f"{out}: already exists; fine-tuned models never replace one")
    if (val_images_hu is None) != (val_labels is None):
        raise ValueError("give the held-out slices' images and labels together, or neither")
    if guard and (val_images_hu is None or len(val_images_hu) == 0):
        raise ValueError(
            "guard=True needs held-out corrected slices (val_images_hu, val_labels) to judge "
            "the round; split_holdout gives them"
        )
    base = config or FINE_TUNE_DEFAULTS
    budget = (
        time_budget_s
        if time_budget_s is not None
        else (base.time_budget_s if steps is None else None)
    )
    held_out = val_images_hu is not None and val_labels is not None and len(val_images_hu) > 0
    learn_held_out = learn_held_out if guard and held_out else 0.0
    config = replace(
        base,
        steps=steps if steps is not None else base.steps,
        time_budget_s=budget,
        # a budget the caller chose is kept to; the default one goes on to the base's floor
        min_steps=base.min_steps if time_budget_s is None else 0,
        device=device,
        seed=seed,
        val_every=0,
    )
    preprocessing = dict(meta["preprocessing"])
    patient = "corrected-slices"
    cached = cache_arrays(
        patient, np.asarray(images_hu), np.asarray(labels), spacing_yx, preprocessing
    )
    previous = copy.deepcopy(model.state_dict()) if guard else None
    torch.manual_seed(seed)
    window = preprocessing["hu_window"]

    def sampler_of(slices: CachedCase, seed: int) -> SliceSampler:
        return SliceSampler(
            [slices],
            min(config.patch_size, max(slices.images.shape[1:])),
            float(window[1]) - float(window[0]),
            config.augmentation,
            foreground_fraction=config.foreground_fraction,
            seed=seed,
        )

    sampler = sampler_of(cached, seed)
    dev = resolve_device(config.device)
    threads = torch.get_num_threads()
    if dev.type == "cpu":  # restored below: the viewer's inference keeps its own count
        torch.set_num_threads(config.threads or threads_beside_load(threads))
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    finished = False
    follow_up: _Loop | None = None
    # The steps planned after the guard count from the start: a bar at 200/200 that went on
    # to 201/300 looked finished, then restarted (a tester).
    total = config.steps + round(learn_held_out * config.steps)
    try:
        if held_out:  # before the loop is built: it puts the model in training mode
            before = held_out_metrics(model, meta, val_images_hu, val_labels, spacing_yx, dev)
        loop = _Loop(model, sampler, config, dev)
        if held_out:
            yield TrainEvent("validation", 0, total, 0.0, metrics=before)
        for event in loop.run(lambda: ({}, None)):
            yield replace(event, total_steps=total)
        if held_out:
            after = held_out_metrics(model, meta, val_images_hu, val_labels, spacing_yx, dev)
            yield TrainEvent(
                "validation", loop.state.step, total, loop.state.elapsed_s, metrics=after
            )
        too_few_steps = previous is not None and loop.state.step < MIN_GUARDED_STEPS
        kept_previous = previous is not None and (too_few_steps or _is_worse(before, after))
        left = None if time_budget_s is None else time_budget_s - loop.state.elapsed_s
        if learn_held_out > 0 and not kept_previous and (left is None or left > 0):
            all_slices = cache_arrays(
                patient,
                np.concatenate([np.asarray(images_hu), np.asarray(val_images_hu)]),
                np.concatenate([np.asarray(labels), np.asarray(val_labels)]),
                spacing_yx,
                preprocessing,
            )
            follow_up = _Loop(
                model,
                sampler_of(all_slices, seed + 1),
                replace(
                    config, steps=max(round(learn_held_out * loop.state.step), 1),
                    time_budget_s=left, min_steps=0, warmup_fraction=0.0, seed=seed + 1,
                ),
                dev,
            )  # fmt: skip
            done, total = loop.state.step, loop.state.step + follow_up.config.steps
            for event in follow_up.run(lambda: ({}, None)):  # one progress count to the end
                yield replace(event, step=done + event.step, total_steps=total,
                              elapsed_s=loop.state.elapsed_s + event.elapsed_s)  # fmt: skip
        finished = True
    finally:
        torch.set_num_threads(threads)
        if not finished and previous is not None:  # cancelled: an unchecked guarded round
            model.load_state_dict(previous)  # (a tester's cancelled refine kept 5 steps)
        model.to("cpu", memory_format=torch.contiguous_format).eval()
        release_memory(dev)
    base_path = Path(meta["path"]) if meta.get("path") else None
    if kept_previous:
        model.load_state_dict(previous)
    extra_steps = follow_up.state.step if follow_up is not None else 0
    steps_done = loop.state.step + extra_steps
    elapsed = loop.state.elapsed_s + (follow_up.state.elapsed_s if follow_up is not None else 0)
    new_meta = _fine_tuned_meta(
        meta, base_path, len(images_hu), (steps_done, elapsed), config, before, after
    )
    new_meta["provenance"]["fine_tune"]["held_out_steps"] = extra_steps
    new_meta["provenance"]["fine_tune"].update(provenance or {})
    new_meta["provenance"]["fine_tune"]["kept_previous"] = kept_previous
    new_meta["provenance"]["fine_tune"]["too_few_steps"] = too_few_steps
    saved = None
    if out is not None:
        saved = save_checkpoint(
            out, model, preprocessing=preprocessing, provenance=new_meta["provenance"],
            metrics=(before if kept_previous else after) or dict(meta.get("metrics", {})),
        )  # fmt: skip
        new_meta["path"] = str(saved)
    result = FineTuneResult(
        saved, base_path, steps_done, elapsed, before, after,
        planned_steps=config.steps + (follow_up.config.steps if follow_up is not None else 0),
        model=model, meta=new_meta, kept_previous=kept_previous, too_few_steps=too_few_steps,
        held_out_steps=extra_steps,
    )  # fmt: skip
    yield TrainEvent(
        "done",
        result.steps,
        result.planned_steps,
        result.elapsed_s,
        metrics=after,
        checkpoint=saved,
    )
    return result


def _fine_tuned_meta(
    meta: Mapping[str, Any],
    base_path: Path | None,
    slices: int,
    done: tuple[int, float],
    config: TrainConfig,
    before: dict[str, float],
    after: dict[str, float],
) -> dict[str, Any]:
    """The input's metadata with this round recorded under ``provenance["fine_tune"]``.

    ``done`` is the round's (steps, seconds).
    """
    new_meta = copy.deepcopy(dict(meta))
    base_provenance = new_meta.get("provenance", {})
    provenance = {k: v for k, v in base_provenance.items() if k not in (*_STAMP_KEYS, *_FILE_KEYS)}
    # The base's training ran on its own date: the new file's stamp must not date it (a
    # tester's card read "Training (2026-12-01)" for a base trained the day before).
    if "steps" in provenance and "training_date" not in provenance:
        provenance["training_date"] = base_provenance.get("date")
    # The base's patient split no longer describes this model (it has now seen a new patient,
    # perhaps one of the base's test patients): kept with the round, not as the model's own.
    base_split = {k: provenance.pop(k) for k in _SPLIT_KEYS if k in provenance}
    earlier = provenance.pop("fine_tune", None)  # the rounds before this one, kept in a chain
    provenance["fine_tune"] = {
        "base_split": base_split,
        "base": meta.get("path"),
        "base_checkpoint": str(base_path) if base_path else None,
        "slices": int(slices),
        "steps": done[0],
        "elapsed_s": round(done[1], 1),
        "config": {k: v for k, v in config.to_dict().items() if k not in _UNUSED_CONFIG_KEYS},
        "metrics_before": before,
        "metrics_after": after,
    }
    if earlier is not None:
        provenance["fine_tune"]["earlier"] = earlier
    new_meta["provenance"] = provenance
    return new_meta


def learn_from_corrections(
    checkpoint: str | Path,
    images_hu: np.ndarray,
    labels: np.ndarray,
    spacing_yx: Sequence[float] | None,
    *,
    output: str | Path,
    holdout_images: np.ndarray | None = None,
    holdout_labels: np.ndarray | None = None,
    **options: Any,
) -> Generator[TrainEvent, None, FineTuneResult]:
    """:func:`fine_tune` a fresh copy of ``checkpoint`` and save it to ``output``.

    The base checkpoint is loaded afresh, so the model a viewer is using is never touched.
    ``options`` are those of :func:`fine_tune` (``steps``, ``time_budget_s``, ``device``,
    ``seed``, ``provenance``, ``guard``).

    Raises
    ------
    FileExistsError
        ``output`` exists; raised before the checkpoint is read.
    """
    if Path(output).exists():
        raise FileExistsError(f"{output}: already exists; fine-tuned models never replace one")
    model, meta = load_checkpoint(checkpoint)
    return (
        yield from fine_tune(
            model,
            meta,
            images_hu,
            labels,
            spacing_yx,
            val_images_hu=holdout_images,
            val_labels=holdout_labels,
            out=output,
            **options,
        )  # fmt: skip
    )
