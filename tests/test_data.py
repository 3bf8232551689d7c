"""Datasets, the patient split and slice sampling on tiny synthetic files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from src_models.training.data import (
    NO_AUGMENTATION,
    Augmentation,
    CachedCase,
    DatasetError,
    SliceSampler,
    cache_arrays,
    cache_case,
    find_cases,
    gather_cases,
    load_case,
    read_split,
    split_patients,
    training_sets,
    write_split,
)

#: LAS like the shared NIH volume: index i -> patient's left (x negated in RAS), j -> anterior.
LAS = np.diag([-0.8, 0.8, 2.0, 1.0])


def _volume(seed: int, shape=(32, 32, 4)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(-100, 300, size=shape).astype(np.int16)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[10:20, 12:18, 1:3] = 1
    labels[12:14, 13:15, 2] = 2
    return image, labels


def _save(path: Path, array: np.ndarray, affine=LAS) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.fixture
def pairs_dir(tmp_path) -> Path:
    folder = tmp_path / "pairs"
    folder.mkdir()
    for i in range(2):
        image, labels = _volume(i)
        _save(folder / f"case{i}.nii.gz", image)
        _save(folder / f"case{i}_label.nii.gz", labels)
    return folder


@pytest.fixture
def npz_dir(tmp_path) -> Path:
    folder = tmp_path / "slices"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("P_01", 3), ("P_02", 1)):
        image = rng.integers(0, 256, size=(n, 40, 40), dtype=np.uint8)
        mask = np.zeros_like(image)
        mask[:, 10:20, 15:25] = 1
        np.savez(folder / f"{name}.npz", image=image, mask=mask, instance=np.arange(n))
    return folder


def test_finds_every_layout(tmp_path, pairs_dir, npz_dir):
    msd = tmp_path / "Task07_Pancreas"
    (msd / "imagesTr").mkdir(parents=True)
    (msd / "labelsTr").mkdir()
    image, labels = _volume(5)
    _save(msd / "imagesTr" / "pancreas_005.nii.gz", image)
    _save(msd / "labelsTr" / "pancreas_005.nii.gz", labels)
    (msd / "imagesTr" / "._pancreas_005.nii.gz").write_bytes(b"macOS junk")
    entry = {"image": "./imagesTr/pancreas_005.nii.gz", "label": "./labelsTr/pancreas_005.nii.gz"}
    (msd / "dataset.json").write_text(json.dumps({"training": [entry]}))
    single = tmp_path / "patient-0001"
    single.mkdir()
    _save(single / "ct.nii.gz", image)
    _save(single / "label.nii.gz", labels)

    assert [c.case_id for c in find_cases(msd)] == ["pancreas_005"]
    assert [c.case_id for c in find_cases(pairs_dir)] == ["case0", "case1"]
    assert [(c.case_id, c.kind) for c in find_cases(npz_dir)] == [("P_01", "npz"), ("P_02", "npz")]
    assert [c.patient_id for c in find_cases(single)] == ["patient-0001"]
    # a folder of patient folders beside slice sets: every patient counts (a tester's volume
    # in a subfolder was left out of evaluate's mean without a word)
    (npz_dir / "PANCREAS_0001").mkdir()
    for name in ("ct.nii.gz", "label.nii.gz"):
        (npz_dir / "PANCREAS_0001" / name).write_bytes((single / name).read_bytes())
    (npz_dir / "notes").mkdir()  # a folder without a case is no case
    assert [c.case_id for c in find_cases(npz_dir)] == ["P_01", "P_02", "PANCREAS_0001"]
    (npz_dir / "PANCREAS_0001" / "label.nii.gz").unlink()
    mixed = gather_cases([pairs_dir, npz_dir], phantoms=2)
    assert len(mixed) == 6
    assert {c.patient_id for c in mixed} >= {"phantom-0000", "phantom-0001"}


def test_refusals_name_the_folder(tmp_path, pairs_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty: no cases found"):
        find_cases(empty)
    with pytest.raises(DatasetError, match="not a folder"):
        find_cases(tmp_path / "missing")
    with pytest.raises(DatasetError, match="appears twice"):
        gather_cases([pairs_dir, pairs_dir])


def test_volumes_come_out_canonical(pairs_dir):
    """LAS file -> (S, P, L): slices first, anterior at row 0, patient's right at column 0."""
    arrays = load_case(find_cases(pairs_dir)[0])
    image, labels = _volume(0)
    assert arrays.image_hu.shape == (4, 32, 32)
    assert arrays.spacing == pytest.approx((2.0, 0.8, 0.8))
    # canonical[s, p, l] = file[i, j, k] with i towards L (same), j towards A (flipped), k = s
    expected = np.transpose(image, (2, 1, 0))[:, ::-1, :]
    np.testing.assert_array_equal(arrays.image_hu, expected)
    np.testing.assert_array_equal(arrays.labels, np.transpose(labels, (2, 1, 0))[:, ::-1, :])


def test_cache_is_uint8_at_model_resolution(npz_dir):
    case = find_cases(npz_dir)[0]
    same = cache_case(case, {"hu_window": [0.0, 255.0], "spacing_mm": None})
    with np.load(case.image) as npz:
        np.testing.assert_array_equal(same.images, npz["image"])  # the window is the identity
    half = cache_case(case, {"hu_window": [0.0, 255.0], "spacing_mm": 1.6})  # 0.8 mm assumed
    assert half.images.dtype == np.uint8 and half.images.shape == (3, 20, 20)
    assert set(np.unique(half.labels)) <= {0, 1}
    assert list(half.foreground) == [0, 1, 2]


def test_split_is_reproducible_and_disjoint(tmp_path):
    ids = [f"p{i:02d}" for i in range(20)]
    split = split_patients(ids, seed=3)
    assert split == split_patients(list(reversed(ids)), seed=3)
    assert split != split_patients(ids, seed=4)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (14, 2, 4)
    parts = [set(split[k]) for k in ("train", "val", "test")]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == len(ids)
    path = write_split(tmp_path / "split.json", split)
    assert read_split(path) == split


def test_tiny_dataset_trains_on_everything_with_a_warning(pairs_dir):
    cases = find_cases(pairs_dir)
    split = split_patients([c.patient_id for c in cases])
    assert split["train"] == ["case0", "case1"] and not split["val"] and not split["test"]
    with pytest.warns(UserWarning, match="validating on the training cases"):
        train, val = training_sets(cases, split)
    assert val == train
    assert split_patients(["only"])["train"] == ["only"]


def _constant_case(pid: str, value: int, slices: int, foreground: bool) -> CachedCase:
    images = np.full((slices, 24, 24), value, dtype=np.uint8)
    labels = np.zeros_like(images)
    if foreground:
        labels[0, 8:12, 8:12] = 1
    return CachedCase(pid, images, labels)


def test_patients_are_drawn_equally_and_foreground_oversampled():
    big = _constant_case("big", 50, slices=40, foreground=True)
    small = _constant_case("small", 200, slices=1, foreground=False)
    sampler = SliceSampler([big, small], 16, augmentation=NO_AUGMENTATION, seed=0)
    images, labels = sampler.sample(400)
    from_small = (images.flatten(1).max(1).values > 0.5).float().mean().item()
    assert 0.4 < from_small < 0.6  # one patient of two, whatever its slice count
    from_big = images.flatten(1).max(1).values.sub(50 / 255).abs() < 1e-3
    with_fg = (labels.flatten(1).amax(1) > 0)[from_big].float().mean().item()
    assert with_fg > 0.5  # 1 of 40 slices has pancreas; sampling is 70 % foreground


def test_sampling_is_seeded_and_keeps_label_values():
    image = np.zeros((2, 30, 30), dtype=np.uint8)
    labels = np.zeros_like(image)
    labels[:, 10:20, 10:20] = 1
    labels[1, 12:15, 12:15] = 2
    case = cache_arrays("p", image.astype(np.float32), labels, None, {"hu_window": [0, 255]})
    a = SliceSampler([case], 20, augmentation=Augmentation(), seed=7).sample(6)
    b = SliceSampler([case], 20, augmentation=Augmentation(), seed=7).sample(6)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert a[0].shape == (6, 1, 20, 20) and a[1].shape == (6, 20, 20)
    assert set(np.unique(a[1].numpy())) <= {0, 1, 2}


def test_no_flip_keeps_left_and_right():
    """Augmentation never mirrors: the bright (patient's left) half stays on the patch's right."""
    image = np.zeros((1, 64, 64), dtype=np.uint8)
    image[:, :, 32:] = 255
    case = CachedCase("p", image, np.zeros_like(image))
    sampler = SliceSampler([case], 16, augmentation=Augmentation(hu_shift=0, noise_hu=0), seed=1)
    images, _ = sampler.sample(50)
    left, right = images[..., :4].mean(), images[..., -4:].mean()
    assert right > left
