"""One round of the correction loop: learn from the corrected slices, then fill in the rest.

A user corrects a few slices (or accepts them as they are); :func:`refine` then

1. fine-tunes the latest model on all corrected slices, holding a fifth of them out to measure
   pancreas Dice before and after, and keeps the previous model when the round made it worse
   (:func:`~src_models.training.fine_tune.fine_tune` with ``guard=True``); a model the guard
   kept then learns from the held-out slices too (:data:`LEARN_HELD_OUT`);
2. segments the volume with that model;
3. fills the slices between corrected slices by shape-based interpolation
   (:func:`~src_models.fill.fill_between_slices`) and adds the model's pancreas within
   :data:`BAND_MM` of the interpolated shape (interpolation cuts corners where the organ bends);
   when the model learnt from this CT's corrections (a guard, this round's or an earlier one's,
   kept it), that model instead moves the
   interpolated boundary by its confidence (:func:`moved_boundary`, up to 4 mm either way);
   between corrections more than :data:`MAX_GAP_MM` apart the model's labels stay (two
   corrections at the organ's two ends must not erase the organ between them);
4. beyond the first and last corrected slice, when that slice looks like an end of the organ
   (little or no pancreas, :func:`ends_there`), keeps only the model's pancreas that continues
   the corrected shape and tapers: slice by slice outwards, inside the slice before shrunk by
   one pixel (see :func:`taper_from`); a structure that stops continuing ends there. Beyond a
   corrected slice in the middle of the organ the model's labels stay as they are (the user
   corrected part of the organ, not its end);
5. copies the corrected slices unchanged: re-segmenting never overwrites a correction.

Why this mix: measured on the NIH volume 0001 (which no bundled model saw) with 10 corrected
slices spread over the pancreas, the slices between them scored pancreas Dice 0.837 by
interpolation alone, 0.66 by the bundled ``dsmsc_unet`` alone and 0.82 after fine-tuning it
(400 steps); averaging probabilities scored at best 0.83 and 0.84, the model restricted to a band
around the interpolated shape 0.79 to 0.83; the interpolated shape *plus* the model's pancreas
within 2 to 4 pixels of it scored 0.840-0.845 with the bundled and 0.848-0.851 with the
fine-tuned model (whole volume 0.861-0.866 and 0.869-0.871, interpolation alone 0.859).
Since fill between slices grows shapes that move between the corrected slices
(:data:`~src_models.fill.GROWTH`), the band is narrower: 1 mm. Without fine-tuning, on the same
volume with two models (the first release's and a cross-validation fold that never saw it),
whole-volume Dice from 5 / 10 / 20 evenly spaced slices went from 0.767-0.773 / 0.859-0.861 /
0.904-0.905 (no growth, 3 mm) to 0.785-0.786 / 0.864 / 0.912 (growth, 1 mm); with growth a 3 mm
band scored 0.857-0.859 at 10 slices.
Beyond the corrected range, the model tapering from the outermost corrections scored a
whole-volume Dice of 0.859 to 0.877 depending on where the corrections lay (nothing beyond
them: 0.859 to 0.865; the model allowed to grow by 2 mm a slice: 0.829 to 0.860;
the model alone: 0.82). docs/benchmarks.md (``benchmarks/correction_loop.py``).

Everything works in the canonical layout (:mod:`src_models.io.orientation`); :class:`RefineResult`
gives the labels back on the file's grid.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import numpy as np
from scipy import ndimage
from torch import nn

from .autosave import content_key
from .corrections import source_slice_indices
from .fill import fill_between_slices
from .inference.engine import segment
from .inference.results import VolumeLike
from .io.orientation import canonical_spacing, from_canonical, head_feet_axis, to_canonical
from .jobs import relay
from .training.fine_tune import (
    FINE_TUNE_DEFAULTS,
    MIN_GUARDED_STEPS,
    MIN_SLICES_FOR_HOLDOUT,
    FineTuneResult,
    fine_tune,
    learnt_slices,
    split_holdout,
)
from .training.loop import TrainEvent

#: How far (mm) beyond the interpolated shape the model's pancreas is added between corrected
#: slices: shape-based interpolation cuts corners where the organ bends, and the model sees them.
BAND_MM = 1.0

#: Between two corrected slices further apart than this (mm), the model's labels stay: across
#: long gaps shape-based interpolation loses to the model. Measured on the NIH volume 0001 with
#: corrections every g mm through the pancreas and two models that never saw it, Dice on the
#: slices between (this rule / the model): 0.868 / 0.70 at 5 mm, 0.802 / 0.70 at 14, 0.739 /
#: 0.67-0.70 at 30, 0.61 / 0.67-0.70 at 35 and 45, 0.02 / 0.67-0.70 at 70 (two corrections at
#: the organ's ends, whose small shapes interpolate to almost nothing in between).
MAX_GAP_MM = 30.0

#: Between corrected slices, a model the round's guard kept (it learnt: its Dice on held-out
#: corrected slices rose) moves the interpolated boundary by this many mm per unit of log-odds
#: (:func:`moved_boundary`). On the NIH volume 0001, 10 evenly spaced corrections in 5
#: placements, one default round with a cross-validation model that never saw it: whole-volume
#: Dice 0.871 with the 1 mm band, 0.877 / 0.875 / 0.873 with 0.5 / 1 / 2 mm per unit (the
#: learnt model alone, corrections pasted in: 0.838); with the first-release model 0.870 with
#: the band, 0.874 / 0.871 / 0.869. With a model that did not learn the band stays: the same
#: mix with the untuned first-release model lost 0.04 (0.870 to 0.830).
FUSION_MM_PER_LOGIT = 0.5

#: Signed distances to the interpolated shape are clipped here (mm) before the model moves them.
FUSION_CLIP_MM = 20.0

#: An outermost corrected slice with less pancreas than this share of the largest corrected
#: slice's is taken for an end of the organ (:func:`ends_there`).
END_FRACTION = 0.5

#: The round's fine-tuning: half the steps of the Review dock's Fine-tune button on 128-pixel
#: patches instead of 160 at twice the learning rate, within 40 s, so that a whole round stays
#: under a minute on a 2-core CPU. Measured on the NIH volume 0001 with a model that never saw
#: it (10 corrected slices, pancreas Dice on the 61 other slices as segmenting labels them, one
#: thread, seeds 0 to 2): 0.692 -> 0.832 to 0.851 in about 75 CPU s against 0.692 -> 0.855 and
#: 0.862 in about 220 CPU s for the button's 400 x 160-pixel recipe (docs/benchmarks.md); what
#: the user ends with after the round depends on it less, as the slices between corrections are
#: filled from the corrections themselves.
ROUND_TRAINING = replace(
    FINE_TUNE_DEFAULTS, steps=200, patch_size=128, lr=2e-3, time_budget_s=40.0,
    min_steps=MIN_GUARDED_STEPS,
)  # fmt: skip

#: After the guard kept the round's model, it goes on for this share of the round's steps on
#: every corrected slice, the held-out ones included (:func:`~src_models.training.fine_tune.
#: fine_tune`'s ``learn_held_out``): held out, a fifth of the user's corrections only judged the
#: round. Measured on the NIH volume 0001 with the cross-validation fold model that never saw it
#: (10 evenly spaced corrections shifted by -2 to 2 slices, 200 steps, whole-volume Dice after
#: the round; ``benchmarks/correction_loop.py --placements 200 --threads 1``): mean 0.8784
#: against 0.8763 without, higher in 3 of the 5 placements and within 0.002 in the others; a
#: first trial gave 0.8774 with 0.3 (60 steps) and 0.8793 with 0.5 against 0.8761 (2 threads,
#: side by side). 400 steps without it gave 0.8778 (docs/correction-loop.md).
LEARN_HELD_OUT = 0.5

#: Why a round did not fine-tune when its model has learnt from every edited slice already.
LEARNT_ALREADY = (
    "the model did not learn: it has learnt from every edited slice in an earlier round, so "
    "none is left to check it on; correct more slices for it to learn more"
)

#: What :func:`refine` yields: training events while fine-tuning, then ``(done, total)``.
RefineProgress = TrainEvent | tuple[int, int]


@dataclass(frozen=True)
class RefineResult:
    """What :func:`refine` returns.

    Attributes
    ----------
    canonical_labels
        (S, P, L) uint8 labels 0/1/2 in the canonical layout.
    affine
        The source volume's affine; :attr:`labels` uses it.
    corrected
        Canonical indices of the corrected slices (copied unchanged).
    changed
        Canonical indices of the other slices whose labels differ from the input labels.
    fine_tune
        The fine-tuning round (its ``model`` and ``meta`` are the model to use next), or
        ``None`` when none ran (``steps=0``, or too few corrected slices: :func:`learns`).
    note
        Why the model did not learn although asked to ("" otherwise).
    """

    canonical_labels: np.ndarray
    affine: np.ndarray
    corrected: list[int]
    changed: list[int]
    fine_tune: FineTuneResult | None
    note: str = ""

    @property
    def labels(self) -> np.ndarray:
        """Labels on the source grid (the file's shape and index order)."""
        return from_canonical(self.canonical_labels, self.affine)

    @property
    def holdout(self) -> list[int]:
        """Canonical indices of the corrected slices held out to judge the round (none when
        it did not fine-tune)."""
        record = (self.fine_tune.meta.get("provenance") or {}) if self.fine_tune else {}
        return [int(k) for k in (record.get("fine_tune") or {}).get("holdout_slices") or ()]

    def file_slices(self, canonical: Iterable[int]) -> list[int]:
        """Canonical slice indices as indices along the file's head-feet axis."""
        return sorted(source_slice_indices(canonical, self.affine, self.labels.shape)[1])

    def summary(self) -> str:
        """A line for the terminal and the review dock."""
        kept, changed = len(self.corrected), len(self.changed)
        text = (
            f"{kept} corrected slice{'s' * (kept != 1)} kept, "
            f"{changed} other slice{'s' * (changed != 1)} changed"
        )
        if self.fine_tune is not None:
            text += f"; model: {self.fine_tune.summary()}"
            if self.holdout:  # which corrections judged it (a tester could not tell)
                held = ", ".join(map(str, self.file_slices(self.holdout)))
                text += f" (held out: slice{'s' * (len(self.holdout) != 1)} {held})"
        if self.note:
            text += f"; {self.note}"
        return text


def taper_from(mask: np.ndarray, start: int, step: int, seed: np.ndarray) -> np.ndarray:
    """Follow a shape from ``seed`` through ``mask``, shrinking, slice by slice from ``start``.

    Beyond the outermost correction the user has drawn the organ's widest known extent there;
    the model may confirm less of it in each further slice, never more.

    Parameters
    ----------
    mask
        (S, H, W) bool, e.g. the model's pancreas.
    start, step
        First slice to fill and direction (+1 or -1).
    seed
        (H, W) bool, the shape in the slice before ``start``.

    Returns
    -------
    numpy.ndarray
        (S, H, W) bool: in each slice from ``start`` on, the part of ``mask`` inside the
        previous slice's result eroded by one pixel (4-connected); empty from the first slice
        where that part is empty.
    """
    out = np.zeros(mask.shape, dtype=bool)
    previous, k = seed, start
    cross = ndimage.generate_binary_structure(2, 1)
    while 0 <= k < len(mask) and previous.any():
        out[k] = mask[k] & ndimage.binary_erosion(previous, cross)
        previous, k = out[k], k + step
    return out


def combine(
    labels: np.ndarray,
    corrected: Sequence[int],
    model_labels: np.ndarray,
    spacing: tuple[float, float, float],
    learnt_probability: np.ndarray | None = None,
) -> np.ndarray:
    """The loop's labels from the corrected slices and the model's labels (canonical).

    Between the corrected slices: the interpolated shape, widened by the model's pancreas
    where it lies within :data:`BAND_MM` of that shape, or, given ``learnt_probability`` (the
    pancreas probability, (S, P, L), of a model that learnt from this CT's corrections: this
    round's guard or an earlier one's kept it),
    the interpolated shape's boundary moved by the model's confidence (:func:`moved_boundary`);
    between two corrections more than :data:`MAX_GAP_MM` apart, the model's labels. Beyond
    them: where the outermost corrected slice looks like an end of the organ
    (:func:`ends_there`), the model tapering from it (module doc), else the model's labels as
    they are. The corrected slices themselves: unchanged.
    """
    first, last = min(corrected), max(corrected)
    max_gap = max_gap_slices(spacing[0])
    out = fill_between_slices(labels, corrected, axis=0, max_gap=max_gap).astype(np.uint8)
    pixel = min(spacing[1], spacing[2])
    for k0, k1 in pairwise(sorted(set(corrected))):
        if k1 - k0 > max_gap:
            out[k0 + 1 : k1] = model_labels[k0 + 1 : k1]
            continue
        for k in range(k0 + 1, k1):
            if not out[k].any():
                continue
            if learnt_probability is not None:
                pancreas = moved_boundary(out[k] > 0, learnt_probability[k], pixel)
                out[k] = np.where(pancreas, np.where(out[k] == 2, 2, 1), 0)
                continue
            near = ndimage.distance_transform_edt(out[k] == 0) * pixel <= BAND_MM
            out[k][near & (model_labels[k] > 0) & (out[k] == 0)] = 1
    areas = [int((labels[k] > 0).sum()) for k in corrected]
    for start, step, end in ((first - 1, -1, first), (last + 1, 1, last)):
        outside = slice(0, first) if step < 0 else slice(last + 1, None)
        if not ends_there(int((labels[end] > 0).sum()), max(areas)):
            out[outside] = model_labels[outside]  # the organ goes on: the model's labels stay
            continue
        seed = labels[end]
        pancreas = taper_from(model_labels > 0, start, step, seed > 0)
        tumour = taper_from(model_labels == 2, start, step, seed == 2) & pancreas
        beyond = np.where(tumour, 2, np.where(pancreas, 1, 0)).astype(np.uint8)
        out[outside] = beyond[outside]
    out[list(corrected)] = labels[list(corrected)]
    return out


def moved_boundary(shape: np.ndarray, probability: np.ndarray, pixel_mm: float) -> np.ndarray:
    """The interpolated ``shape`` (2D bool) with its boundary moved by a learnt model.

    A pixel is pancreas where its signed distance to ``shape`` (mm, negative inside, clipped at
    :data:`FUSION_CLIP_MM`) is below :data:`FUSION_MM_PER_LOGIT` times the model's log-odds
    (clipped at +-8): a confident model moves the boundary by up to 4 mm either way, an unsure
    one leaves it where interpolation put it.
    """
    out = np.zeros_like(shape, dtype=bool)
    if not shape.any():
        return out
    # Nothing further out than the largest move can become pancreas, so the distances are
    # needed only in the shape's box grown by it (exact there: the box keeps every shape pixel
    # and a ring of background); whole 512 x 512 slices cost seconds a round.
    margin = int(np.ceil(8.0 * FUSION_MM_PER_LOGIT / pixel_mm)) + 1
    rows, cols = np.flatnonzero(shape.any(axis=1)), np.flatnonzero(shape.any(axis=0))
    box = (
        slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
        slice(max(cols[0] - margin, 0), cols[-1] + margin + 1),
    )
    inside = ndimage.distance_transform_edt(shape[box])
    outside = ndimage.distance_transform_edt(~shape[box])
    distance = np.clip((outside - inside) * pixel_mm, -FUSION_CLIP_MM, FUSION_CLIP_MM)
    p = np.clip(probability[box].astype(np.float32), 1e-4, 1 - 1e-4)
    log_odds = np.clip(np.log(p / (1 - p)), -8.0, 8.0)
    out[box] = distance < FUSION_MM_PER_LOGIT * log_odds
    return out


def max_gap_slices(slice_mm: float) -> int:
    """The most slices two corrections may lie apart to be filled between (:data:`MAX_GAP_MM`)."""
    return int(MAX_GAP_MM // slice_mm)


def ends_there(area: int, largest: int) -> bool:
    """Whether an outermost corrected slice looks like an end of the pancreas.

    It does when it holds less than :data:`END_FRACTION` of the largest corrected slice's
    pancreas, or none while another corrected slice holds some: the organ thins out there, and
    beyond it the model is only followed as it tapers (:func:`taper_from`). A large slice is the
    middle of the organ, where the model's labels beyond are kept as they are; so is any slice
    when no corrected slice holds pancreas (nothing says where the organ is).
    """
    return largest > 0 and area < END_FRACTION * largest


def check_corrections(
    volume: VolumeLike, labels: np.ndarray, corrected: Iterable[int], learn: bool = True
) -> tuple[np.ndarray, list[int]]:
    """Check what :func:`refine` is given; return the canonical labels and corrected slices.

    Parameters
    ----------
    volume, labels, corrected
        As for :func:`refine`.
    learn
        Whether a model will learn from the corrections (they must then hold pancreas).

    Raises
    ------
    ValueError
        No corrected slice, a slice outside the volume, labels on another grid, corrected
        slices with values other than 0/1/2 (the other slices may hold anything), or
        (``learn``) corrected slices without any pancreas.
    """
    array, labels = np.asarray(volume.array), np.asarray(labels)
    if labels.shape != array.shape:
        raise ValueError(
            f"the labels (shape {labels.shape}) are not on the CT's grid (shape {array.shape})"
        )
    axis, flipped = head_feet_axis(volume.affine)
    length = int(array.shape[axis])
    slices = sorted({int(k) for k in corrected})
    if not slices:
        raise ValueError("no corrected slices: correct (or accept) at least one slice first")
    bad = [k for k in slices if not 0 <= k < length]
    if bad:
        raise ValueError(
            f"corrected slices {bad} lie outside the volume's {length} slices (0 to {length - 1})"
        )
    # The file's head-feet index k is canonical slice k, or length - 1 - k when flipped.
    in_file = {(length - 1 - k if flipped else k): k for k in slices}
    slices = sorted(in_file)
    canonical = np.ascontiguousarray(to_canonical(labels, volume.affine)[0])
    # Only the corrected slices are read; the others may hold anything (they are replaced).
    odd = sorted(in_file[k] for k in slices if canonical[k].min() < 0 or canonical[k].max() > 2)
    if odd:
        raise ValueError(
            f"corrected slice{'s' * (len(odd) > 1)} {', '.join(map(str, odd))} "
            f"{'hold' if len(odd) > 1 else 'holds'} values other "
            "than 0 (background), 1 (pancreas) or 2 (tumour)"
        )
    canonical = np.clip(canonical, 0, 2).astype(np.uint8)
    if learn and not canonical[slices].any():
        raise ValueError(
            "the corrected slices hold no pancreas: the model has nothing to learn from"
        )
    return canonical, slices


def refine(
    volume: VolumeLike,
    labels: np.ndarray,
    corrected: Iterable[int],
    model: nn.Module,
    meta: Mapping[str, Any],
    *,
    steps: int | None = None,
    seconds: float | None = None,
    device: str = "auto",
    seed: int = 0,
    out: str | None = None,
    reviewed: Iterable[int] = (),
    source_digest: str | None = None,
) -> Generator[RefineProgress, None, RefineResult]:
    """One round of the correction loop (module doc); a generator for a worker or a command.

    Parameters
    ----------
    volume
        The CT (``.array`` in HU in the file's index order, ``.affine``).
    labels
        The user's labels on ``volume``'s grid (file index order): the ``corrected`` slices
        hold the corrections; the other slices may hold anything.
    corrected
        Indices of the corrected (edited or reviewed) slices along the file's head-feet axis
        (:func:`~src_models.io.orientation.head_feet_axis`), 0-based.
    model, meta
        The latest model (:func:`~src_models.models.store.load_checkpoint`); fine-tuned in
        place, or handed back unchanged when the round made it worse or was cancelled (the
        generator closed).
    steps, seconds
        Fine-tuning length (by default :data:`ROUND_TRAINING`'s 200 steps or 40 s, whichever
        ends first, but at least the 100 steps the guard needs when the CPU is slow, up to
        120 s), then half as many on every corrected slice when the guard kept the model
        (:data:`LEARN_HELD_OUT`); ``steps=0`` skips it; ``seconds`` given is kept to, both parts
        included.
    device, seed
        As for fine-tuning and segmentation.
    out
        Save the model the round ends with there (a new file).
    reviewed
        Those of ``corrected`` that the user reviewed and accepted unchanged (file indices):
        learnt from, never held out to judge the round
        (:func:`~src_models.training.fine_tune.split_holdout`).
    source_digest
        :func:`~src_models.autosave.content_key` of the CT as its file places it, recorded
        with the round so that ``dsms evaluate`` knows the CT under any name, axis order or
        dtype; by default that of ``volume`` (a volume built from a napari layer, at origin 0,
        must pass its file's).

    Yields
    ------
    TrainEvent or tuple of int
        Fine-tuning events, then ``(slices_done, total)`` of the segmentation.

    Returns
    -------
    RefineResult

    Raises
    ------
    ValueError
        As :func:`check_corrections`.
    """
    corrected = list(corrected)
    reviewed = list(reviewed)
    learn = learns(steps, corrected, reviewed)
    canonical_labels, slices = check_corrections(volume, labels, corrected, learn=learn)
    canonical, _ = to_canonical(np.asarray(volume.array), volume.affine)
    spacing = canonical_spacing(volume.affine)
    tuned, note = None, ""
    key = source_digest or content_key(canonical, volume.affine)
    if steps != 0 and not learn:
        note = not_learning_note(corrected, reviewed)
    if learn:
        train, holdout = split_round(volume, slices, reviewed, meta, key)
        if not holdout:  # every edited slice was learnt in an earlier round: none judges it
            learn, note = False, LEARNT_ALREADY
    if learn:
        tuned = yield from fine_tune(
            model, meta, canonical[train], canonical_labels[train], spacing[1:],
            steps=steps, time_budget_s=seconds, device=device, seed=seed,
            val_images_hu=canonical[holdout], val_labels=canonical_labels[holdout],
            out=out, guard=True, config=ROUND_TRAINING, learn_held_out=LEARN_HELD_OUT,
            provenance={"slices": train, "holdout_slices": holdout,
                        "source_image": str(getattr(volume, "source", "") or ""),
                        "source_digest": key,
                        "slice_index_convention": "canonical axial index (axis 0, to superior)"},
        )  # fmt: skip
        model, meta = tuned.model, tuned.meta
    # Only a model that has learnt from this CT's corrections, in this round or an earlier one,
    # moves the interpolated boundary: the untuned model lost 0.04 there, while a round that
    # kept an earlier round's model fell back to the band rule and lost 0.004 (a tester).
    learnt = bool(learnt_slices(meta, key))
    segmentation = yield from relay(
        segment(volume, model, meta, device=device, reconstruct=False, probabilities=learnt),
        0,
        len(canonical),
    )
    model_labels = segmentation.canonical_labels
    probability = segmentation.canonical_probabilities[..., 0] if learnt else None
    result = combine(canonical_labels, slices, model_labels, spacing, probability)
    differs = (result != canonical_labels).reshape(len(result), -1).any(axis=1)
    changed = [int(k) for k in np.flatnonzero(differs) if int(k) not in set(slices)]
    affine = np.asarray(volume.affine, dtype=np.float64)
    return RefineResult(result, affine, slices, changed, tuned, note)


def split_round(
    volume: VolumeLike, slices: Sequence[int], reviewed: Iterable[int], meta: Mapping[str, Any],
    source_key: str,
) -> tuple[list[int], list[int]]:  # fmt: skip
    """The round's canonical corrected ``slices`` as (train, held out) for its guard.

    Never held out: a slice accepted unchanged (``reviewed``, file indices), which the model
    drew, nor one that an earlier round of this CT (``source_key``, the CT's
    :func:`~src_models.autosave.content_key`) taught ``meta``'s model
    (:func:`~src_models.training.fine_tune.split_holdout`). Nothing is held out when no other
    edited slice is left: the round then does not fine-tune (:data:`LEARNT_ALREADY`).
    """
    # file -> canonical: the same flip as canonical -> file, which is its own inverse
    accepted = source_slice_indices(reviewed, volume.affine, np.shape(volume.array))[1]
    return split_holdout(slices, accepted=accepted, learnt=learnt_slices(meta, source_key))


def learns(steps: int | None, corrected: Iterable[int], reviewed: Iterable[int] = ()) -> bool:
    """Whether a round fine-tunes: asked to (``steps != 0``) and able to check the result.

    The guard needs held-out corrected slices (:func:`~src_models.training.fine_tune.
    split_holdout`): with fewer than :data:`~src_models.training.fine_tune.
    MIN_SLICES_FOR_HOLDOUT` there are none, and a model fine-tuned on the organ's two end slices
    alone lost most of the organ (whole-volume Dice 0.73 -> 0.28) with nothing to notice it.
    Slices accepted unchanged (``reviewed``) are never held out, so at least two others are
    needed: one to hold out, one to learn from (a tester's round on reviewed slices alone saved
    a model nothing had checked).
    """
    slices = {int(k) for k in corrected}
    drawn = slices - {int(k) for k in reviewed}
    return steps != 0 and len(slices) >= MIN_SLICES_FOR_HOLDOUT and len(drawn) >= 2


def not_learning_note(corrected: Iterable[int], reviewed: Iterable[int] = ()) -> str:
    """Why a round asked to fine-tune did not (:func:`learns` said no), in a sentence."""
    if len({int(k) for k in corrected}) < MIN_SLICES_FOR_HOLDOUT:
        return (
            f"the model did not learn: with fewer than {MIN_SLICES_FOR_HOLDOUT} corrected slices "
            "none can be held out to check it"
        )
    return (
        "the model did not learn: fewer than 2 of the corrected slices were edited (the others "
        "were accepted unchanged), and an edited one must be held out to check it"
    )
