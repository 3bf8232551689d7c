"""The benchmark scripts that will run where no one watches them (a lent GPU) work on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_quick_on_the_cpu_and_writes_its_table(nih_ct, tmp_path):
    report = tmp_path / "gpu.md"
    command = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick"]
    command += ["--ct", str(nih_ct), "--markdown", str(report)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    text = report.read_text(encoding="utf-8")
    assert "| Precision | Batch | Crop to body | 3D clean-up | Slices/s | Peak GPU memory |" in text
    # the network alone by width and memory layout, which tests why the GPU runs slow
    assert "| Width | Precision | channels_last | contiguous |" in text
    assert "| 12 | float32 |" in text
    assert "| float32 | 2 | yes | yes |" in text  # the quick plan's one cell with the crop
    assert "| 4 | no | yes |" in text  # the default batch on whole slices
    assert "| 4 | yes | no |" in text  # and without the clean-up
    assert "`dsms predict` on 512 x 512 x 4" in text and "pancreas" in text
    assert "Fine-tuning (dsmsc_unet, 10 slices, default recipe): 2 steps in" in text
    assert "the model alone" in text and "convolution" in text  # the profiler's table
