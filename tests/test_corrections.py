"""Screen-less logic of the Review widget: edited slices, clean-up, hold-out, side-car, names."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from src_models import __version__
from src_models.corrections import (
    CorrectionsError,
    edited_slices,
    effort_record,
    foreground_slices,
    neighbour_slice,
    seconds_per_slice,
    sidecar,
    sidecar_path,
    source_slice_indices,
    structure_volumes,
    training_slices,
    write_sidecar,
)
from src_models.inference.postprocess import keep_largest_components
from src_models.io.orientation import to_canonical
from src_models.training.fine_tune import FineTuneResult, fine_tuned_path, split_holdout


def _prediction() -> np.ndarray:
    labels = np.zeros((10, 16, 16), np.uint8)
    labels[2:7, 4:10, 4:10] = 1
    labels[3:5, 5:7, 5:7] = 2
    return labels


def test_edited_slices_compare_with_prediction_per_slice() -> None:
    prediction = _prediction()
    labels = prediction.copy()
    labels[1, 0, 0] = 1  # added
    labels[4, 5, 5] = 1  # tumour relabelled
    labels[8, 15, 15] = 2
    assert edited_slices(labels, prediction) == [1, 4, 8]
    labels[8, 15, 15] = 0  # undoing an edit makes the slice unedited again
    assert edited_slices(labels, prediction) == [1, 4]
    assert edited_slices(prediction, prediction) == []


def test_edited_slices_refuse_another_images_labels() -> None:
    with pytest.raises(CorrectionsError, match="different images"):
        edited_slices(np.zeros((4, 8, 8), np.uint8), np.zeros((5, 8, 8), np.uint8))


def test_foreground_and_neighbour_slices() -> None:
    slices = foreground_slices(_prediction())
    assert slices == [2, 3, 4, 5, 6]
    assert neighbour_slice(slices, 0, +1) == 2
    assert neighbour_slice(slices, 4, +1) == 5
    assert neighbour_slice(slices, 4, -1) == 3
    assert neighbour_slice(slices, 6, +1) is None
    assert neighbour_slice(slices, 2, -1) is None


def test_keep_largest_components_per_structure() -> None:
    labels = _prediction()
    labels[8, 0:2, 0:2] = 1  # a false-positive island
    labels[9, 14, 14] = 2  # a tumour island outside the pancreas
    labels[6, 8, 8] = 2  # a small tumour island inside the pancreas
    before = labels.copy()
    cleaned = keep_largest_components(labels)
    assert np.array_equal(labels, before)  # input untouched
    assert cleaned.dtype == np.uint8
    assert cleaned[8].sum() == 0 and cleaned[9].sum() == 0
    assert cleaned[6, 8, 8] == 1  # small tumour island stays pancreas
    assert np.count_nonzero(cleaned == 2) == 8
    assert np.array_equal(cleaned > 0, _prediction() > 0)
    # a diagonal step between slices is still one structure (26-connectivity)
    diagonal = np.zeros((3, 5, 5), np.uint8)
    diagonal[0, 1, 1] = diagonal[1, 2, 2] = diagonal[2, 3, 3] = 1
    assert np.array_equal(keep_largest_components(diagonal), diagonal)


@pytest.mark.parametrize(
    ("n", "n_holdout"), [(0, 0), (1, 0), (2, 0), (3, 1), (8, 2), (10, 2), (13, 3)]
)
def test_split_holdout_sizes_and_spread(n: int, n_holdout: int) -> None:
    slices = list(range(40, 40 + 2 * n, 2))
    train, holdout = split_holdout(slices)
    assert len(holdout) == n_holdout
    assert sorted(train + holdout) == slices
    assert not set(train) & set(holdout)
    assert split_holdout(list(reversed(slices))) == (train, holdout)  # deterministic
    if n_holdout:
        assert holdout[0] != slices[0] and holdout[-1] != slices[-1]


def test_slices_accepted_unchanged_are_never_held_out() -> None:
    """The model drew an accepted slice, so it scored ~1 before learning there and any change
    as a loss: a tester's round fell 0.999 -> 0.755 on one and threw the model away."""
    slices = [10, 20, 30, 40, 50, 60, 70]
    assert split_holdout(slices) == ([10, 20, 30, 50, 60, 70], [40])
    train, holdout = split_holdout(slices, accepted=[40, 50])
    assert holdout and not set(holdout) & {40, 50}
    assert sorted(train + holdout) == slices
    # only one drawn slice: it is trained on, none is held out
    assert split_holdout(slices, accepted=slices[1:]) == (slices, [])
    # slices an earlier round learnt are not held out either; with none other, none is
    train, holdout = split_holdout(slices, learnt=[10, 20, 30, 40, 50])
    assert len(holdout) == 1 and set(holdout) <= {60, 70} and sorted(train + holdout) == slices
    assert split_holdout(slices, learnt=slices) == (slices, [])


def test_training_slices_and_refusals() -> None:
    prediction = _prediction()
    labels = prediction.copy()
    labels[3, 0, 0] = 1
    assert training_slices(labels, prediction) == [3]
    assert training_slices(labels, prediction, reviewed=[5, 99], include_reviewed=True) == [3, 5]
    assert training_slices(labels, prediction, reviewed=[5]) == [3]
    with pytest.raises(CorrectionsError, match="no corrected slices"):
        training_slices(prediction, prediction)
    erased = prediction.copy()
    erased[:] = 0
    with pytest.raises(CorrectionsError, match="no pancreas"):
        training_slices(erased, prediction)
    with pytest.raises(CorrectionsError, match="different images"):
        training_slices(labels[:5], prediction)


def test_source_slice_indices_follow_the_file_orientation() -> None:
    shape = (6, 5, 4)  # file axes: L->R x, S->I on axis 1, A->P on axis 2
    affine = np.array([[-1.0, 0, 0, 0], [0, 0, -1.0, 0], [0, -2.0, 0, 0], [0, 0, 0, 1]])
    source = np.arange(np.prod(shape)).reshape(shape)
    canonical, _ = to_canonical(source, affine)
    axis, indices = source_slice_indices([0, 3], affine, shape)
    assert axis == 1
    for k, j in zip([0, 3], indices, strict=True):
        assert set(np.unique(canonical[k])) == set(np.unique(np.take(source, j, axis=axis)))


def test_volumes_and_sidecar_content(tmp_path) -> None:
    labels = _prediction()
    volumes = structure_volumes(labels, (2.0, 1.0, 1.0))
    assert volumes["pancreas"] == pytest.approx(5 * 36 * 2 / 1000)
    assert volumes["tumour"] == pytest.approx(8 * 2 / 1000)
    export = tmp_path / "case_labels.nii.gz"
    assert sidecar_path(export) == tmp_path / "case_labels.json"
    affine = np.diag([0.8, 0.8, 2.0, 1.0])  # RAS: canonical slice k = source z index k
    content = sidecar(
        export_path=export,
        kind="labels",
        source="/data/ct.nii.gz",
        affine=affine,
        source_shape=(16, 16, 10),
        labels=labels,
        spacing=(2.0, 0.8, 0.8),
        model={"arch": "unet", "checkpoint": "/models/unet.pt"},
        edited=[6, 2],
        reviewed=[3],
        plugin_version=__version__,
        now=dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc),
    )
    json.dumps(content)
    assert content["file"] == "case_labels.nii.gz"
    assert content["source_image"] == "/data/ct.nii.gz"
    assert content["model"]["checkpoint"] == "/models/unet.pt"
    assert content["edited_slices"]["canonical"] == [2, 6]
    assert content["reviewed_slices"] == {"canonical": [3], "source": [3]}
    assert content["edited_slices"]["source"] == [2, 6]
    assert "axis 2" in content["slice_index_conventions"]["source"]
    assert content["date"] == "2024-05-01T12:00:00+00:00"
    assert content["plugin_version"] == __version__
    assert content["volumes_ml"]["pancreas"] == pytest.approx(5 * 36 * 0.64 * 2 / 1000, abs=1e-3)
    # a DICOM-SEG's Pancreas segment (label 1 only) measures this in a PACS
    assert content["volumes_ml"]["pancreas_without_tumour"] == pytest.approx(
        (5 * 36 - 8) * 0.64 * 2 / 1000, abs=1e-3
    )
    written = write_sidecar(export, content)
    assert written == tmp_path / "case_labels.json"
    assert json.loads(written.read_text()) == content
    assert '"canonical": [2, 6]' in written.read_text()  # slice lists on one line
    assert [p.name for p in tmp_path.iterdir()] == ["case_labels.json"]  # no temporary left


def test_fine_tuned_path_versions_and_never_overwrites(tmp_path) -> None:
    first = fine_tuned_path(tmp_path, "/bundled/unet.pt", "/data/ct.nii.gz")
    assert first == tmp_path / "unet-ft-ct-v1.pt"
    first.write_bytes(b"")
    second = fine_tuned_path(tmp_path, "/bundled/unet.pt", "ct.nii.gz")
    assert second.name == "unet-ft-ct-v2.pt"
    second.write_bytes(b"")
    # fine-tuning the fine-tuned model counts on instead of nesting names
    assert fine_tuned_path(tmp_path, second, "CT scan 1").name == "unet-ft-ct-scan-1-v1.pt"
    assert fine_tuned_path(tmp_path, second, "ct").name == "unet-ft-ct-v3.pt"
    assert fine_tuned_path(tmp_path, "dsmsc_unet", "PANCREAS_0001.nii").name == (
        "dsmsc_unet-ft-pancreas_0001-v1.pt"
    )


def test_fine_tune_report_says_when_the_time_limit_cut_the_run(tmp_path) -> None:
    before, after = {"dice_pancreas": 0.638}, {"dice_pancreas": 0.748}
    report = FineTuneResult(
        tmp_path / "m-ft-ct-v1.pt", tmp_path / "m.pt", 99, 180.0, before, after, planned_steps=400
    )
    assert report.stopped_by_time
    text = report.summary()
    assert "m-ft-ct-v1.pt" in text and "0.638 -> 0.748" in text and "99 of 400" in text
    assert "allow more time" in text
    # two steps short: said, but no advice that more time would give a better model (a tester)
    nearly = FineTuneResult(tmp_path / "b.pt", tmp_path / "m.pt", 198, 40.0, planned_steps=200)
    assert "198 of 200 steps" in nearly.summary() and "allow more time" not in nearly.summary()
    complete = FineTuneResult(tmp_path / "a.pt", tmp_path / "m.pt", 400, 120.0, planned_steps=400)
    assert not complete.stopped_by_time and "time limit" not in complete.summary()


def test_seconds_per_slice_counts_work_and_skips_pauses() -> None:
    edits = [(100.0, 4), (103.0, 4), (110.0, 6), (500.0, 6), (501.5, 4)]
    assert seconds_per_slice(edits, idle_s=60) == {4: 3.0 + 1.5, 6: 7.0}
    # a tool ran from t = 20 to 45 (a refine round): the wait is not the next stroke's
    tool = [(10.0, 4), (20.0, None), (45.0, None), (47.0, 5)]
    assert seconds_per_slice(tool) == {4: 0.0, 5: 2.0}
    assert seconds_per_slice([]) == {}


def test_effort_record_per_slice_and_in_the_sidecar() -> None:
    prediction = _prediction()
    final = prediction.copy()
    final[3, 4:6, 4:10] = 0  # 12 voxels erased on slice 3
    effort = effort_record(prediction, final, edited=[3], reviewed=[5, 3], seconds={3: 42.0})
    assert effort["slices"] == [
        {"slice": 3, "status": "edited", "seconds": 42.0, "voxels_changed": 12,
         "dice_prediction_final": pytest.approx(2 * 24 / (36 + 24), abs=1e-4)},
        {"slice": 5, "status": "reviewed", "seconds": 0.0, "voxels_changed": 0,
         "dice_prediction_final": 1.0},
    ]  # fmt: skip
    assert effort["totals"] == {
        "slices_edited": 1, "slices_reviewed": 1, "minutes": 0.7, "voxels_changed": 12
    }  # fmt: skip
    flipped = np.diag([1.0, 1.0, -2.0, 1.0])  # slices stored feet-first along axis 2
    content = sidecar(
        export_path="x.nii.gz", kind="labels", source="ct.nii.gz", affine=flipped,
        source_shape=(16, 16, 10), labels=final, spacing=(2.0, 1.0, 1.0), model=None,
        edited=[3], reviewed=[5], plugin_version="0", effort=effort,
    )  # fmt: skip
    assert [e["source_slice"] for e in content["effort"]["slices"]] == [6, 4]
    assert content["effort"]["totals"]["minutes"] == 0.7
