"""The ``dsms`` command: the engine without a screen, for batch work and GPU servers.

Each sub-command lives in :mod:`src_models.commands` as a module with ``add_arguments(parser)``
and ``run(args) -> int``. Bad input ends with exit status 2 and one line ``error: ...`` on
stderr, without a traceback (set ``DSMS_DEBUG=1`` to see it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Sequence

from .version import __version__

#: Sub-command name -> (module in src_models.commands, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "info": (
        "info",
        "print shape, spacing, orientation and intensity range of a volume, or a model's card",
    ),
    "predict": ("predict", "segment pancreas and tumour in a CT volume"),
    "train": ("train", "train or fine-tune a model"),
    "evaluate": ("evaluate", "the paper's Table 1 (Dice, PPV, sensitivity) for one or more models"),
    "recover": ("recover", "list or write corrections that napari-dsms autosaved"),
    "triage": ("triage", "rank the slices of a CT by how suspect the model's segmentation is"),
    "refine": ("refine", "one round of the correction loop: fine-tune, fill between, re-segment"),
}


def build_parser() -> argparse.ArgumentParser:
    """Parser with one sub-parser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="dsms",
        description="Pancreas and pancreatic-tumour segmentation of abdominal CT "
        "(deeply supervised multi-scale U-Net family).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"src_models.commands.{module_name}")
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


#: A value that starts like a negative number: "-1,20" (argparse reads it as an option).
_NEGATIVE_VALUE = re.compile(r"^-\d[\d,\s-]*$")


def attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``--corrected -1,20`` as ``--corrected=-1,20``.

    argparse takes a value such as ``-1,20`` for an unknown option and answers "expected one
    argument", which hides the real problem (a slice number below 0); attached, the value
    reaches the command's own check and its message.
    """
    out: list[str] = []
    for token in argv:
        previous = out[-1] if out else ""
        if previous.startswith("--") and "=" not in previous and _NEGATIVE_VALUE.match(token):
            out[-1] = f"{previous}={token}"
        else:
            out.append(token)
    return out


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system's time limit), raised like Ctrl-C so that output
    files being written are removed (:func:`~src_models.io.atomic.atomic_path`); left alone,
    SIGTERM ended the process at once and left a hidden half-written temporary file."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dsms`` console script and of ``python -m src_models``."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(attach_negative_values(argv))
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.run(args) or 0)
    except Terminated:
        print("error: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError) as error:
        if os.environ.get("DSMS_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        # One line, always: messages that show a matrix (two affines) are folded onto it.
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Show a warning as ``warning: ...``, one line, as the commands print their own."""
    if not issubclass(category, UserWarning):
        _python_showwarning(message, category, filename, lineno, file, line)
        return
    print(f"warning: {' '.join(str(message).split())}", file=file or sys.stderr)


_python_showwarning = warnings.showwarning


def console(argv: Sequence[str] | None = None) -> int:
    """The ``dsms`` console script and ``python -m src_models``: :func:`main`, with warnings that
    reach the terminal shown as one ``warning: ...`` line each instead of Python's two lines
    with a file name and a source line (a tester saw ``train.py:158: UserWarning: ...``).

    :func:`main` itself leaves warnings alone, so Python callers and tests still catch them.
    """
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        return main(argv)


if __name__ == "__main__":
    sys.exit(console())
