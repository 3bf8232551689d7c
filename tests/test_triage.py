"""Triage: a slice the model cannot read ranks near the top, on the file's own slice axis."""

from __future__ import annotations

import json

import numpy as np
import pytest

from src_models import load_checkpoint
from src_models.cli import main
from src_models.inference.triage import fill_ranking, triage
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
    # Its suspicion stands out, and it comes among the first slices to review (after the ends
    # of the predicted pancreas, which fill between slices needs first).
    assert PLANTED in np.argsort(result.scores)[::-1][:3]
    assert PLANTED in [k for k, _ in ranking[:6]]
    assert set(result.features) == {
        "uncertainty", "disagreement", "reconstruction", "area_jump", "fragments"
    }  # fmt: skip


def test_ranking_starts_at_the_ends_then_goes_where_fill_would_miss():
    """Ends of the predicted pancreas first, then the bend that filling between them misses."""
    main = np.zeros((24, 30, 30), dtype=bool)
    for k in range(3, 21):
        shift = 10 if k in (13, 14, 15) else 0  # the organ swerves sideways over three slices
        main[k, 8:16, 4 + shift : 12 + shift] = True
    scores = np.zeros(24)
    scores[1] = 0.9  # suspicious, but outside the pancreas and nothing to fill there
    order, values = fill_ranking(main, scores)
    assert sorted(order) == list(range(24))
    assert order[:2] == [3, 20]
    assert order[2] in (13, 14, 15)
    assert values == sorted(values, reverse=True) and values[0] == 1.0
    assert order.index(1) < order.index(0)  # suspicion still orders the slices fill cannot help


def test_triage_command_counts_slices_on_the_files_own_axis(tmp_path, capsys):
    """The same patient stored feet-first gets the same ranking, counted on its own axis."""
    path, plain = tmp_path / "feet-first.nii.gz", tmp_path / "head-first.nii.gz"
    write_image(path, _planted(flip=True).array, _planted(flip=True))
    write_image(plain, _planted().array, _planted())
    ranked = {}
    for name in (path, plain):
        assert main(["triage", str(name), "--device", "cpu", "--top", "6"]) == 0
        ranked[name] = [int(k) for k in capsys.readouterr().out.split()[0::2]]
    assert len(ranked[path]) == 6 and 23 - PLANTED in ranked[path] and PLANTED in ranked[plain]
    assert ranked[path] == [23 - k for k in ranked[plain]]
    quick = ["--model", "fcn", "--device", "cpu", "--json", "--top", "2"]
    assert main(["triage", str(path), *quick]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["slice_axis"] == 2 and len(printed["slices"]) == 2
    assert set(printed["slices"][0]["parts"]) >= {"uncertainty", "area_jump"}
    assert 0 <= printed["slices"][0]["suspicion"] <= 1  # the score also counts what fill misses
    feet_first = _planted(flip=True)
    centre = (np.asarray(feet_first.array.shape) - 1) / 2.0
    for entry in printed["slices"]:  # where to find the slice in a PACS viewer: its z in mm
        z = (feet_first.affine @ [centre[0], centre[1], entry["k"], 1.0])[2]
        assert entry["z_mm"] == pytest.approx(z, abs=0.01)


def test_triage_command_refuses_bad_input(tmp_path, capsys):
    bad = tmp_path / "ct.nii.gz"
    bad.write_bytes(b"not a volume")
    assert main(["triage", str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "ct.nii.gz" in err and "Traceback" not in err
    assert main(["triage", str(tmp_path / "missing.nii.gz")]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err
