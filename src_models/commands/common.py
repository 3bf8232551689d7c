"""What the ``dsms`` commands share: the model and device options, output checks, progress."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from ..io import NIFTI_SUFFIXES, VolumeError
from ..io.atomic import check_writable_folder, output_place_problem
from ..io.dicom import is_dicom_file

#: The model used when ``--model`` is not given: the paper's architecture, bundled.
DEFAULT_MODEL = "dsmsc_unet"


def add_model_and_device(parser: argparse.ArgumentParser) -> None:
    """``--model NAME_OR_PATH`` and ``--device``, worded the same in every command."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME_OR_PATH",
        help=f"bundled model name, 'ensemble', name in the user model folder, or checkpoint "
        f"file (default: {DEFAULT_MODEL})",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: the one way to let a command replace an existing output file."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that already exist (default: refuse; they may hold "
        "corrected labels)",
    )


def check_new_file(output: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty file unless ``overwrite``.

    A labels file named by mistake may hold a radiologist's corrections, which a command would
    otherwise replace with model output and exit 0. An empty file (what ``mktemp`` leaves) holds
    nothing to lose.

    Raises
    ------
    VolumeError
        ``output`` exists and is not empty; the message names it and the way out.
    """
    if not overwrite and output.is_file() and output.stat().st_size > 0:
        raise VolumeError(
            f"{output}: already exists; refusing to replace it (it may hold corrected labels). "
            "Choose another name, or pass --overwrite"
        )


def check_outputs(input_path: Path, outputs: list[Path], overwrite: bool = False) -> None:
    """Refuse output names that cannot work before any time is spent on the volume.

    The first output is the labels (its format is checked by :func:`~src_models.io.check_output`);
    any further one (a reconstruction) must be NIfTI.

    Raises
    ------
    VolumeError
        An output that would overwrite the input, join a DICOM series folder, lie in a missing
        or unwritable folder, name a folder, or replace an existing file without ``overwrite``
        (:func:`check_new_file`); the message names the file and the folder.
    """
    source = input_path.resolve()
    series_folder = source.parent if is_dicom_file(source) else None
    for index, output in enumerate(outputs):
        # The labels' ending is checked by check_output; the reconstruction is NIfTI only.
        if index and not output.name.lower().endswith(NIFTI_SUFFIXES):
            raise VolumeError(f"{output}: output must be a NIfTI file ending in .nii or .nii.gz")
        problem = output_place_problem(output)
        if problem:
            raise VolumeError(problem)
        target = output.resolve()
        if target == source:
            raise VolumeError(
                f"{output}: refusing to overwrite the input {input_path}; choose another name"
            )
        if source in target.parents:  # the input is a series folder
            raise VolumeError(
                f"{output}: refusing to write into the input folder {input_path} (the file "
                "would join the series); choose another folder"
            )
        if series_folder is not None and target.parent == series_folder:
            raise VolumeError(
                f"{output}: refusing to write into the DICOM series folder {series_folder} "
                "(the file would join the series); choose another folder"
            )
        check_new_file(output, overwrite)
        check_writable_folder(output)
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise VolumeError(f"{outputs[0]}: labels and reconstruction need different file names")


def progress_bar(
    description: str, unit: str = "slice", total: int | None = None
) -> tuple[tqdm, Callable[[tuple[int, int]], None]]:
    """A tqdm bar on stderr and the callback that moves it with ``(done, total)`` progress.

    Use the bar as a context manager and pass the callback to
    :func:`src_models.jobs.run_to_end`. ``total``, when known, is drawn from the start: without
    it the bar first read "0slice [00:00, ?slice/s]" (a tester).
    """
    bar = tqdm(total=total, unit=unit, desc=description, file=sys.stderr, leave=False)

    def show(progress: tuple[int, int]) -> None:
        bar.total = progress[1]
        bar.update(progress[0] - bar.n)

    return bar, show
