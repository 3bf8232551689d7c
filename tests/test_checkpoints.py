"""Checkpoints describe themselves, load with weights_only=True only, and refuse bad files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from src_models import CheckpointError, build_model, load_checkpoint, save_checkpoint
from src_models.models.store import list_checkpoints, resolve_checkpoint, user_model_dir

PREPROCESSING = {"hu_window": (-100, 240), "spacing_mm": 0.8}
REPO = Path(__file__).resolve().parents[1]


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'echo pwned > "{self.marker}"',)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("unet", width=4)
    return save_checkpoint(
        tmp_path / "unet-small.pt",
        model,
        preprocessing=PREPROCESSING,
        provenance={"data": ["phantoms"], "steps": 3, "base": None},
        metrics={"dice_pancreas": 0.5},
    )


def test_metadata_describes_the_model(saved: Path) -> None:
    model, meta = load_checkpoint(saved)
    assert meta["arch"] == "unet" and meta["config"] == model.config
    assert meta["preprocessing"] == {"hu_window": [-100.0, 240.0], "spacing_mm": 0.8, "size": None}
    assert meta["class_names"] == ["pancreas", "tumour"]
    assert meta["provenance"]["steps"] == 3 and meta["provenance"]["code_version"]
    assert meta["metrics"] == {"dice_pancreas": 0.5}
    assert "state_dict" not in meta and not model.training
    assert torch.load(saved, weights_only=True)["arch"] == "unet"
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # no temporary left


def test_code_running_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    function, arguments = RunsCode(probe).__reduce__()
    function(*arguments)
    assert probe.exists(), "the payload must really run code when executed"

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "napari-dsms-checkpoint", "arch": RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused.*not a safe napari-dsms"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_truncated_file_is_reported(saved: Path) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(saved))}: truncated or corrupt"):
        load_checkpoint(saved)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint at all\n", b"\x1f\x8b\x08\x00nifti-ish"],
    ids=["empty", "text", "gzip"],
)
def test_file_of_another_format_is_reported(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "other.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"other\.pt: not a napari-dsms checkpoint"):
        load_checkpoint(path)


def test_bare_state_dict_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save(build_model("unet", width=4).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"bare\.pt: not a napari-dsms.*bare state dict"):
        load_checkpoint(path)


def _rewrite(path: Path, **changes) -> None:
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    for key in [key for key, value in changes.items() if value is None]:
        del payload[key]
    torch.save(payload, path)


def test_missing_keys_are_named(saved: Path) -> None:
    _rewrite(saved, preprocessing=None)
    with pytest.raises(CheckpointError, match=r"unet-small\.pt: .*missing keys.*preprocessing"):
        load_checkpoint(saved)


def test_weights_of_another_architecture_are_reported(saved: Path) -> None:
    config = {**build_model("dsmsc_unet", width=4).config}
    _rewrite(saved, arch="dsmsc_unet", config=config)
    with pytest.raises(CheckpointError, match=r"unet-small\.pt: weights do not match.*dsmsc_unet"):
        load_checkpoint(saved)


def test_class_count_must_match(saved: Path) -> None:
    _rewrite(saved, class_names=["pancreas"])
    with pytest.raises(CheckpointError, match=r"unet-small\.pt: 1 class names.*num_classes=2"):
        load_checkpoint(saved)


def test_failed_save_keeps_the_old_file_and_no_temporary(saved: Path, monkeypatch) -> None:
    before = saved.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(saved, build_model("fcn", width=4), preprocessing=PREPROCESSING)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_metadata_must_be_plain_and_well_formed(tmp_path: Path) -> None:
    model = build_model("fcn", width=4)
    with pytest.raises(TypeError, match="provenance.data"):
        save_checkpoint(
            tmp_path / "a.pt", model, preprocessing=PREPROCESSING, provenance={"data": tmp_path}
        )
    with pytest.raises(ValueError, match="hu_window"):
        save_checkpoint(tmp_path / "a.pt", model, preprocessing={"hu_window": [240, -100]})
    # checking the config draws no random numbers: seeded runs stay reproducible
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "b.pt", model, preprocessing=PREPROCESSING)
    assert torch.equal(torch.rand(1), expected)
    (tmp_path / "b.pt").unlink()
    # a config edited by hand no longer describes the weights: the file would never load
    model.config["width"] = 8
    with pytest.raises(ValueError, match="does not describe the model's weights"):
        save_checkpoint(tmp_path / "a.pt", model, preprocessing=PREPROCESSING)
    assert not list(tmp_path.iterdir())


def test_names_resolve_to_the_user_model_folder(tmp_path: Path, monkeypatch, saved: Path) -> None:
    monkeypatch.setenv("DSMS_MODEL_DIR", str(tmp_path / "models"))
    assert user_model_dir() == tmp_path / "models"
    mine = save_checkpoint(
        user_model_dir() / "mine.pt", build_model("drs_unet", width=4), preprocessing=PREPROCESSING
    )
    (user_model_dir() / "broken.pt").write_bytes(b"junk")
    assert resolve_checkpoint("mine") == mine and resolve_checkpoint(saved) == saved
    model, meta = load_checkpoint("mine")
    assert meta["arch"] == "drs_unet" and meta["path"] == str(mine)
    with pytest.warns(UserWarning, match=r"broken\.pt"):
        entries = [entry for entry in list_checkpoints() if not entry.bundled]
    assert [(e.name, e.arch, e.path) for e in entries] == [("mine", "drs_unet", mine)]
    with pytest.raises(CheckpointError, match=r"nonexistent: .*names: .*mine, .*ensemble"):
        load_checkpoint("nonexistent")
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_checkpoint(user_model_dir())  # not "no such checkpoint file" (a tester)
    # a user model named like a bundled one is not used by that name, and it is said
    shadowed = save_checkpoint(
        user_model_dir() / "unet.pt", build_model("unet", width=4), preprocessing=PREPROCESSING
    )
    with pytest.warns(UserWarning, match=f"your {shadowed} has the same name and is not used"):
        assert resolve_checkpoint("unet").parent != shadowed.parent


def test_no_code_loads_pickles_unsafely() -> None:
    pattern = "weights_only=" + "False"
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("src_models", "napari_dsms", "benchmarks")
        for path in (REPO / folder).rglob("*.py")
        if pattern in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
