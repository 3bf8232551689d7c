"""``dsms info PATH``: what a radiologist checks before trusting a volume, or a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..io import VolumeError, describe, read_volume_reporting
from ..models.checkpoints import CheckpointError, model_card, read_metadata
from ..models.store import ENSEMBLE, ensemble_metadata, resolve_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        help="a .nii / .nii.gz file or a DICOM series folder; or a model (a .pt checkpoint or a "
        "bundled or saved model's name, e.g. dsmsc_unet) to print its model card",
    )


def _model(text: str) -> Path | None:
    """The checkpoint ``text`` names, or ``None`` when it names a volume.

    Raises
    ------
    VolumeError
        A bare name (no suffix, no folder) that is neither a file nor a model: the message lists
        the model names, as a typo in one is the likely cause.
    """
    if Path(text).suffix == ".pt":
        return Path(text)
    if Path(text).expanduser().exists():
        return None
    try:
        return resolve_checkpoint(text)
    except CheckpointError as error:
        if Path(text).suffix or "/" in text:
            return None  # a missing volume: the reader says so
        names = str(error).split(": ", 1)[-1]
        raise VolumeError(f"{text}: no such file or folder; as a model, {names}") from None


def run(args: argparse.Namespace) -> int:
    if args.path == ENSEMBLE and not Path(args.path).exists():  # --model ensemble's card
        print(f"{ENSEMBLE}: the bundled models averaged\n{model_card(ensemble_metadata())}")
        return 0
    checkpoint = _model(args.path)
    if checkpoint is not None:
        meta = read_metadata(checkpoint)
        print(f"{checkpoint}: {meta['arch']} checkpoint\n{model_card(meta)}")
        return 0
    volume, warnings = read_volume_reporting(args.path)
    for text in warnings:
        print(f"warning: {text}", file=sys.stderr)
    print(describe(volume))
    return 0
