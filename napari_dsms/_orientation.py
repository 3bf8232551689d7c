"""Orientation markers: which anatomical direction is up, down, left and right on screen.

Every layer of this plugin holds the canonical (S, P, L) array (:mod:`src_models.io.orientation`),
so the anatomy of each array axis is known: axis 0 runs Inferior -> Superior, axis 1 Anterior ->
Posterior, axis 2 Right -> Left. On napari's 2D canvas the first displayed axis runs down the
screen and the second to the right, so the markers follow from which two axes are shown. A
radiologist checks them first (an axial slice shows anterior at the top and the patient's right
on the left); in 3D, where the camera can turn, none are shown.
"""

from __future__ import annotations

from typing import Any

#: (direction at index 0, direction at the last index) of each canonical axis.
AXIS_DIRECTIONS = (("I", "S"), ("A", "P"), ("R", "L"))

#: Marker text is recognised by this prefix, so a user's own overlay text is left alone.
PREFIX = "orientation: "


def markers(displayed: tuple[int, ...], ndim: int) -> str:
    """``"orientation: top A, bottom P, left R, right L"`` for the displayed axes, or ``""``.

    Parameters
    ----------
    displayed
        napari's ``viewer.dims.displayed`` (two axes on the 2D canvas).
    ndim
        Number of dimensions of the viewer; markers need exactly the three canonical ones.
    """
    if ndim != 3 or len(displayed) != 2:
        return ""
    (top, bottom), (left, right) = (AXIS_DIRECTIONS[axis] for axis in displayed)
    return f"{PREFIX}top {top}, bottom {bottom}, left {left}, right {right}"


def _text_overlay(viewer: Any) -> Any:
    """The canvas text overlay: ``viewer.canvas.overlays.text`` since napari 0.9."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    return overlays.text if overlays is not None else viewer.text_overlay


def attach(viewer: Any) -> None:
    """Show the markers in ``viewer``'s text overlay and keep them right as the view changes."""

    def update(*_: Any) -> None:
        overlay = _text_overlay(viewer)
        text = markers(tuple(viewer.dims.displayed), viewer.dims.ndim)
        if text:
            overlay.text, overlay.position, overlay.visible = text, "top_left", True
        elif overlay.text.startswith(PREFIX):
            overlay.text, overlay.visible = "", False

    for event in ("order", "ndisplay", "ndim"):
        getattr(viewer.dims.events, event).connect(update)
    update()
