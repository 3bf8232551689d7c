"""The 3D clean-up, the ensemble of the bundled models and the tumour warning (issue 12)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from src_models import load_checkpoint
from src_models.cli import main
from src_models.inference.engine import segment
from src_models.inference.postprocess import keep_largest_components
from src_models.io import Volume
from src_models.jobs import run_to_end
from src_models.models.checkpoints import tumour_warning, validated_structures
from src_models.nets import SegmentationOutput
from src_models.nets.registry import ARCHITECTURES
from src_models.phantom import make_phantom

NATIVE = {"preprocessing": {"hu_window": [0.0, 255.0], "spacing_mm": None}}


class Threshold(nn.Module):
    """Pancreas wherever the HU exceed 100: the output is known voxel by voxel."""

    has_restoration = False

    def forward(self, x: torch.Tensor, reconstruct: bool = True) -> SegmentationOutput:
        logits = torch.cat([x - 100.5 / 255, x - 254.5 / 255], dim=1) * 50
        return SegmentationOutput(logits)


def _organ_and_island() -> Volume:
    """(x, y, z) HU volume: a 6-slice organ and a 1-slice bright island far from it."""
    hu = np.zeros((40, 40, 12), dtype=np.int16)
    hu[10:20, 10:20, 2:8] = 150  # the organ
    hu[30:33, 30:33, 10] = 150  # bowel-like island, 2 slices above the organ
    return Volume(hu, np.diag([1.5, 1.5, 2.0, 1.0]))  # 60 x 60 mm slices


def test_clean_up_erases_islands_away_from_the_organ_by_default() -> None:
    volume = _organ_and_island()
    cleaned = run_to_end(segment(volume, Threshold(), NATIVE, device="cpu"))
    raw = run_to_end(segment(volume, Threshold(), NATIVE, device="cpu", clean_up=False))
    assert np.count_nonzero(raw.labels) == 600 + 9
    assert np.count_nonzero(cleaned.labels) == 600
    assert cleaned.labels[31, 31, 10] == 0 and cleaned.labels[15, 15, 5] == 1
    assert cleaned.stats.foreground_slices == 6 and raw.stats.foreground_slices == 7
    assert cleaned.stats.pancreas_ml == pytest.approx(600 * 1.5 * 1.5 * 2.0 / 1000)


def test_clean_up_keeps_the_largest_tumour_inside_the_kept_pancreas() -> None:
    labels = np.zeros((6, 20, 20), dtype=np.uint8)
    labels[1:5, 2:12, 2:12] = 1
    labels[2:4, 4:8, 4:8] = 2  # the tumour
    labels[1, 10:12, 10:12] = 2  # a tumour speck inside the pancreas: becomes pancreas
    labels[1:3, 16:19, 16:19] = 1  # far island: removed
    cleaned = keep_largest_components(labels)
    assert cleaned[1, 17, 17] == 0 and cleaned[1, 11, 11] == 1 and cleaned[3, 5, 5] == 2
    assert np.count_nonzero(cleaned == 2) == 32


def test_clean_up_keeps_an_organ_on_the_volume_edges_and_empties_nothing_else() -> None:
    # The clean-up labels only the foreground's box: an organ touching the first and last slice
    # and the slice borders must come back whole, with the same result as labelling everything.
    labels = np.zeros((8, 30, 30), dtype=np.uint8)
    labels[:, 0:6, 24:30] = 1
    labels[7, 0:2, 28:30] = 2
    labels[3, 20, 2] = 1  # an island in the box's far corner: removed
    cleaned = keep_largest_components(labels)
    assert np.array_equal(cleaned[:, 0:6, 24:30], labels[:, 0:6, 24:30])
    assert np.count_nonzero(cleaned) == 8 * 36 and cleaned[3, 20, 2] == 0
    assert not keep_largest_components(np.zeros((3, 4, 4), dtype=np.uint8)).any()


def test_predict_without_clean_up_keeps_the_island(tmp_path) -> None:
    volume = _organ_and_island()
    noise = np.random.default_rng(0).integers(-20, 20, volume.array.shape)  # a CT's grain:
    hu = (volume.array + noise).astype(np.int16)  # two grey values alone are refused as a mask
    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, volume.affine), ct)
    out = tmp_path / "labels.nii.gz"
    assert main(["predict", str(ct), "-o", str(out), "--model", "fcn", "--device", "cpu",
                 "--no-clean-up"]) == 0  # fmt: skip
    assert nib.load(out).shape == (40, 40, 12)


def test_ensemble_averages_the_bundled_models_probabilities() -> None:
    ensemble, meta = load_checkpoint("ensemble")
    assert meta["arch"] == "ensemble" and len(meta["members"]) == len(ARCHITECTURES)
    assert not ensemble.has_restoration
    x = torch.rand(1, 1, 48, 48)
    with torch.no_grad():
        mean = torch.stack(
            [
                torch.sigmoid(load_checkpoint(a)[0](x, reconstruct=False).logits)
                for a in ARCHITECTURES
            ]
        ).mean(0)
        got = torch.sigmoid(ensemble(x).logits)
    torch.testing.assert_close(got, mean, atol=1e-5, rtol=1e-4)


def test_predict_with_the_ensemble_and_the_tumour_warning(tmp_path, capsys) -> None:
    image, _ = make_phantom(seed=2, shape=(48, 48, 4), spacing=(2.0, 2.0, 3.0))
    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image.array, image.affine), ct)
    out = tmp_path / "labels.nii.gz"
    assert main(["predict", str(ct), "-o", str(out), "--model", "ensemble", "--device", "cpu"]) == 0
    line = capsys.readouterr().out
    assert "tumour unvalidated" in line
    assert nib.load(out).shape == (48, 48, 4)


def test_validated_structures_come_from_real_validation_labels() -> None:
    _, bundled = load_checkpoint("dsmsc_unet")
    assert validated_structures(bundled) == ("pancreas",)
    assert tumour_warning(bundled)
    with_tumour = {"provenance": {"validated_structures": ["pancreas", "tumour"]}}
    assert validated_structures(with_tumour) == ("pancreas", "tumour")
    assert tumour_warning(with_tumour) == ""
    ensemble = {"members_meta": [with_tumour, bundled]}
    assert validated_structures(ensemble) == ("pancreas",)


def test_training_records_tumour_as_validated_only_from_real_patients() -> None:
    from src_models.training.data import CachedCase
    from src_models.training.loop import validated_structures_of

    labels = np.zeros((2, 8, 8), dtype=np.uint8)
    labels[0, 2:4, 2:4] = 1
    with_tumour = labels.copy()
    with_tumour[1, 3, 3] = 2
    images = np.zeros_like(labels)
    real = CachedCase("PANCREAS_0001", images, labels)
    phantom = CachedCase("phantom-0003", images, with_tumour)
    assert validated_structures_of([real, phantom]) == ["pancreas"]
    assert validated_structures_of([CachedCase("MSD_001", images, with_tumour)]) == [
        "pancreas",
        "tumour",
    ]


def test_model_card_says_data_recipe_validation_and_tumour_status() -> None:
    from src_models.models.checkpoints import model_card, read_metadata
    from src_models.models.store import resolve_checkpoint

    card = model_card(read_metadata(resolve_checkpoint("dsmsc_unet")))
    assert card.startswith("dsmsc_unet, width 12.")
    assert "NIH Pancreas-CT" in card and "6 phantoms" in card
    assert "continuing dsmsc_unet of napari-dsms 0.1.0" in card
    assert "Cross-validated on 9 unseen patients' slices (2 folds): pancreas Dice 0.724" in card
    assert "validation patients" not in card  # three patients chose nothing: no figure of theirs
    first = {"arch": "unet", "config": {"width": 12}, "metrics": {"dice_pancreas": 0.73},
             "provenance": {"val_patients": ["a", "b", "c"]}}  # fmt: skip
    assert "Pancreas Dice 0.730 on 3 validation patients." in model_card(first)
    assert "Tumour unvalidated" in card
    validated = {"arch": "unet", "config": {"width": 32}, "metrics": {"dice_pancreas": 0.8},
                 "provenance": {"validated_structures": ["pancreas", "tumour"]}}  # fmt: skip
    assert model_card(validated).endswith("Tumour validated.")
    # the kept checkpoint's step is the best validation's, not the run's end (a tester read
    # "60 steps" for a 200-step run)
    best = {"arch": "unet", "config": {"width": 4},
            "provenance": {"steps": 60, "elapsed_s": 30.0, "config": {"steps": 200}}}  # fmt: skip
    assert "Training: best checkpoint at step 60 of a 200-step run, 0.5 min on" in model_card(best)
    # a run limited by time says so, and when (the bundled ones read "of a 100000-step run")
    card = model_card(read_metadata(resolve_checkpoint("unet")))
    assert "Training (2026-11-26): best checkpoint at step 2520 of a run limited to 11 min" in card
    # a run continued from a model that trained on its validation patients says so
    continued = {"arch": "unet", "config": {"width": 12}, "metrics": {"dice_pancreas": 0.74},
                 "provenance": {"val_patients": ["a", "b"],
                                "init_learnt": {"train_patients": ["a", "z"]}}}  # fmt: skip
    assert "0.740 on 2 validation patients, 1 of whom the model it continued trained on." in (
        model_card(continued)
    )


def test_a_fine_tuned_card_says_its_figure_is_on_the_users_own_slices() -> None:
    """A fine-tuned model must not show its held-out Dice as a validation on patients."""
    from src_models.models.checkpoints import model_card

    meta = {
        "arch": "dsmsc_unet",
        "config": {"width": 12},
        "metrics": {"dice_pancreas": 0.583},
        "provenance": {
            "fine_tune": {
                "source_image": "/data/ct.nii.gz",
                "holdout_slices": [15],
                "metrics_before": {"dice_pancreas": 0.41},
                "metrics_after": {"dice_pancreas": 0.583},
                "base_split": {"val_patients": ["a", "b", "c"]},
            }
        },
    }
    card = model_card(meta)
    assert "validation patients" not in card
    assert "0.410 -> 0.583 on 1 held-out corrected slice of that image" in card
