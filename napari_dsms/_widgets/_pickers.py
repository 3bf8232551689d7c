"""Layer pickers: magicgui combo boxes whose choices follow a viewer's layers.

magicgui's napari layer types fill a combo box from the viewer a widget is docked in, found
through the Qt parent chain; these docks also work undocked (tests, scripts), so the choices are
bound to the dock's own viewer instead, and refreshed on the same events napari uses (a layer
added, removed, moved or renamed). A picker keeps its choice while that layer exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from magicgui.widgets import ComboBox
from napari.layers import Layer

#: ``(text, value)`` pairs a picker lists, computed from the viewer's layers.
Entries = Callable[[Iterable[Layer]], list[tuple[str, Any]]]


def unwrap(layer: Any) -> Any:
    """The layer itself behind napari's plugin proxy.

    napari hands manifest widgets a viewer that wraps every layer it returns in a fresh proxy,
    so ``is`` and ``==`` would tell two views of one layer apart.
    """
    return getattr(layer, "__wrapped__", layer)


def same_layer(a: Any, b: Any) -> bool:
    """Whether two references (possibly proxies) point to the same layer."""
    return unwrap(a) is unwrap(b)


def of_kind(accept: Callable[[Layer], bool]) -> Entries:
    """Entries of the layers ``accept`` admits, by name, bottom to top."""
    return lambda layers: [(layer.name, layer) for layer in layers if accept(layer)]


def layer_picker(viewer: Any, entries: Entries, label: str = "", tooltip: str = "") -> ComboBox:
    """A magicgui ``ComboBox`` listing ``entries(viewer.layers)``, kept up to date.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layers are listed.
    entries
        Builds ``(text, value)`` pairs from the (unwrapped) layers; :func:`of_kind` for plain
        layer pickers.
    label, tooltip
        magicgui's label and tooltip.
    """
    picker = ComboBox(
        label=label,
        tooltip=tooltip or None,
        choices=lambda _widget: entries([unwrap(layer) for layer in viewer.layers]),
    )

    def watch(event: Any) -> None:
        event.value.events.name.connect(picker.reset_choices)
        picker.reset_choices()

    def unwatch(event: Any) -> None:
        event.value.events.name.disconnect(picker.reset_choices)
        picker.reset_choices()

    viewer.layers.events.inserted.connect(watch)
    viewer.layers.events.removed.connect(unwatch)
    viewer.layers.events.moved.connect(picker.reset_choices)
    for layer in viewer.layers:
        layer.events.name.connect(picker.reset_choices)
    return picker


def choose(picker: ComboBox, value: Any) -> bool:
    """Select ``value`` (a layer, or an entry's value) if listed; whether it was."""
    for choice in picker.choices:
        if choice is not None and _same_choice(choice, value):
            picker.value = choice
            return True
    return False


def _same_choice(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same_choice(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Layer) or isinstance(b, Layer):
        return same_layer(a, b)
    return a == b
