"""``dsms info PATH``: what a radiologist checks before trusting a volume."""

from __future__ import annotations

import argparse

from ..io import describe, read_volume


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a .nii / .nii.gz file or a DICOM series folder")


def run(args: argparse.Namespace) -> int:
    print(describe(read_volume(args.path)))
    return 0
