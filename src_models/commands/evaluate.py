"""``dsms evaluate``: the paper's Table 1 (Dice, PPV, sensitivity; one column per model).

Every case is segmented with the inference engine (:func:`~src_models.inference.engine.segment`,
what
``dsms predict`` and the Segment widget run) and scored on its own voxel grid with
:mod:`src_models.metrics`; each case weighs the same in the mean. A 2D slice set counts as one
case (its slices pooled), so a patient with 11 slices weighs as much as one with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..inference.preprocessing import FALLBACK_SPACING_MM
from ..io.atomic import check_writable_folder, output_place_problem, write_text_atomic
from ..metrics import METRICS, STRUCTURES, StructureMetrics, case_metrics, summarise
from ..training.data import Case, find_cases, load_case, read_split, select

#: Column titles of the paper's Table 1 for the bundled architecture names.
PAPER_NAMES: dict[str, str] = {
    "fcn": "FCN",
    "unet": "U-Net",
    "drs_unet": "DRS U-Net",
    "kcmdrs_unet": "KCMDRS U-Net",
    "dsmsc_unet": "DSMSC U-Net",
}
_ROW_NAMES = {"dice": "Dice", "ppv": "PPV", "sensitivity": "Sensitivity"}
_TITLES = {"pancreas": "Pancreas (including tumour)", "tumour": "Tumour"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, action="append", metavar="DIR",
                        help="data folder (as for dsms train); repeat to mix")  # fmt: skip
    parser.add_argument("--models", required=True, nargs="+", metavar="MODEL",
                        help="bundled model names or checkpoint files")  # fmt: skip
    parser.add_argument("--out", metavar="TABLE.md",
                        help="also write the table there, with .csv and .json beside")  # fmt: skip
    parser.add_argument("--split", metavar="FILE", help="evaluate only the split's test patients")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


class _CanonicalVolume:
    """A case's slices, already canonical, as a volume for the inference engine.

    The affine maps (slice, row, column) to (S, P, L) at the case's spacing (2D slice sets:
    :data:`FALLBACK_SPACING_MM` in-plane), so :func:`~src_models.io.orientation.to_canonical`
    leaves the slices as they are and the engine resamples them exactly as training cached them.
    """

    def __init__(self, array: np.ndarray, spacing: Sequence[float]) -> None:
        self.array = array
        sz, sy, sx = (float(v) for v in spacing)
        self.affine = np.array(
            [[0, 0, -sx, 0], [0, -sy, 0, 0], [sz, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
        )
        self.source = ""


def predict_case(
    case: Case, model: Any, meta: dict[str, Any], device: str = "auto"
) -> tuple[np.ndarray, np.ndarray, float]:
    """(prediction, reference, voxel volume in mm³) of one labelled case, canonical layout.

    The voxel volume is ``|det|`` of the file's affine (exact on tilted gantries), else the
    product of the spacing used.
    """
    from ..inference.engine import segment
    from ..jobs import run_to_end

    arrays = load_case(case)
    if arrays.labels is None:
        raise ValueError(f"{case.case_id}: evaluation needs labels")
    spacing = arrays.spacing or (1.0, FALLBACK_SPACING_MM, FALLBACK_SPACING_MM)
    volume = _CanonicalVolume(arrays.image_hu, spacing)
    # Slice sets are unrelated 2D slices: a 3D clean-up would erase all but one of them.
    clean_up = case.kind != "npz"
    result = run_to_end(
        segment(volume, model, meta, device=device, reconstruct=False, clean_up=clean_up)
    )
    voxel_mm3 = arrays.voxel_mm3 or float(np.prod(spacing))
    return result.canonical_labels, arrays.labels, voxel_mm3


def evaluate(
    models: Sequence[str],
    cases: Sequence[Case],
    device: str = "auto",
    names: Sequence[str] | None = None,
    progress: bool = True,
    skip_unreadable: bool = False,
) -> dict[str, Any]:
    """Score every model on every case.

    Parameters
    ----------
    progress
        Show a bar on stderr, and the readers' warnings as one ``warning: ...`` line each
        above it (not Python's two-line warning with a source line).
    skip_unreadable
        A case whose files cannot be read or do not fit each other (labels on another grid, a
        damaged header) is left out and named under ``"skipped"`` instead of ending the run:
        one odd case in a folder gathered from many hospitals cost a tester every other score.

    Returns
    -------
    dict
        ``{"models": [column names], "cases": [ids scored], "skipped": {id: why}, "per_case":
        {model: {case: {structure: {dice, ppv, ...}}}}, "summary": {model: {structure:
        {metric: {mean, std, cases, cases_with_structure}}}}}``, JSON-able.

    Raises
    ------
    ValueError, OSError
        A case cannot be read (without ``skip_unreadable``), or none can.
    """
    from ..models.store import load_checkpoint

    names = list(names) if names else [_column_name(m) for m in models]
    if len(set(names)) != len(names):
        names = [f"{n} ({m})" for n, m in zip(names, models, strict=True)]
    loaded = [load_checkpoint(m) for m in models]  # fail early on a bad model name or file
    scores: dict[str, dict[str, dict[str, StructureMetrics]]] = {name: {} for name in names}
    from tqdm import tqdm

    bar = tqdm(total=len(cases) * len(models), disable=not progress, file=sys.stderr, unit="case")
    skipped: dict[str, str] = {}
    for case in cases:
        try:
            with _warnings_as_lines(bar if progress else None):
                for name, (model, meta) in zip(names, loaded, strict=True):
                    prediction, reference, voxel_mm3 = predict_case(case, model, meta, device)
                    scores[name][case.case_id] = case_metrics(prediction, reference, voxel_mm3)
                    bar.update()
        except (ValueError, OSError) as error:
            if not skip_unreadable:
                raise
            skipped[case.case_id] = " ".join(str(error).split())
            for name in names:
                scores[name].pop(case.case_id, None)
            bar.write(f"warning: {case.case_id} left out: {skipped[case.case_id]}", sys.stderr)
    cases = [c for c in cases if c.case_id not in skipped]
    if not cases:
        raise ValueError(f"no case could be scored: {next(iter(skipped.values()), 'no cases')}")
    bar.close()
    summary = {}
    for name in names:
        table = summarise(scores[name].values())
        summary[name] = {s: {m: vars(table[s][m]) for m in METRICS} for s in STRUCTURES}
    per_case = {
        name: {case: {s: m.as_dict() for s, m in by_structure.items()}
               for case, by_structure in scores[name].items()}
        for name in names
    }  # fmt: skip
    learnt = {name: _trained_on(meta) for name, (_, meta) in zip(names, loaded, strict=True)}
    # contents are read only when a model recorded some (models fine-tuned on corrections)
    wanted = any(digests for _, _, digests in learnt.values())
    case_digests = {c.case_id: _case_digests(c) if wanted else set() for c in cases}
    trained_on = {}
    for name, (patients, images, digests) in learnt.items():
        trained_on[name] = sorted(
            c.patient_id
            for c in cases
            if patient_key(c.patient_id) in patients
            or (c.image is not None and c.image.resolve() in images)
            or case_digests[c.case_id] & digests
        )
    return {
        "models": names,
        "checkpoints": [meta["path"] for _, meta in loaded],
        "cases": [c.case_id for c in cases],
        "skipped": skipped,
        "trained_on": trained_on,
        "per_case": per_case,
        "summary": summary,
    }


#: An NIH Pancreas-CT patient under any of its usual names: ``PANCREAS_0001`` (TCIA's patient
#: id), ``nih-pancreas-0001`` (this project's data folder), ``Pancreas-0001``. Four digits, so
#: MSD Task07's ``pancreas_001`` (another collection) does not match.
_NIH_PANCREAS = re.compile(r"pancreas[-_ ]?(?:ct[-_ ]?)?(\d{4})(?!\d)", re.IGNORECASE)


def patient_key(patient_id: str) -> str:
    """What two names of one patient share: the NIH Pancreas-CT number, else the name itself.

    The bundled models' provenance names the shared volume ``nih-pancreas-0001``; a user who
    downloaded the collection from TCIA has it as ``PANCREAS_0001``, and its scores there are
    training-set figures all the same.
    """
    found = _NIH_PANCREAS.search(patient_id)
    return f"nih-pancreas-{found.group(1)}" if found else patient_id


def _split_patients(split: dict[str, Any], kind: str = "patients") -> list[str]:
    """Those it trained on (``train_patients``) and, unless it is the run's last step
    (``selected: "last step"``: validation was only watched), those it was chosen on;
    ``kind="digests"`` gives their CT contents instead (``train_digests``, ``val_digests``)."""
    recorded = list(split.get(f"train_{kind}") or ())
    if split.get("selected") != "last step":
        recorded += split.get(f"val_{kind}") or ()
    return [str(p) for p in recorded]


def _trained_on(meta: dict[str, Any]) -> tuple[set[str], set[Path], set[str]]:
    """What a checkpoint (or each member of an ensemble) learnt from, as its provenance records
    it: patient keys (:func:`patient_key`), image files and CT contents
    (:func:`~src_models.autosave.content_key`, which knows a renamed, reoriented or re-typed
    copy; a tester's copy of 0001 under another name was scored as held out).

    Its training run's split (:func:`_split_patients`) and, for a model fine-tuned on
    corrections (the Review dock, ``dsms refine``), each round's image and the split of the
    model it started from: scores on any of them are not held-out figures (a tester read a
    model refined on the very CT evaluated as 0.085 Dice better on new data).
    """
    if meta.get("members_meta"):  # an ensemble learnt what any member learnt (a tester saw
        # its column unflagged beside a flagged member's)
        keys, files, contents = set(), set(), set()
        for member in meta["members_meta"]:
            member_keys, member_files, member_contents = _trained_on(member)
            keys |= member_keys
            files |= member_files
            contents |= member_contents
        return keys, files, contents
    provenance = meta.get("provenance") or {}
    from ..models.checkpoints import fine_tune_rounds

    keys = {patient_key(p) for p in _split_patients(provenance)}
    images: set[Path] = set()
    digests = set(_split_patients(provenance, "digests"))
    learnt = [round_.get("base_split") or {} for round_ in fine_tune_rounds(meta)]
    if provenance.get("init_learnt"):  # dsms train --init: what the base learnt from, too
        learnt.append(provenance["init_learnt"])
    for round_ in fine_tune_rounds(meta):
        if round_.get("source_image"):  # an NIH number in the path counts
            keys.add(patient_key(str(round_["source_image"])))
            images.add(Path(str(round_["source_image"])).resolve())
        if round_.get("source_digest"):
            digests.add(str(round_["source_digest"]))
    for record in learnt:  # a base model's split, and what its own base learnt from
        base_keys, base_images, base_digests = _trained_on({"provenance": record})
        keys, images, digests = keys | base_keys, images | base_images, digests | base_digests
    return keys, images, digests


@contextlib.contextmanager
def _warnings_as_lines(bar: Any) -> Iterator[None]:
    """Show the readers' :class:`UserWarning` s as ``warning: ...`` lines above ``bar`` (each
    message once), as ``dsms predict`` does; with ``bar`` None, leave warnings alone."""
    if bar is None:
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            shown = set()
            for item in caught:
                if not issubclass(item.category, UserWarning):
                    warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
                elif str(item.message) not in shown:
                    shown.add(str(item.message))
                    bar.write(f"warning: {' '.join(str(item.message).split())}", sys.stderr)


def _case_digests(case: Case) -> set[str]:
    """The CT content keys of a case read from a NIfTI file (slice sets and phantoms: none).

    Both keys: :func:`~src_models.autosave.volume_content_key`, which models record since
    2026-12-01 and which a copy in another axis order or dtype shares, and the exact file's
    :func:`~src_models.autosave.volume_digest`, which older models recorded.
    """
    if case.kind != "nifti" or case.image is None:
        return set()
    from ..autosave import volume_content_key, volume_digest
    from ..io import read_volume

    volume = read_volume(case.image)
    return {volume_digest(volume), volume_content_key(volume)}


def _first_few(names: list[str], shown: int = 5) -> str:
    """``names`` joined by commas, the first ``shown`` of them and an ellipsis for the rest."""
    return ", ".join(names[:shown]) + (", …" if len(names) > shown else "")


def _column_name(model: str) -> str:
    stem = Path(model).name.removesuffix(".pt")
    return PAPER_NAMES.get(stem, stem)


def markdown_table(result: dict[str, Any]) -> str:
    """Table 1 as Markdown: per structure, rows Dice / PPV / Sensitivity, one column per model."""
    names = result["models"]
    lines = []
    for structure in STRUCTURES:
        first = result["summary"][names[0]][structure]["dice"]
        lines.append(
            f"**{_TITLES[structure]}**: mean over {first['cases']} cases, "
            f"{first['cases_with_structure']} of which contain it"
            + ("" if first["cases_with_structure"] else " (figures only check false positives)")
        )
        lines.append("")
        lines.append("| | " + " | ".join(names) + " |")
        lines.append("|---|" + "---:|" * len(names))
        for metric in METRICS:
            values = [result["summary"][n][structure][metric]["mean"] for n in names]
            lines.append(
                f"| {_ROW_NAMES[metric]} | " + " | ".join(f"{v:.4f}" for v in values) + " |"
            )
        lines.append("")
    skipped = result.get("skipped", {})
    if skipped:
        lines.append(
            f"*{len(skipped)} case(s) could not be scored and are not in these means: "
            f"{_first_few(sorted(skipped))} (why: the JSON's `skipped`).*"
        )
    for name, seen in result.get("trained_on", {}).items():
        if seen:
            lines.append(
                f"*{name} trained or was selected on {len(seen)} of these "
                f"{len(result['cases'])} cases ({_first_few(seen)}): its figures are not "
                "held-out figures.*"
            )
    return "\n".join(lines)


def csv_table(result: dict[str, Any]) -> str:
    """Long-format CSV: model, structure, metric, mean, std, cases, cases_with_structure."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["model", "structure", "metric", "mean", "std", "cases", "cases_with_structure"]
    )
    for name in result["models"]:
        for structure in STRUCTURES:
            for metric in METRICS:
                s = result["summary"][name][structure][metric]
                writer.writerow([name, structure, metric, f"{s['mean']:.6f}", f"{s['std']:.6f}",
                                 s["cases"], s["cases_with_structure"]])  # fmt: skip
    return buffer.getvalue()


def evaluate_to_files(
    models: Sequence[str],
    cases: Sequence[Case],
    out: str | os.PathLike[str] | None,
    *,
    names: Sequence[str] | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Run :func:`evaluate`, print the Markdown table and write ``out`` (+ .csv, .json) if given."""
    result = evaluate(
        models, cases, device=device, names=names, progress=progress, skip_unreadable=True
    )
    for name, seen in result["trained_on"].items():
        if seen:  # a training-set figure beside a held-out one misleads (found by a tester)
            print(
                f"warning: {name} trained or was selected on {len(seen)} of the "
                f"{len(result['cases'])} cases ({_first_few(seen)}; its checkpoint's "
                "provenance): its scores on them are "
                "not held-out figures",
                file=sys.stderr,
            )
    table = markdown_table(result)
    print(table)
    if out is not None:
        out = Path(out)
        write_text_atomic(out.with_suffix(".csv"), csv_table(result))
        write_text_atomic(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
        write_text_atomic(out, table + "\n")
    return result


def check_table_path(out: Path) -> None:
    """Refuse a table path that cannot be written before any case is segmented.

    A tester's ``--out /nonexist/t.md`` created ``/nonexist``, and a read-only folder failed
    only after the whole evaluation.

    Raises
    ------
    ValueError
        The folder is missing, the path is a folder, or the folder cannot be written to.
    """
    problem = output_place_problem(out)
    if problem:
        raise ValueError(problem)
    check_writable_folder(out)


def run(args: argparse.Namespace) -> int:
    if args.out is not None:
        check_table_path(Path(args.out))
    cases = [case for folder in args.data for case in find_cases(folder)]
    if args.split:
        cases = select(cases, read_split(args.split), "test")
        if not cases:
            raise ValueError(f"{args.split}: none of its test patients is in the given data")
    result = evaluate_to_files(args.models, cases, args.out, device=args.device)
    if result["skipped"]:  # scores were written, but not of every case asked for
        print(
            f"warning: {len(result['skipped'])} of {len(cases)} cases left out (above); exit "
            "status 1",
            file=sys.stderr,
        )
        return 1
    return 0
