"""``dsms info PATH``: what a radiologist checks before trusting a volume."""

from __future__ import annotations

import argparse
import sys

from ..io import describe, read_volume_reporting


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a .nii / .nii.gz file or a DICOM series folder")


def run(args: argparse.Namespace) -> int:
    volume, warnings = read_volume_reporting(args.path)
    for text in warnings:
        print(f"warning: {text}", file=sys.stderr)
    print(describe(volume))
    return 0
