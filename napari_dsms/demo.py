"""``make demo``: napari with the plugin's dock widgets and a CT already open.

Opens the CT given on the command line (a NIfTI file or a DICOM folder), else the plugin's
synthetic sample CT, so that a new user sees the whole plugin at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import napari
from qtpy.QtGui import QGuiApplication

from ._widgets._scroll import STACK_PROPERTY, TABIFY_BELOW_PX

PLUGIN = "napari-dsms"
WIDGETS = ("Load CT", "Segment", "Review and fine-tune")


def open_demo_viewer(
    path: str | None = None, viewer: napari.Viewer | None = None, tabify: bool | None = None
) -> napari.Viewer:
    """Return a viewer with the CT (or the sample phantom) open and the widgets docked.

    ``tabify`` puts the docks in tabs, the Review dock in front; ``None`` does so on screens
    less than :data:`TABIFY_BELOW_PX` tall.
    """
    viewer = viewer or napari.Viewer(title="napari-dsms")
    if path:
        viewer.open(path, plugin=PLUGIN)
    else:
        viewer.open_sample(PLUGIN, "phantom")
    if tabify is None:
        screen = QGuiApplication.primaryScreen()
        tabify = screen is not None and screen.availableGeometry().height() < TABIFY_BELOW_PX
    for widget_name in WIDGETS:
        dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, widget_name, tabify=tabify)
    dock.raise_()  # the last, the Review dock, in front when tabbed
    # before the docks' first show event: stacked asked for stays stacked on a short window
    dock.window().setProperty(STACK_PROPERTY, not tabify)
    return viewer


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", help="a .nii / .nii.gz file or a DICOM folder")
    args = parser.parse_args(argv)
    open_demo_viewer(args.path)
    napari.run()


if __name__ == "__main__":
    main()
