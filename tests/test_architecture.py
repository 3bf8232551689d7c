"""The layout keeps its promises: import contracts of pyproject.toml, checked by import-linter.

A contract broken here is a design slip a reader would otherwise find late: the engine pulling in
Qt (and so failing on a GPU server), io reaching up into training, or one dock driving another.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Run in a fresh interpreter: import-linter reconfigures logging for the whole process.
LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))"
)


def test_import_contracts_hold() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LINT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
