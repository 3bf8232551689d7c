"""Packaging for napari-dsms: the napari plugin and its screen-less engine ``src_models``."""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "src_models" / "version.py").read_text(encoding="utf-8")
).group(1)

setup(
    name="napari-dsms",
    version=VERSION,
    description=(
        "Pancreas and pancreatic-tumour segmentation of abdominal CT in napari with the "
        "deeply supervised multi-scale U-Net family: review, correct, export, fine-tune."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["napari_dsms", "napari_dsms.*", "src_models", "src_models.*"]),
    package_data={
        "napari_dsms": ["napari.yaml"],
        "src_models": ["models/weights/*.pt", "models/weights/*.json"],
    },
    install_requires=[
        "napari>=0.5",
        "magicgui>=0.8",
        "qtpy>=2.0",
        "torch>=2.2",
        "nibabel>=5.0",
        "numpy>=1.24",
        "pydicom>=2.4",
        "highdicom>=0.23",
        "scipy>=1.10",
        "platformdirs>=3.0",
        "tqdm>=4.60",
    ],
    extras_require={
        "qt": ["napari[pyqt6]"],
        # Peers timed by benchmarks/inference_speed.py --monai; never needed to run the product.
        "bench": ["monai>=1.6"],
        "testing": [
            "napari[pyqt6]",
            "pytest>=7",
            "pytest-qt>=4",
            "pytest-xvfb>=3",
            "ruff>=0.5",
            "import-linter>=2.1",
        ],
    },
    entry_points={
        "console_scripts": ["dsms = src_models.cli:console"],
        "napari.manifest": ["napari-dsms = napari_dsms:napari.yaml"],
    },
    classifiers=[
        "Framework :: napari",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
