"""Orientation markers: which anatomical direction is up, down, left and right on screen.

Every layer of this plugin holds the canonical (S, P, L) array (:mod:`src_models.io.orientation`),
so the anatomy of each array axis is known: axis 0 runs Inferior -> Superior, axis 1 Anterior ->
Posterior, axis 2 Right -> Left. On napari's 2D canvas the first displayed axis runs down the
screen and the second to the right, so the markers follow from which two axes are shown. A
radiologist checks them first (an axial slice shows anterior at the top and the patient's right
on the left); in 3D, where the camera can turn, none are shown.
"""

from __future__ import annotations

import weakref
from typing import Any

from napari.layers import Image

from ._layers import has_file_geometry

#: (direction at index 0, direction at the last index) of each canonical axis.
AXIS_DIRECTIONS = (("I", "S"), ("A", "P"), ("R", "L"))

#: Marker text is recognised by this prefix, so a user's own overlay text is left alone.
PREFIX = "orientation: "

#: Viewers whose markers are kept up to date already.
_ATTACHED: weakref.WeakSet = weakref.WeakSet()

#: Slider labels of the canonical axes: the slices each slider steps through.
AXIS_LABELS = ("axial", "coronal", "sagittal")


def _camera(viewer: Any) -> Any:
    """The viewer's camera: ``viewer.scene.camera`` since napari 0.9 (``viewer.camera`` is
    deprecated there, and its warning reached users as a toast), ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def named_axes(labels: tuple[str, ...]) -> tuple[str, ...]:
    """:data:`AXIS_LABELS` in place of napari's numbered defaults (``-3``, ``0`` ...) of three
    axes; a user's own names are kept. A tester read the axial slider's ``-3`` as a value."""
    numbered = all(label.lstrip("-").isdigit() for label in labels)
    return AXIS_LABELS if len(labels) == 3 and numbered else tuple(labels)


def markers(
    displayed: tuple[int, ...], ndim: int, orientation2d: tuple[Any, Any] = ("down", "right")
) -> str:
    """``"orientation: left R, right L\ntop A, bottom P"`` for the displayed axes, or ``""``.

    Left and right come first: napari's canvas cuts the overlay's line at its width, and at the
    default window size with the docks open only about 35 characters showed, the R/L part lost.

    Parameters
    ----------
    displayed
        napari's ``viewer.dims.displayed`` (two axes on the 2D canvas).
    ndim
        Number of dimensions of the viewer; markers need exactly the three canonical ones.
    orientation2d
        napari's ``viewer.camera.orientation2d``: whether the vertical axis points down or up
        the screen, the horizontal one right or left.
    """
    if ndim != 3 or len(displayed) != 2:
        return ""
    (first_v, last_v), (first_h, last_h) = (AXIS_DIRECTIONS[axis] for axis in displayed)
    vertical, horizontal = (str(getattr(o, "value", o)) for o in orientation2d)
    top, bottom = (first_v, last_v) if vertical == "down" else (last_v, first_v)
    left, right = (first_h, last_h) if horizontal == "right" else (last_h, first_h)
    return f"{PREFIX}left {left}, right {right}\ntop {top}, bottom {bottom}"


def _caveat(text: str, layers: list[Any]) -> str:
    """``text`` as it holds for ``layers`` (the visible ones): the markers describe the arrays
    of napari-dsms, not those of another reader, whose orientation nobody knows (a tester saw
    an upside-down slice labelled "top A, bottom P")."""
    images = [layer for layer in layers if isinstance(layer, Image)]
    foreign = [layer.name for layer in images if not has_file_geometry(layer)]
    if not text or not foreign:
        return text
    if len(foreign) == len(images):
        return f"{PREFIX}unknown ({foreign[0]} came from another reader)"
    return f"{text}\n(not for {foreign[0]}: from another reader)"


def _text_overlay(viewer: Any) -> Any:
    """The canvas text overlay: ``viewer.canvas.overlays.text`` since napari 0.9."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    return overlays.text if overlays is not None else viewer.text_overlay


def attach(viewer: Any) -> None:
    """Show the markers in ``viewer``'s text overlay and keep them right as the view changes.

    When the head-feet axis runs down the screen (a coronal or sagittal view), the camera's
    vertical axis is turned up (napari's ``camera.orientation2d``), so the head is at the top
    as radiologists read those views; in the axial view it points down again (anterior at the
    top). A user's own later change of the camera is followed by the markers. Each dock calls
    it (the slider read "-3" with the Load CT dock alone, a tester); a viewer is attached once.
    """
    if viewer in _ATTACHED:
        return
    _ATTACHED.add(viewer)

    def update(*_: Any) -> None:
        overlay = _text_overlay(viewer)
        text = markers(
            tuple(viewer.dims.displayed), viewer.dims.ndim, tuple(_camera(viewer).orientation2d)
        )
        text = _caveat(text, [layer for layer in viewer.layers if layer.visible])
        if text:
            overlay.text, overlay.position, overlay.visible = text, "top_left", True
        elif overlay.text.startswith(PREFIX):
            overlay.text, overlay.visible = "", False

    def orient(*_: Any) -> None:
        labels = named_axes(tuple(viewer.dims.axis_labels))
        if labels != tuple(viewer.dims.axis_labels):
            viewer.dims.axis_labels = labels
        displayed = tuple(viewer.dims.displayed)
        if viewer.dims.ndim == 3 and len(displayed) == 2:
            horizontal = _camera(viewer).orientation2d[1]
            _camera(viewer).orientation2d = ("up" if displayed[0] == 0 else "down", horizontal)
        update()

    def watch(layer: Any) -> None:  # a layer from another reader changes what holds
        layer.events.visible.connect(update)

    for event in ("order", "ndisplay", "ndim"):
        getattr(viewer.dims.events, event).connect(orient)
    for layer in viewer.layers:
        watch(layer)
    viewer.layers.events.inserted.connect(lambda event: (watch(event.value), update()))
    viewer.layers.events.removed.connect(update)
    _camera(viewer).events.orientation2d.connect(update)
    orient()
