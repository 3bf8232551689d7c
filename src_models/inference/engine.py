"""Slice-wise segmentation of a CT volume: a generator that yields progress, then the result.

The engine behind ``dsms predict`` and the Segment widget. It is a plain generator so that a
terminal drives it with a progress bar and napari runs it in a worker thread, and closing it
(the Cancel button) stops between two batches.

What happens to a volume
------------------------
1. The array is brought to the canonical layout (:mod:`src_models.io.orientation`: axis
   permutations and flips only), so an LPS DICOM series, a RAS or LAS NIfTI and a flipped series
   all give the model the same slices, laid out as it was trained on them.
2. Axial slices are windowed and resampled to the checkpoint's in-plane spacing
   (:mod:`src_models.inference.preprocessing`, the path training uses), in batches.
3. The model runs on the body only (:mod:`src_models.inference.body`): per batch, the box
   around the body of every slice, found in source pixels, mapped to the model grid, widened by
   :data:`BODY_MARGIN` and aligned to the network's pooling grid. Slices without body are not
   run. Outside the box the logits are background; the reconstruction there is the model's
   input itself (the windowed slice at model resolution), so the reconstruction error shows
   only resampling blur outside the body, and a slice without body reconstructs as itself.
4. The logits are resampled back to the slice size and turned into labels 0/1/2; the
   restoration decoder's output (DRS models) is resampled the same way. Results go into arrays
   allocated once, so memory grows with the outputs only, never with the work per slice.
5. The outputs are handed back on the file's own grid with :func:`~src_models.io.orientation.
   from_canonical`, which is exact (views, no interpolation).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io.orientation import canonical_spacing, to_canonical
from ..io.volume import voxel_volume_mm3
from ..io.windows import hu_to_unit
from ..metrics import volume_ml
from .body import body_boxes, has_body, model_box
from .devices import release_memory, resolve_device
from .memory import InsufficientMemoryError, check_memory, estimate_memory_bytes
from .postprocess import keep_largest_components
from .precision import autocast_dtype, precision_name
from .preprocessing import (
    DEFAULT_PREPROCESSING,
    labels_from_logits,
    model_size,
    to_model_input,
    to_source_size,
)
from .results import SegmentationResult, SegmentationStats, VolumeLike

logger = logging.getLogger(__name__)

#: What :func:`segment` yields: (slices done, slices in total).
Progress = tuple[int, int]

#: Batch sizes that keep each device busy without large transient memory: on the CPU larger
#: batches gain nothing (measured, docs/benchmarks.md) and cost memory; on GPUs the batch must
#: be large to hide kernel-launch overhead, and an out-of-memory error halves it.
DEFAULT_BATCH_SIZES: dict[str, int] = {"cpu": 4, "cuda": 128, "mps": 32}

#: Model pixels of context kept around the body's box (27 mm at 1.7 mm). On the shared CT the
#: default model's Dice against the manual label was 0.629, 0.632, 0.637 with margins 8, 16, 32
#: (0.621 on whole slices), while a margin of 32 leaves little of the crop's speed-up.
BODY_MARGIN = 16

#: Logit given to pixels outside the body's crop: sigmoid 2e-9, background in every channel.
_OUTSIDE_LOGIT = -20.0

#: Input dtypes copied to an accelerator as they are; anything else goes as float32.
_DEVICE_INPUT_DTYPES = (np.int16, np.uint8, np.int8, np.int32, np.float16, np.float32)


def default_batch_size(device: torch.device) -> int:
    """Slices per batch when the caller does not say (:data:`DEFAULT_BATCH_SIZES`)."""
    return DEFAULT_BATCH_SIZES.get(device.type, DEFAULT_BATCH_SIZES["cpu"])


def _accepts_reconstruct(model: nn.Module) -> bool:
    """Whether ``model(x, reconstruct=False)`` is understood (to skip the restoration decoder)."""
    try:
        return "reconstruct" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _model_width(model: nn.Module) -> int:
    config = getattr(model, "config", None) or {}
    return int(config.get("width", 32))


def _model_has_restoration(model: nn.Module) -> bool:
    """Whether the model returns a reconstruction; unknown models are assumed to."""
    return bool(getattr(model, "has_restoration", True))


def window_on_device(
    hu: torch.Tensor, hu_window: tuple[float, float], size: tuple[int, int]
) -> torch.Tensor:
    """:func:`~src_models.inference.preprocessing.to_model_input` for a tensor already on the
    device.

    On a GPU the raw HU slices are copied over and windowed and resampled there: on the CPU this
    costs about 1 ms per 512 x 512 slice, which would cap a GPU at a few hundred slices per
    second. The arithmetic is that of :func:`~src_models.io.windows.hu_to_unit` step by step in
    float32, and a test keeps the two equal.

    Parameters
    ----------
    hu
        (N, H, W) Hounsfield units, any real dtype.
    hu_window
        (lower, upper) HU mapped to 0 and 1.
    size
        Model slice size (rows, columns).

    Returns
    -------
    torch.Tensor
        (N, 1, rows, columns) float32 in [0, 1].
    """
    lower, upper = float(hu_window[0]), float(hu_window[1])
    unit = hu.to(torch.float32)[:, None] - np.float32(lower)
    unit *= np.float32(1.0 / (upper - lower))
    unit.clamp_(0.0, 1.0)
    if tuple(size) == tuple(unit.shape[-2:]):
        return unit
    return F.interpolate(unit, size=size, mode="bilinear", antialias=True, align_corners=False)


@dataclass
class _Pending:
    """One batch whose results are on their way from the device to pinned host memory."""

    start: int
    stop: int
    host: dict[str, torch.Tensor]
    ready: Any  # torch.cuda.Event, or None when the copy was synchronous


class _Runner:
    """Runs batches of canonical slices on one device and writes into the output arrays.

    Kept apart from :func:`segment` so that the generator reads as the loop it is: submit a
    batch, collect the previous one, report progress.
    """

    def __init__(
        self,
        model: nn.Module,
        canonical: np.ndarray,
        spacing_yx: tuple[float, float],
        preprocessing: Mapping[str, Any],
        device: torch.device,
        dtype: torch.dtype | None,
        reconstruct: bool,
        probabilities: bool,
        crop_to_body: bool,
    ) -> None:
        self.model = model
        self.canonical = canonical
        self.spacing_yx = spacing_yx
        self.preprocessing = preprocessing
        self.hu_window = tuple(preprocessing["hu_window"])
        self.model_hw = model_size(canonical.shape[1:], spacing_yx, preprocessing)
        self.device = device
        self.dtype = dtype
        self.wants_reconstruction = reconstruct
        self.wants_probabilities = probabilities
        self.forward_kwargs = {"reconstruct": reconstruct} if _accepts_reconstruct(model) else {}
        self.crop_to_body = crop_to_body
        self.multiple = 2 ** int(getattr(model, "depth", 4))
        self.asynchronous = device.type == "cuda"
        # On the CPU the slices go through the training path itself; accelerators receive raw
        # HU and window them there (see window_on_device).
        self.window_on_host = device.type == "cpu"
        self.labels = np.empty(canonical.shape, dtype=np.uint8)
        self.reconstruction: np.ndarray | None = None
        self.probabilities = (
            np.empty((*canonical.shape, 2), dtype=np.float16) if probabilities else None
        )
        self.counts = np.zeros(3, dtype=np.int64)  # pancreas voxels, tumour voxels, slices

    def _input(self, start: int, stop: int) -> torch.Tensor:
        """Model input for canonical slices ``start:stop`` on the device, channels_last."""
        hu = self.canonical[start:stop]
        if self.window_on_host:
            x = to_model_input(hu, self.spacing_yx, self.preprocessing)
        else:
            dtype = hu.dtype if hu.dtype in _DEVICE_INPUT_DTYPES else np.dtype(np.float32)
            staging = torch.empty(hu.shape, dtype=_torch_dtype(dtype), pin_memory=self.asynchronous)
            staging.numpy()[...] = hu  # one copy, whatever the view's strides
            x = window_on_device(
                staging.to(self.device, non_blocking=True), self.hu_window, self.model_hw
            )
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def submit(self, start: int, stop: int) -> _Pending:
        """Run slices ``start:stop`` and start copying the results to the host.

        On CUDA the work is only queued: the host prepares the next batch while the GPU computes
        this one, and :meth:`collect` waits for it. Inference mode, autocast and cuDNN's
        autotuner (every batch has the same shape) are switched on here only, never across the
        generator's ``yield``, so the caller's thread keeps its own settings.
        """
        x = self._input(start, stop)
        keep, region = self._crop(start, stop)
        cudnn = (
            torch.backends.cudnn.flags(enabled=True, benchmark=True)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        autocast = torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype is not None
        )
        logits = x.new_full((len(x), 2, *x.shape[-2:]), _OUTSIDE_LOGIT)
        restored = x.clone() if self.wants_reconstruction else None
        if region is not None:
            crop = x[keep][(..., *region)].contiguous(memory_format=torch.channels_last)
            with cudnn, autocast:
                out = self.model(crop, **self.forward_kwargs)
            logits[(keep, slice(None), *region)] = out.logits.float()
            if restored is not None and out.reconstruction is not None:
                restored[(keep, slice(None), *region)] = out.reconstruction.float()
        shape_hw = self.canonical.shape[1:]
        logits = to_source_size(logits, shape_hw)
        labels = labels_from_logits(logits)
        flat = labels.flatten(1)
        device_results = {
            "labels": labels,
            "counts": torch.stack(
                [
                    (flat > 0).sum(),
                    (flat == 2).sum(),
                    (flat.amax(dim=1) > 0).sum(),
                ]
            ),
        }
        if restored is not None:
            restored = to_source_size(restored, shape_hw)[:, 0]
            device_results["reconstruction"] = restored.to(torch.float16)
        if self.wants_probabilities:
            device_results["probabilities"] = (
                torch.sigmoid(logits).permute(0, 2, 3, 1).to(torch.float16)
            )
        host = {name: self._to_host(tensor) for name, tensor in device_results.items()}
        ready = None
        if self.asynchronous:
            ready = torch.cuda.Event()
            ready.record()
        return _Pending(start, stop, host, ready)

    def _crop(self, start: int, stop: int) -> tuple[torch.Tensor, tuple[slice, slice] | None]:
        """Which slices of ``start:stop`` the model runs on, and the crop of the model grid.

        With ``crop_to_body``: the slices that hold a body and the box around all their bodies
        (:mod:`src_models.inference.body`), or ``None`` when no slice holds one. Otherwise every
        slice and the whole grid.
        """
        everything = (slice(0, self.model_hw[0]), slice(0, self.model_hw[1]))
        if not self.crop_to_body:
            return torch.arange(stop - start, device=self.device), everything
        boxes = body_boxes(self.canonical[start:stop], self.spacing_yx)
        keep = torch.from_numpy(np.flatnonzero(has_body(boxes))).to(self.device)
        region = model_box(
            boxes,
            self.canonical.shape[1:],
            self.model_hw,
            margin=BODY_MARGIN,
            multiple=self.multiple,
        )
        return keep, region

    def _to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.asynchronous:
            return tensor.cpu()
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        return host

    def collect(self, pending: _Pending) -> None:
        """Wait for a submitted batch and write it into the output arrays."""
        if pending.ready is not None:
            pending.ready.synchronize()
        window = slice(pending.start, pending.stop)
        self.labels[window] = pending.host["labels"].numpy()
        self.counts += pending.host["counts"].numpy()
        if "reconstruction" in pending.host:
            if self.reconstruction is None:
                self.reconstruction = np.empty(self.canonical.shape, dtype=np.float16)
            self.reconstruction[window] = pending.host["reconstruction"].numpy()
        if self.probabilities is not None:
            self.probabilities[window] = pending.host["probabilities"].numpy()


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def segment(
    volume: VolumeLike,
    model: nn.Module,
    meta: Mapping[str, Any] | None = None,
    *,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    reconstruct: bool = True,
    probabilities: bool = False,
    precision: str = "auto",
    crop_to_body: bool = True,
    clean_up: bool = True,
) -> Generator[Progress, None, SegmentationResult]:
    """Segment pancreas and tumour slice by slice, yielding progress, returning the result.

    Drive it with a loop (``dsms predict``) or a napari worker (the Segment widget); the result
    is the generator's return value (``StopIteration.value``, napari's ``returned`` signal).
    Closing the generator stops it between two batches; accelerator memory is released either
    way.

    Parameters
    ----------
    volume
        A :class:`~src_models.io.Volume` (``.array`` in HU, ``.affine`` to RAS mm).
    model
        A network from :func:`~src_models.nets.registry.build_model` or
        :func:`~src_models.models.store.load_checkpoint`. It is moved to ``device``, put in
        evaluation mode and converted to ``channels_last`` (the caller's object, not a copy).
    meta
        Checkpoint metadata; ``meta["preprocessing"]`` (HU window, in-plane spacing) must be the
        one the model was trained with. ``None`` uses
        :data:`~src_models.inference.preprocessing.DEFAULT_PREPROCESSING`.
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    batch_size
        Slices per batch; ``None`` picks :data:`DEFAULT_BATCH_SIZES` for the device. On an
        out-of-memory error the batch is halved and the run goes on (logged as a warning).
    reconstruct
        Keep the restoration decoder's output (DRS models). ``False`` skips the decoder.
    probabilities
        Also return per-class probabilities (4 bytes per voxel more).
    precision
        One of :data:`~src_models.inference.precision.PRECISIONS`; ``"auto"`` follows the
        policy of :mod:`src_models.inference.precision`.
    crop_to_body
        Run the model only on the body's box of each batch and skip slices without body (see
        the module notes); ``False`` runs it on whole slices.
    clean_up
        Keep only the largest 3D connected component of the pancreas (and of the tumour in it),
        :func:`~src_models.inference.postprocess.keep_largest_components`; skipped for a single
        slice. Turn it off for stacks of unrelated 2D slices, whose neighbours are not
        neighbours in space.

    Yields
    ------
    tuple of int
        ``(slices_done, total)``: first ``(0, total)``, then after every batch.

    Returns
    -------
    SegmentationResult
        Labels (and the optional outputs) on the volume's own grid, with statistics.

    Raises
    ------
    ValueError
        Not a 3D volume, NaN or infinite voxels, a batch size below 1, an unavailable device,
        or an unknown precision.
    InsufficientMemoryError
        The outputs would not fit in the available memory, or the device runs out of memory
        even with one slice per batch.
    """
    started = time.perf_counter()
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    dtype = autocast_dtype(torch_device, precision)
    preprocessing = dict((meta or {}).get("preprocessing") or DEFAULT_PREPROCESSING)
    if not hasattr(volume, "array") or not hasattr(volume, "affine"):
        raise TypeError(
            f"segment() needs a volume with .array and .affine (src_models.read_volume, or "
            f"src_models.io.Volume(array, affine)), got {type(volume).__name__}"
        )
    array = np.asarray(volume.array)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        # read_volume refuses such files; an array built in Python reached the model, which
        # returned NaN reconstructions and moved labels (a tester)
        raise ValueError(
            f"{getattr(volume, 'source', '') or 'volume'}: {int((~np.isfinite(array)).sum())} "
            "voxels are NaN or infinite"
        )
    canonical, _ = to_canonical(array, volume.affine)
    spacing = canonical_spacing(volume.affine)
    total = canonical.shape[0]
    if batch_size is not None and (
        isinstance(batch_size, bool) or int(batch_size) != batch_size
    ):  # 2.5 ran as 2, True as 1 (a tester)
        raise ValueError(f"batch size must be a whole number, got {batch_size!r}")
    batch = int(default_batch_size(torch_device) if batch_size is None else batch_size)
    if batch < 1:  # 0 read as "the default" (a tester)
        raise ValueError(f"batch size must be at least 1, got {batch}")
    wants_reconstruction = reconstruct and _model_has_restoration(model)
    model_hw = model_size(canonical.shape[1:], spacing[1:], preprocessing)
    check_memory(
        estimate_memory_bytes(
            canonical.shape,
            model_hw,
            width=_model_width(model),
            batch_size=batch if torch_device.type == "cpu" else 1,
            reconstruction=wants_reconstruction,
            probabilities=probabilities,
        ),
        str(getattr(volume, "source", "") or f"volume of shape {array.shape}"),
    )
    model.eval().to(torch_device, memory_format=torch.channels_last)
    runner = _Runner(
        model,
        canonical,
        (spacing[1], spacing[2]),
        preprocessing,
        torch_device,
        dtype,
        wants_reconstruction,
        probabilities,
        crop_to_body,
    )
    yield 0, total
    # On CUDA two batches are in flight: the host prepares and collects one while the GPU
    # computes the other. Elsewhere work is synchronous and each batch is collected at once.
    depth = 2 if runner.asynchronous else 1
    in_flight: deque[_Pending] = deque()
    start = 0
    try:
        while start < total or in_flight:
            if start < total and len(in_flight) < depth:
                try:
                    in_flight.append(runner.submit(start, min(total, start + batch)))
                except torch.cuda.OutOfMemoryError as error:
                    batch = _halve_batch(batch, torch_device, error)
                else:
                    start = in_flight[-1].stop
                continue
            done = in_flight.popleft()
            runner.collect(done)
            yield done.stop, total
    finally:
        in_flight.clear()
        release_memory(torch_device)
    labels = runner.labels
    pancreas, tumour, foreground = (int(n) for n in runner.counts)
    if clean_up and total > 1:
        labels = keep_largest_components(labels)
        pancreas, tumour = int(np.count_nonzero(labels)), int(np.count_nonzero(labels == 2))
        foreground = int(np.count_nonzero(labels.reshape(total, -1).any(axis=1)))
    stats = SegmentationStats(
        pancreas_ml=volume_ml(pancreas, voxel_volume_mm3(volume.affine)),
        tumour_ml=volume_ml(tumour, voxel_volume_mm3(volume.affine)),
        foreground_slices=foreground,
        total_slices=total,
        seconds=time.perf_counter() - started,
        device=str(torch_device),
        batch_size=batch,
        precision=precision_name(dtype),
    )
    return SegmentationResult(
        canonical_labels=labels,
        canonical_reconstruction=runner.reconstruction,
        canonical_probabilities=runner.probabilities,
        affine=np.asarray(volume.affine, dtype=np.float64),
        stats=stats,
    )


def _halve_batch(batch: int, device: torch.device, error: BaseException) -> int:
    """The next batch size after an out-of-memory error, or raise when one slice is too many."""
    release_memory(device)
    if batch == 1:
        raise InsufficientMemoryError(
            f"{device} ran out of memory with a single slice per batch ({error}); "
            "use another device or a smaller model"
        ) from error
    logger.warning(
        "%s ran out of memory with %d slices per batch; going on with %d", device, batch, batch // 2
    )
    return batch // 2


def reconstruction_error(
    hu: np.ndarray,
    reconstruction: np.ndarray,
    hu_window: tuple[float, float],
    *,
    chunk: int = 32,
) -> np.ndarray:
    """|windowed input - reconstruction| in window units ([0, 1]), float16, chunk by chunk.

    Where the restoration decoder fails to restore the slice shows what its bottom features do
    not capture; researchers compare it across architectures. Both arrays must share a grid
    (both on the source grid, or both canonical). Computed ``chunk`` slices along the first
    axis at a time so that the float32 intermediates stay small.
    """
    if hu.shape != reconstruction.shape:
        raise ValueError(
            f"input shape {hu.shape} and reconstruction shape {reconstruction.shape} differ"
        )
    error = np.empty(hu.shape, dtype=np.float16)
    for start in range(0, hu.shape[0], chunk):
        part = slice(start, start + chunk)
        unit = hu_to_unit(hu[part], hu_window)
        unit -= reconstruction[part]
        np.abs(unit, out=unit)
        error[part] = unit
    return error
