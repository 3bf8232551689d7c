"""Where checkpoints live and how names resolve to files.

Two folders hold named checkpoints: the bundled ones inside the package (``<arch>.pt``) and the
user's model folder, where fine-tuned models go. The user folder is ``user_data_dir/models`` of
platformdirs, or ``$DSMS_MODEL_DIR`` when set (for shared servers and for tests). Every place that
takes a model name goes through :func:`resolve_checkpoint`, so names mean the same everywhere.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
import torch
from torch import nn

from ..nets.ensemble import ProbabilityAverage
from ..nets.registry import ARCHITECTURES
from .checkpoints import CheckpointError, load_checkpoint_file, read_metadata

BUNDLED_DIR = Path(__file__).parent / "weights"
MODEL_DIR_ENV = "DSMS_MODEL_DIR"
SUFFIX = ".pt"

#: Model name of the ensemble of the bundled models (:func:`load_ensemble`).
ENSEMBLE = "ensemble"

#: The bundled architectures the ensemble averages.
ENSEMBLE_MEMBERS = ARCHITECTURES


@dataclass(frozen=True)
class CheckpointEntry:
    """A named checkpoint for model menus.

    Attributes
    ----------
    name
        The file's stem, accepted by :func:`resolve_checkpoint` (a bundled name hides a user
        checkpoint of the same name; that one is still reachable by ``path``).
    path
        The file.
    bundled
        Whether it ships with the package (``False``: the user's model folder).
    arch
        Architecture declared in the file's metadata.
    """

    name: str
    path: Path
    bundled: bool
    arch: str


def user_model_dir() -> Path:
    """The user's model folder: ``$DSMS_MODEL_DIR`` if set, else platformdirs' data folder.

    The folder is not created here; :func:`~src_models.models.checkpoints.save_checkpoint` creates
    it.
    """
    override = os.environ.get(MODEL_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_data_dir("napari-dsms")) / "models"


def _named_files() -> list[tuple[Path, bool]]:
    """Checkpoint files of both folders, bundled first, each folder sorted by name."""
    found = []
    for folder, bundled in ((BUNDLED_DIR, True), (user_model_dir(), False)):
        if folder.is_dir():
            found += [(path, bundled) for path in sorted(folder.glob(f"*{SUFFIX}"))]
    return found


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> Path:
    """The checkpoint file that ``name_or_path`` means.

    In order: an existing file; a bundled checkpoint of that name (with a warning when the user
    model folder holds one of the same name too); a checkpoint of that stem in
    :func:`user_model_dir`.

    Raises
    ------
    CheckpointError
        Nothing matches; the message lists the available names and the folders searched.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    name = str(name_or_path)
    bundled, own = (folder / f"{name}{SUFFIX}" for folder in (BUNDLED_DIR, user_model_dir()))
    if bundled.is_file():
        if own.is_file():  # a researcher's own dsmsc_unet.pt lost to the bundled one unseen
            warnings.warn(
                f"{name!r} names the bundled model; your {own} has the same name and is not "
                "used: pass its path, or rename it",
                stacklevel=2,
            )
        return bundled
    if own.is_file():
        return own
    if candidate.is_dir():  # after the names: a folder called like a model must not hide it
        raise CheckpointError(f"{candidate}: is a folder, not a checkpoint file (.pt)")
    available = [*sorted({path.stem for path, _ in _named_files()}), ENSEMBLE]
    raise CheckpointError(
        f"{name}: no such checkpoint file or model name; available names: "
        f"{', '.join(available) or 'none'} (searched {BUNDLED_DIR} and {user_model_dir()}, "
        f"set {MODEL_DIR_ENV} to use another model folder)"
    )


def list_checkpoints() -> list[CheckpointEntry]:
    """Bundled and user checkpoints with their architectures, bundled first.

    Only metadata is read (weights are memory-mapped), so this is cheap enough for a menu. A
    file that is not a valid checkpoint is skipped with a warning naming it and the reason.
    """
    entries = []
    for path, bundled in _named_files():
        try:
            arch = read_metadata(path)["arch"]
        except CheckpointError as error:
            warnings.warn(f"skipping {error}", stacklevel=2)
            continue
        entries.append(CheckpointEntry(path.stem, path, bundled, arch))
    return entries


def _ensemble_meta(members: list[dict[str, Any]]) -> dict[str, Any]:
    """Checkpoint-like metadata of the ensemble of the checkpoints described by ``members``."""
    first = members[0]
    for meta in members[1:]:
        if meta["preprocessing"] != first["preprocessing"]:
            raise CheckpointError(
                f"{meta['path']}: preprocessing {meta['preprocessing']} differs from "
                f"{first['path']} ({first['preprocessing']}); they cannot be averaged"
            )
    return {
        **{key: first[key] for key in ("format", "format_version", "preprocessing", "class_names")},
        "arch": ENSEMBLE,
        "config": {"members": list(ENSEMBLE_MEMBERS)},
        "members": [m["path"] for m in members],
        "provenance": {"ensemble_of": list(ENSEMBLE_MEMBERS)},
        "metrics": {Path(m["path"]).stem: m["metrics"] for m in members},
        "members_meta": members,
        "path": ENSEMBLE,
    }


def ensemble_metadata() -> dict[str, Any]:
    """What :func:`load_ensemble` returns as ``meta``, from the members' metadata alone (cheap).

    Raises
    ------
    CheckpointError
        As :func:`load_ensemble`.
    """
    return _ensemble_meta(
        [read_metadata(BUNDLED_DIR / f"{arch}{SUFFIX}") for arch in ENSEMBLE_MEMBERS]
    )


def load_ensemble(map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The bundled models as one :class:`~src_models.nets.ensemble.ProbabilityAverage`.

    Returns
    -------
    model, meta
        As :func:`load_checkpoint`; ``meta["arch"]`` is :data:`ENSEMBLE`, ``meta["members"]``
        the member checkpoints, ``meta["members_meta"]`` their metadata and ``meta["metrics"]``
        their validation figures.

    Raises
    ------
    CheckpointError
        A bundled checkpoint is missing or damaged, or the members were trained with different
        preprocessing (their mean would mix two views of the scan).
    """
    loaded = [
        load_checkpoint_file(BUNDLED_DIR / f"{arch}{SUFFIX}", map_location)
        for arch in ENSEMBLE_MEMBERS
    ]
    meta = _ensemble_meta([m for _, m in loaded])
    return ProbabilityAverage([m for m, _ in loaded]).to(map_location).eval(), meta


def load_checkpoint(
    path_or_name: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint, safely.

    Parameters
    ----------
    path_or_name
        A checkpoint file, or a name resolved by :func:`resolve_checkpoint`
        (a bundled architecture such as ``"dsmsc_unet"`` or a checkpoint in the user's model
        folder), or :data:`ENSEMBLE` for :func:`load_ensemble`.
    map_location
        Device for the model; the file is always read to the CPU first.

    Returns
    -------
    model
        The network in evaluation mode.
    meta
        A plain dict with ``format``, ``format_version``, ``arch``, ``config``,
        ``preprocessing``, ``class_names``, ``provenance``, ``metrics`` and ``path`` (the
        resolved file): everything except the weights.

    Raises
    ------
    CheckpointError
        The name is unknown, or the file is missing, truncated, corrupt, of another format,
        refused because it asks to import or run code, lacks keys, or its weights do not match
        its declared architecture or class count. The message names the file.
    """
    if str(path_or_name) == ENSEMBLE and not Path(ENSEMBLE).is_file():
        return load_ensemble(map_location)
    return load_checkpoint_file(resolve_checkpoint(path_or_name), map_location)
