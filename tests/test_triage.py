"""Triage: a slice the model cannot read ranks near the top, on the file's own slice axis."""

from __future__ import annotations

import json

import numpy as np
import pytest

from src_models import load_checkpoint
from src_models.cli import main
from src_models.inference.triage import spread_ranking, triage
from src_models.io import Volume, write_image
from src_models.jobs import run_to_end
from src_models.phantom import make_phantom

PLANTED = 12


def _planted(flip: bool = False) -> Volume:
    """A phantom (LPS, slices along axis 2) whose slice ``PLANTED`` is buried in noise."""
    image, _ = make_phantom(seed=5, shape=(80, 80, 24), spacing=(4.3, 4.3, 4.0))
    array = image.array.copy()
    body = array[:, :, PLANTED] > -500
    noise = np.random.default_rng(0).normal(40, 60, body.shape)
    array[:, :, PLANTED] = np.where(body, noise, array[:, :, PLANTED]).astype(array.dtype)
    affine = image.affine.copy()
    if flip:  # the same patient stored feet-first: slice k of the file is slice 23 - k
        array = array[:, :, ::-1]
        affine[:, 2] *= -1
        affine[:3, 3] -= affine[:3, 2] * (array.shape[2] - 1)
    return Volume(np.ascontiguousarray(array), affine)


@pytest.fixture(scope="module")
def model():
    return load_checkpoint("dsmsc_unet")


def test_a_planted_error_ranks_near_the_top(model):
    volume = _planted()
    result = run_to_end(triage(volume, *model, device="cpu"))
    ranking = result.ranking(volume.affine, volume.array.shape)
    assert sorted(k for k, _ in ranking) == list(range(24))  # every slice once
    scores = [score for _, score in ranking]
    assert scores == sorted(scores, reverse=True)
    assert PLANTED in [k for k, _ in ranking[:3]]
    assert set(result.features) == {
        "uncertainty", "disagreement", "reconstruction", "area_jump", "fragments"
    }  # fmt: skip


def test_ranking_spreads_over_the_volume():
    scores = np.array([0.0, 0.9, 1.0, 0.95, 0.0, 0.0, 0.5, 0.0])
    order, ranked = spread_ranking(scores, radius=3.0)
    assert order[:2] == [2, 6]  # 1 and 3 sit next to 2: the far slice 6 comes first
    assert ranked == sorted(ranked, reverse=True)


def test_triage_command_counts_slices_on_the_files_own_axis(tmp_path, capsys):
    path = tmp_path / "feet-first.nii.gz"
    write_image(path, _planted(flip=True).array, _planted(flip=True))
    assert main(["triage", str(path), "--device", "cpu", "--top", "3"]) == 0
    lines = capsys.readouterr().out.split()
    slices = [int(k) for k in lines[0::2]]
    assert len(slices) == 3 and 23 - PLANTED in slices
    quick = ["--model", "fcn", "--device", "cpu", "--json", "--top", "2"]
    assert main(["triage", str(path), *quick]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["slice_axis"] == 2 and len(printed["slices"]) == 2
    assert set(printed["slices"][0]["parts"]) >= {"uncertainty", "area_jump"}


def test_triage_command_refuses_bad_input(tmp_path, capsys):
    bad = tmp_path / "ct.nii.gz"
    bad.write_bytes(b"not a volume")
    assert main(["triage", str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "ct.nii.gz" in err and "Traceback" not in err
    assert main(["triage", str(tmp_path / "missing.nii.gz")]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err
