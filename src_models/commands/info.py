"""``dsms info PATH``: what a radiologist checks before trusting a volume, or a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..io import VolumeError, describe, read_volume_reporting
from ..models.checkpoints import CheckpointError, model_card, read_metadata
from ..models.store import resolve_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        help="a .nii / .nii.gz file or a DICOM series folder; or a model (a .pt checkpoint or a "
        "bundled or saved model's name, e.g. dsmsc_unet) to print its model card",
    )


def _model(text: str) -> Path | None:
    """The checkpoint ``text`` names, or ``None`` when it names a volume."""
    if Path(text).suffix == ".pt":
        return Path(text)
    if Path(text).expanduser().exists():
        return None
    try:
        return resolve_checkpoint(text)
    except CheckpointError:
        return None


def run(args: argparse.Namespace) -> int:
    checkpoint = _model(args.path)
    bare_name = not Path(args.path).suffix and "/" not in args.path
    if checkpoint is None and bare_name and not Path(args.path).expanduser().exists():
        try:
            resolve_checkpoint(args.path)
        except CheckpointError as error:  # neither a volume nor a model: say both
            names = str(error).split(": ", 1)[-1]
            raise VolumeError(f"{args.path}: no such file or folder; as a model, {names}") from None
    if checkpoint is not None:
        meta = read_metadata(checkpoint)
        print(f"{checkpoint}: {meta['arch']} checkpoint\n{model_card(meta)}")
        return 0
    volume, warnings = read_volume_reporting(args.path)
    for text in warnings:
        print(f"warning: {text}", file=sys.stderr)
    print(describe(volume))
    return 0
