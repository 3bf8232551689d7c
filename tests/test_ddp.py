"""``torchrun`` with two CPU processes (gloo) trains one model and rank 0 writes the checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from src_models.models.store import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_cpu_processes_produce_one_checkpoint(tmp_path):
    out = tmp_path / "ddp.pt"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "src_models", "train", "--phantoms", "2", "--arch", "drs_unet", "--width", "4",
        "--steps", "3", "--batch-size", "2", "--patch-size", "32", "--val-every", "2",
        "--out", str(out), "--device", "cpu", "--threads", "1",
        "--log-csv", str(tmp_path / "log.csv"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    model, meta = load_checkpoint(out)
    assert meta["provenance"]["processes"] == 2
    assert meta["provenance"]["steps"] == 3
    assert done.stdout.count("best checkpoint") == 1  # only rank 0 reports
    assert (tmp_path / "log.csv").read_text().count("\n") == 1 + 3 + 2  # header, steps, vals
