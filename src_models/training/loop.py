"""Training as a generator that yields progress events.

:func:`train` (the ``dsms train`` command, ``torchrun`` included) and
:func:`~src_models.training.fine_tune.fine_tune` (the napari Review widget, ``dsms refine``) run
the same loop: AdamW, linear warm-up then cosine decay, gradient
accumulation (the paper's trick for small memory), mixed precision, and validation Dice with the
functions of :mod:`src_models.metrics`. Being generators, they let a caller show progress and
stop between two steps by closing the generator; a checkpoint on disk is only ever replaced
atomically (:func:`~src_models.models.checkpoints.save_checkpoint`), so stopping never corrupts one.

Event format (:class:`TrainEvent`): ``kind`` is ``"step"`` after every optimiser step,
``"validation"`` after every validation and ``"done"`` last; ``step`` / ``total_steps`` give the
progress, ``losses`` the loss terms of the step, ``lr`` the learning rate, ``metrics`` the
validation figures (``dice_pancreas``, ``ppv_pancreas``, ``sensitivity_pancreas``,
``dice_tumour``, ..., and ``best_dice_pancreas``), and ``checkpoint`` the file written (on the
final event: the best checkpoint).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..inference.devices import release_memory, resolve_device
from ..inference.precision import autocast, autocast_dtype
from ..inference.preprocessing import DEFAULT_PREPROCESSING, labels_from_logits
from ..io.atomic import atomic_path
from ..metrics import METRICS, STRUCTURES, case_metrics, summarise
from ..models.checkpoints import CheckpointError, save_checkpoint
from ..models.store import load_checkpoint
from ..nets.registry import build_model
from .data import PHANTOM_PREFIX, Augmentation, CachedCase, SliceSampler
from .losses import build_loss

#: Columns of the CSV log, one row per optimiser step (validation columns empty between).
LOG_COLUMNS: tuple[str, ...] = (
    "step",
    "elapsed_s",
    "lr",
    "loss",
    "segmentation",
    "reconstruction",
    *(f"val_{m}_{s}" for s in STRUCTURES for m in METRICS),
)

#: Suffix of the resumable training state written beside the checkpoint (not ``.pt``, so the
#: model menus, which list ``*.pt``, never offer it as a model).
STATE_SUFFIX = ".train-state"

#: Final learning rate as a fraction of the peak at the end of the cosine decay.
FINAL_LR_FRACTION = 0.01

#: A run with ``min_steps`` stops at this many times its time budget even short of them.
MAX_OVERTIME = 3.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved in the checkpoint's provenance).

    Attributes
    ----------
    arch, width
        Architecture (:data:`~src_models.nets.registry.ARCHITECTURES`) and base width of a new
        model; ignored when the model comes from a checkpoint (``init``, ``resume``).
    steps
        Optimiser steps (each of ``batch_size * accumulate`` patches per process).
    batch_size, accumulate
        Patches per forward pass, and forward passes per optimiser step.
    lr, weight_decay, warmup_fraction
        AdamW peak learning rate and weight decay; linear warm-up over this fraction of the run,
        then cosine decay to :data:`FINAL_LR_FRACTION` of the peak.
    patch_size
        Side of the square training patches at model resolution (pixels).
    val_every
        Validate (and keep the best checkpoint) every this many steps, and at the end.
    time_budget_s
        Stop after this many seconds even before ``steps``; the learning-rate schedule follows
        whichever of steps and time is further along, so a budgeted run still anneals.
    min_steps
        With a time budget, go on past it until this many steps (the schedule then paces itself
        to end there), but not past :data:`MAX_OVERTIME` times the budget. A guarded round
        needs 100 steps to be trusted, and on a busy CPU whole rounds ended 6 steps short and
        were thrown away: the same corrections learnt or not by the machine's load (a tester).
    loss
        ``"bce"`` (the paper's) or ``"dice_bce"`` (:mod:`src_models.training.losses`).
    seed
        Seeds weights, sampling and augmentation: the same seed gives the same run (without a
        time budget, on the same device).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    precision
        One of :data:`~src_models.inference.precision.PRECISIONS`; ``"auto"`` is bfloat16 on
        GPUs that have it, else float16 with loss scaling, and float32 on CPU and MPS
        (:mod:`src_models.inference.precision`).
    channels_last
        Use the NHWC memory layout (faster convolutions on CPUs and tensor cores).
    augmentation
        Random transforms (:class:`~src_models.training.data.Augmentation`).
    foreground_fraction
        Share of patches drawn from slices that contain pancreas.
    preprocessing
        HU window and in-plane spacing of a new model; a checkpoint's own preprocessing wins.
    log_csv
        CSV file for the losses and validation figures (``None``: no log).
    threads
        CPU threads for torch (``None``: leave torch's default).
    reconstruction
        Train the restoration decoder too (the paper's Loss 2, section III-D). Fine-tuning on a
        few corrected slices may turn it off: labels never use that decoder, and without it a
        step costs about a sixth less (the held-out Dice gain was the same on the shared CT,
        docs/benchmarks.md), but the reconstructions shown beside the CT then drift from the
        fine-tuned encoder, so the defaults keep it.
    """

    arch: str = "dsmsc_unet"
    width: int = 32
    steps: int = 2000
    batch_size: int = 8
    accumulate: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    patch_size: int = 192
    val_every: int = 200
    time_budget_s: float | None = None
    min_steps: int = 0
    loss: str = "bce"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    augmentation: Augmentation = field(default_factory=Augmentation)
    foreground_fraction: float = 0.7
    preprocessing: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    log_csv: str | None = None
    threads: int | None = None
    reconstruction: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record for checkpoints."""
        record = asdict(self)
        record["augmentation"] = asdict(self.augmentation)
        record["preprocessing"] = dict(self.preprocessing)
        return record


@dataclass(frozen=True)
class TrainEvent:
    """One progress report of :func:`train` or of fine-tuning (see the module doc)."""

    kind: str
    step: int
    total_steps: int
    elapsed_s: float
    lr: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns (also the content of its final event).

    Attributes
    ----------
    checkpoint
        The best checkpoint (by validation pancreas Dice).
    steps
        Optimiser steps done in total (including those before a resume).
    elapsed_s
        Training time in seconds (including before a resume).
    best_metrics
        Validation figures of the best checkpoint.
    """

    checkpoint: Path
    steps: int
    elapsed_s: float
    best_metrics: dict[str, float]


# ------------------------------------------------------------------------------- helpers


def lr_factor(progress: float, warmup_fraction: float) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1]: linear warm-up, then cosine decay."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup_fraction > 0 and progress < warmup_fraction:
        return max(progress / warmup_fraction, 1e-3)
    span = max(1.0 - warmup_fraction, 1e-9)
    cosine = 0.5 * (1.0 + math.cos(math.pi * (progress - warmup_fraction) / span))
    return FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * cosine


def _dist() -> tuple[int, int, int, bool]:
    """(rank, world size, local rank, whether this call started the process group).

    Under ``torchrun`` the process group is initialised here unless the caller did it already.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), started


def _end_dist(started: bool, finished: bool) -> None:
    """Wait for every process, then close the process group that :func:`_dist` started.

    Without it a rank that finishes first (ranks other than 0 do not validate) leaves Python
    while gloo's threads still run, and the C++ runtime aborts it ("terminate called without an
    active exception", SIGABRT): torchrun then failed about one run in ten after a finished
    training.
    """
    if not started:
        return
    import torch.distributed as dist

    if finished:
        dist.barrier()
    dist.destroy_process_group()


@torch.no_grad()
def predict_cached(
    model: nn.Module,
    case: CachedCase,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """Labels (N, h, w) of a cached case's slices at model resolution (validation)."""
    was_training = model.training
    model.eval()
    labels = np.empty(case.labels.shape, dtype=np.uint8)
    for start in range(0, len(case.images), batch_size):
        batch = torch.from_numpy(case.images[start : start + batch_size]).to(device)
        batch = batch.float().div_(255.0)[:, None]
        with autocast(device, amp_dtype):
            logits = model(batch, reconstruct=False).logits
        labels[start : start + batch_size] = labels_from_logits(logits.float()).cpu().numpy()
    model.train(was_training)
    return labels


def validate(
    model: nn.Module,
    cases: Sequence[CachedCase],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean Dice, PPV and sensitivity over ``cases`` (each patient weighs the same).

    Computed at model resolution on whole slices: close to, and much cheaper than, the figures
    of ``dsms evaluate`` on the original grid.
    """
    per_case = [case_metrics(predict_cached(model, c, device, amp_dtype), c.labels) for c in cases]
    summary = summarise(per_case)
    return {f"{m}_{s}": summary[s][m].mean for s in STRUCTURES for m in METRICS}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class _CsvLog:
    """Append-only CSV of :data:`LOG_COLUMNS`, flushed every row so a crash loses nothing."""

    def __init__(self, path: str | os.PathLike[str], append: bool) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (append and path.exists())
        self.handle = open(path, "w" if fresh else "a", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        if fresh:
            self.writer.writeheader()

    def write(self, row: Mapping[str, Any]) -> None:
        self.writer.writerow(
            {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        )
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


# ---------------------------------------------------------------------------------- loop


@dataclass
class _LoopState:
    step: int = 0
    elapsed_s: float = 0.0
    best_score: float = -1.0
    best_metrics: dict[str, float] = field(default_factory=dict)


class _Loop:
    """The optimisation loop shared by :func:`train` and fine-tuning."""

    def __init__(
        self,
        model: nn.Module,
        sampler: SliceSampler,
        config: TrainConfig,
        device: torch.device,
        *,
        rank: int = 0,
        world: int = 1,
        local_rank: int = 0,
    ) -> None:
        self.config = config
        self.device = device
        self.rank, self.world = rank, world
        self.amp_dtype = autocast_dtype(device, config.precision, training=True)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.memory_format = memory_format
        self.model = model.to(device=device, memory_format=memory_format)
        self.model.train()
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [local_rank] if device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model, device_ids=ids)
        self.sampler = sampler
        self.loss_fn = build_loss(config.loss)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=self.amp_dtype == torch.float16 and device.type == "cuda"
        )
        self.state = _LoopState()
        self._mark_boundary()

    def _mark_boundary(self) -> None:
        """Note the random generators between two steps: what :meth:`state_dict` saves.

        An interrupt (Ctrl-C, SIGTERM) lands in the middle of a step, after it drew its batch;
        saving the generators as they were then made a resumed run differ from an uninterrupted
        one from its first step (a tester). The weights only change at the step's end.
        """
        self._boundary_rngs = (torch.get_rng_state(), self.sampler.rng.bit_generator.state)

    def progress(self) -> float:
        """How far the run is, in [0, 1], by steps or by time, whichever is further."""
        by_steps = self.state.step / max(self.config.steps, 1)
        budget = self.config.time_budget_s
        by_time = self.state.elapsed_s / budget if budget else 0.0
        if self.config.min_steps and by_time < MAX_OVERTIME:  # pace the run to min_steps
            by_time = min(by_time, self.state.step / self.config.min_steps)
        return max(by_steps, by_time)

    def _synchronised(self, progress: float) -> float:
        """Rank 0's progress on every rank, so all processes agree on learning rate and stop."""
        if self.world == 1:
            return progress
        import torch.distributed as dist

        value = torch.tensor([progress], dtype=torch.float64, device=self.device)
        dist.broadcast(value, src=0)
        return float(value.item())

    def step(self) -> tuple[float, dict[str, float]]:
        """One optimiser step over ``accumulate`` batches; returns (lr, mean loss terms)."""
        config = self.config
        lr = config.lr * lr_factor(self._synchronised(self.progress()), config.warmup_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(config.accumulate):
            images, labels = self.sampler.sample(config.batch_size)
            images = images.to(self.device, non_blocking=True).contiguous(
                memory_format=self.memory_format
            )
            labels = labels.to(self.device, non_blocking=True)
            last = micro == config.accumulate - 1
            sync = contextlib.nullcontext() if last or self.world == 1 else self.model.no_sync()
            with sync:
                with autocast(self.device, self.amp_dtype):
                    output = self.model(images, reconstruct=config.reconstruction)
                terms = self.loss_fn(output, labels, images)
                self.scaler.scale(terms.total / config.accumulate).backward()
            for key, value in terms.as_floats().items():
                totals[key] = totals.get(key, 0.0) + value / config.accumulate
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.step += 1
        self._mark_boundary()
        return lr, totals

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs to continue exactly where this run is."""
        return {
            "model": {k: v.detach().cpu() for k, v in _unwrap(self.model).state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loop": asdict(self.state),
            "torch_rng": self._boundary_rngs[0],
            "sampler_rng": self._boundary_rngs[1],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (model, optimiser, scaler, step, time, RNGs)."""
        _unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.state = _LoopState(**state["loop"])
        torch.set_rng_state(state["torch_rng"])
        if self.rank == 0:
            self.sampler.rng.bit_generator.state = state["sampler_rng"]
        self._mark_boundary()

    def run(
        self, on_validation: Callable[[], tuple[dict[str, float], Path | None]]
    ) -> Iterator[TrainEvent]:
        """Step until ``steps`` or the time budget; call ``on_validation`` every ``val_every``."""
        config = self.config
        started = time.perf_counter() - self.state.elapsed_s
        while True:
            budget, elapsed = config.time_budget_s, self.state.elapsed_s
            stop = self.state.step >= config.steps or (
                budget is not None
                and elapsed >= budget
                and (self.state.step >= config.min_steps or elapsed >= MAX_OVERTIME * budget)
            )
            if self._synchronised(1.0 if stop else 0.0) >= 1.0:
                break
            lr, losses = self.step()
            self.state.elapsed_s = time.perf_counter() - started
            yield TrainEvent(
                "step", self.state.step, config.steps, self.state.elapsed_s, lr, losses
            )
            if config.val_every and self.state.step % config.val_every == 0:
                metrics, saved = on_validation()
                self.state.elapsed_s = time.perf_counter() - started
                yield TrainEvent(
                    "validation", self.state.step, config.steps, self.state.elapsed_s, lr,
                    metrics=metrics, checkpoint=saved,
                )  # fmt: skip


def _atomic_torch_save(payload: Any, path: Path) -> None:
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def state_path(checkpoint: str | os.PathLike[str]) -> Path:
    """Where :func:`train` keeps the resumable state of the run that writes ``checkpoint``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + STATE_SUFFIX)


#: Provenance keys that say which cases a model learnt from (its split, its CT contents, its
#: fine-tuning rounds, and those of the model it continued), kept under ``init_learnt`` by a
#: run that continues it and read by ``dsms evaluate``.
LEARNT_KEYS = (
    "train_patients", "val_patients", "train_digests", "val_digests", "selected",
    "fine_tune", "init_learnt",
)  # fmt: skip


def _initial_model(
    config: TrainConfig, init: str | os.PathLike[str] | None
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(model, preprocessing, provenance of the base) for a new run or a fine-tune from ``init``."""
    if init is None:
        model = build_model(config.arch, width=config.width)
        return model, dict(config.preprocessing), {}
    model, meta = load_checkpoint(init)
    if meta["arch"] != config.arch:
        raise CheckpointError(
            f"{meta['path']}: holds a {meta['arch']!r} model, but --arch is {config.arch!r}"
        )
    base = {
        "init": str(init),
        "init_path": meta["path"],
        "init_date": meta["provenance"].get("date"),
        # What the base learnt from stays with the run: a tester's model continued from the
        # bundled default was scored on 7 of its base's training patients without a warning.
        "init_learnt": {
            key: value for key, value in meta["provenance"].items() if key in LEARNT_KEYS
        },
    }
    return model, dict(meta["preprocessing"]), base


def train(
    config: TrainConfig,
    train_cases: Sequence[CachedCase],
    val_cases: Sequence[CachedCase],
    out: str | os.PathLike[str],
    *,
    init: str | os.PathLike[str] | None = None,
    resume: bool = False,
    provenance: Mapping[str, Any] | None = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Train a model and keep its best checkpoint; a generator of :class:`TrainEvent`.

    Parameters
    ----------
    config
        The run (:class:`TrainConfig`).
    train_cases, val_cases
        Cases at model resolution (:func:`~src_models.training.data.cache_case`), cached with the
        preprocessing of the model being trained (``config.preprocessing``, or ``init``'s).
    out
        The best checkpoint (by validation pancreas Dice) is written here; the resumable state
        goes to :func:`state_path` ``(out)``.
    init
        Bundled model name or checkpoint file to fine-tune from (its architecture must be
        ``config.arch``; its width and preprocessing win over ``config``).
    resume
        Continue the run whose state is at :func:`state_path` ``(out)``: model, optimiser, step,
        elapsed time and random generators (bit-identical on one process and device).
    provenance
        Extra facts for the checkpoint (data folders, split file, ...).

    Yields
    ------
    TrainEvent
        ``"step"`` after every step, ``"validation"`` every ``val_every`` steps and at the end,
        ``"done"`` last with the best checkpoint. Closing the generator stops the run between
        steps; the state is then saved for ``resume``, and ``out`` holds the best model so far
        (or, if nothing was validated yet, the current one).

    Returns
    -------
    TrainResult
        The best checkpoint, steps, time and its validation figures.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs this function; gradients are
    averaged by DistributedDataParallel (gloo on CPU, nccl on CUDA), each process samples its own
    patches, and only rank 0 validates and writes files.
    """
    out = Path(out)
    rank, world, local_rank, owns_group = _dist()
    device = resolve_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed + rank)
    model, preprocessing, base = _initial_model(config, init)
    window = preprocessing["hu_window"]
    sampler = SliceSampler(
        train_cases,
        config.patch_size,
        float(window[1]) - float(window[0]),
        config.augmentation,
        foreground_fraction=config.foreground_fraction,
        seed=config.seed + 1000 * rank,
    )
    loop = _Loop(model, sampler, config, device, rank=rank, world=world, local_rank=local_rank)
    state_file = state_path(out)
    if resume:
        if not state_file.is_file():
            raise FileNotFoundError(f"{state_file}: no training state to resume from")
        loop.load_state_dict(torch.load(state_file, map_location="cpu", weights_only=True))
    record = {
        **base,
        **(provenance or {}),
        "config": config.to_dict(),
        "train_patients": sorted({c.patient_id for c in train_cases}),
        "val_patients": sorted({c.patient_id for c in val_cases}),
        # CT contents, which know a patient's volume under any file name (dsms evaluate)
        "train_digests": sorted({c.digest for c in train_cases if c.digest}),
        "val_digests": sorted({c.digest for c in val_cases if c.digest}),
        "validated_structures": validated_structures_of(val_cases),
        "processes": world,
        "device": str(device),
    }
    log = _CsvLog(config.log_csv, append=resume) if config.log_csv and rank == 0 else None
    written = out.is_file() and resume

    def save_best(metrics: dict[str, float]) -> None:
        nonlocal written
        steps = {"steps": loop.state.step, "elapsed_s": round(loop.state.elapsed_s, 1)}
        save_checkpoint(
            out,
            _unwrap(loop.model),
            preprocessing=preprocessing,
            provenance={**record, **steps},
            metrics=metrics,
        )
        written = True

    def on_validation() -> tuple[dict[str, float], Path | None]:
        if rank != 0:
            return {}, None
        metrics = validate(_unwrap(loop.model), val_cases, device, loop.amp_dtype)
        saved = None
        if metrics["dice_pancreas"] > loop.state.best_score:
            loop.state.best_score = metrics["dice_pancreas"]
            loop.state.best_metrics = dict(metrics)
            save_best(metrics)
            saved = out
        _atomic_torch_save(loop.state_dict(), state_file)
        metrics["best_dice_pancreas"] = loop.state.best_score
        if log is not None:
            log.write({"step": loop.state.step, **{f"val_{k}": v for k, v in metrics.items()}})
        return metrics, saved

    finished = False
    try:
        for event in loop.run(on_validation):
            if log is not None and event.kind == "step":
                log.write({"step": event.step, "elapsed_s": event.elapsed_s, "lr": event.lr,
                           **event.losses})  # fmt: skip
            yield event
        if config.val_every == 0 or loop.state.step % config.val_every != 0:
            metrics, saved = on_validation()
            yield TrainEvent(
                "validation", loop.state.step, config.steps, loop.state.elapsed_s,
                metrics=metrics, checkpoint=saved,
            )  # fmt: skip
        finished = True
    finally:
        if not finished and rank == 0:
            _atomic_torch_save(loop.state_dict(), state_file)
            if not written:
                save_best(loop.state.best_metrics)
        if log is not None:
            log.close()
        release_memory(device)
        _end_dist(owns_group, finished)
    result = TrainResult(out, loop.state.step, loop.state.elapsed_s, dict(loop.state.best_metrics))
    yield TrainEvent(
        "done", result.steps, config.steps, result.elapsed_s,
        metrics=result.best_metrics, checkpoint=out,
    )  # fmt: skip
    return result


def validated_structures_of(val_cases: Sequence[CachedCase]) -> list[str]:
    """Structures the validation cases hold in real (not synthetic) patients.

    A model is only vouched for where its checkpoint was selected on real labels: the bundled
    models saw tumour only in phantoms, so their tumour channel is unvalidated, and every place
    that shows its output says so (:func:`~src_models.models.checkpoints.validated_structures`).
    """
    real = [c for c in val_cases if not c.patient_id.startswith(PHANTOM_PREFIX)]
    found = []
    if any(len(c.foreground) for c in real):
        found.append("pancreas")
    if any(len(c.tumour) for c in real):
        found.append("tumour")
    return found


def default_threads() -> int:
    """CPU threads per process: the cores shared among the local ``torchrun`` processes."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 1) // local)


def warn_if_tiny(train_cases: Sequence[CachedCase]) -> None:
    """Warn when training data holds no pancreas at all (the model would learn nothing)."""
    if not any(len(c.foreground) for c in train_cases):
        warnings.warn(
            "no training slice contains pancreas: the model cannot learn it", stacklevel=2
        )
