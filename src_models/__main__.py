"""``python -m src_models`` runs the ``dsms`` command."""

import sys

from .cli import console

sys.exit(console())
