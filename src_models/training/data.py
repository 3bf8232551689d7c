"""Training and evaluation data: cases, the patient split, slice sampling and augmentation.

Sources (mixable, each case carries a patient id so that no patient is on both sides of a split):

- an MSD Task07 folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``, labels 0/1/2);
- a folder of ``NAME.nii.gz`` / ``NAME_label.nii.gz`` pairs, or a single-patient folder holding
  ``ct.nii.gz`` (or ``image.nii.gz``) with ``label.nii.gz`` (the layout of ``nih-pancreas-0001``);
- a folder of 2D slice sets, ``*.npz`` with ``image`` uint8 (n, H, W) = HU clipped to [0, 255]
  and ``mask``, already in the canonical layout, without spacing
  (:data:`~src_models.inference.preprocessing.FALLBACK_SPACING_MM` is assumed);
- seeded synthetic phantoms (:mod:`src_models.phantom`).

Every volume goes through :func:`~src_models.io.orientation.to_canonical` and
:func:`~src_models.inference.preprocessing.to_model_input`, the path inference uses, and is then
kept at
model resolution as uint8 (the window mapped to 0..255), which bounds memory to two bytes per
model-resolution pixel (image and labels): about 120 kB per 1.7 mm slice.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.preprocessing import model_size, resample_labels, to_model_input
from ..io.atomic import write_text_atomic
from ..io.orientation import canonical_spacing, to_canonical
from ..io.volume import voxel_volume_mm3

#: Fractions of patients for training, validation and test (the paper's 70 / 10 / 20).
SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)

#: Slices converted per chunk while caching a volume: bounds the float32 working memory.
_CHUNK = 16

#: Patient ids of synthetic cases start with this (``phantom-0003``).
PHANTOM_PREFIX = "phantom-"

_NIFTI = (".nii.gz", ".nii")
_SINGLE_IMAGE_NAMES = ("ct", "image")
_SINGLE_LABEL_NAMES = ("label", "labels")


class DatasetError(ValueError):
    """A data folder or split file that cannot be used as asked; the message names the path."""


# --------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One patient's image (and labels) as found on disk, not yet read.

    Attributes
    ----------
    case_id
        Unique name of the case (file stem, phantom index).
    patient_id
        What the split groups by; equals ``case_id`` for every source handled here.
    kind
        ``"nifti"`` (MSD and folder pairs), ``"npz"`` (2D slice set) or ``"phantom"``.
    image, label
        Paths of the image and label files (``label`` is ``None`` for unlabelled NIfTI;
        ``image`` is the ``.npz`` file for slice sets and ``None`` for phantoms).
    seed
        Phantom seed; ``None`` for files.
    phantom_grid
        Phantom ``(shape, spacing)`` as :func:`~src_models.phantom.make_phantom` takes them;
        ``None`` for its default abdomen-sized grid.
    """

    case_id: str
    patient_id: str
    kind: str
    image: Path | None = None
    label: Path | None = None
    seed: int | None = None
    phantom_grid: tuple[tuple[int, int, int], tuple[float, float, float]] | None = None


@dataclass
class CaseArrays:
    """A case read into memory in the canonical layout at its own resolution.

    Attributes
    ----------
    image_hu
        (N, H, W) axial slices in HU (the 2D slice sets hold HU clipped to [0, 255]).
    labels
        (N, H, W) uint8 label values 0/1/2, or ``None``.
    spacing
        (slice, row, column) spacing in mm, ``None`` where unknown (slice sets).
    voxel_mm3
        One voxel's volume in mm³, ``|det|`` of the file's affine (smaller than the product of
        ``spacing`` on a sheared grid), ``None`` where unknown.
    digest
        :func:`~src_models.autosave.volume_content_key` of a CT read from a file (NIfTI, DICOM),
        ``None`` for slice sets and phantoms: what knows the CT under any file name.
    """

    image_hu: np.ndarray
    labels: np.ndarray | None
    spacing: tuple[float, float, float] | None
    voxel_mm3: float | None = None
    digest: str | None = None

    @property
    def spacing_yx(self) -> tuple[float, float] | None:
        """In-plane spacing, what :mod:`~src_models.inference.preprocessing` needs."""
        return None if self.spacing is None else (self.spacing[1], self.spacing[2])


def _strip_nifti(name: str) -> str | None:
    for suffix in _NIFTI:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _msd_cases(root: Path) -> list[Case]:
    try:
        meta = json.loads((root / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"{root / 'dataset.json'}: cannot read it ({error})") from error
    cases = []
    for entry in meta.get("training", []):
        image = (root / entry["image"]).resolve()
        label = (root / entry["label"]).resolve()
        stem = _strip_nifti(image.name) or image.stem
        if not image.exists() or not label.exists():
            raise DatasetError(
                f"{root}: dataset.json lists {entry['image']} but it or its label is missing"
            )
        cases.append(Case(stem, stem, "nifti", image, label))
    if not cases:
        raise DatasetError(f"{root / 'dataset.json'}: no 'training' entries")
    return cases


def find_cases(root: str | os.PathLike[str]) -> list[Case]:
    """All labelled cases of a data folder (see the module doc for the accepted layouts).

    Raises
    ------
    DatasetError
        The folder is missing or holds none of the accepted layouts.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    if (root / "dataset.json").exists():
        return _msd_cases(root)
    cases = [
        Case(path.stem, path.stem, "npz", path)
        for path in sorted(root.glob("*.npz"))
        if not path.name.startswith(".")
    ]
    names = _nifti_names(root)
    for stem, path in names.items():
        if stem.endswith("_label") and stem[: -len("_label")] in names:
            case_id = stem[: -len("_label")]
            cases.append(Case(case_id, case_id, "nifti", names[case_id], path))
    own = _single_case(root, names)
    # A folder of patient folders, each with ct.nii.gz + label.nii.gz: one case per folder (a
    # tester's volume in such a subfolder was left out of the mean without a word).
    inside = (_single_case(sub) for sub in sorted(root.iterdir()) if _visible_folder(sub))
    cases += [case for case in (own, *inside) if case is not None]
    if not cases:
        raise DatasetError(
            f"{root}: no cases found; expected an MSD folder (dataset.json, imagesTr/, labelsTr/), "
            "NAME.nii.gz + NAME_label.nii.gz pairs, ct.nii.gz + label.nii.gz (here or in "
            "one folder per patient), or *.npz slice sets"
        )
    ids = [case.case_id for case in cases]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{root}: case names are not unique: {sorted(ids)}")
    return cases


def _visible_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".")


def _nifti_names(folder: Path) -> dict[str, Path]:
    """The NIfTI files of ``folder`` by their names without the ending."""
    return {
        stem: path
        for path in sorted(folder.iterdir())
        if not path.name.startswith(".") and (stem := _strip_nifti(path.name)) is not None
    }


def _single_case(folder: Path, names: Mapping[str, Path] | None = None) -> Case | None:
    """The case of a one-patient folder (ct.nii.gz + label.nii.gz or their synonyms), named
    after the folder; ``names`` maps the folder's NIfTI stems to paths when already listed."""
    names = _nifti_names(folder) if names is None else names
    images = [names[n] for n in _SINGLE_IMAGE_NAMES if n in names]
    labels = [names[n] for n in _SINGLE_LABEL_NAMES if n in names]
    if not (images and labels):
        return None
    return Case(folder.name, folder.name, "nifti", images[0], labels[0])


def phantom_cases(
    count: int,
    seed: int = 0,
    grid: tuple[tuple[int, int, int], tuple[float, float, float]] | None = None,
) -> list[Case]:
    """``count`` synthetic patients with seeds ``seed, seed + 1, ...`` (ids ``phantom-SEED``).

    ``grid`` = ``(shape, spacing)`` of :func:`~src_models.phantom.make_phantom` (tests use tiny
    ones); ``None`` keeps its default abdomen-sized grid.
    """
    return [
        Case(
            f"{PHANTOM_PREFIX}{s:04d}",
            f"{PHANTOM_PREFIX}{s:04d}",
            "phantom",
            seed=s,
            phantom_grid=grid,
        )
        for s in range(seed, seed + count)
    ]


def gather_cases(
    folders: Iterable[str | os.PathLike[str]],
    phantoms: int = 0,
    phantom_seed: int = 0,
    phantom_grid: tuple[tuple[int, int, int], tuple[float, float, float]] | None = None,
) -> list[Case]:
    """Cases of several folders plus phantoms; a patient id seen twice is an error."""
    cases = [case for folder in folders for case in find_cases(folder)]
    cases += phantom_cases(phantoms, phantom_seed, phantom_grid)
    seen: dict[str, Case] = {}
    for case in cases:
        if case.patient_id in seen:
            raise DatasetError(
                f"patient {case.patient_id!r} appears twice "
                f"({seen[case.patient_id].image} and {case.image})"
            )
        seen[case.patient_id] = case
    if not cases:
        raise DatasetError("no data: give --data DIR and/or --phantoms N")
    return cases


def load_case(case: Case) -> CaseArrays:
    """Read a case into memory in the canonical (S, P, L) layout at its own resolution."""
    if case.kind == "npz":
        try:
            with np.load(case.image) as npz:
                image, mask = npz["image"], npz["mask"]
        except (OSError, KeyError, ValueError) as error:
            raise DatasetError(
                f"{case.image}: not a slice set with 'image' and 'mask' ({error})"
            ) from error
        if image.ndim != 3 or image.shape != mask.shape:
            raise DatasetError(f"{case.image}: 'image' and 'mask' must be (n, H, W) of one shape")
        return CaseArrays(image.astype(np.float32), np.asarray(mask, dtype=np.uint8), None)
    if case.kind == "phantom":
        from ..phantom import make_phantom

        if case.phantom_grid is None:
            image, labels = make_phantom(case.seed)
        else:
            shape, spacing = case.phantom_grid
            image, labels = make_phantom(case.seed, shape=shape, spacing=spacing)
        return _canonical_arrays(image.array, labels.array, image.affine)
    from ..autosave import volume_content_key
    from ..io import read_labels, read_volume

    image = read_volume(case.image)
    labels = read_labels(case.label, image).array if case.label is not None else None
    arrays = _canonical_arrays(image.array, labels, image.affine)
    return replace(arrays, digest=volume_content_key(image))


def _canonical_arrays(
    image: np.ndarray, labels: np.ndarray | None, affine: np.ndarray
) -> CaseArrays:
    canonical, canonical_affine = to_canonical(image, affine)
    canonical_labels = None if labels is None else to_canonical(labels, affine)[0]
    return CaseArrays(
        np.ascontiguousarray(canonical),
        None
        if canonical_labels is None
        else np.ascontiguousarray(canonical_labels, dtype=np.uint8),
        canonical_spacing(affine),
        voxel_volume_mm3(affine),
    )


# --------------------------------------------------------------------------- model-res cache


@dataclass
class CachedCase:
    """A case at model resolution, ready for sampling: what training keeps in memory.

    Attributes
    ----------
    patient_id
        The patient this case belongs to.
    images
        (N, h, w) uint8: the model input in [0, 1] scaled to 0..255.
    labels
        (N, h, w) uint8 label values.
    digest
        The CT's content key (:attr:`CaseArrays.digest`), ``None`` for slice sets and phantoms.
    """

    patient_id: str
    images: np.ndarray
    labels: np.ndarray
    digest: str | None = None
    foreground: np.ndarray = field(init=False)
    tumour: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        flat = self.labels.reshape(len(self.labels), -1)
        #: indices of slices with pancreas (or tumour), and of slices with tumour
        self.foreground = np.flatnonzero(flat.max(axis=1) > 0)
        self.tumour = np.flatnonzero((flat == 2).any(axis=1))


def cache_arrays(
    patient_id: str,
    image_hu: np.ndarray,
    labels: np.ndarray,
    spacing_yx: Sequence[float] | None,
    preprocessing: Mapping[str, Any],
    digest: str | None = None,
) -> CachedCase:
    """Window and resample HU slices (N, H, W) and their labels to model resolution, as uint8;
    ``digest`` is the CT's content key, when it came from a file (:class:`CaseArrays`)."""
    if image_hu.shape != labels.shape or image_hu.ndim != 3:
        raise DatasetError(
            f"{patient_id}: image {image_hu.shape} and labels {labels.shape} "
            "must be (N, H, W) of one shape"
        )
    size = model_size(image_hu.shape[-2:], spacing_yx, preprocessing)
    images = np.empty((len(image_hu), *size), dtype=np.uint8)
    for start in range(0, len(image_hu), _CHUNK):
        unit = to_model_input(image_hu[start : start + _CHUNK], spacing_yx, preprocessing)
        images[start : start + _CHUNK] = (unit[:, 0] * 255.0).round().to(torch.uint8).numpy()
    return CachedCase(patient_id, images, resample_labels(labels, size), digest)


def cache_case(case: Case, preprocessing: Mapping[str, Any]) -> CachedCase:
    """Read ``case`` and keep it at model resolution (the full-resolution arrays are dropped)."""
    arrays = load_case(case)
    if arrays.labels is None:
        raise DatasetError(f"{case.case_id}: training needs labels")
    return cache_arrays(
        case.patient_id, arrays.image_hu, arrays.labels, arrays.spacing_yx, preprocessing,
        digest=arrays.digest,
    )  # fmt: skip


# ----------------------------------------------------------------------------------- split


def split_patients(
    patient_ids: Iterable[str],
    fractions: Sequence[float] = SPLIT_FRACTIONS,
    seed: int = 0,
) -> dict[str, Any]:
    """Split patients into train / val / test with a fixed seed (the paper's 70 / 10 / 20).

    The ids are sorted before shuffling, so the split depends only on the set of patients and the
    seed. Validation and test get ``round(fraction * n)`` patients each and training keeps the
    rest (at least one), so tiny datasets train on everything.

    Returns
    -------
    dict
        ``{"seed", "fractions", "train", "val", "test"}``, JSON-able; lists sorted.
    """
    ids = sorted(set(patient_ids))
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_test = min(round(fractions[2] * len(ids)), max(len(ids) - 1, 0))
    n_val = min(round(fractions[1] * len(ids)), max(len(ids) - 1 - n_test, 0))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {
        "seed": seed,
        "fractions": list(fractions),
        "train": sorted(train),
        "val": sorted(val),
        "test": sorted(test),
    }


def write_split(path: str | os.PathLike[str], split: Mapping[str, Any]) -> Path:
    """Write a split as JSON atomically (temporary file, then rename)."""
    return write_text_atomic(path, json.dumps(dict(split), indent=2) + "\n")


def read_split(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a split file written by :func:`write_split` (or by hand with the same keys)."""
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: not a readable split file ({error})") from error
    if not isinstance(split, dict) or not all(
        isinstance(split.get(k), list) for k in ("train", "val", "test")
    ):
        raise DatasetError(f"{path}: a split file needs lists 'train', 'val' and 'test'")
    return split


def select(cases: Sequence[Case], split: Mapping[str, Any], subset: str) -> list[Case]:
    """The cases whose patient is in ``split[subset]``."""
    wanted = set(split[subset])
    return [case for case in cases if case.patient_id in wanted]


def training_sets(cases: Sequence[Case], split: Mapping[str, Any]) -> tuple[list[Case], list[Case]]:
    """Training and validation cases of ``split``; validation falls back to training with a warning.

    Patients in ``cases`` that the split does not list are left out (with a warning), so a split
    file written for one dataset never leaks a new patient into training unnoticed.
    """
    listed = set(split["train"]) | set(split["val"]) | set(split["test"])
    unlisted = sorted({case.patient_id for case in cases} - listed)
    if unlisted:
        warnings.warn(
            f"{len(unlisted)} patients are not in the split and are left out: {unlisted[:5]}",
            stacklevel=2,
        )
    train, val = select(cases, split, "train"), select(cases, split, "val")
    if not train:
        raise DatasetError("the split leaves no training patient among the given data")
    if not val:
        warnings.warn(
            "no validation patient (dataset too small): validating on the training cases, "
            "so the validation Dice is optimistic",
            stacklevel=2,
        )
        val = list(train)
    return train, val


# ------------------------------------------------------------------------ sampling & augment


@dataclass(frozen=True)
class Augmentation:
    """Random transforms suited to axial CT, applied per sample.

    No flips: every volume is brought to one canonical radiological layout before it reaches a
    model, so a flipped abdomen never occurs at inference, and a left-right flip would teach the
    model that the pancreatic tail may lie on the patient's right, throwing away the strongest
    prior it has. Rotations stay small for the same reason (patients lie supine).

    Attributes
    ----------
    rotation_deg
        Maximum in-plane rotation either way.
    scale
        Zoom range, sampled log-uniformly: covers patient size and the unknown spacing of slice
        sets (0.66 to 0.98 mm around the 0.8 mm assumed); it mattered most in our runs.
    hu_shift
        Maximum shift of intensities in HU (scanner calibration, contrast timing).
    contrast
        Range of a multiplicative contrast change about the window centre.
    noise_hu
        Maximum standard deviation of Gaussian noise in HU (dose).
    """

    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.8, 1.25)
    hu_shift: float = 20.0
    contrast: tuple[float, float] = (0.9, 1.1)
    noise_hu: float = 10.0


#: Augmentation that changes nothing: validation and tests of determinism.
NO_AUGMENTATION = Augmentation(
    rotation_deg=0.0, scale=(1.0, 1.0), hu_shift=0.0, contrast=(1.0, 1.0), noise_hu=0.0
)


class SliceSampler:
    """Draws augmented training patches from cached cases.

    Each draw picks a patient uniformly (so a patient with 300 slices weighs as much as one with
    5: what made the shared 2D slice sets generalise), then a slice: with probability
    ``foreground_fraction`` one with pancreas, tumour slices ``tumour_weight`` times as likely as
    pancreas-only ones; otherwise any slice. A patch of ``patch_size`` pixels at model resolution
    is resampled around a foreground pixel (jittered by up to a quarter patch) or anywhere in the
    slice, with rotation and scale folded into the same ``grid_sample`` so that nothing is
    interpolated twice. Zero (the bottom of the window) fills what lies outside the slice.

    Parameters
    ----------
    cases
        Training cases at model resolution.
    patch_size
        Side of the square patches, pixels at model resolution.
    window_width_hu
        Width of the model's HU window, to express the intensity augmentation in HU.
    augmentation
        Random transforms; :data:`NO_AUGMENTATION` for none.
    seed
        Seeds the sampler's own generator: the same seed draws the same batches.
    """

    def __init__(
        self,
        cases: Sequence[CachedCase],
        patch_size: int,
        window_width_hu: float = 255.0,
        augmentation: Augmentation = Augmentation(),
        *,
        foreground_fraction: float = 0.7,
        tumour_weight: float = 3.0,
        seed: int = 0,
    ) -> None:
        if not cases:
            raise DatasetError("no training cases")
        self.cases = list(cases)
        self.patch_size = int(patch_size)
        self.window_width_hu = float(window_width_hu)
        self.augmentation = augmentation
        self.foreground_fraction = foreground_fraction
        self.tumour_weight = tumour_weight
        self.rng = np.random.default_rng(seed)

    def _pick_slice(self, case: CachedCase) -> tuple[int, int | None]:
        """Slice index and the label value to centre on (``None``: anywhere)."""
        rng = self.rng
        if len(case.foreground) and rng.random() < self.foreground_fraction:
            n_fg, n_tu = len(case.foreground), len(case.tumour)
            p_tumour = (
                n_tu * self.tumour_weight / (n_tu * self.tumour_weight + n_fg - n_tu)
                if n_tu
                else 0.0
            )
            if rng.random() < p_tumour:
                return int(rng.choice(case.tumour)), 2
            return int(rng.choice(case.foreground)), 1
        return int(rng.integers(len(case.images))), None

    def _centre(self, labels: np.ndarray, target: int | None) -> tuple[float, float]:
        rng = self.rng
        height, width = labels.shape
        if target is None:
            return rng.uniform(0, height - 1), rng.uniform(0, width - 1)
        pixels = np.flatnonzero(labels == 2 if target == 2 else labels > 0)
        y, x = divmod(int(rng.choice(pixels)), width)
        jitter = self.patch_size / 4
        return y + rng.uniform(-jitter, jitter), x + rng.uniform(-jitter, jitter)

    def _grid(self, shape: tuple[int, int], centre: tuple[float, float]) -> torch.Tensor:
        """``grid_sample`` grid (1, P, P, 2) mapping patch pixels to source pixels of the slice."""
        aug, rng, p = self.augmentation, self.rng, self.patch_size
        angle = math.radians(rng.uniform(-aug.rotation_deg, aug.rotation_deg))
        zoom = math.exp(rng.uniform(math.log(aug.scale[0]), math.log(aug.scale[1])))
        offsets = torch.arange(p, dtype=torch.float32) - (p - 1) / 2
        dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        y = centre[0] + cos * dy - sin * dx
        x = centre[1] + sin * dy + cos * dx
        height, width = shape
        return torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)[None]

    def _intensity(self, image: torch.Tensor) -> torch.Tensor:
        """HU shift, contrast and noise on the pixels inside the window (clipped ones stay clipped,
        as air at -1000 HU stays below the window whatever the scanner's offset)."""
        aug, rng = self.augmentation, self.rng
        unit_per_hu = 1.0 / self.window_width_hu
        contrast = rng.uniform(*aug.contrast)
        shift = rng.uniform(-aug.hu_shift, aug.hu_shift) * unit_per_hu
        sigma = rng.uniform(0.0, aug.noise_hu) * unit_per_hu
        if contrast == 1.0 and shift == 0.0 and sigma == 0.0:
            return image
        inside = (image > 0) & (image < 1)
        noise = torch.from_numpy(rng.standard_normal(image.shape, dtype=np.float32)) * sigma
        jittered = ((image - 0.5) * contrast + 0.5 + shift + noise).clamp(0.0, 1.0)
        return torch.where(inside, jittered, image)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch: images (B, 1, P, P) float32 in [0, 1] and labels (B, P, P) uint8."""
        images, labels = [], []
        for _ in range(batch_size):
            case = self.cases[int(self.rng.integers(len(self.cases)))]
            index, target = self._pick_slice(case)
            source_labels = case.labels[index]
            grid = self._grid(source_labels.shape, self._centre(source_labels, target))
            image = torch.from_numpy(case.images[index]).float().div_(255.0)[None, None]
            label = torch.from_numpy(source_labels).float()[None, None]
            images.append(
                self._intensity(F.grid_sample(image, grid, mode="bilinear", align_corners=False))
            )
            labels.append(F.grid_sample(label, grid, mode="nearest", align_corners=False))
        return torch.cat(images), torch.cat(labels)[:, 0].round().to(torch.uint8)
