"""The paper's five architectures by name, and :func:`build_model`.

A name fixes the network class and the options that make the architecture what it is
(``skip_module``, ``restoration``); the size (``width``, ``depth``) and the channels stay free,
so tests build tiny models and checkpoints rebuild theirs from ``model.config``.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from .fcn import FCN
from .unet import UNet

#: The five architectures in the paper's order (Table 1).
ARCHITECTURES: tuple[str, ...] = ("fcn", "unet", "drs_unet", "kcmdrs_unet", "dsmsc_unet")

#: Name -> (class, the constructor arguments that define the architecture).
_DEFINITIONS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    # FCN takes neither option; naming them lets ``build_model("fcn", restoration=False)``
    # pass (a loop over the five architectures), and a contradiction fail, as for the others.
    "fcn": (FCN, {"skip_module": "none", "restoration": False}),
    "unet": (UNet, {"skip_module": "none", "restoration": False}),
    "drs_unet": (UNet, {"skip_module": "none", "restoration": True}),
    "kcmdrs_unet": (UNet, {"skip_module": "same_kernel", "restoration": True}),
    "dsmsc_unet": (UNet, {"skip_module": "multi_scale", "restoration": True}),
}

#: One line per architecture for menus and model cards.
DESCRIPTIONS: dict[str, str] = {
    "fcn": "FCN-8s baseline: encoder, three score layers fused by learned up-sampling; "
    "no restoration decoder.",
    "unet": "U-Net baseline with four down-samplings; no restoration decoder.",
    "drs_unet": "U-Net with a restoration decoder that restores the input from the bottom "
    "features (deep supervision).",
    "kcmdrs_unet": "DRS U-Net plus three parallel 3x3 convolutions on every skip connection; "
    "has a restoration decoder.",
    "dsmsc_unet": "The paper's model: DRS U-Net plus parallel 1x1, 3x3 and 5x5 convolutions on "
    "every skip connection; has a restoration decoder.",
}


def _check_name(name: str) -> None:
    if name not in _DEFINITIONS:
        raise KeyError(
            f"unknown architecture {name!r}; valid names are: {', '.join(ARCHITECTURES)}"
        )


def has_restoration(name: str) -> bool:
    """Whether architecture ``name`` has a restoration decoder (and returns a reconstruction).

    Raises
    ------
    KeyError
        If ``name`` is not one of :data:`ARCHITECTURES`; the message lists them.
    """
    _check_name(name)
    return bool(_DEFINITIONS[name][1].get("restoration", False))


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build architecture ``name`` with fresh weights.

    Parameters
    ----------
    name
        One of :data:`ARCHITECTURES`.
    **overrides
        Constructor arguments: ``width`` (32), ``depth`` (4), ``in_channels`` (1),
        ``num_classes`` (2). Arguments that define the architecture may be repeated with their
        own value, so ``build_model(cfg["arch"], **rest)`` works for any saved ``model.config``.

    Returns
    -------
    nn.Module
        The network; ``model.config`` is a JSON-able dict with ``arch`` and every constructor
        argument, enough to rebuild it. ``model(x)`` returns a
        :class:`~src_models.nets.SegmentationOutput`.

    Raises
    ------
    KeyError
        Unknown ``name``; the message lists the valid names.
    ValueError
        An override contradicts the architecture (e.g. ``skip_module`` for ``"unet"``).
    """
    _check_name(name)
    cls, fixed = _DEFINITIONS[name]
    for key, value in fixed.items():
        if key in overrides and overrides[key] != value:
            raise ValueError(
                f"{key}={overrides[key]!r} contradicts architecture {name!r} ({key}={value!r})"
            )
    accepted = inspect.signature(cls).parameters
    defining = {key: value for key, value in fixed.items() if key in accepted}
    model = cls(**{**{k: v for k, v in overrides.items() if k not in fixed}, **defining})
    model.config = {"arch": name, **model.config}
    return model
