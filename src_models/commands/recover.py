"""``dsms recover``: bring back corrections that napari-dsms autosaved before a crash.

``dsms recover --list [CT]`` lists the journals (all, or those of one CT); ``dsms recover CT -o
labels.nii.gz`` writes the last journaled labels of that CT on its own voxel grid with its
affine (as ``dsms predict`` does), plus the usual side-car JSON. Journals are found by the CT's
content (:func:`src_models.autosave.volume_digest`), so a moved or renamed CT still matches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..autosave import (
    AUTOSAVE_DIR_ENV,
    JournalEntry,
    autosave_dir,
    list_entries,
    to_restore,
    volume_digest,
)
from ..corrections import sidecar, sidecar_path, write_sidecar
from ..io import Volume, VolumeError, read_volume, write_labels
from ..io.orientation import from_canonical, to_canonical
from .common import add_overwrite, check_new_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "ct", nargs="?", help="the CT (.nii / .nii.gz or DICOM series folder) the labels belong to"
    )
    parser.add_argument(
        "-o", "--output", metavar="OUT.nii.gz", help="labels file to write on the CT's grid"
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help=f"list what can be recovered (of CT only, when given); journals are kept in "
        f"the user data folder or ${AUTOSAVE_DIR_ENV}",
    )
    parser.add_argument(
        "--session",
        metavar="ID",
        help="recover this session's journal (the id, or its start, as --list prints it) "
        "instead of the CT's newest",
    )
    add_overwrite(parser)


def _chosen(entries: list[JournalEntry], session: str | None, ct: Path) -> JournalEntry:
    """The journal to recover: :func:`~src_models.autosave.to_restore`, or that of ``session``.

    Raises
    ------
    VolumeError
        No journal of this CT, or none (or several) of that session.
    """
    if not entries:
        raise VolumeError(
            f"{ct}: no autosaved corrections of this CT in {autosave_dir()} "
            f"(dsms recover --list shows what there is)"
        )
    if session is None:
        return to_restore(entries)
    matching = [entry for entry in entries if entry.session.startswith(session)]
    if len(matching) != 1:
        found = ", ".join(entry.session for entry in entries)
        raise VolumeError(
            f"{ct}: {'no' if not matching else 'more than one'} autosaved session of this CT "
            f"starts with {session!r} (its sessions: {found})"
        )
    return matching[0]


def _print_list(entries: list[JournalEntry]) -> None:
    if not entries:
        print(f"no autosaved corrections in {autosave_dir()}")
        return
    for entry in entries:
        print(entry.summary())


def _recover(volume: Volume, entry: JournalEntry, output: Path) -> None:
    """Write ``entry``'s labels on ``volume``'s grid and the side-car; nothing on failure."""
    labels = entry.labels()
    expected = to_canonical(volume.array, volume.affine)[0].shape
    if labels.shape != expected:
        raise VolumeError(
            f"{entry.path}: autosaved labels of shape {labels.shape} do not fit "
            f"{volume.source} (canonical shape {expected}); the journal is damaged"
        )
    write_labels(output, from_canonical(labels, volume.affine), volume)
    try:
        content = sidecar(
            export_path=output,
            kind="labels",
            source=volume.source,
            affine=volume.affine,
            source_shape=volume.shape,
            labels=labels,
            spacing=volume.voxel_volume_mm3,  # |det|: exact on tilted gantries
            model=entry.record.get("model"),
            edited=entry.corrected,
            reviewed=entry.reviewed,
            # as napari's export: slices a tool wrote that nobody checked after (a tester's
            # recovered side-car listed none of a fill between's 38, so they read as the model's)
            tool_slices=sorted(set(entry.tool_slices) - set(entry.corrected) - set(entry.reviewed)),
            plugin_version=str(entry.record.get("plugin_version", "")),
        )
        content["recovered_from"] = {
            "journal": str(entry.path),
            "saved": entry.record["saved"],
            "layer": entry.record.get("layer", ""),
            "effort": entry.record.get("effort", {}),
        }
        write_sidecar(output, content)
    except BaseException:
        output.unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    if args.list:
        if args.output:
            raise ValueError("--list prints the journals; it writes no file, so drop -o")
        digest = volume_digest(read_volume(args.ct)) if args.ct else None
        _print_list(list_entries(digest))
        return 0
    if not args.ct or not args.output:
        raise ValueError("give the CT and -o OUT.nii.gz (or --list to see what can be recovered)")
    ct, output = Path(args.ct), Path(args.output)
    if not ct.exists():
        raise VolumeError(f"{ct}: no such file or folder")
    if output.resolve() != ct.resolve():  # the CT itself: write_labels says it is the source
        check_new_file(output, args.overwrite)
        # its side-car too: x.nii and x.nii.gz share x.json, an earlier export's record
        check_new_file(sidecar_path(output), args.overwrite)
    volume = read_volume(ct)
    entries = list_entries(volume_digest(volume))
    entry = _chosen(entries, args.session, ct)
    _recover(volume, entry, output)
    print(
        f"{output}: labels autosaved {entry.saved.astimezone():%Y-%m-%d %H:%M:%S} "
        f"({entry.work()}, layer {entry.record.get('layer', '')!r})"
    )
    others = [other for other in entries if other is not entry]
    if others:  # a newer session of no edits hid an older one's corrections (a tester)
        named = "; ".join(f"session {other.session}: {other.work()}" for other in others[:3])
        print(
            f"note: {len(others)} other autosaved session{'s' * (len(others) > 1)} of this CT "
            f"({named}{'; …' if len(others) > 3 else ''}); dsms recover --list shows them, "
            "--session ID recovers one",
            file=sys.stderr,
        )
    return 0
