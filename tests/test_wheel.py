"""The wheel a user installs works: built from the tree, installed into a fresh virtual
environment with its bundled weights, then used as a user would, from outside the source tree.

An editable install hides a package missing from the wheel (the first release shipped a ``dsms``
that crashed with ``No module named 'src_models.commands'``), so this test never imports the
source tree: every check runs in the new environment's own interpreter, in a folder of its own.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from src_models.version import __version__

ROOT = Path(__file__).resolve().parents[1]
TORCH_SPEC = "torch==2.13.0"

pytestmark = pytest.mark.slow


def _run(args: list[str | Path], cwd: Path, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(bin folder of a fresh venv holding the built wheel, a work folder outside the tree)."""
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            dist,
            ROOT,
        ],
        cwd=base,
    )
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=base)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    _run([*pip, TORCH_SPEC], cwd=base)  # the pinned CPU build first, as the README says
    (wheel,) = dist.glob("napari_dsms-*.whl")
    _run([*pip, wheel], cwd=base, timeout=900)
    work = base / "work"
    work.mkdir()
    return venv / "bin", work


def test_wheel_holds_every_module_and_the_bundled_weights(installed) -> None:
    bin_dir, _ = installed
    (wheel,) = (bin_dir.parents[1] / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = {
        str(p.relative_to(ROOT))
        for package in ("src_models", "napari_dsms")
        for p in (ROOT / package).rglob("*")
        if p.suffix in (".py", ".yaml", ".pt") and "__pycache__" not in p.parts
    }
    assert tree - names == set()
    assert {f"src_models/models/weights/{n}.pt" for n in ("fcn", "dsmsc_unet")} <= names


def test_installed_dsms_runs_help_info_and_predict(installed) -> None:
    bin_dir, work = installed
    python = bin_dir / "python"
    location = _run([python, "-c", "import src_models; print(src_models.__file__)"], work)
    assert str(ROOT) not in location  # the installed copy, not the source tree
    assert "predict" in _run([bin_dir / "dsms", "--help"], work)
    assert _run([bin_dir / "dsms", "--version"], work).strip() == f"dsms {__version__}"
    _run(
        [
            python,
            "-c",
            "from src_models.phantom import make_phantom; from src_models import write_image; "
            "ct, labels = make_phantom(shape=(96, 96, 6)); "
            "write_image('ct.nii.gz', ct.array, ct)",
        ],
        work,
    )
    info = _run([bin_dir / "dsms", "info", "ct.nii.gz"], work)
    assert "96 x 96 x 6" in info
    _run([bin_dir / "dsms", "predict", "ct.nii.gz", "-o", "labels.nii.gz", "--device", "cpu"], work)
    shape = _run([python, "-c", "import nibabel; print(nibabel.load('labels.nii.gz').shape)"], work)
    assert shape.strip() == "(96, 96, 6)"


def test_npe2_finds_the_installed_manifest(installed) -> None:
    bin_dir, work = installed
    out = _run(
        [
            bin_dir / "python",
            "-c",
            "from npe2 import PluginManager; pm = PluginManager.instance(); pm.discover(); "
            "m = pm.get_manifest('napari-dsms'); "
            "print(m.name, sorted(c.id for c in m.contributions.commands or []))",
        ],
        work,
    )
    assert out.startswith("napari-dsms ")
    for command in ("get_reader", "write_labels", "segment_widget", "review_widget"):
        assert f"napari-dsms.{command}" in out
