"""``dsms predict``: labels on the input grid, a summary line, and one-line errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from src_models import build_model, read_volume
from src_models.cli import main
from src_models.inference import devices as devices_module
from src_models.io import Volume, VolumeError, check_ct
from src_models.models.checkpoints import save_checkpoint
from src_models.phantom import make_phantom

REPO = Path(__file__).resolve().parents[1]
PREPROCESSING = {"hu_window": [0.0, 255.0], "spacing_mm": 3.0}


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    image, _ = make_phantom(seed=1, shape=(40, 36, 5), spacing=(2.0, 2.0, 3.0))
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image.array, image.affine), path)
    return path


def _checkpoint(path: Path, arch: str) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(path, build_model(arch, width=4, depth=2), preprocessing=PREPROCESSING)


@pytest.fixture
def drs_checkpoint(tmp_path: Path) -> Path:
    return _checkpoint(tmp_path / "models" / "tiny_drs.pt", "drs_unet")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_predict_writes_labels_and_reconstruction_on_the_input_grid(
    ct_file, drs_checkpoint, tmp_path, capsys
):
    out, rec = tmp_path / "labels.nii.gz", tmp_path / "rec.nii.gz"
    argv = ["predict", str(ct_file), "-o", str(out), "--model", str(drs_checkpoint)]
    assert main([*argv, "--device", "cpu", "--reconstruction", str(rec)]) == 0
    source = nib.load(ct_file)
    labels = nib.load(out)
    assert labels.shape == source.shape and labels.get_data_dtype() == np.uint8
    np.testing.assert_allclose(labels.affine, source.affine)
    assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2}
    restored = np.asarray(nib.load(rec).dataobj)
    # in HU (int16) within the model's window, as a radiologist reads a CT (issue 14.9)
    assert restored.dtype == np.int16 and nib.load(rec).get_data_dtype() == np.int16
    assert restored.shape == source.shape and 0 <= restored.min() and restored.max() <= 255
    shown = capsys.readouterr()
    summary = shown.out.strip()
    assert "pancreas" in summary and "tumour" in summary and "mL" in summary
    assert "cpu" in summary and " s " in summary
    # the bar knows its total from the start (it read "0slice [00:00, ?slice/s]"; a tester)
    slices = source.shape[2]
    assert f"0/{slices}" in shown.err and not re.search(r"(?<![\d./])0slice", shown.err)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file"),
        ("not_a_volume", "not"),
        ("unknown_model", "available names"),
        ("bad_checkpoint", "not a napari-dsms checkpoint"),
        ("unavailable_device", "not available"),
        ("output_is_input", "refusing to overwrite"),
        ("no_decoder", "no restoration decoder"),
    ],
)
def test_bad_input_is_one_error_line_and_no_file(
    case, message, ct_file, drs_checkpoint, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "labels.nii.gz"
    extra: list[str] = []
    input_path, model = ct_file, str(drs_checkpoint)
    if case == "missing":
        input_path = tmp_path / "nowhere.nii.gz"
    elif case == "not_a_volume":
        input_path = tmp_path / "notes.nii.gz"
        input_path.write_text("not a CT")
    elif case == "unknown_model":
        model = "no_such_model"
    elif case == "bad_checkpoint":
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"definitely not a checkpoint")
        model = str(bad)
    elif case == "unavailable_device":
        monkeypatch.setattr(devices_module, "available_devices", lambda: ["cpu"])
        extra = ["--device", "cuda"]
    elif case == "output_is_input":
        out = ct_file
    elif case == "no_decoder":
        model = str(_checkpoint(tmp_path / "tiny_unet.pt", "unet"))
        extra = ["--reconstruction", str(tmp_path / "rec.nii.gz")]
    before = ct_file.read_bytes()
    code = main(["predict", str(input_path), "-o", str(out), "--model", model, *extra])
    assert code == 2
    assert message in _error_line(capsys)
    assert ct_file.read_bytes() == before
    leftovers = {p.name for p in tmp_path.iterdir()} - {
        "ct.nii.gz",
        "models",
        "notes.nii.gz",
        "bad.pt",
        "tiny_unet.pt",
    }
    assert leftovers == set()


def test_an_existing_labels_file_is_kept_unless_overwrite_is_given(
    ct_file, drs_checkpoint, tmp_path, capsys
):
    """A tester's corrected labels were replaced by model output, exit 0 (issue 11's loop)."""
    corrections = tmp_path / "mycorrections.nii.gz"
    corrections.write_bytes(b"a radiologist's corrected labels")
    argv = ["predict", str(ct_file), "-o", str(corrections), "--model", str(drs_checkpoint)]
    assert main([*argv, "--device", "cpu"]) == 2
    error = _error_line(capsys)
    assert str(corrections) in error and "already exists" in error and "--overwrite" in error
    assert corrections.read_bytes() == b"a radiologist's corrected labels"
    assert main([*argv, "--device", "cpu", "--overwrite"]) == 0
    assert nib.load(corrections).shape == nib.load(ct_file).shape
    empty = tmp_path / "from-mktemp.nii.gz"  # an empty placeholder holds nothing to lose
    empty.touch()
    argv[3] = str(empty)
    assert main([*argv, "--device", "cpu"]) == 0


def test_predict_as_a_module_with_a_model_name_from_the_user_folder(
    ct_file, drs_checkpoint, tmp_path
):
    out = tmp_path / "labels.nii"
    env = {**os.environ, "DSMS_MODEL_DIR": str(drs_checkpoint.parent)}
    completed = subprocess.run(
        [sys.executable, "-m", "src_models", "predict", str(ct_file), "-o", str(out)]
        + ["--model", "tiny_drs", "--device", "cpu", "--batch-size", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "mL" in completed.stdout and "batch 2" in completed.stdout
    assert "Traceback" not in completed.stderr
    assert nib.load(out).shape == nib.load(ct_file).shape


def test_an_error_that_shows_a_matrix_is_still_one_line(tmp_path, capsys):
    """A degenerate affine: the message quotes the matrix, the CLI keeps it on one line."""
    path = tmp_path / "flat.nii.gz"
    image = nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), None)
    image.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)  # no qform: nibabel cannot store it
    nib.save(image, path)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}")


def test_info_prints_a_models_card(tmp_path, capsys):
    """A model by name or file shows where it comes from and what it scored; junk is refused."""
    assert main(["info", "dsmsc_unet"]) == 0
    out = capsys.readouterr().out
    assert "dsmsc_unet checkpoint" in out and "Cross-validated" in out
    assert "Tumour unvalidated" in out
    assert main(["info", "ensemble"]) == 0  # --model ensemble has a card too (a tester)
    assert "Ensemble: mean probability of 5 models." in capsys.readouterr().out
    junk = tmp_path / "model.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["info", str(junk)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {junk}")
    assert main(["info", "dsmsc_unte"]) == 2  # a typo: the names to choose from are listed
    err = capsys.readouterr().err
    assert err.startswith("error: dsmsc_unte: no such file or folder") and "dsmsc_unet" in err


def test_a_label_file_is_refused_and_values_without_air_are_doubted(
    ct_file, drs_checkpoint, tmp_path, capsys
):
    # Both gave labels and volumes in mL with exit 0: segmenting the reference label file
    # itself, and a CT exported as 8-bit windowed grey values (read as if they were HU).
    labels = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((40, 36, 5), np.uint8), nib.load(ct_file).affine), labels)
    argv = ["-o", str(tmp_path / "out.nii.gz"), "--model", str(drs_checkpoint), "--device", "cpu"]
    assert main(["predict", str(labels), *argv]) == 2
    assert "label.nii.gz: this is a label file" in _error_line(capsys)
    assert not (tmp_path / "out.nii.gz").exists()
    mask = tmp_path / "case0001.nii.gz"  # a mask named like a CT (Decathlon labelsTr), 0/255
    nib.save(nib.Nifti1Image(np.full((40, 36, 5), 255, np.uint8), nib.load(ct_file).affine), mask)
    assert main(["predict", str(mask), *argv]) == 2
    assert "case0001.nii.gz: holds only the values 255: a mask or label file" in _error_line(capsys)
    # the values named are the file's, not the sample's (a patch of 3 that every 4th voxel
    # missed was left out), and a scan of air alone is called that
    odd = np.zeros((40, 36, 5), np.int16)
    odd[1, 1:3, 1] = 3
    nib.save(nib.Nifti1Image(odd, nib.load(ct_file).affine), mask)
    assert main(["predict", str(mask), *argv]) == 2
    assert "holds only the values 0, 3: a mask or label file" in _error_line(capsys)
    assert main(["info", str(mask)]) == 0  # described as values, not as "HU: 0 to 3"
    described = capsys.readouterr().out
    assert "values:      0 to 3 (int16); holds only the values 0, 3" in described
    assert "HU:" not in described
    nib.save(nib.Nifti1Image(np.full((40, 36, 5), -1024, np.int16), nib.load(ct_file).affine), mask)
    assert main(["predict", str(mask), *argv]) == 2
    assert "holds only air (-1024 HU): no body to segment" in _error_line(capsys)
    assert main(["predict", str(ct_file), *argv]) == 0  # the phantom holds no air: doubted
    err = capsys.readouterr().err
    assert "ct.nii.gz: no voxel below -500 HU" in err and "labels and volumes will be wrong" in err


def test_another_modality_than_ct_is_refused() -> None:
    hu = np.random.default_rng(0).integers(-1000, 400, (64, 64, 3)).astype(np.int16)
    assert check_ct(Volume(hu, np.eye(4), "ct", "ct", {"modality": "CT"})) == []
    with pytest.raises(VolumeError, match="mr: modality MR, not CT"):
        check_ct(Volume(hu, np.eye(4), "mr", "mr", {"modality": "MR"}))


def test_slices_tilted_far_from_axial_are_doubted() -> None:
    # A 50-degree oblique volume was segmented along another axis with exit 0 and no warning.
    hu = np.random.default_rng(0).integers(-1000, 400, (80, 80, 80)).astype(np.int16)
    angle = np.radians(50.0)
    affine = np.eye(4)
    affine[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    [doubt] = check_ct(Volume(hu, affine, "oblique", "oblique", {}))
    assert "tilted 40 degrees from axial" in doubt
    gantry = np.eye(4)
    gantry[1, 2] = np.tan(np.radians(20.0))  # a 20-degree gantry tilt: usual, no doubt
    assert check_ct(Volume(hu, gantry, "tilt", "tilt", {})) == []
    tiny = np.diag([0.7, 0.7, 1e-7, 1.0])  # a damaged header's slice spacing
    [doubt] = check_ct(Volume(hu, tiny, "tiny", "tiny", {}))
    assert "voxel sizes 0.7 x 0.7 x 1e-07 mm" in doubt


@pytest.mark.parametrize(("scale", "doubted"), [(1.0, False), (10.0, True), (0.2, True)])
def test_a_body_of_impossible_width_is_doubted(scale, doubted, nih_ct) -> None:
    # Voxel sizes 10 times too large, each within a scanner's range, gave 481 mL of pancreas
    # with exit 0 and no warning; 0.2 times gave 0 mL (found by a tester).
    real = read_volume(nih_ct)
    affine = real.affine.copy()
    affine[:3, :3] *= scale
    doubts = check_ct(Volume(real.array, affine, "scaled", "scaled", {}))
    assert any("the body measures" in d for d in doubts) == doubted
    if doubted:
        assert f"{309.375 * scale:.0f} mm across" in " ".join(doubts)


def test_a_body_cut_by_the_field_of_view_is_not_measured() -> None:
    hu = np.random.default_rng(0).integers(0, 80, (40, 40, 4)).astype(np.int16)
    # a crop inside the body: the body touches every edge, so its width says nothing
    hu[10:20, 10:20] = -1000
    assert check_ct(Volume(hu, np.diag([1.5, 1.5, 1.0, 1.0]), "crop", "crop", {})) == []


@pytest.mark.parametrize(
    ("shape", "spacing", "size"),
    [((512, 1, 101), 0.86, "512 x 1 pixels"), ((512, 8, 101), 0.86, "512 x 8 pixels"),
     ((24, 24, 3), 0.86, "21 x 21 mm")],
)  # fmt: skip
def test_axial_slices_too_small_to_segment_are_refused(shape, spacing, size) -> None:
    """A coronal slice (or slab) of the shared CT was read as 101 axial slices a pixel high
    and gave 0 mL of pancreas with exit 0, as did a 20 mm crop inside the pancreas."""
    hu = np.random.default_rng(0).integers(-1000, 400, shape).astype(np.int16)
    affine = np.diag([spacing, spacing, 1.0, 1.0])  # the third axis runs head-feet
    with pytest.raises(VolumeError, match=f"axial slices the models read are .*{size}"):
        check_ct(Volume(hu, affine, "thin", "thin", {}))


def test_values_beyond_any_ct_scale_name_the_slice() -> None:
    # One slice read as unsigned though it held signed values: 65535 HU, 19 mL, exit 0.
    hu = np.random.default_rng(0).integers(-1000, 400, (64, 64, 5)).astype(np.int32)
    hu[:, :, 3] += 64536
    with pytest.raises(VolumeError, match=r"values up to \d+ HU in slice 3 .*PixelRepresentation"):
        check_ct(Volume(hu, np.eye(4), "odd", "odd", {}))


def test_sigterm_while_writing_leaves_no_file_behind(
    ct_file, drs_checkpoint, tmp_path, monkeypatch, capsys
):
    # `kill` (a batch system's time limit) left a hidden half-written temporary file.
    from src_models.io import nifti

    def killed_while_saving(img, path):
        os.kill(os.getpid(), signal.SIGTERM)
        Path(path).write_bytes(b"half")

    monkeypatch.setattr(nifti.nib, "save", killed_while_saving)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["predict", str(ct_file), "-o", str(out_dir / "labels.nii.gz")]
    assert main([*argv, "--model", str(drs_checkpoint), "--device", "cpu"]) == 143
    assert list(out_dir.iterdir()) == []
    assert "error: terminated (SIGTERM)" in capsys.readouterr().err
