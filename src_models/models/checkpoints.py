"""Self-describing checkpoints that load safely.

One file holds everything needed to use a model: the architecture and its constructor arguments,
how inputs were prepared (HU window, in-plane spacing), the class names, where the weights came
from, validation metrics, and the weights. It contains only dicts, lists, strings, numbers and
tensors, so :func:`torch.load` reads it with ``weights_only=True``: loading never imports or runs
code from the file. A file that asks for anything else is refused with :class:`CheckpointError`.
"""

from __future__ import annotations

import datetime
import math
import numbers
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io.atomic import atomic_path
from ..nets.registry import ARCHITECTURES, build_model
from ..version import __version__

#: Marker stored in every checkpoint, so foreign files are told apart from damaged ones.
FORMAT = "napari-dsms-checkpoint"
FORMAT_VERSION = 1
CLASS_NAMES = ["pancreas", "tumour"]
#: Top-level keys of a checkpoint besides the weights; ``load_checkpoint`` returns these as meta.
META_KEYS = (
    "format",
    "format_version",
    "arch",
    "config",
    "preprocessing",
    "class_names",
    "provenance",
    "metrics",
)
_CONVERT = {str: str, numbers.Integral: int, numbers.Real: float}
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A file is not a usable napari-dsms checkpoint; the message names the file and why."""


def _plain(value: Any, where: str) -> Any:
    """Return ``value`` as built-in types (tuples as lists), or raise if it is not plain data.

    Checked at save time, so a checkpoint that saves also loads with ``weights_only=True``.
    """
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"{where}: dictionary keys must be strings")
        return {key: _plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if value is None or isinstance(value, bool):
        return value
    # Subclasses (numpy scalars, torch's TorchVersion) would be pickled by class and refused.
    for kind in (str, numbers.Integral, numbers.Real):
        if isinstance(value, kind):
            return _CONVERT[kind](value)
    raise TypeError(
        f"{where}: {type(value).__name__} is not a plain type (dict, list, str, number, None)"
    )


def _check_preprocessing(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """Validate and normalise the preprocessing record that inference must repeat."""
    prep = _plain(dict(preprocessing), "preprocessing")
    window = prep.get("hu_window")
    if not (
        isinstance(window, list)
        and len(window) == 2
        and all(isinstance(v, (int, float)) for v in window)
        and window[1] > window[0]
    ):
        raise ValueError(f"preprocessing['hu_window'] must be [lower, upper], got {window!r}")
    prep["hu_window"] = [float(window[0]), float(window[1])]
    spacing = prep.get("spacing_mm")
    if spacing is not None:
        if not (isinstance(spacing, (int, float)) and math.isfinite(spacing) and spacing > 0):
            raise ValueError(f"preprocessing['spacing_mm'] must be positive or None: {spacing!r}")
        prep["spacing_mm"] = float(spacing)
    prep.setdefault("spacing_mm", None)
    prep.setdefault("size", None)
    return prep


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    preprocessing: dict[str, Any],
    provenance: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` and its description to one file, atomically.

    The file is written under a temporary name in the same folder and renamed over ``path``, so
    a crash or a full disk never leaves a half-written checkpoint where a good one was.

    Parameters
    ----------
    path
        Destination file (``.pt`` is the suffix the model folders list); parent folders are
        created.
    model
        A model from :func:`~src_models.nets.registry.build_model` (it has ``model.config``).
    preprocessing
        ``{"hu_window": [lower, upper], "spacing_mm": float or None, "size": None}``: the HU
        window scaled to [0, 1] and the in-plane spacing the model was trained at (inference
        resamples slices to it); further plain keys are kept.
    provenance
        Training data, steps, base checkpoint, ...; ``date`` (UTC), ``code_version`` and
        ``torch_version`` are filled in unless given.
    metrics
        Validation metrics, e.g. ``{"dice_pancreas": 0.81}``.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError, TypeError
        The model has no ``config``, or the metadata is malformed or not made of plain types.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or config.get("arch") not in ARCHITECTURES:
        raise ValueError("model has no config with a known 'arch'; build it with build_model()")
    _check_config_fits(model, config)
    stamp = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "code_version": __version__,
        "torch_version": torch.__version__,
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": config["arch"],
        "config": _plain(config, "config"),
        "preprocessing": _check_preprocessing(preprocessing),
        "class_names": list(CLASS_NAMES),
        "provenance": _plain({**stamp, **(provenance or {})}, "provenance"),
        "metrics": _plain(dict(metrics or {}), "metrics"),
        "state_dict": {
            key: tensor.detach().cpu().contiguous() for key, tensor in model.state_dict().items()
        },
    }
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)
    return Path(path)


def _check_config_fits(model: nn.Module, config: dict[str, Any]) -> None:
    """Refuse to save weights that ``model.config`` does not describe: loading the file would
    fail ("weights do not match the declared architecture"), after the save had succeeded (a
    tester changed ``config["width"]`` by hand)."""
    options = {key: value for key, value in config.items() if key != "arch"}
    try:  # on the meta device (no memory, no arithmetic), leaving the caller's RNG as it was
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            rebuilt = build_model(config["arch"], **options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"model.config does not build {config['arch']!r}: {error}") from None
    expected = {key: tuple(t.shape) for key, t in rebuilt.state_dict().items()}
    actual = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    if expected != actual:
        differing = sorted(set(expected.items()) ^ set(actual.items()))[:2]
        raise ValueError(
            f"model.config {options} does not describe the model's weights (for example "
            f"{differing}); build the model with build_model() and leave its config alone"
        )


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _read(path: Path, mmap: bool) -> dict[str, Any]:
    """Load ``path`` with ``weights_only=True`` and check it is a napari-dsms checkpoint."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as stream:
        magic = stream.read(len(_ZIP_MAGIC))
    if not zipfile.is_zipfile(path):
        if magic == _ZIP_MAGIC:
            raise CheckpointError(f"{path}: truncated or corrupt (the archive is incomplete)")
        raise CheckpointError(
            f"{path}: not a napari-dsms checkpoint (not a PyTorch archive written by "
            "save_checkpoint)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        detail = [line for line in str(error).splitlines() if "global" in line.lower()]
        if detail:
            raise CheckpointError(
                f"{path}: refused: it asks to import Python objects ({detail[0].strip()}); "
                "not a safe napari-dsms checkpoint"
            ) from None
        raise CheckpointError(f"{path}: corrupt ({_first_line(error)})") from None
    except Exception as error:  # torch reports damage as RuntimeError, EOFError, KeyError, ...
        raise CheckpointError(f"{path}: truncated or corrupt ({_first_line(error)})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = ""
        if (
            isinstance(payload, dict)
            and payload
            and all(isinstance(v, torch.Tensor) for v in payload.values())
        ):
            hint = "; it looks like a bare state dict, save models with save_checkpoint()"
        raise CheckpointError(f"{path}: not a napari-dsms checkpoint (no format marker){hint}")
    missing = [key for key in (*META_KEYS, "state_dict") if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing keys {missing}")
    if payload["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {payload['format_version']} is newer than this napari-dsms "
            f"reads ({FORMAT_VERSION}); update napari-dsms"
        )
    return payload


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything in checkpoint ``path`` except the weights, without reading the weights.

    The tensors are memory-mapped, not read, so listing a folder of checkpoints stays cheap.

    Raises
    ------
    CheckpointError
        As :func:`load_checkpoint_file`, except that the weights are not checked.
    """
    payload = _read(Path(path), mmap=True)
    return {key: payload[key] for key in META_KEYS} | {"path": str(path)}


def load_checkpoint_file(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in checkpoint file ``path``; see
    :func:`~src_models.load_checkpoint`.

    Raises
    ------
    CheckpointError
        As :func:`src_models.models.store.load_checkpoint`.
    """
    path = Path(path)
    payload = _read(path, mmap=False)
    config = dict(payload["config"])
    arch = config.pop("arch", payload["arch"])
    if arch != payload["arch"] or arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown or inconsistent architecture {arch!r}")
    if len(payload["class_names"]) != config.get("num_classes", 2):
        raise CheckpointError(
            f"{path}: {len(payload['class_names'])} class names but the architecture declares "
            f"num_classes={config.get('num_classes', 2)}"
        )
    try:
        model = build_model(arch, **config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: config does not build {arch!r}: {error}") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:300]
        raise CheckpointError(
            f"{path}: weights do not match the declared architecture {arch!r} "
            f"(config {config}): {reason}"
        ) from None
    model.to(map_location).eval()
    meta = {key: payload[key] for key in META_KEYS} | {"path": str(path)}
    return model, meta


def validated_structures(meta: dict[str, Any]) -> tuple[str, ...]:
    """Structures a checkpoint was validated on with real labels, e.g. ``("pancreas",)``.

    Training records them (``provenance["validated_structures"]``, from the real patients of its
    validation set); an ensemble vouches only for what every member does. Checkpoints written
    before that record existed were all selected on NIH Pancreas-CT, which has no tumour: they
    count as validated for the pancreas only.
    """
    members = meta.get("members_meta")
    if members:
        common = set(CLASS_NAMES)
        for member in members:
            common &= set(validated_structures(member))
        return tuple(name for name in CLASS_NAMES if name in common)
    recorded = (meta.get("provenance") or {}).get("validated_structures")
    return tuple(recorded) if recorded is not None else ("pancreas",)


def tumour_warning(meta: dict[str, Any]) -> str:
    """What to say wherever an unvalidated model's tumour result is shown, else ``""``."""
    if "tumour" in validated_structures(meta):
        return ""
    return (
        "tumour unvalidated: this model was never checked against a real tumour, so its tumour "
        "labels are not to be trusted"
    )


#: Held-out Dice changes smaller than this are "about the same": a round holds out two or three
#: corrected slices, too few to tell smaller changes from noise.
HELD_OUT_TOLERANCE = 0.02


def fell_on_held_out(meta: dict[str, Any]) -> bool:
    """Whether a fine-tuned checkpoint scored lower than the model it came from on its held-out
    corrected slices (by more than :data:`HELD_OUT_TOLERANCE`): a model its own check advised
    against. The Review dock's Fine-tune button saves such a model too (a researcher may want
    it); a guarded round (``dsms refine``) never keeps one.
    """
    record = (meta.get("provenance") or {}).get("fine_tune") or {}
    before = (record.get("metrics_before") or {}).get("dice_pancreas")
    after = (record.get("metrics_after") or {}).get("dice_pancreas")
    if record.get("kept_previous") or before is None or after is None:
        return False
    return float(after) < float(before) - HELD_OUT_TOLERANCE


def _base_patients(learnt: dict[str, Any]) -> set[str]:
    """Training and validation patients of a continued model's base and its own bases."""
    patients = set(learnt.get("train_patients") or ()) | set(learnt.get("val_patients") or ())
    base = learnt.get("init_learnt")
    return patients | _base_patients(base) if base else patients


def fine_tune_rounds(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The fine-tuning records of a checkpoint, newest first (each round keeps the one before
    under ``"earlier"``: ``dsms refine --model round1.pt``, repeated Refine rounds); empty for
    a model that was not fine-tuned on corrections."""
    rounds, record = [], (meta.get("provenance") or {}).get("fine_tune")
    while isinstance(record, dict):
        rounds.append(record)
        record = record.get("earlier")
    return rounds


def fine_tuned_images(meta: dict[str, Any]) -> set[str]:
    """The CT files (resolved paths) a checkpoint was fine-tuned on, over all its rounds."""
    return {
        str(Path(str(record["source_image"])).resolve())
        for record in fine_tune_rounds(meta)
        if record.get("source_image")
    }


def _fine_tune_line(record: dict[str, Any]) -> str:
    """What a fine-tuning round says of itself: measured on the user's own held-out slices."""
    image = Path(str(record.get("source_image") or "")).name or "an image"
    before = (record.get("metrics_before") or {}).get("dice_pancreas")
    after = (record.get("metrics_after") or {}).get("dice_pancreas")
    held_out = len(record.get("holdout_slices") or [])
    rounds = len(fine_tune_rounds({"provenance": {"fine_tune": record}}))
    last = f" (the last of {rounds} rounds)" if rounds > 1 else ""
    if "steps" in record:  # the round's own length, beside the base's training line
        last += f" ({record['steps']} steps, {float(record.get('elapsed_s', 0.0)):.0f} s)"
    if before is None or after is None or not held_out:
        return f"Fine-tuned on corrections of {image}{last}; no held-out slice measured it."
    text = (
        f"Fine-tuned on corrections of {image}{last}: pancreas Dice {before:.3f} -> {after:.3f} "
        f"on {held_out} held-out corrected slice{'s' if held_out > 1 else ''} of that image, "
        "not on other patients"
    )
    if record.get("too_few_steps"):
        text += "; the round was too short to trust, the previous weights were kept"
    elif record.get("kept_previous"):
        text += "; the round was worse, the previous weights were kept"
    elif fell_on_held_out({"provenance": {"fine_tune": record}}):
        text += "; worse there than the model it came from"
    return text + "."


def _cross_validation_line(record: dict[str, Any]) -> str:
    """The recipe's cross-validated accuracy (``scripts/cross_validate.py``'s summary)."""
    text = (
        f"Cross-validated on {record['slice_patients']} unseen patients' slices "
        f"({record['folds']} folds): pancreas Dice {record['mean_patient_dice']:.3f} "
        f"+- {record['patient_dice_sd']:.3f}"
    )
    if record.get("volume_dice_clean_up") is not None:
        text += f"; a full volume held out of its fold {record['volume_dice_clean_up']:.3f}"
    return text + "."


def model_card(meta: dict[str, Any]) -> str:
    """A few lines on where a model comes from and how well it did, for menus and tooltips.

    Everything comes from the checkpoint itself (data, training patients, steps and time,
    validation Dice and on how many patients, validated structures), so a fine-tuned or
    user-trained model describes itself as the bundled ones do. Figures on unseen patients are in
    ``docs/models.md``.
    """
    members = meta.get("members_meta")
    if members:
        lines = [f"Ensemble: mean probability of {len(members)} models."]
        lines += [model_card(member).splitlines()[0] for member in members]
    else:
        provenance = meta.get("provenance") or {}
        config = meta.get("config") or {}
        lines = [f"{meta.get('arch', '?')}, width {config.get('width', '?')}."]
        data = "; ".join(provenance.get("data") or []) or "data not recorded"
        if provenance.get("phantoms"):
            data += f" + {provenance['phantoms']} phantoms"
        train = provenance.get("train_patients")
        lines.append(f"Data: {data}" + (f" ({len(train)} training cases)." if train else "."))
        if "steps" in provenance:
            minutes = float(provenance.get("elapsed_s", 0.0)) / 60
            continued = provenance.get("continued_from")
            planned = (provenance.get("config") or {}).get("steps")
            budget = (provenance.get("config") or {}).get("time_budget_s")
            # "steps" is where the kept checkpoint was saved: the best validation, not the end
            # of the run (a tester read "60 steps" for a 200-step run); a run limited by time
            # says so (the bundled ones read "of a 100000-step run" for 11 minutes).
            run = f"a run limited to {budget / 60:.0f} min" if budget else f"a {planned}-step run"
            steps = (
                f"best checkpoint at step {provenance['steps']} of {run}"
                if isinstance(planned, int) and planned > int(provenance["steps"])
                else f"{provenance['steps']} steps"
            )
            date = str(provenance.get("training_date") or provenance.get("date") or "")[:10]
            lines.append(
                f"Training{f' ({date})' if date else ''}: {steps}, {minutes:.1f} min on "
                f"{provenance.get('hardware') or provenance.get('device', '?')}"
                + (f", continuing {continued}." if continued else ".")
            )
        fine_tune = provenance.get("fine_tune")
        if fine_tune:
            lines.append(_fine_tune_line(fine_tune))
        dice = (meta.get("metrics") or {}).get("dice_pancreas")
        validation = provenance.get("val_patients")
        cross_validation = provenance.get("cross_validation")
        if cross_validation and not fine_tune:
            lines.append(_cross_validation_line(cross_validation))
        elif dice is not None and validation and not fine_tune:
            line = f"Pancreas Dice {dice:.3f} on {len(validation)} validation patients"
            seen = set(validation) & _base_patients(provenance.get("init_learnt") or {})
            if seen:  # dsms train --init: the base may have trained on them (a tester)
                line += f", {len(seen)} of whom the model it continued trained on"
            lines.append(line + ".")
    warning = tumour_warning(meta)
    lines.append(warning[0].upper() + warning[1:] + "." if warning else "Tumour validated.")
    return "\n".join(lines)
