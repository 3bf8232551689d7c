"""``dsms predict INPUT -o OUT.nii.gz``: labels on the input's voxel grid, for batch work.

``-o OUT.dcm`` (or ``--format seg``) writes DICOM-SEG that references the input DICOM series.

Everything that can be checked before the slow part is checked first (output names, device,
volume, checkpoint), so a typo costs a second, not a segmentation run; nothing is written until
the segmentation is complete, and files are written under a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..inference.devices import resolve_device
from ..inference.engine import segment
from ..inference.precision import PRECISIONS
from ..io import (
    FORMATS,
    Algorithm,
    VolumeError,
    check_ct,
    check_output,
    read_volume_reporting,
    write_image,
    write_output,
)
from ..io.orientation import head_feet_axis
from ..io.windows import unit_to_hu
from ..jobs import run_to_end
from ..models.checkpoints import tumour_warning
from ..models.store import load_checkpoint
from ..version import __version__
from .common import add_model_and_device, add_overwrite, check_outputs, progress_bar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="CT volume: a .nii / .nii.gz file or a DICOM series folder")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="labels file to write: .nii / .nii.gz (NIfTI) or .dcm (DICOM-SEG, DICOM input only)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="labels format (default auto: from the output's ending)",
    )
    add_model_and_device(parser)
    parser.add_argument(
        "--batch-size", type=int, metavar="N", help="slices per batch (default: per device)"
    )
    parser.add_argument(
        "--reconstruction",
        metavar="OUT.nii.gz",
        help="also write the restoration decoder's reconstruction (DRS models), in HU (int16)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="model arithmetic (default auto: bfloat16 where the hardware has it)",
    )
    parser.add_argument(
        "--no-clean-up",
        dest="clean_up",
        action="store_false",
        help="keep every island the model marks (default: only the largest 3D component of the "
        "pancreas, as a radiologist would erase the rest)",
    )
    add_overwrite(parser)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    input_path = Path(args.input)
    output = Path(args.output)
    reconstruction_path = Path(args.reconstruction) if args.reconstruction else None
    if not input_path.exists():
        raise VolumeError(f"{input_path}: no such file or folder")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_output(output, format=args.format)
    check_outputs(
        input_path,
        [output] + ([reconstruction_path] if reconstruction_path else []),
        overwrite=args.overwrite,
    )
    device = resolve_device(args.device)
    volume, warnings = read_volume_reporting(input_path)
    for text in warnings:
        print(f"warning: {text}", file=sys.stderr)
    check_output(output, volume, args.format)  # DICOM-SEG needs a DICOM series
    doubts = check_ct(volume)
    model, meta = load_checkpoint(args.model)
    if reconstruction_path is not None and not getattr(model, "has_restoration", True):
        raise ValueError(
            f"{meta['path']}: architecture {meta['arch']!r} has no restoration decoder, so "
            "there is no reconstruction to write; drop --reconstruction or use a DRS model"
        )
    for text in doubts:  # once the run will go ahead: a refused run gets one error line
        print(f"warning: {text}", file=sys.stderr)
    if args.precision == "float16" and device.type == "cpu":
        print(
            "warning: float16 on the CPU is emulated and several times slower than float32 "
            "(7x on the benchmark machine); --precision auto picks the fastest",
            file=sys.stderr,
        )
    generator = segment(
        volume,
        model,
        meta,
        device=device,
        batch_size=args.batch_size,
        reconstruct=reconstruction_path is not None,
        precision=args.precision,
        clean_up=args.clean_up,
    )
    slices = volume.array.shape[head_feet_axis(volume.affine)[0]]
    bar, show = progress_bar("segmenting", total=slices)
    with bar:
        result = run_to_end(generator, show)
    algorithm = Algorithm.from_checkpoint(meta, __version__)
    write_output(output, result.labels, volume, args.format, algorithm=algorithm)
    if reconstruction_path is not None:
        try:
            window = meta["preprocessing"]["hu_window"]
            write_image(reconstruction_path, unit_to_hu(result.reconstruction, window), volume)
        except BaseException:
            output.unlink(missing_ok=True)
            raise
    warning = tumour_warning(meta)
    print(
        f"{output}: {result.stats.summary()}; "
        f"{time.perf_counter() - started:.1f} s from reading to writing"
        + (f"; {warning}" if warning else "")
    )
    return 0
