"""The package installs as a napari plugin and keeps the engine free of GUI imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUI_PACKAGES = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt"}


def _imported_top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "src_models").rglob("*.py")), ids=lambda p: p.name)
def test_engine_module_imports_no_gui_package(path: Path) -> None:
    forbidden = _imported_top_level_names(path) & GUI_PACKAGES
    assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"


def test_engine_imports_without_loading_qt() -> None:
    code = (
        "import sys, src_models, src_models.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(GUI_PACKAGES)!r}]; print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_manifest_validates_and_names_the_distribution() -> None:
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution("napari-dsms")
    assert manifest.name == "napari-dsms"
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-dsms"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_top_level_manifest_is_the_packaged_one() -> None:
    top = ROOT / "napari.yaml"
    assert top.is_symlink()
    assert top.resolve() == (ROOT / "napari_dsms" / "napari.yaml").resolve()


def test_dsms_help_lists_the_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "src_models", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for command in ("info", "predict", "train", "evaluate"):
        assert command in result.stdout
