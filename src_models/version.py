"""The one version string of napari-dsms (engine and plugin); ``setup.py`` reads it from here."""

__version__ = "0.2.0"
