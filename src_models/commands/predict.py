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

from tqdm import tqdm

from ..inference.devices import resolve_device
from ..inference.engine import segment
from ..inference.precision import PRECISIONS
from ..io import (
    FORMATS,
    NIFTI_SUFFIXES,
    Algorithm,
    VolumeError,
    check_output,
    read_volume_reporting,
    write_image,
    write_output,
)
from ..io.atomic import check_writable_folder
from ..io.dicom import is_dicom_file
from ..io.windows import unit_to_hu
from ..jobs import run_to_end
from ..models.checkpoints import tumour_warning
from ..models.store import load_checkpoint
from ..version import __version__

#: The model used when ``--model`` is not given: the paper's architecture, bundled.
DEFAULT_MODEL = "dsmsc_unet"


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
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME_OR_PATH",
        help=f"bundled model name, name in the user model folder, or checkpoint file "
        f"(default: {DEFAULT_MODEL})",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
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


def _check_outputs(input_path: Path, outputs: list[Path]) -> None:
    """Refuse output names that cannot work before any time is spent on the volume."""
    source = input_path.resolve()
    series_folder = source.parent if is_dicom_file(source) else None
    for index, output in enumerate(outputs):
        # The labels' ending is checked by check_output; the reconstruction is NIfTI only.
        if index and not output.name.lower().endswith(NIFTI_SUFFIXES):
            raise VolumeError(f"{output}: output must be a NIfTI file ending in .nii or .nii.gz")
        if not output.parent.is_dir():
            raise VolumeError(f"{output}: the folder {output.parent} does not exist")
        if output.is_dir():
            raise VolumeError(f"{output}: is a folder, not a file name")
        target = output.resolve()
        if target == source or source in target.parents:
            raise VolumeError(
                f"{output}: refusing to overwrite the input {input_path}; choose another name"
            )
        if series_folder is not None and target.parent == series_folder:
            raise VolumeError(
                f"{output}: refusing to write into the DICOM series folder {series_folder} "
                "(the file would join the series); choose another folder"
            )
        check_writable_folder(output)
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise VolumeError(f"{outputs[0]}: labels and reconstruction need different file names")


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
    _check_outputs(input_path, [output] + ([reconstruction_path] if reconstruction_path else []))
    device = resolve_device(args.device)
    volume, warnings = read_volume_reporting(input_path)
    for text in warnings:
        print(f"warning: {text}", file=sys.stderr)
    check_output(output, volume, args.format)  # DICOM-SEG needs a DICOM series
    model, meta = load_checkpoint(args.model)
    if reconstruction_path is not None and not getattr(model, "has_restoration", True):
        raise ValueError(
            f"{meta['path']}: architecture {meta['arch']!r} has no restoration decoder, so "
            "there is no reconstruction to write; drop --reconstruction or use a DRS model"
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
    with tqdm(unit="slice", desc="segmenting", file=sys.stderr, leave=False) as bar:

        def show(progress: tuple[int, int]) -> None:
            bar.total = progress[1]
            bar.update(progress[0] - bar.n)

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
