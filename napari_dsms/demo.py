"""``make demo``: napari with the plugin's dock widgets and a CT already open.

Opens the CT given on the command line (a NIfTI file or a DICOM folder), else the plugin's
synthetic sample CT, so that a new user sees the whole plugin at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import napari

PLUGIN = "napari-dsms"
WIDGETS = ("Load CT", "Segment", "Review and fine-tune")


def open_demo_viewer(path: str | None = None, viewer: napari.Viewer | None = None) -> napari.Viewer:
    """Return a viewer with the CT (or the sample phantom) open and the widgets docked."""
    viewer = viewer or napari.Viewer(title="napari-dsms")
    if path:
        viewer.open(path, plugin=PLUGIN)
    else:
        viewer.open_sample(PLUGIN, "phantom")
    for widget_name in WIDGETS:
        viewer.window.add_plugin_dock_widget(PLUGIN, widget_name)
    return viewer


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", help="a .nii / .nii.gz file or a DICOM folder")
    args = parser.parse_args(argv)
    open_demo_viewer(args.path)
    napari.run()


if __name__ == "__main__":
    main()
