"""``dsms info`` and ``dsms predict`` on scans that broke other CT tools (issue 13).

Each case builds its small input (nibabel / pydicom) and checks what a user sees: the numbers,
the warning and error lines, the files written or not written.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_dicom import write_series, write_slice

from src_models import build_model
from src_models.cli import main
from src_models.commands import predict as predict_command
from src_models.models.checkpoints import save_checkpoint

AFFINE = np.array(
    [[-0.8, 0.0, 0.0, 100.0], [0.0, 0.8, 0.0, -120.0], [0.0, 0.0, 2.5, -50.0], [0, 0, 0, 1.0]]
)


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("unet", width=4, depth=2)
    return save_checkpoint(
        tmp_path / "tiny.pt", model, preprocessing={"hu_window": [0.0, 255.0], "spacing_mm": None}
    )


def nifti(path: Path, data: np.ndarray, affine=AFFINE, qform: int = 1, sform: int = 1, unit="mm"):
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qform)
    img.set_sform(affine, code=sform)
    img.header.set_xyzt_units(unit, "sec")
    nib.save(img, str(path))
    return path


def ct_data(shape=(72, 64, 4)) -> np.ndarray:
    """Random HU on axial slices 58 x 51 mm at :data:`AFFINE`'s 0.8 mm: the least segmented."""
    rng = np.random.default_rng(0)
    return rng.integers(-200, 300, shape).astype(np.int16)


def predict(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    code = main(["predict", *argv, "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


def test_info_shows_the_unit_conversion(tmp_path, capsys):
    metres = AFFINE.copy()
    metres[:3] /= 1000
    path = nifti(tmp_path / "m.nii.gz", ct_data(), metres, unit="meter")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "spacing:     0.8 x 0.8 x 2.5 mm" in out
    assert "units:       the file is in metres (xyzt_units); converted to mm (x 1000)" in out


def test_predict_warns_about_unknown_orientation_and_keeps_codes(tmp_path, tiny_model, capsys):
    path = nifti(tmp_path / "ct.nii.gz", ct_data(), qform=0, sform=0)
    out = tmp_path / "labels.nii.gz"
    code, _, err = predict(capsys, str(path), "-o", str(out), "--model", str(tiny_model))
    assert code == 0
    assert any(line.startswith("warning: ") and "orientation unknown" in line for line in err)
    header = nib.load(str(out)).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (0, 0)


@pytest.fixture
def no_segmentation(monkeypatch):
    """Fail the test if the slow part starts: the checks must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("segmentation started before the output folder was checked")

    monkeypatch.setattr(predict_command, "segment", refuse)


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (``/proc`` when running as root)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/proc")):
        try:
            with tempfile.NamedTemporaryFile(dir=candidate):
                pass
        except OSError:
            return candidate
    pytest.skip("no folder this process cannot write to")


def test_unwritable_output_folder_is_refused_before_segmenting(
    tmp_path, tiny_model, capsys, no_segmentation
):
    path = nifti(tmp_path / "ct.nii.gz", ct_data())
    folder = _unwritable_folder(tmp_path)
    out = folder / "labels.nii.gz"
    try:
        code, _, err = predict(capsys, str(path), "-o", str(out), "--model", str(tiny_model))
    finally:
        (tmp_path / "read-only").chmod(0o755)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: ") and f"cannot write into the folder {folder}" in err[0]
    assert not out.exists()


def test_output_beside_one_file_of_a_series_is_refused_before_segmenting(
    tmp_path, tiny_model, capsys, no_segmentation
):
    write_series(tmp_path / "series", n=4)
    one_file = sorted((tmp_path / "series").iterdir())[0]
    out = tmp_path / "series" / "labels.nii.gz"
    code, _, err = predict(capsys, str(one_file), "-o", str(out), "--model", str(tiny_model))
    assert code == 2 and len(err) == 1
    assert f"into the DICOM series folder {tmp_path / 'series'}" in err[0]
    assert not out.exists()


def test_output_inside_the_series_folder_given_as_input_names_the_folder(
    tmp_path, tiny_model, capsys, no_segmentation
):
    # It said "refusing to overwrite the input series", though the file was not the input.
    write_series(tmp_path / "series", n=4)
    out = tmp_path / "series" / "labels.dcm"
    code, _, err = predict(capsys, str(tmp_path / "series"), "-o", str(out), "--model",
                           str(tiny_model))  # fmt: skip
    assert code == 2 and len(err) == 1
    assert f"into the input folder {tmp_path / 'series'}" in err[0] and "overwrite" not in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "kind", ["nifti-2d", "nifti-1-slice", "dicom-file-alone", "dicom-series-1"]
)
def test_a_single_slice_is_segmented(tmp_path, tiny_model, capsys, kind):
    if kind.startswith("nifti"):
        data = ct_data((72, 64)) if kind == "nifti-2d" else ct_data((72, 64, 1))
        source = nifti(tmp_path / "slice.nii.gz", data)
        columns, rows = 72, 64
    else:
        folder = tmp_path / "dicom"
        folder.mkdir()
        pixels = ct_data((80, 72, 1))[..., 0]  # rows 0.7 mm apart: 56 mm
        source = write_slice(folder / "only.dcm", pixels, (-100.0, -80.0, -30.0))
        if kind == "dicom-series-1":
            source = folder
        columns, rows = 72, 80
    out = tmp_path / "labels.nii.gz"
    code, lines, err = predict(capsys, str(source), "-o", str(out), "--model", str(tiny_model))
    assert code == 0, err
    labels = nib.load(str(out))
    assert labels.shape == (columns, rows, 1)
    assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2}
    assert "/1 slices with foreground" in lines[-1]


def test_evaluate_volumes_on_a_tilted_case_use_the_determinant(tmp_path, tiny_model, capsys):
    """Reference volumes in the evaluate JSON: count x |det| of the affine, not x column norms."""
    data = tmp_path / "cases"
    data.mkdir()
    tilted = AFFINE.copy()
    tilted[1, 2] = 2.5 * np.tan(np.deg2rad(20.0))
    labels = np.zeros((72, 64, 4), np.uint8)
    labels[4:10, 3:8, 1:3] = 1
    nifti(data / "a.nii.gz", ct_data(), tilted, qform=0)  # as written by write_labels
    nifti(data / "a_label.nii.gz", labels, tilted, qform=0)
    table = tmp_path / "table.md"
    argv = ["evaluate", "--data", str(data), "--models", str(tiny_model), "--out", str(table)]
    assert main([*argv, "--device", "cpu"]) == 0
    capsys.readouterr()
    found = []

    def collect(node):
        if isinstance(node, dict):
            found.extend(v for k, v in node.items() if k == "reference_ml" and v)
            for value in node.values():
                collect(value)

    collect(json.loads(table.with_suffix(".json").read_text()))
    assert found and all(v == pytest.approx(60 * 0.8 * 0.8 * 2.5 / 1000) for v in found)


def test_info_describes_a_label_file_in_ml_not_hu(tmp_path, capsys):
    data = np.zeros((8, 8, 4), dtype=np.uint8)
    data[2:6, 2:6, 1:3] = 1
    data[3, 3, 1] = 2
    path = nifti(tmp_path / "case_label.nii.gz", data, AFFINE)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    voxel_ml = abs(np.linalg.det(AFFINE[:3, :3])) / 1000
    assert "labels:      0 to 2 (uint8)" in out and "HU" not in out
    from src_models.io.volume import format_ml

    assert voxel_ml < 1  # a small tumour: not "0.0 mL" (a tester read it as nothing painted)
    expected = f"pancreas {format_ml(32 * voxel_ml)} (tumour included), tumour {voxel_ml:.3f} mL"
    assert expected in out


def test_info_says_values_beyond_any_ct_scale_were_misread(tmp_path, capsys):
    # One slice read as unsigned though signed: "HU: -1024 to 65535" with no word (a tester).
    data = np.random.default_rng(0).integers(-1024, 400, (64, 64, 4)).astype(np.int32)
    data[..., 2] += 65536 - 1024
    path = nifti(tmp_path / "ct.nii.gz", data, AFFINE)
    assert main(["info", str(path)]) == 0
    assert "above any CT scale" in capsys.readouterr().out


def test_a_volume_with_an_empty_axis_is_refused_by_name(tmp_path, capsys):
    path = nifti(tmp_path / "empty.nii.gz", np.zeros((0, 64, 5), dtype=np.int16), AFFINE)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "empty.nii.gz" in err and "no voxels" in err


def test_float16_on_the_cpu_runs_and_says_it_is_slow(tmp_path, tiny_model, capsys):
    # It ran 7 times slower than float32 without a hint (found by a tester).
    path = nifti(tmp_path / "ct.nii.gz", ct_data())
    out = tmp_path / "labels.nii.gz"
    argv = [str(path), "-o", str(out), "--model", str(tiny_model), "--precision", "float16"]
    code, _, err = predict(capsys, *argv)
    assert code == 0 and out.is_file()
    assert any("float16 on the CPU is emulated" in line for line in err)
