"""Training, resuming, stopping, fine-tuning and the train / evaluate commands, with tiny models."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from src_models.cli import main
from src_models.inference.engine import segment
from src_models.io.orientation import canonical_affine
from src_models.jobs import run_to_end
from src_models.metrics import structure_dice
from src_models.models.checkpoints import model_card, save_checkpoint
from src_models.models.store import load_checkpoint
from src_models.nets.registry import build_model
from src_models.training import fine_tune as tuning
from src_models.training.data import cache_case, phantom_cases
from src_models.training.fine_tune import fine_tune
from src_models.training.loop import TrainConfig, lr_factor, state_path, train

#: Coarse grid and resolution that keep a phantom at 90 x 90 pixels per slice.
PREP = {"hu_window": [0.0, 255.0], "spacing_mm": 4.0}
GRID = ((64, 64, 8), (5.6, 5.6, 2.5))


@pytest.fixture(scope="module")
def phantoms():
    return [cache_case(case, PREP) for case in phantom_cases(3, seed=0, grid=GRID)]


def _config(**changes) -> TrainConfig:
    base = TrainConfig(
        arch="unet", width=4, steps=6, batch_size=2, patch_size=32, val_every=3, lr=3e-3,
        loss="dice_bce", device="cpu", precision="float32", preprocessing=PREP, seed=0, threads=1,
    )  # fmt: skip
    return replace(base, **changes)


def test_learning_rate_warms_up_then_decays():
    assert lr_factor(0.0, 0.1) < lr_factor(0.05, 0.1) < lr_factor(0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor(0.5, 0.1) > lr_factor(0.9, 0.1) > lr_factor(1.0, 0.1) == pytest.approx(0.01)


def test_a_few_steps_reduce_the_loss(phantoms, tmp_path):
    config = _config(
        steps=30, batch_size=4, patch_size=48, val_every=0, log_csv=str(tmp_path / "log.csv")
    )
    events = list(train(config, phantoms[:2], phantoms[2:], tmp_path / "m.pt"))
    losses = [e.losses["loss"] for e in events if e.kind == "step"]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    done = events[-1]
    assert done.kind == "done" and done.checkpoint == tmp_path / "m.pt"
    model, meta = load_checkpoint(done.checkpoint)
    assert meta["preprocessing"]["spacing_mm"] == 4.0
    assert meta["provenance"]["steps"] == 30
    assert meta["provenance"]["train_patients"] == ["phantom-0000", "phantom-0001"]
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert rows[0]["step"] == "1" and rows[-1]["val_dice_pancreas"] != ""


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_without_loss_2_the_restoration_decoder_is_left_alone(phantoms, tmp_path):
    """``reconstruction=False`` trains the labels only: no reconstruction term, decoder as built."""
    config = _config(arch="drs_unet", steps=3, val_every=3)
    torch.manual_seed(0)
    initial = build_model("drs_unet", width=4).restorer.state_dict()
    labels_only = replace(config, reconstruction=False)
    events = list(train(labels_only, phantoms[:1], phantoms[1:2], tmp_path / "a.pt"))
    assert all("reconstruction" not in e.losses for e in events if e.kind == "step")
    trained = _weights_of(tmp_path / "a.pt", "restorer.")
    assert all(torch.equal(trained[k], v) for k, v in initial.items())
    run_to_end(train(config, phantoms[:1], phantoms[1:2], tmp_path / "b.pt"))  # with Loss 2
    assert not all(torch.equal(_weights_of(tmp_path / "b.pt", "restorer.")[k], v)
                   for k, v in initial.items())  # fmt: skip


def _weights_of(checkpoint: Path, prefix: str) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    return {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}


def test_stop_then_resume_continues_exactly(phantoms, tmp_path):
    """Closing after step 2 and resuming gives the same weights as one uninterrupted run."""
    config = _config(steps=4, val_every=2)
    run_to_end(train(config, phantoms[:1], phantoms[1:2], tmp_path / "full.pt"))

    events = train(config, phantoms[:1], phantoms[1:2], tmp_path / "cut.pt")
    for event in events:
        if event.kind == "step" and event.step == 1:
            break
    events.close()  # stop between two steps: the state and a usable checkpoint are saved
    load_checkpoint(tmp_path / "cut.pt")
    assert torch.load(state_path(tmp_path / "cut.pt"), weights_only=True)["loop"]["step"] == 1

    resumed = list(train(config, phantoms[:1], phantoms[1:2], tmp_path / "cut.pt", resume=True))
    assert [e.step for e in resumed if e.kind == "step"] == [2, 3, 4]
    full, cut = (
        _weights(state_path(tmp_path / "full.pt")),
        _weights(state_path(tmp_path / "cut.pt")),
    )
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_an_interrupt_in_the_middle_of_a_step_resumes_exactly(phantoms, tmp_path, monkeypatch):
    """Ctrl-C lands inside a step, after its batch was drawn: the resumed run diverged from its
    first step (a tester); the state saved is the one between the last two steps."""
    from src_models.training import loop as training_loop

    config = _config(steps=4, val_every=0)
    run_to_end(train(config, phantoms[:1], phantoms[1:2], tmp_path / "full.pt"))
    real_step, calls = training_loop._Loop.step, []

    def interrupted(self):
        calls.append(self.state.step)
        if len(calls) == 3:  # the third step, after it drew its batch
            self.sampler.sample(config.batch_size)
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(training_loop._Loop, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_to_end(train(config, phantoms[:1], phantoms[1:2], tmp_path / "cut.pt"))
    monkeypatch.setattr(training_loop._Loop, "step", real_step)
    assert torch.load(state_path(tmp_path / "cut.pt"), weights_only=True)["loop"]["step"] == 2
    run_to_end(train(config, phantoms[:1], phantoms[1:2], tmp_path / "cut.pt", resume=True))
    full = _weights(state_path(tmp_path / "full.pt"))
    cut = _weights(state_path(tmp_path / "cut.pt"))
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_resume_without_state_is_refused(phantoms, tmp_path):
    with pytest.raises(FileNotFoundError, match="no training state"):
        next(train(_config(), phantoms[:1], phantoms[1:2], tmp_path / "x.pt", resume=True))


def test_fine_tune_updates_the_model_in_place(tmp_path):
    torch.manual_seed(0)
    model = build_model("unet", width=4)
    split = {"val_patients": ["p1", "p2"], "test_patients": ["this-patient"]}
    meta = {"preprocessing": PREP, "provenance": dict(split), "metrics": {}, "path": "base.pt"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(3, 64, 64)).astype(np.float32)
    labels = np.zeros((3, 64, 64), dtype=np.uint8)
    labels[:, 20:40, 20:40] = 1
    events = fine_tune(
        model, meta, images[:2], labels[:2], (4.0, 4.0), steps=3, device="cpu",
        val_images_hu=images[2:], val_labels=labels[2:], out=tmp_path / "tuned.pt",
    )  # fmt: skip
    kinds = [event.kind for event in events]
    assert kinds == ["validation", "step", "step", "step", "validation", "done"]
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    tuned, tuned_meta = load_checkpoint(tmp_path / "tuned.pt")
    assert tuned_meta["provenance"]["fine_tune"]["steps"] == 3
    assert tuned_meta["provenance"]["fine_tune"]["slices"] == 2
    # the base's split no longer describes the tuned model (it saw a new, maybe test, patient)
    assert "test_patients" not in tuned_meta["provenance"]
    assert tuned_meta["provenance"]["fine_tune"]["base_split"] == split
    # a second round keeps the first one's record (dsms refine --model round1.pt, twice)
    run_to_end(fine_tune(tuned, tuned_meta, images[:2], labels[:2], steps=1, device="cpu",
                         out=tmp_path / "again.pt"))  # fmt: skip
    again = load_checkpoint(tmp_path / "again.pt")[1]["provenance"]["fine_tune"]
    assert again["steps"] == 1 and again["earlier"]["steps"] == 3
    assert again["earlier"]["base_split"] == split
    assert "the last of 2 rounds" in model_card(load_checkpoint(tmp_path / "again.pt")[1])


def test_a_fine_tuned_bundled_model_is_not_bundled_and_keeps_its_base_training_date(tmp_path):
    # A tester's fine-tuned copy said "bundled", "float16" and "Training (today)" for the
    # base's 2500 steps of the day before, and nothing of the round's own length.
    model, meta = load_checkpoint("unet")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(2, 64, 64)).astype(np.float32)
    labels = np.zeros((2, 64, 64), dtype=np.uint8)
    labels[:, 20:40, 20:40] = 1
    run_to_end(fine_tune(model, meta, images, labels, (4.0, 4.0), steps=2, device="cpu",
                         out=tmp_path / "tuned.pt"))  # fmt: skip
    tuned = load_checkpoint(tmp_path / "tuned.pt")[1]
    assert meta["provenance"]["bundled"] and meta["provenance"]["weights_dtype"] == "float16"
    assert "bundled" not in tuned["provenance"] and "weights_dtype" not in tuned["provenance"]
    card = model_card(tuned)
    assert f"Training ({meta['provenance']['date'][:10]}):" in card
    assert "Fine-tuned on corrections of an image (2 steps, " in card


def _square_round() -> tuple[torch.nn.Module, dict, np.ndarray, np.ndarray]:
    """A fresh tiny model and two blank 40 x 40 slices with a square of pancreas each."""
    meta = {"preprocessing": PREP, "provenance": {}, "metrics": {}, "path": None}
    images = np.zeros((2, 40, 40), dtype=np.float32)
    labels = np.zeros((2, 40, 40), dtype=np.uint8)
    labels[:, 10:20, 10:20] = 1
    return build_model("unet", width=4), meta, images, labels


def test_fine_tune_stops_when_closed():
    model, meta, images, labels = _square_round()
    events = fine_tune(model, meta, images, labels, None, steps=100, device="cpu")
    assert next(events).step == 1
    events.close()
    assert not model.training  # handed back in eval mode, on the CPU
    # a guarded round (dsms refine, Refine round) closed before its check hands back the
    # weights it was given: a tester's cancelled refine left the model 5 steps trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    events = fine_tune(model, meta, images[:1], labels[:1], None, steps=100, device="cpu",
                       guard=True, val_images_hu=images[1:], val_labels=labels[1:])  # fmt: skip
    next(events)  # the held-out check before the first step
    for _ in range(3):
        next(events)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    events.close()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("floor", "ended"), [(100, 100), (200, 120)])
def test_a_slow_round_goes_on_to_the_steps_its_guard_needs(monkeypatch, floor, ended):
    """On a busy CPU a refine round's 40 s fitted 94 to 100 steps, so the same corrections were
    learnt or thrown away by the machine's load (a tester). The default budget now stretches to
    the guard's 100 steps, up to three times the budget, and the schedule still anneals."""
    from src_models.refine import ROUND_TRAINING
    from src_models.training import loop as training_loop

    clock = iter(range(10_000))  # one second per step: 40 steps would fit in the budget
    monkeypatch.setattr(training_loop.time, "perf_counter", lambda: float(next(clock)))
    model, meta, images, labels = _square_round()
    config = replace(ROUND_TRAINING, patch_size=32, batch_size=1, min_steps=floor, steps=300)
    events = list(fine_tune(model, meta, images, labels, None, device="cpu", config=config))
    steps = [e for e in events if e.kind == "step"]
    assert steps[-1].step == ended
    if ended == floor:  # paced to end there: the last steps ran at the schedule's end
        assert steps[-1].lr < 0.05 * config.lr
    # a budget the caller chose is kept to (dsms refine --seconds 40)
    clock = iter(range(10_000))
    events = fine_tune(model, meta, images, labels, None, device="cpu", config=config,
                       time_budget_s=40.0)  # fmt: skip
    assert [e.step for e in events if e.kind == "step"][-1] == 40
    # ... both parts of it when a kept round goes on with its held-out slices: the guarded
    # part first, whole (a tester's 30 s shared out left it under the guard's 100 steps)
    monkeypatch.setattr(tuning, "MIN_GUARDED_STEPS", 1)
    monkeypatch.setattr(tuning, "_is_worse", lambda before, after: False)
    for planned, guarded, after in ((300, 30, 0), (16, 16, 8)):
        clock = iter(range(10_000))
        result = run_to_end(
            fine_tune(model, meta, images, labels, None, device="cpu",
                      config=replace(config, steps=planned), time_budget_s=30.0, guard=True,
                      val_images_hu=images[:1], val_labels=labels[:1], learn_held_out=0.5)
        )  # fmt: skip
        assert (result.steps - result.held_out_steps, result.held_out_steps) == (guarded, after)


def test_a_kept_round_then_learns_from_its_held_out_slices_too(tmp_path, monkeypatch):
    """Held out, a fifth of the user's corrections only judged the round; once the guard keeps
    the model it goes on with them too (dsms refine: mean whole-volume Dice 0.876 -> 0.879 on
    NIH 0001). One progress count runs to the end, and the record says what was done."""
    monkeypatch.setattr(tuning, "MIN_GUARDED_STEPS", 1)
    model, meta = load_checkpoint(_constant_model(tmp_path, pancreas_logit=-1e-4))
    images = np.zeros((3, 32, 32), dtype=np.float32)
    labels = np.ones((3, 32, 32), dtype=np.uint8)  # all pancreas: every step helps
    learnt_from = []
    real_cache = tuning.cache_arrays
    monkeypatch.setattr(tuning, "cache_arrays", lambda *a, **k: learnt_from.append(len(a[1]))
                        or real_cache(*a, **k))  # fmt: skip
    events = list(
        fine_tune(
            model, meta, images[:2], labels[:2], None, steps=4, device="cpu", guard=True,
            val_images_hu=images[2:], val_labels=labels[2:], learn_held_out=0.5,
            out=tmp_path / "tuned.pt",
        )
    )  # fmt: skip
    steps = [(e.step, e.total_steps) for e in events if e.kind == "step"]
    assert steps == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]  # one count, to the end
    assert (events[-1].kind, events[-1].step, events[-1].total_steps) == ("done", 6, 6)
    assert learnt_from == [2, 3]  # the round on two slices, then on all three
    result = run_to_end(
        fine_tune(
            model, meta, images[:2], labels[:2], None, steps=4, device="cpu", guard=True,
            val_images_hu=images[2:], val_labels=labels[2:], learn_held_out=0.5,
        )
    )  # fmt: skip
    assert not result.kept_previous and result.steps == 6 and result.held_out_steps == 2
    assert "the last 2 steps learnt from the held-out slices too" in result.summary()
    recorded = load_checkpoint(tmp_path / "tuned.pt")[1]["provenance"]["fine_tune"]
    assert recorded["steps"] == 6 and recorded["held_out_steps"] == 2


@pytest.mark.parametrize(("runnable", "during"), [(2, 1), (1, 2), (None, 2)])
def test_fine_tuning_leaves_the_cores_other_processes_keep_busy(monkeypatch, runnable, during):
    """Beside another busy process a tester's 2-thread round fitted 20 steps in 2 minutes (1
    thread: 200 in 38 s) and learnt nothing; the threads follow the busy cores, then come
    back. Runnable threads: the caller and a busy process (2), the caller alone (1, however
    busy this process was a minute ago), unknown (no /proc: torch's count stays)."""
    from src_models.inference import devices

    monkeypatch.setattr(devices, "_runnable_threads", lambda: runnable)
    monkeypatch.setattr(devices.os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model, meta, images, labels = _square_round()
        events = fine_tune(model, meta, images, labels, None, steps=2, device="cpu")
        seen = [torch.get_num_threads() for event in events if event.kind == "step"]
        assert set(seen) == {during} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_guard_needs_held_out_slices_to_judge_by():
    """Given no held-out slices, a guarded round was kept unchecked and its summary said
    nothing of it (a tester, from Python); held-out images without labels were dropped."""
    model = build_model("unet", width=4)
    meta = {"preprocessing": PREP, "provenance": {}, "metrics": {}, "path": None}
    images = np.zeros((2, 40, 40), dtype=np.float32)
    labels = np.ones((2, 40, 40), dtype=np.uint8)
    empty = np.zeros((0, 40, 40), dtype=np.float32)
    with pytest.raises(ValueError, match="guard=True needs held-out"):
        next(fine_tune(model, meta, images, labels, None, steps=2, device="cpu", guard=True,
                       val_images_hu=empty, val_labels=empty.astype(np.uint8)))  # fmt: skip
    with pytest.raises(ValueError, match="images and labels together"):
        next(fine_tune(model, meta, images, labels, None, steps=2, device="cpu",
                       val_images_hu=images[:1]))  # fmt: skip


def test_guard_keeps_the_previous_model_when_a_round_makes_it_worse(tmp_path, monkeypatch):
    """Slices that teach "no pancreas" make the held-out Dice fall: the weights come back."""
    monkeypatch.setattr(tuning, "MIN_GUARDED_STEPS", 1)  # the Dice decides, not the length
    # everything pancreas, barely: a few steps towards background flip it
    model, meta = load_checkpoint(_constant_model(tmp_path, pancreas_logit=1e-4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = np.zeros((3, 32, 32), dtype=np.float32)
    wrong = np.zeros((2, 32, 32), dtype=np.uint8)
    held_out = np.ones((1, 32, 32), dtype=np.uint8)  # the model is right here: Dice 1
    result = run_to_end(
        fine_tune(
            model, meta, images[:2], wrong, None, steps=5, device="cpu", guard=True,
            val_images_hu=images[2:], val_labels=held_out, out=tmp_path / "worse.pt",
            learn_held_out=0.5,
        )
    )  # fmt: skip
    assert result.metrics_before["dice_pancreas"] == pytest.approx(1.0)
    assert result.metrics_after["dice_pancreas"] < 1.0
    assert result.kept_previous and not result.too_few_steps
    assert result.steps == 5 and result.held_out_steps == 0  # nothing learnt after the verdict
    assert "made the model worse" in result.summary()
    assert "kept the previous model" in result.summary()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    saved, saved_meta = load_checkpoint(result.checkpoint)  # what was handed back is saved
    assert all(torch.equal(before[k], v) for k, v in saved.state_dict().items())
    assert saved_meta["provenance"]["fine_tune"]["kept_previous"] is True


def test_guard_keeps_the_previous_model_after_too_few_steps(tmp_path):
    # 7 steps (a busy CPU's 40 s) raised the held-out Dice of NIH 0001 from 0.56 to 0.78 while
    # the model, now marking stomach and liver, took the round's whole volume from 0.676 to
    # 0.545; the guard kept it (found by a tester).
    model, meta = load_checkpoint(_constant_model(tmp_path, pancreas_logit=-1e-4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = np.zeros((3, 32, 32), dtype=np.float32)
    labels = np.ones((3, 32, 32), dtype=np.uint8)  # all pancreas: every step helps
    result = run_to_end(
        fine_tune(
            model, meta, images[:2], labels[:2], None, steps=3, device="cpu", guard=True,
            val_images_hu=images[2:], val_labels=labels[2:], provenance={"holdout_slices": [2]},
        )
    )  # fmt: skip
    assert result.kept_previous and result.too_few_steps
    assert f"fewer than the {tuning.MIN_GUARDED_STEPS} a kept model needs" in result.summary()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.meta["provenance"]["fine_tune"]["too_few_steps"] is True
    assert "too short to trust" in model_card(result.meta)


def test_held_out_slices_are_scored_as_the_engine_labels_them(tmp_path):
    # Held-out Dice was measured on whole slices while the engine crops to the body: after a
    # quick fine-tune on NIH 0001 the first said 0.84 -> 0.66, the engine 0.78 -> 0.86, and the
    # guard threw away the better model. A model that calls every pixel pancreas shows the gap:
    # whole slices score 0.12 here, what the user sees (the body's box with its margin) 0.4.
    checkpoint = _constant_model(tmp_path)
    images = np.full((3, 128, 128), -1000.0, dtype=np.float32)
    images[:, 48:80, 48:80] = 40.0  # a body in air
    labels = np.zeros((3, 128, 128), dtype=np.uint8)
    labels[:, 48:80, 48:80] = 1
    model, meta = load_checkpoint(checkpoint)
    result = run_to_end(
        fine_tune(model, meta, images[:2], labels[:2], (4.0, 4.0), steps=1, device="cpu",
                  val_images_hu=images[2:], val_labels=labels[2:])
    )  # fmt: skip
    original, meta = load_checkpoint(checkpoint)
    held_out = SimpleNamespace(array=images[2:], affine=canonical_affine((1.0, 4.0, 4.0)))
    seen = run_to_end(segment(held_out, original, meta, device="cpu", clean_up=False))
    dice = structure_dice(seen.canonical_labels, labels[2:])
    assert result.metrics_before["dice_pancreas"] == pytest.approx(dice)
    assert dice > 0.3


def test_fine_tune_never_replaces_a_file(tmp_path):
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"someone's model")
    model = build_model("unet", width=4)
    meta = {"preprocessing": PREP, "provenance": {}, "metrics": {}, "path": None}
    images = np.zeros((1, 32, 32), dtype=np.float32)
    with pytest.raises(FileExistsError, match="taken.pt"):
        next(fine_tune(model, meta, images, images.astype(np.uint8), out=taken, device="cpu"))
    assert taken.read_bytes() == b"someone's model"


def test_train_command_on_phantoms(tmp_path, capsys):
    out = tmp_path / "m.pt"
    args = ["train", "--phantoms", "2", "--arch", "unet", "--width", "4", "--steps", "2",
            "--batch-size", "2", "--patch-size", "32", "--val-every", "1", "--out", str(out),
            "--log", str(tmp_path / "log.csv"), "--device", "cpu", "--threads", "1"]  # fmt: skip
    with pytest.warns(UserWarning, match="validating on the training cases"):
        assert main(args) == 0
    assert "best checkpoint" in capsys.readouterr().out
    model, meta = load_checkpoint(out)
    assert meta["arch"] == "unet" and meta["provenance"]["phantoms"] == 2
    assert out.with_suffix(".split.json").is_file()


def test_an_interrupted_train_command_says_how_to_resume(tmp_path, capsys, monkeypatch):
    """Ctrl-C printed only "error: interrupted"; the state was saved, but nobody said so, and
    --resume said nothing of resuming (a tester)."""
    from src_models.commands import train as command
    from src_models.training import loop as training_loop

    real_run = training_loop._Loop.run

    def interrupted(self, on_validation):
        for event in real_run(self, on_validation):
            yield event
            if event.kind == "step" and event.step == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(training_loop._Loop, "run", interrupted)
    out = tmp_path / "m.pt"
    args = ["train", "--phantoms", "2", "--arch", "unet", "--width", "4", "--steps", "4",
            "--batch-size", "2", "--patch-size", "32", "--out", str(out), "--device", "cpu",
            "--threads", "1"]  # fmt: skip
    with pytest.warns(UserWarning, match="validating on the training cases"):
        assert main(args) == 130
    err = capsys.readouterr().err
    assert f"training state saved at step 2 in {command.state_path(out)}" in err
    assert "--resume continues it" in err and err.rstrip().endswith("error: interrupted")
    monkeypatch.setattr(training_loop._Loop, "run", real_run)
    with pytest.warns(UserWarning, match="validating on the training cases"):
        assert main([*args, "--resume"]) == 0
    assert f"resuming the run saved in {command.state_path(out)}" in capsys.readouterr().err


def test_train_command_still_takes_the_old_amp_flag(tmp_path, capsys):
    out = tmp_path / "m.pt"
    args = ["train", "--phantoms", "2", "--arch", "unet", "--width", "4", "--steps", "1",
            "--batch-size", "2", "--patch-size", "32", "--out", str(out), "--amp", "off",
            "--device", "cpu", "--threads", "1"]  # fmt: skip
    with pytest.warns(UserWarning, match="validating on the training cases"):
        assert main(args) == 0
    assert "--amp is deprecated; use --precision float32" in capsys.readouterr().err
    _, meta = load_checkpoint(out)
    assert meta["provenance"]["config"]["precision"] == "float32"


def test_train_command_refuses_bad_input(tmp_path, capsys):
    code = main(
        [
            "train",
            "--data",
            str(tmp_path / "nope"),
            "--arch",
            "unet",
            "--out",
            str(tmp_path / "m.pt"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope: not a folder" in err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "cuda:7"], "cuda:7"),
        (["--resume"], "no training state to resume from"),
        (["--init", "unet", "--arch", "fcn"], "holds a 'unet' model, but --arch is 'fcn'"),
        (["--out-exists"], "already exists; --resume continues its run"),
    ],
)
def test_train_command_refuses_before_reading_any_data(tmp_path, capsys, extra, message):
    # A typo was refused only after every case had been read and cached (minutes on Task07),
    # leaving a split file behind; an existing --out was replaced without a word (a tester).
    data = tmp_path / "data"
    data.mkdir()
    (data / "broken.npz").write_bytes(b"reading this would fail")
    out = tmp_path / "m.pt"
    if extra == ["--out-exists"]:
        out.write_bytes(b"a trained model")
        extra = []
    argv = ["train", "--data", str(data), "--arch", "unet", "--out", str(out), "--device", "cpu"]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "broken" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["data", *(["m.pt"] if out.exists() else [])]
    )
    assert not out.exists() or out.read_bytes() == b"a trained model"


def _constant_model(tmp_path: Path, pancreas_logit: float = 5.0) -> Path:
    """A checkpoint that calls every pixel pancreas and none tumour: its figures are known."""
    model = build_model("unet", width=4)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.head.bias.copy_(torch.tensor([pancreas_logit, -5.0]))
    return save_checkpoint(
        tmp_path / "everything.pt", model, preprocessing={"hu_window": [0, 255], "spacing_mm": None}
    )


def test_evaluate_prints_table_one_with_hand_computed_figures(tmp_path, capsys):
    data = tmp_path / "cases"
    data.mkdir()
    reference = {}
    for name, (pancreas, tumour) in {"a": (40, 0), "b": (90, 10)}.items():
        labels = np.zeros((10, 10, 4), dtype=np.uint8)
        labels.reshape(-1)[:pancreas] = 1
        labels.reshape(-1)[pancreas - tumour : pancreas] = 2
        reference[name] = (pancreas, tumour)
        affine = np.diag([1.0, 1.0, 2.0, 1.0])
        nib.save(
            nib.Nifti1Image(np.zeros_like(labels, dtype=np.int16), affine),
            str(data / f"{name}.nii.gz"),
        )
        nib.save(nib.Nifti1Image(labels, affine), str(data / f"{name}_label.nii.gz"))
    checkpoint = _constant_model(tmp_path)
    table = tmp_path / "table.md"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(data),
                "--models",
                str(checkpoint),
                "--out",
                str(table),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    # everything predicted pancreas: Dice 2r / (r + 400), PPV r / 400, sensitivity 1
    dice = np.mean([2 * r / (r + 400) for r, _ in reference.values()])
    ppv = np.mean([r / 400 for r, _ in reference.values()])
    assert f"| Dice | {dice:.4f} |" in printed
    assert f"| PPV | {ppv:.4f} |" in printed
    assert "| Sensitivity | 1.0000 |" in printed
    # no tumour predicted: case a (no tumour) scores 1, 1, 1; case b scores 0, 1, 0
    tumour = printed.split("**Tumour**")[1]
    assert "| Dice | 0.5000 |" in tumour and "| PPV | 1.0000 |" in tumour
    assert table.read_text().strip() == printed.strip()
    rows = list(csv.DictReader(open(table.with_suffix(".csv"))))
    assert float(rows[0]["mean"]) == pytest.approx(dice, abs=1e-6)
    assert table.with_suffix(".json").is_file()
    assert "not held-out figures" not in printed


def test_evaluate_scores_the_other_cases_when_one_cannot_be_read(tmp_path, capsys):
    # One case with labels on another grid ended a tester's whole run with no table; and the
    # readers' warnings came out as Python's two-line UserWarning with a source line.
    data = tmp_path / "cases"
    data.mkdir()
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    labels = np.zeros((10, 10, 4), dtype=np.uint8)
    labels[2:5, 2:5] = 1
    image = np.zeros(labels.shape, np.int16)
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(image, affine), str(data / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(data / "a_label.nii.gz"))
    moved = affine.copy()
    moved[0, 3] = 3.0  # three voxels off: not the CT's grid
    nib.save(nib.Nifti1Image(labels, moved), str(data / "b_label.nii.gz"))
    for name, array in (("c", image), ("c_label", labels)):  # orientation unknown: a warning
        no_codes = nib.Nifti1Image(array, affine)
        no_codes.set_qform(None, code=0)
        no_codes.set_sform(None, code=0)
        nib.save(no_codes, str(data / f"{name}.nii.gz"))
    table = tmp_path / "table.md"
    argv = ["evaluate", "--data", str(data), "--models", str(_constant_model(tmp_path)),
            "--device", "cpu", "--out", str(table)]  # fmt: skip
    assert main(argv) == 1  # scores written, but not of every case asked for
    out, err = capsys.readouterr()
    assert "warning: b left out:" in err and "b_label.nii.gz" in err and "affine" in err
    assert "1 of 3 cases left out" in err
    assert "mean over 2 cases" in out and "1 case(s) could not be scored" in out
    result = json.loads(table.with_suffix(".json").read_text())
    assert result["cases"] == ["a", "c"] and list(result["skipped"]) == ["b"]
    assert "warning: " in err and "orientation unknown" in err
    assert "UserWarning" not in err and "read_volume(path)" not in err
    # none readable: an error, no table
    for name in ("a", "c"):
        (data / f"{name}_label.nii.gz").unlink()
        nib.save(nib.Nifti1Image(labels, moved), str(data / f"{name}_label.nii.gz"))
    table.unlink()
    assert main(argv) == 2
    assert "error: no case could be scored" in capsys.readouterr().err
    assert not table.exists()


def test_evaluate_says_which_cases_a_model_trained_on(tmp_path, capsys):
    # A training-set figure was printed beside a held-out one without a word (found by a tester).
    data = tmp_path / "cases"
    data.mkdir()
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    for value, name in enumerate(("a", "b")):  # two different CTs
        labels = np.zeros((10, 10, 4), dtype=np.uint8)
        labels[2:5, 2:5] = 1
        image = np.full(labels.shape, value, np.int16)
        nib.save(nib.Nifti1Image(image, affine), str(data / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(labels, affine), str(data / f"{name}_label.nii.gz"))
    everything = _constant_model(tmp_path)  # no provenance: trained on nothing we know of
    trained = save_checkpoint(
        tmp_path / "trained.pt", build_model("unet", width=4),
        preprocessing={"hu_window": [0, 255], "spacing_mm": None},
        provenance={"train_patients": ["a", "zz"]},
    )  # fmt: skip
    argv = ["evaluate", "--data", str(data), "--device", "cpu"]
    assert main([*argv, "--models", str(everything), str(trained)]) == 0
    out, err = capsys.readouterr()
    assert "warning: trained trained or was selected on 1 of the 2 cases (a;" in err
    assert "everything" not in err
    assert "*trained trained or was selected on 1 of these 2 cases (a): its figures are not" in out
    # a model fine-tuned on corrections of case b (the Review dock, dsms refine), from a model
    # trained on a: both are training-set figures (a tester's refined model had no warning)
    round_ = {"source_image": str(data / "b.nii.gz"), "base_split": {"train_patients": ["a"]}}
    refined = save_checkpoint(
        tmp_path / "refined.pt", build_model("unet", width=4),
        preprocessing={"hu_window": [0, 255], "spacing_mm": None},
        provenance={"fine_tune": {"source_image": "/elsewhere/c.nii.gz", "earlier": round_}},
    )  # fmt: skip
    assert main([*argv, "--models", str(refined)]) == 0
    assert "warning: refined trained or was selected on 2 of the 2 cases (a, b;" in (
        capsys.readouterr().err
    )
    # refined on a copy of b under another name: known by its content (a tester's renamed copy
    # of 0001 was scored as held out)
    from src_models.autosave import volume_digest
    from src_models.io import read_volume

    copy = {"source_image": "/elsewhere/patient7.nii.gz",
            "source_digest": volume_digest(read_volume(data / "b.nii.gz"))}  # fmt: skip
    renamed = save_checkpoint(
        tmp_path / "renamed.pt", build_model("unet", width=4),
        preprocessing={"hu_window": [0, 255], "spacing_mm": None},
        provenance={"fine_tune": copy},
    )  # fmt: skip
    assert main([*argv, "--models", str(renamed)]) == 0
    assert "warning: renamed trained or was selected on 1 of the 2 cases (b;" in (
        capsys.readouterr().err
    )


def _one_volume_case(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """A folder ``data`` holding one tiny labelled CT, a.nii.gz and a_label.nii.gz: (image,
    labels)."""
    data.mkdir()
    labels = np.zeros((64, 64, 4), dtype=np.uint8)
    labels[20:40, 20:40] = 1
    image = np.where(labels > 0, 60, -1000).astype(np.int16)
    nib.save(nib.Nifti1Image(image, np.diag([1.0, 1.0, 2.0, 1.0])), str(data / "a.nii.gz"))
    nib.save(nib.Nifti1Image(labels, np.diag([1.0, 1.0, 2.0, 1.0])), str(data / "a_label.nii.gz"))
    return image, labels


def test_evaluate_knows_a_training_volume_under_another_name(tmp_path, capsys):
    """A byte-identical copy of the bundled default's training volume 0001, renamed, was
    scored as held out (Dice 0.729, no warning): dsms train records its volumes' contents."""
    import shutil

    data = tmp_path / "cases"
    image, labels = _one_volume_case(data)
    out = tmp_path / "m.pt"
    args = ["train", "--data", str(data), "--arch", "unet", "--width", "4", "--steps", "1",
            "--batch-size", "2", "--patch-size", "32", "--out", str(out), "--device", "cpu",
            "--threads", "1"]  # fmt: skip
    with pytest.warns(UserWarning, match="validating on the training cases"):
        assert main(args) == 0
    assert len(load_checkpoint(out)[1]["provenance"]["train_digests"]) == 1
    # a run continued from it (dsms train --init) on other data learnt from a too: a tester's
    # model continued from the bundled default was scored on its base's patients unflagged
    other = tmp_path / "other"
    other.mkdir()
    nib.save(nib.Nifti1Image(image + 5, np.diag([1.0, 1.0, 2.0, 1.0])), str(other / "b.nii.gz"))
    shutil.copy(data / "a_label.nii.gz", other / "b_label.nii.gz")  # another CT, same labels
    continued = tmp_path / "continued.pt"
    args = ["train", "--data", str(other), "--arch", "unet", "--steps", "1", "--batch-size",
            "2", "--patch-size", "32", "--out", str(continued), "--init", str(out), "--device",
            "cpu", "--threads", "1", "--width", "8"]  # fmt: skip
    with pytest.warns(UserWarning, match="validating on the training cases"):
        assert main(args) == 0
    assert "--init keeps the model's width 4; --width 8 is not used" in capsys.readouterr().err
    argv = ["evaluate", "--data", str(data), "--models", str(continued), "--device", "cpu"]
    assert main(argv) == 0
    assert "warning: continued trained or was selected on 1 of the 1 cases (a;" in (
        capsys.readouterr().err
    )
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(data / "a.nii.gz", renamed / "patient9.nii.gz")
    shutil.copy(data / "a_label.nii.gz", renamed / "patient9_label.nii.gz")
    capsys.readouterr()
    argv = ["evaluate", "--data", str(renamed), "--models", str(out), "--device", "cpu"]
    assert main(argv) == 0
    assert "warning: m trained or was selected on 1 of the 1 cases (patient9;" in (
        capsys.readouterr().err
    )
    # ... and a copy a converter stored in another axis order and as float32 (a tester's RAS
    # and float32 copies of 0001 were scored as held out)
    converted = tmp_path / "converted"
    converted.mkdir()
    flipped = np.diag([-1.0, 1.0, 2.0, 1.0])
    flipped[0, 3] = 63.0  # column 63 of the copy lies where column 0 of a lay: the same grid
    for name, array in (("p.nii.gz", image.astype(np.float32)), ("p_label.nii.gz", labels)):
        nib.save(nib.Nifti1Image(np.ascontiguousarray(array[::-1]), flipped), converted / name)
    argv = ["evaluate", "--data", str(converted), "--models", str(out), "--device", "cpu"]
    assert main(argv) == 0
    assert "warning: m trained or was selected on 1 of the 1 cases (p;" in (capsys.readouterr().err)


@pytest.mark.parametrize(
    ("name", "trained"),
    [("PANCREAS_0001", True), ("Pancreas-CT-0001", True), ("pancreas_0001", True),
     ("PANCREAS_0008", True),
     ("PANCREAS_0002", False), ("pancreas_001", False), ("pancreas_00012", False)],
)  # fmt: skip
def test_evaluate_knows_an_nih_patient_under_its_tcia_name(name, trained):
    # The bundled models record the shared volume as nih-pancreas-0001; a user who downloaded
    # NIH Pancreas-CT from TCIA has it as PANCREAS_0001 and got a training-set Dice with no
    # warning. MSD Task07's pancreas_001 is another patient of another collection.
    from src_models.commands.evaluate import _trained_on, patient_key

    meta = {
        "provenance": {"train_patients": ["nih-pancreas-0001"], "val_patients": ["PANCREAS_0008"]}
    }
    assert (patient_key(name) in _trained_on(meta)[0]) is trained
    # validation patients of a run kept at its last step were only watched, not chosen on
    meta["provenance"]["selected"] = "last step"
    assert (patient_key(name) in _trained_on(meta)[0]) is (trained and name != "PANCREAS_0008")
    # an ensemble learnt what any member learnt (its column went unflagged; a tester)
    ensemble = {"members_meta": [{"provenance": {}}, meta]}
    assert (patient_key(name) in _trained_on(ensemble)[0]) is (trained and name != "PANCREAS_0008")


def test_evaluate_refuses_a_table_it_cannot_write_before_any_work(tmp_path, capsys, monkeypatch):
    """A tester's --out /nonexist/t.md created /nonexist; a read-only folder failed only after
    the whole evaluation."""
    from src_models.commands import evaluate as command

    monkeypatch.setattr(command, "find_cases", lambda folder: pytest.fail("read the data first"))
    missing = tmp_path / "nonexist" / "t.md"
    argv = ["evaluate", "--data", str(tmp_path), "--models", "dsmsc_unet", "--out", str(missing)]
    assert main(argv) == 2
    assert f"the folder {missing.parent} does not exist" in capsys.readouterr().err
    assert not missing.parent.exists()
    assert main([*argv[:-1], str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_the_command_shows_warnings_as_one_line(tmp_path, capsys):
    # A tester saw "…/commands/train.py:158: UserWarning: no validation patient …" and its
    # source line; the command's own warnings read "warning: …"
    from src_models.cli import console

    data = tmp_path / "cases"
    _one_volume_case(data)
    args = ["train", "--data", str(data), "--arch", "unet", "--width", "4", "--steps", "1",
            "--batch-size", "2", "--patch-size", "32", "--out", str(tmp_path / "m.pt"),
            "--device", "cpu", "--threads", "1"]  # fmt: skip
    assert console(args) == 0
    err = capsys.readouterr().err
    assert "warning: no validation patient" in err
    assert "UserWarning" not in err and "train.py" not in err
