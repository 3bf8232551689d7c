"""``dsms triage INPUT``: the slices to review first, most suspect first.

Prints one line per slice, ``K SCORE``, where ``K`` indexes the slice axis of
``read_volume(INPUT).array`` closest to head-feet, 0-based (:mod:`src_models.inference.triage`
says what the score is made of). ``--json`` prints the same as a JSON document, with the score's
parts and each slice's head-feet position ``z_mm`` (patient coordinates, the same in RAS and in
DICOM's LPS: ImagePositionPatient[2] of an axial slice), to find the slice in a PACS viewer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..inference.devices import resolve_device
from ..inference.triage import triage
from ..io import VolumeError, check_ct, read_volume
from ..io.orientation import head_feet_axis
from ..jobs import run_to_end
from ..models.store import load_checkpoint
from .common import add_model_and_device, progress_bar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="CT volume: a .nii / .nii.gz file or a DICOM series folder")
    add_model_and_device(parser)
    parser.add_argument("--top", type=int, metavar="N", help="print only the N most suspect slices")
    parser.add_argument("--json", action="store_true", help="print JSON with the score's parts")


def run(args: argparse.Namespace) -> int:
    input_path = Path(args.input)
    if not input_path.exists():
        raise VolumeError(f"{input_path}: no such file or folder")
    if args.top is not None and args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    device = resolve_device(args.device)
    volume = read_volume(input_path)
    doubts = check_ct(volume)
    model, meta = load_checkpoint(args.model)
    for text in doubts:  # once the run will go ahead: a refused run gets one error line
        print(f"warning: {text}", file=sys.stderr)
    # two passes over the slices: the model's and its test-time variant's
    slices = volume.array.shape[head_feet_axis(volume.affine)[0]]
    bar, show = progress_bar("triage", total=2 * slices)
    with bar:
        result = run_to_end(triage(volume, model, meta, device=device), show)
    ranking = result.ranking(volume.affine, volume.array.shape)[: args.top]
    if args.json:
        axis, _ = head_feet_axis(volume.affine)
        centre = (np.asarray(volume.array.shape[:3], dtype=np.float64) - 1.0) / 2.0

        def z_mm(k: int) -> float:
            """Head-feet position (mm) of slice ``k``'s centre."""
            index = centre.copy()
            index[axis] = k
            return round(float((np.asarray(volume.affine) @ [*index, 1.0])[2]), 2)

        print(
            json.dumps(
                {
                    "input": str(input_path),
                    "model": meta["path"],
                    "slice_axis": axis,
                    "slices": [
                        {
                            "k": k,
                            "z_mm": z_mm(k),
                            "score": round(score, 4),
                            "suspicion": round(float(result.scores[c]), 4),
                            "parts": {
                                name: round(float(values[c]), 4)
                                for name, values in result.features.items()
                            },
                        }
                        for (k, score), c in zip(ranking, result.order, strict=False)
                    ],
                },
                indent=1,
            )
        )
    else:
        print("\n".join(f"{k} {score:.4f}" for k, score in ranking))
    return 0
