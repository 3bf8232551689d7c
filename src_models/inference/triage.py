"""Triage: which slices of a segmentation to review first.

A per-slice suspicion score built from what the model knows about its own failure and from what
a pancreas can look like:

``uncertainty``
    Binary entropy of the pancreas probability summed over the slice (mm^2): wide bands of
    probabilities near 0.5 mark a boundary the model is unsure of, or a structure it half sees.
``disagreement``
    Area (mm^2) where the prediction changes when the slices are fed at 1.15 times the model's
    in-plane resolution: a cheap test-time variant. (A left-right flip, the usual variant, shows
    these models a mirrored abdomen they never saw: they are trained without flips.)
``reconstruction``
    Mean |windowed input - restoration decoder output| over the slice's soft tissue, for
    models with a restoration decoder: an out-of-distribution signal (an artefact, an unusual
    scan) that the segmentation head does not give.
``area_jump``
    |area - mean of the neighbour slices' areas| (mm^2): a pancreas changes smoothly from slice
    to slice, so a jump marks a miss or a leak.
``fragments``
    Predicted area (mm^2) outside the largest 3D connected component: islands away from the
    pancreas are usually false positives.

Each feature is scaled over the volume to [0, 1] by ``(f - median) / (max - median)`` (so only
slices that stand out score), and the score is their weighted mean (:data:`WEIGHTS`).

The ranking (:func:`fill_ranking`) then orders the slices for the correction loop, where the
slices between corrections are filled by shape-based interpolation (:mod:`src_models.fill`):
first the first and last slice of the predicted pancreas (where it starts and ends is what fill
between slices cannot guess), then, one at a time, the slice with the larger of two values: how
much the model's pancreas there differs from what filling between the slices already ranked
would give (the correction fill cannot infer), and :data:`SUSPICION_WEIGHT` times its suspicion
score (the model may be wrong there, or beyond its own pancreas); a slice closer to a ranked one
than a tenth of the predicted extent keeps only that fraction of its value, so the first picks
cover the organ as fill between slices needs. Measured on the NIH volume 0001 with three models
(docs/correction-loop.md), it ends within about 0.01 of slices spread evenly over the model's
pancreas, above or below by model and count; without the spreading it fell 0.06 below.

Everything is computed in the canonical layout (:mod:`src_models.io.orientation`);
:meth:`Triage.ranking` maps slice numbers back to the file's own slice axis.
"""

from __future__ import annotations

import copy
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from torch import nn

from ..fill import fill_between_slices
from ..io.orientation import canonical_spacing, head_feet_axis, to_canonical
from ..jobs import relay
from .engine import Progress, reconstruction_error, segment
from .preprocessing import DEFAULT_PREPROCESSING
from .results import VolumeLike

#: Weight of each feature in the suspicion score.
WEIGHTS: dict[str, float] = {
    "uncertainty": 0.25,
    "disagreement": 0.2,
    "reconstruction": 0.15,
    "area_jump": 0.25,
    "fragments": 0.15,
}

#: Weight of the suspicion score against the fill's expected miss (a fraction of the largest
#: slice of pancreas) in :func:`fill_ranking`: 0.7 ended as well as or better than 0.5 and 1.0
#: (and than a weighted sum) on the NIH volume 0001, and still ranks a slice the model cannot
#: read among the first few.
SUSPICION_WEIGHT = 0.7

#: In-plane zoom of the test-time variant (the model sees the slice 1.15 times larger).
VARIANT_ZOOM = 1.15

#: 26-connectivity, as for the clean-up of predictions (slice-wise predictions touch diagonally).
_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


@dataclass(frozen=True)
class Triage:
    """Suspicion per canonical slice (axis 0 of the canonical layout).

    Attributes
    ----------
    scores
        (S,) float, the weighted suspicion in [0, 1].
    features
        Each feature of the module doc, (S,), scaled to [0, 1].
    order
        Canonical slice indices, most worth correcting first (:func:`fill_ranking`).
    ranked_scores
        The ranking value of each entry of ``order`` in [0, 1], non-increasing.
    labels
        (S, P, L) uint8, the model's prediction the scores describe.
    """

    scores: np.ndarray
    features: dict[str, np.ndarray]
    order: list[int]
    ranked_scores: list[float]
    labels: np.ndarray

    @property
    def priority(self) -> np.ndarray:
        """(S,) float: each slice's ranking value (``ranked_scores`` back in slice order).

        The one number per slice that the ranked list, the chart and ``dsms triage`` show;
        ``scores`` is only one of its two parts (the module doc).
        """
        values = np.zeros(len(self.scores))
        values[np.asarray(self.order, dtype=int)] = self.ranked_scores
        return values

    def ranking(self, affine: np.ndarray, shape: tuple[int, ...]) -> list[tuple[int, float]]:
        """``(K, score)`` pairs, most suspect first, ``K`` along the file's head-feet axis.

        Parameters
        ----------
        affine, shape
            The file's affine (index -> RAS mm) and array shape: ``K`` indexes the array axis
            closest to head-feet (nibabel's ``io_orientation``), 0-based, in the file's own
            direction.
        """
        axis, flipped = head_feet_axis(affine)
        length = int(shape[axis])
        return [
            (length - 1 - k if flipped else k, score)
            for k, score in zip(self.order, self.ranked_scores, strict=True)
        ]


def _scaled(feature: np.ndarray) -> np.ndarray:
    """``(f - median) / (max - median)`` clipped to [0, 1]; zeros when nothing stands out."""
    feature = np.asarray(feature, dtype=np.float64)
    middle, top = float(np.median(feature)), float(feature.max(initial=0.0))
    if top <= middle:
        return np.zeros_like(feature)
    return np.clip((feature - middle) / (top - middle), 0.0, 1.0)


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float32), 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 3D component of ``mask``, bridging gaps of one slice.

    Components are found on the mask grown by one slice up and down, so that one missed slice
    does not cut the pancreas in two and turn its smaller half into "fragments".
    """
    bridged = ndimage.binary_dilation(mask, structure=np.ones((3, 1, 1), dtype=bool))
    components, count = ndimage.label(bridged, structure=_CONNECTIVITY)
    if count <= 1:
        return mask
    sizes = np.bincount(components[mask], minlength=count + 1)
    sizes[0] = 0
    return mask & (components == int(np.argmax(sizes)))


def _area_jump(areas: np.ndarray) -> np.ndarray:
    padded = np.pad(areas, 1, mode="edge")
    neighbours = (padded[:-2] + padded[2:]) / 2.0
    return np.abs(areas - neighbours)


def slice_features(
    pancreas_probability: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    variant_probability: np.ndarray | None = None,
    reconstruction_errors: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The raw features of the module doc, one value per slice.

    Parameters
    ----------
    pancreas_probability
        (S, P, L) probability of pancreas including tumour (the model's channel 0).
    spacing
        Canonical voxel spacing in mm (slice, row, column).
    variant_probability
        The same from the test-time variant, or ``None``.
    reconstruction_errors
        (S,) mean reconstruction error per slice, or ``None``.

    Returns
    -------
    dict
        Feature name -> (S,) float array in mm^2 (window units for ``reconstruction``).
    """
    pixel_mm2 = float(spacing[1]) * float(spacing[2])
    mask = pancreas_probability > 0.5
    areas = mask.reshape(len(mask), -1).sum(axis=1) * pixel_mm2
    main = _largest_component(mask)
    features = {
        "uncertainty": np.array(
            [_binary_entropy(p).sum() * pixel_mm2 for p in pancreas_probability]
        ),
        "area_jump": _area_jump(areas),
        "fragments": (mask & ~main).reshape(len(mask), -1).sum(axis=1) * pixel_mm2,
    }
    if variant_probability is not None:
        differs = mask != (variant_probability > 0.5)
        features["disagreement"] = differs.reshape(len(mask), -1).sum(axis=1) * pixel_mm2
    if reconstruction_errors is not None:
        features["reconstruction"] = np.asarray(reconstruction_errors, dtype=np.float64)
    return features


def fill_ranking(main: np.ndarray, scores: np.ndarray) -> tuple[list[int], list[float]]:
    """Order slices by how much correcting them adds to fill between slices (module doc).

    Parameters
    ----------
    main
        (S, H, W) bool, the model's pancreas (its largest 3D component), canonical slices.
    scores
        (S,) suspicion scores in [0, 1].

    Returns
    -------
    order, values
        Every slice index once, and the value each had when it was ranked: 1 for the first and
        last slice of ``main``, then ``max(miss, SUSPICION_WEIGHT * score) * min(1, d / r)``,
        ``miss`` being the area where filling between the ranked slices (as the model labels
        them) differs from ``main``, over the largest area of ``main`` in a slice, ``d`` the
        distance to the nearest ranked slice and ``r`` a tenth of ``main``'s extent in slices;
        made non-increasing.
    """
    count = len(main)
    shapes = main.astype(np.uint8)
    areas = shapes.reshape(count, -1).sum(axis=1).astype(np.float64)
    suspicion = SUSPICION_WEIGHT * np.asarray(scores, dtype=np.float64)
    miss = np.zeros(count)
    known: list[int] = []
    present = np.flatnonzero(areas)
    if len(present):
        known = sorted({int(present[0]), int(present[-1])})

    def refill(first: int, last: int, middle: list[int]) -> None:
        block = fill_between_slices(shapes[first : last + 1], [0, *middle, last - first], axis=0)
        differs = block != shapes[first : last + 1]
        miss[first : last + 1] = differs.reshape(len(block), -1).sum(axis=1) / areas.max()

    if len(known) == 2:
        refill(known[0], known[1], [])
    order, values = list(known), [1.0] * len(known)
    taken = np.zeros(count, dtype=bool)
    taken[known] = True
    radius = max(1.0, (known[-1] - known[0] + 1) / 10.0) if known else 1.0
    distance = np.full(count, np.inf)
    for j in known:
        distance = np.minimum(distance, np.abs(np.arange(count) - j))
    while not taken.all():
        spread = np.minimum(1.0, distance / radius)
        value = np.maximum(np.minimum(miss, 1.0), suspicion) * spread
        value = np.where(taken, -np.inf, value)
        k = int(np.argmax(value))
        order.append(k)
        values.append(float(value[k]))
        taken[k] = True
        miss[k] = 0.0
        distance = np.minimum(distance, np.abs(np.arange(count) - k))
        below = [j for j in known if j < k]
        above = [j for j in known if j > k]
        if below and above:
            refill(below[-1], above[0], [k - below[-1]])
            known = sorted([*known, k])
    values = list(np.minimum.accumulate(values))
    return order, [float(v) for v in values]


def combine(features: Mapping[str, np.ndarray], labels: np.ndarray) -> Triage:
    """Scale, weigh and rank raw :func:`slice_features` into a :class:`Triage`."""
    scaled = {name: _scaled(values) for name, values in features.items()}
    total = sum(WEIGHTS[name] for name in scaled)
    scores = sum(WEIGHTS[name] * values for name, values in scaled.items()) / total
    order, ranked = fill_ranking(_largest_component(labels > 0), scores)
    return Triage(np.asarray(scores), scaled, order, ranked, labels)


def _zoomed(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metadata whose preprocessing feeds slices at :data:`VARIANT_ZOOM` times the resolution."""
    variant = copy.deepcopy(dict(meta or {}))
    preprocessing = dict(variant.get("preprocessing") or DEFAULT_PREPROCESSING)
    preprocessing["spacing_mm"] = float(preprocessing.get("spacing_mm") or 0.8) / VARIANT_ZOOM
    variant["preprocessing"] = preprocessing
    return variant


def triage(
    volume: VolumeLike,
    model: nn.Module,
    meta: Mapping[str, Any] | None = None,
    *,
    device: str = "auto",
    variant: bool = True,
    precision: str = "auto",
) -> Generator[Progress, None, Triage]:
    """Score every slice of ``volume`` for review; a generator of progress like ``segment``.

    Parameters
    ----------
    volume, model, meta, device, precision
        As for :func:`~src_models.inference.engine.segment`.
    variant
        Also run the test-time variant (a second pass: about twice the time).

    Yields
    ------
    tuple of int
        ``(slices_done, total)`` over both passes.

    Returns
    -------
    Triage
        Scores in the canonical layout; :meth:`Triage.ranking` gives the file's slice numbers.
    """
    array = np.asarray(volume.array)
    canonical, _ = to_canonical(array, volume.affine)
    spacing = canonical_spacing(volume.affine)
    total = canonical.shape[0] * (2 if variant else 1)
    result = yield from relay(
        segment(volume, model, meta, device=device, probabilities=True, precision=precision),
        0,
        total,
    )
    errors = None
    if result.canonical_reconstruction is not None:
        window = tuple((meta or {}).get("preprocessing", DEFAULT_PREPROCESSING)["hu_window"])
        error = reconstruction_error(canonical, result.canonical_reconstruction, window)
        tissue = (canonical > window[0]) & (canonical < window[1])
        errors = np.array(
            [float(e[t].mean()) if t.any() else 0.0 for e, t in zip(error, tissue, strict=True)]
        )
    variant_probability = None
    if variant:
        second = yield from relay(
            segment(
                volume, model, _zoomed(meta), device=device, probabilities=True,
                reconstruct=False, precision=precision,
            ),
            canonical.shape[0],
            total,
        )  # fmt: skip
        variant_probability = second.canonical_probabilities[..., 0]
    features = slice_features(
        result.canonical_probabilities[..., 0],
        spacing,
        variant_probability=variant_probability,
        reconstruction_errors=errors,
    )
    return combine(features, result.canonical_labels)
