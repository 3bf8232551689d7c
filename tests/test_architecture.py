"""The layout keeps its promises: import contracts of pyproject.toml, checked by import-linter.

A contract broken here is a design slip a reader would otherwise find late: the engine pulling in
Qt (and so failing on a GPU server), io reaching up into training, or one dock driving another.
"""

from __future__ import annotations

from pathlib import Path

import importlinter.cli as importlinter_cli

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(ROOT)
    status = importlinter_cli.lint_imports(
        config_filename=str(ROOT / "pyproject.toml"), cache_dir=str(tmp_path), no_logo=True
    )
    report = capsys.readouterr().out
    assert status == 0, report
    assert "0 broken" in report
