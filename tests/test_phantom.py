"""The phantom: realistic HU per tissue, pancreas and tumour where anatomy puts them, seeded."""

from __future__ import annotations

import time

import numpy as np
import pytest

from src_models.io.orientation import to_canonical
from src_models.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom():
    image, labels = make_phantom(seed=3)
    canonical, _ = to_canonical(image.array, image.affine)
    canonical_labels, _ = to_canonical(labels.array, labels.affine)
    return image, labels, canonical, canonical_labels


def test_default_phantom_is_fast_and_small():
    start = time.perf_counter()
    image, labels = make_phantom(seed=1)
    assert time.perf_counter() - start < 1.5
    assert image.shape == labels.shape == (256, 256, 48)
    assert image.array.dtype == np.int16 and labels.array.dtype == np.uint8


def test_geometry_is_a_plausible_scanner_grid(phantom):
    image, labels, canonical, _ = phantom
    assert image.axcodes == ("L", "P", "S")
    assert image.spacing == pytest.approx((1.4, 1.4, 2.5))
    np.testing.assert_array_equal(image.affine, labels.affine)
    assert canonical.shape == (48, 256, 256)


def test_labels_are_pancreas_and_a_tumour_inside_it(phantom):
    _, labels, _, _ = phantom
    values = set(np.unique(labels.array).tolist())
    assert values == {0, 1, 2}
    pancreas_ml = np.count_nonzero(labels.array) * np.prod(labels.spacing) / 1000.0
    assert 20.0 < pancreas_ml < 150.0


def test_tissue_intensities_are_realistic(phantom):
    image, labels, canonical, canonical_labels = phantom
    hu = image.array.astype(np.float32)
    assert np.median(canonical[:, :3, :]) < -900  # air around the patient
    assert 40 <= np.median(hu[labels.array == 1]) <= 110
    assert 15 <= np.median(hu[labels.array == 2]) <= 45
    assert hu.max() > 500  # bone
    centre_slice = canonical[canonical.shape[0] // 2]
    fat = centre_slice[(centre_slice > -150) & (centre_slice < -50)]
    assert fat.size > 1000


def test_anatomy_in_radiological_layout(phantom):
    _, _, canonical, canonical_labels = phantom
    zs, ys, _ = np.nonzero(canonical_labels)
    # head on the patient's right = low column index, tail on the left = high column index
    head = canonical_labels[..., : canonical_labels.shape[2] // 2].sum()
    tail = canonical_labels[..., canonical_labels.shape[2] // 2 :].sum()
    assert head > 0 and tail > 0
    # the spine (bone) lies posterior to the pancreas: larger row index
    slab = canonical[zs.min() : zs.max() + 1]
    bone_rows = np.nonzero(slab > 500)[1]
    assert np.median(bone_rows) > np.median(ys)


def test_seed_reproducible_and_varies_anatomy():
    a_image, a_labels = make_phantom(seed=7)
    b_image, b_labels = make_phantom(seed=7)
    np.testing.assert_array_equal(a_image.array, b_image.array)
    np.testing.assert_array_equal(a_labels.array, b_labels.array)
    _, c_labels = make_phantom(seed=8)
    assert not np.array_equal(a_labels.array, c_labels.array)


def test_without_tumour_and_custom_grid():
    image, labels = make_phantom(
        seed=2, shape=(128, 128, 20), spacing=(2.8, 2.8, 5.0), tumour=False
    )
    assert image.shape == (128, 128, 20)
    assert set(np.unique(labels.array).tolist()) == {0, 1}


def test_noise_level_parameter():
    _, labels = make_phantom(seed=4, noise=0.0)
    image, _ = make_phantom(seed=4, noise=0.0)
    quiet = image.array[labels.array == 1].astype(np.float32)
    noisy_image, _ = make_phantom(seed=4, noise=15.0)
    noisy = noisy_image.array[labels.array == 1].astype(np.float32)
    assert quiet.std() < noisy.std()
