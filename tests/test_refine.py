"""One round of the correction loop: corrections kept bit for bit, the rest filled, a CLI twin."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from src_models import build_model, load_checkpoint, read_labels, save_checkpoint
from src_models.cli import main
from src_models.io import Volume, write_image, write_labels
from src_models.jobs import run_to_end
from src_models.metrics import structure_dice
from src_models.models.checkpoints import model_card
from src_models.phantom import make_phantom
from src_models.refine import combine, refine, taper_from

PREP = {"hu_window": [-100.0, 250.0], "spacing_mm": 2.9}


@pytest.fixture(scope="module")
def case():
    image, labels = make_phantom(seed=2, shape=(96, 96, 40), spacing=(2.9, 2.9, 2.0))
    return image, labels


@pytest.fixture()
def tiny(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "tiny.pt", build_model("unet", width=4), preprocessing=PREP)


def _with_pancreas(labels: np.ndarray) -> np.ndarray:
    return np.flatnonzero(labels.any(axis=(0, 1)))  # phantom: slices along axis 2


def _every_third_slice(case):
    """(image, reference, corrected, user labels): every third pancreas slice corrected with
    the reference, nothing elsewhere."""
    image, reference = case
    corrected = [int(k) for k in _with_pancreas(reference.array)[::3]]
    user = np.zeros_like(reference.array)  # "anything" elsewhere: here nothing at all
    user[..., corrected] = reference.array[..., corrected]
    return image, reference, corrected, user


def test_corrections_stay_bit_identical_and_the_slices_between_are_filled(case, tiny):
    image, reference, corrected, user = _every_third_slice(case)
    user[1, 1, corrected[0]] = 2  # an odd edit the user made on purpose
    model, meta = load_checkpoint(tiny)
    result = run_to_end(refine(image, user, corrected, model, meta, steps=2, device="cpu"))
    out = result.labels
    assert out.shape == user.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., corrected], user[..., corrected])
    between = np.setdiff1d(np.arange(corrected[0], corrected[-1] + 1), corrected)
    # interpolation alone scores 0.86 here; an untrained tiny model can only add pancreas
    # within 3 mm of the interpolated shape, so the slices between stay close to it
    assert structure_dice(out[..., between], reference.array[..., between]) > 0.75
    assert result.fine_tune is not None and result.fine_tune.steps == 2
    assert set(result.changed).isdisjoint(result.corrected)


def test_a_round_whose_model_learnt_fills_with_it(case, tiny, monkeypatch):
    """The path where the guard keeps the model: its probabilities move the filled boundary."""
    from src_models.training import fine_tune as tuning

    monkeypatch.setattr(tuning, "MIN_GUARDED_STEPS", 1)
    monkeypatch.setattr(tuning, "_is_worse", lambda before, after: False)
    image, reference, corrected, user = _every_third_slice(case)
    model, meta = load_checkpoint(tiny)
    result = run_to_end(refine(image, user, corrected, model, meta, steps=2, device="cpu"))
    assert result.fine_tune is not None and not result.fine_tune.kept_previous
    out = result.labels
    np.testing.assert_array_equal(out[..., corrected], user[..., corrected])
    between = np.setdiff1d(np.arange(corrected[0], corrected[-1] + 1), corrected)
    # an untrained tiny model is unsure everywhere: the boundary barely moves from the
    # interpolated one (0.86 here)
    assert structure_dice(out[..., between], reference.array[..., between]) > 0.75


def test_a_round_judges_the_model_on_drawn_slices_not_on_accepted_ones(case, tiny):
    """Slices accepted unchanged are learnt from but never held out (the model drew them)."""
    image, _, corrected, user = _every_third_slice(case)
    model, meta = load_checkpoint(tiny)
    plain = run_to_end(refine(image, user, corrected, model, meta, steps=1, device="cpu"))
    first = plain.fine_tune.meta["provenance"]["fine_tune"]["holdout_slices"]
    model, meta = load_checkpoint(tiny)
    job = refine(image, user, corrected, model, meta, steps=1, device="cpu", reviewed=first)
    held = run_to_end(job).fine_tune.meta["provenance"]["fine_tune"]
    assert held["holdout_slices"] and not set(held["holdout_slices"]) & set(first)
    assert set(first) <= set(held["slices"])  # still learnt from


def test_the_next_round_is_judged_on_slices_the_model_has_not_learnt(case, tiny, monkeypatch):
    """A kept round learns its held-out slices too; a tester's next round held out the same
    slice again, scored the model 0.884 there before learning (its memory) and threw away
    what it learnt. Now later rounds hold out only new corrections, and a round with none
    does not fine-tune and says why."""
    from src_models.refine import LEARNT_ALREADY
    from src_models.training import fine_tune as tuning

    monkeypatch.setattr(tuning, "MIN_GUARDED_STEPS", 1)
    monkeypatch.setattr(tuning, "_is_worse", lambda before, after: False)
    image, reference, corrected, user = _every_third_slice(case)
    model, meta = load_checkpoint(tiny)
    first = run_to_end(refine(image, user, corrected, model, meta, steps=2, device="cpu"))
    assert first.fine_tune.held_out_steps == 1 and first.holdout
    new = [k for k in _with_pancreas(reference.array) if k not in corrected][1:4:2]
    more = sorted(corrected + new)
    user[..., new] = reference.array[..., new]
    second = run_to_end(refine(image, user, more, first.fine_tune.model, first.fine_tune.meta,
                               steps=2, device="cpu"))  # fmt: skip
    assert second.holdout and set(second.holdout) <= set(new)
    import src_models.refine as rounds

    fused_with = []  # the model moving the filled boundary, or None for the band rule
    real_combine = rounds.combine
    monkeypatch.setattr(rounds, "combine", lambda *a: fused_with.append(a[4]) or real_combine(*a))
    again = run_to_end(refine(image, user, more, second.fine_tune.model, second.fine_tune.meta,
                              steps=2, device="cpu"))  # fmt: skip
    assert again.fine_tune is None and LEARNT_ALREADY in again.summary()
    # its model learnt this CT in earlier rounds: it still moves the boundary (the band rule,
    # meant for an untuned model, lost 0.004 here for a tester)
    assert fused_with[-1] is not None
    fresh, fresh_meta = load_checkpoint(tiny)
    run_to_end(refine(image, user, more, fresh, fresh_meta, steps=0, device="cpu"))
    assert fused_with[-1] is None  # an untuned model never does


def test_refine_command_with_nothing_new_to_learn(tmp_path, case, tiny, capsys, monkeypatch):
    """A tester's chain of rounds broke: a round whose edited slices the model had all learnt
    ignored --save-model and exited 0 without the file. It is now refused before any work;
    without --save-model the round runs, says why it did not learn, and shows no step bar."""
    from src_models.training import fine_tune as tuning

    monkeypatch.setattr(tuning, "MIN_GUARDED_STEPS", 1)
    monkeypatch.setattr(tuning, "_is_worse", lambda before, after: False)
    ct, labels = _files(tmp_path, case, flip=False)
    corrected = ",".join(str(int(k)) for k in _with_pancreas(read_labels(labels).array)[::3])
    common = ["refine", str(ct), "--labels", str(labels), "--corrected", corrected,
              "--steps", "2", "--device", "cpu"]  # fmt: skip
    first = tmp_path / "r1.pt"
    assert main([*common, "-o", str(tmp_path / "o1.nii.gz"), "--model", str(tiny),
                 "--save-model", str(first)]) == 0  # fmt: skip
    capsys.readouterr()
    again = [*common, "-o", str(tmp_path / "o2.nii.gz"), "--model", str(first)]
    assert main([*again, "--save-model", str(tmp_path / "r2.pt")]) == 2
    err = capsys.readouterr().err
    assert "no new model to save" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r2.pt").exists() and not (tmp_path / "o2.nii.gz").exists()
    assert main(again) == 0
    captured = capsys.readouterr()
    assert "learnt from every edited slice" in captured.out and "step" not in captured.err


def test_a_round_on_slices_accepted_unchanged_does_not_learn_and_says_why(case, tiny):
    """A tester's round on reviewed slices alone saved a model that nothing had checked."""
    image, _, corrected, user = _every_third_slice(case)
    model, meta = load_checkpoint(tiny)
    job = refine(image, user, corrected, model, meta, steps=2, device="cpu",
                 reviewed=corrected[1:])  # fmt: skip
    result = run_to_end(job)
    assert result.fine_tune is None
    assert "fewer than 2 of the corrected slices were edited" in result.summary()


def test_two_corrected_slices_do_not_fine_tune(case, tiny):
    """Nothing could be held out to check the model: a round on two slices does not learn."""
    image, reference = case
    corrected = [int(k) for k in _with_pancreas(reference.array)[[0, -1]]]
    user = np.zeros_like(reference.array)
    user[..., corrected] = reference.array[..., corrected]
    model, meta = load_checkpoint(tiny)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_to_end(refine(image, user, corrected, model, meta, steps=5, device="cpu"))
    assert result.fine_tune is None and "did not learn" in result.summary()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_beyond_the_corrections_the_model_only_continues_the_shape_and_tapers():
    model = np.zeros((8, 20, 20), dtype=bool)
    model[:, 2:13, 2:13] = True  # the organ as the model sees it, continuing upwards
    model[:, 15:19, 15:19] = True  # a distant false positive
    model[3:, 2:13, 2:13] = False  # the model loses the organ after slice 2
    seed = np.zeros((20, 20), dtype=bool)
    seed[4:11, 4:11] = True  # the outermost correction: 7 x 7
    grown = taper_from(model, 1, 1, seed)
    assert grown[1, 5:10, 5:10].all() and grown[1].sum() == 25  # 5 x 5: shrinks a pixel
    assert grown[2].sum() == 9  # 3 x 3, then the model ends
    assert not grown[3:].any() and not grown[0].any() and not grown[:, 15:, 15:].any()


def test_corrections_in_the_middle_of_the_organ_keep_the_model_beyond_them():
    """Two corrected slices of the head must not erase the body and tail the model found."""
    spacing = (2.0, 1.0, 1.0)
    model = np.zeros((30, 20, 20), dtype=np.uint8)
    model[3:27, 4:14, 4:14] = 1  # the organ, as the model sees it, slices 3 to 26
    user = model.copy()
    user[10, 4:14, 4:16] = 1  # two corrections, both in the middle of the organ
    user[14, 4:14, 4:16] = 1
    out = combine(user, [10, 14], model, spacing)
    np.testing.assert_array_equal(out[15:], model[15:])  # beyond them: the model's labels
    np.testing.assert_array_equal(out[:10], model[:10])
    only_empty = np.zeros_like(model)  # "no pancreas on slice 1", and nothing else corrected
    np.testing.assert_array_equal(combine(only_empty, [1], model, spacing)[2:], model[2:])
    ends = model.copy()
    ends[[3, 26]] = 0  # the user corrects both ends to "no pancreas": the organ stops there
    out = combine(ends, [3, 14, 26], model, spacing)
    assert not out[:4].any() and not out[26:].any() and out[14].any()


def test_corrections_far_apart_keep_the_model_between_them():
    """The organ's two ends corrected, 70 mm apart: the organ between must not vanish."""
    spacing = (1.0, 1.0, 1.0)
    model = np.zeros((80, 30, 30), dtype=np.uint8)
    model[5:76, 5:25, 5:25] = 1  # the organ as the model sees it, 20 x 20 pixels
    user = np.zeros_like(model)
    user[5, 14:16, 14:16] = 1  # its two ends as the user corrects them: 2 x 2 pixels each
    user[75, 14:16, 14:16] = 1
    out = combine(user, [5, 75], model, spacing)
    np.testing.assert_array_equal(out[6:75], model[6:75])  # not interpolated to nothing
    empty_ends = np.zeros_like(model)  # both corrections "no pancreas", far apart
    np.testing.assert_array_equal(combine(empty_ends, [2, 78], model, spacing), model)
    user[[25, 40]] = model[[25, 40]]  # two more corrections, 20 and 15 mm apart, then 35 mm
    mixed = combine(user, [5, 25, 40, 75], model, spacing)
    assert mixed[15].sum() < model[15].sum()  # 5 to 25: interpolated from the small end
    np.testing.assert_array_equal(mixed[41:75], model[41:75])  # 40 to 75: the model's


def test_a_model_that_learnt_moves_the_filled_boundary_by_its_confidence():
    """Between corrections a learnt model moves the interpolated edge, 4 mm at most."""
    spacing = (1.0, 1.0, 1.0)
    user = np.zeros((3, 40, 40), dtype=np.uint8)
    user[[0, 2], 10:20, 10:20] = 1  # the same square corrected on both sides
    model = np.zeros_like(user)
    unsure = np.full(user.shape, 0.5, dtype=np.float32)
    filled = combine(user, [0, 2], model, spacing)
    np.testing.assert_array_equal(combine(user, [0, 2], model, spacing, unsure), filled)
    sure = unsure.copy()
    sure[1, 10:20, 20:30] = 0.9999  # the organ goes on to the right, beyond the square
    sure[1, 10:20, 10:12] = 0.0001  # and the model is sure its left edge is not pancreas
    out = combine(user, [0, 2], model, spacing, sure)
    moved = out[1]
    assert moved[10:20, 20:23].all() and not moved[:, 24:].any()  # grown by 4 mm at most
    assert not moved[10:20, 10:12].any() and moved[10:20, 12:20].all()
    np.testing.assert_array_equal(out[[0, 2]], user[[0, 2]])  # corrections untouched


def _files(tmp_path, case, flip: bool):
    image, reference = case
    array, labels, affine = image.array, reference.array, image.affine.copy()
    if flip:  # stored feet-first: file slice k is canonical slice n - 1 - k
        array, labels = array[..., ::-1], labels[..., ::-1]
        affine[:, 2] *= -1
        affine[:3, 3] -= affine[:3, 2] * (array.shape[2] - 1)
    ct = Volume(np.ascontiguousarray(array), affine)
    write_image(tmp_path / "ct.nii.gz", ct.array, ct)
    write_labels(tmp_path / "labels.nii.gz", np.ascontiguousarray(labels), ct)
    return tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"


def test_refine_command_writes_labels_and_the_model(tmp_path, case, tiny, capsys):
    ct, labels = _files(tmp_path, case, flip=True)
    truth = read_labels(labels).array
    corrected = [int(k) for k in _with_pancreas(truth)[1::3]]
    out, saved = tmp_path / "out.nii.gz", tmp_path / "round1.pt"
    args = ["refine", str(ct), "--labels", str(labels), "--corrected",
            ",".join(map(str, corrected)), "-o", str(out), "--model", str(tiny),
            "--steps", "2", "--device", "cpu", "--save-model", str(saved)]  # fmt: skip
    assert main(args) == 0
    shown = capsys.readouterr()
    assert "corrected slices kept" in shown.out
    assert "fine-tuning" in shown.err and "step/s" in shown.err and "segmenting" in shown.err
    # no bar without a total ("0slice [00:00, ...]"); a rate such as "263.20slice/s" is fine
    assert not re.search(r"(?<![\d.])0slice", shown.err)
    written = read_labels(out, reference=read_labels(labels))
    np.testing.assert_array_equal(written.array[..., corrected], truth[..., corrected])
    between = np.setdiff1d(np.arange(corrected[0], corrected[-1] + 1), corrected)
    assert structure_dice(written.array[..., between], truth[..., between]) > 0.75
    _, meta = load_checkpoint(saved)
    assert meta["provenance"]["fine_tune"]["steps"] == 2
    held = re.search(r"held out: slices? ([\d, ]+)\)", shown.out)
    assert held, shown.out  # which corrections judged the round, in the file's numbers
    named = [int(k) for k in held.group(1).split(",")]
    assert set(named) < set(corrected)
    # slices accepted unchanged are learnt from, never held out
    again = tmp_path / "again.nii.gz"
    args[args.index(str(out))] = str(again)
    args[args.index(str(saved))] = str(tmp_path / "round2.pt")
    assert main([*args, "--reviewed", ",".join(map(str, named))]) == 0
    held = re.search(r"held out: slices? ([\d, ]+)\)", capsys.readouterr().out)
    assert held and not {int(k) for k in held.group(1).split(",")} & set(named)
    # its card names the CT it learnt from (it said "corrections of an image"; a tester), and
    # dsms evaluate knows the CT by its content under any name
    assert f"Fine-tuned on corrections of {ct.name}" in model_card(meta)
    from src_models.autosave import volume_content_key
    from src_models.io import read_volume

    digest = meta["provenance"]["fine_tune"]["source_digest"]
    assert digest == volume_content_key(read_volume(ct))


def test_refine_command_runs_the_quick_round_by_default(tmp_path, case, tiny, capsys):
    # Without --steps or --seconds a round fine-tunes 200 steps of 128-pixel patches within
    # 40 s (ROUND_TRAINING), so that the whole round stays under a minute on a 2-core CPU.
    ct, labels = _files(tmp_path, case, flip=False)
    corrected = [int(k) for k in _with_pancreas(read_labels(labels).array)[::4]]
    out, saved = tmp_path / "out.nii.gz", tmp_path / "round1.pt"
    args = ["refine", str(ct), "--labels", str(labels), "--corrected",
            ",".join(map(str, corrected)), "-o", str(out), "--model", str(tiny),
            "--device", "cpu", "--save-model", str(saved)]  # fmt: skip
    assert main(args) == 0
    recorded = load_checkpoint(saved)[1]["provenance"]["fine_tune"]
    assert recorded["config"]["steps"] == 200 and recorded["config"]["time_budget_s"] == 40.0
    # the network and its preprocessing are the base's: no default width or window recorded
    assert not {"arch", "width", "preprocessing"} & set(recorded["config"])
    assert 0 < recorded["steps"] <= 200
    # the bar counts to the 300 steps planned: 200, then 100 on every slice if the guard
    # keeps the model (a bar that reached 200/200 and went on to 201/300 looked finished)
    assert "/300" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.__setitem__("--labels", "other.nii.gz"), "other.nii.gz"),
        (lambda a: a.__setitem__("--corrected", "3,20,99"), "outside"),
        (lambda a: a.__setitem__("--corrected", "-1,20,25"), "outside"),  # not argparse's
        # "expected one argument"
        (lambda a: a.__setitem__("--corrected", "30,33,35"), "no pancreas"),
        (lambda a: a.__setitem__("--steps", "0"), "no new model"),  # with --save-model
        (lambda a: a.__setitem__("--corrected", "15,18"), "fewer than 3"),  # nothing to save
        (lambda a: (a.pop("--steps"), a.__setitem__("--seconds", "nan")), "--seconds"),
        (lambda a: a.__setitem__("--labels", "missing.nii.gz"), "missing.nii.gz"),
        (lambda a: a.__setitem__("-o", a["--labels"]), "refusing to overwrite the corrected"),
        # another existing file, which may hold corrections: kept unless --overwrite
        (
            lambda a: a.__setitem__("-o", str(Path(a["--labels"]).with_name("other.nii.gz"))),
            "already exists",
        ),
        (lambda a: a.__setitem__("--save-model", a["-o"]), "need different file names"),
        (lambda a: a.__setitem__("--save-model", a["-o"][:-7] + ".txt"), "name it *.pt"),
        (lambda a: a.__setitem__("--reviewed", "15,16"), "slice 16 not in --corrected"),
        # all accepted unchanged: none may be held out, so nothing would check the model
        (lambda a: a.__setitem__("--reviewed", "15,18"), "fewer than 2 of them edited"),
        (lambda a: a.__setitem__("--save-model", a["--model"]), "exists already; --save-model"),
        (lambda a: a.__setitem__("--save-model", "/nowhere/m.pt"), "folder /nowhere does not"),
        (lambda a: a.__setitem__("--save-model", a["--model"] + "/m.pt"), "a file, not a folder"),
        (lambda a: a.__setitem__("--save-model", "/proc/m.pt"), "/proc"),  # not writable, even
    ],  # for root: refused before fine-tuning, not after it
)
def test_refine_command_refuses_bad_input(tmp_path, case, tiny, capsys, change, message):
    ct, labels = _files(tmp_path, case, flip=False)
    other = Volume(np.zeros((8, 8, 8), dtype=np.uint8), np.eye(4))
    write_labels(tmp_path / "other.nii.gz", other.array, other)
    options = {"--labels": str(labels), "--corrected": "15,18,21", "-o": str(tmp_path / "o.nii.gz"),
               "--model": str(tiny), "--steps": "1", "--device": "cpu",
               "--save-model": str(tmp_path / "m.pt")}  # fmt: skip
    change(options)
    for key in ("--labels",):
        if not options[key].startswith(str(tmp_path)):
            options[key] = str(tmp_path / options[key])
    argv = ["refine", str(ct)] + [item for pair in options.items() for item in pair]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "o.nii.gz").exists() and not (tmp_path / "m.pt").exists()
    assert "fine-tuning" not in err  # refused before any work


@pytest.mark.parametrize(
    "corrected, message",
    [
        ("20,,35", "empty entry between commas"),
        ("20,x", "not a comma-separated list"),
        ("3 5,40", "not a comma-separated list"),  # read as 35 once, with exit 0
        ("22,22,25", "slice 22 more than once"),  # a typo for 22,23? not silently one
    ],
)
def test_refine_command_refuses_a_garbled_slice_list(tmp_path, capsys, corrected, message):
    # "20,,35" may have lost a slice number: refused, not read as 20,35
    argv = ["refine", "ct.nii.gz", "--labels", "l.nii.gz", "--corrected", corrected,
            "-o", str(tmp_path / "o.nii.gz")]  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--corrected" in err and message in err and "Traceback" not in err


def test_refine_command_reads_only_the_corrected_slices_of_the_labels(tmp_path, case, tiny):
    # "other slices may hold anything": a 7 elsewhere is fine, a 7 in a corrected slice is not
    ct, labels = _files(tmp_path, case, flip=False)
    truth = read_labels(labels).array
    corrected = [int(k) for k in _with_pancreas(truth)[1::3]]
    odd = truth.copy()
    odd[..., 0] = 7
    other = Volume(odd, read_labels(labels).affine)
    write_labels(tmp_path / "odd.nii.gz", np.zeros_like(odd), other)  # a valid file first,
    image = nib.load(tmp_path / "odd.nii.gz")  # then the odd values written in by hand
    nib.save(nib.Nifti1Image(odd, image.affine, image.header), tmp_path / "odd.nii.gz")
    out = tmp_path / "out.nii.gz"
    args = ["refine", str(ct), "--labels", str(tmp_path / "odd.nii.gz"), "-o", str(out),
            "--model", str(tiny), "--steps", "0", "--device", "cpu", "--corrected"]  # fmt: skip
    assert main([*args, ",".join(map(str, corrected))]) == 0
    np.testing.assert_array_equal(read_labels(out).array[..., corrected], truth[..., corrected])
    assert main([*args, ",".join(map(str, [0, *corrected]))]) == 2  # slice 0 holds 7s


def test_refine_command_takes_labels_saved_in_another_axis_order(tmp_path, case, tiny):
    # Tools save labels in their own axis order (RAS, LPS); the voxels are the same, so the
    # round reads them onto the CT's grid instead of refusing them (a tester).
    ct, labels = _files(tmp_path, case, flip=True)
    truth = read_labels(labels)
    corrected = [int(k) for k in _with_pancreas(truth.array)[1::3]]
    img = nib.Nifti1Image(truth.array, truth.affine)
    ornt = nib.orientations
    to_pil = ornt.ornt_transform(ornt.io_orientation(truth.affine), ornt.axcodes2ornt("PIL"))
    nib.save(img.as_reoriented(to_pil), tmp_path / "pil.nii.gz")
    out = tmp_path / "out.nii.gz"
    args = ["refine", str(ct), "--labels", str(tmp_path / "pil.nii.gz"), "-o", str(out),
            "--model", str(tiny), "--steps", "0", "--device", "cpu",
            "--corrected", ",".join(map(str, corrected))]  # fmt: skip
    assert main(args) == 0
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, nib.load(ct).affine, atol=1e-4)
    np.testing.assert_array_equal(
        np.asarray(written.dataobj)[..., corrected], truth.array[..., corrected]
    )
