"""Put the repository root first on ``sys.path``, so that the ``sente_lite/`` beside
``test_scripts/`` is the one imported (a vendored copy, or a clone not installed).

A scenario script's first import: ``import _repo  # noqa: F401``. It works when the
script is run directly (``python test_scripts/NN_name.py``: Python puts the script's
folder on ``sys.path``) and through ``run_all_tests.py``, which also sets ``PYTHONPATH``.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if sys.path[:1] != [ROOT]:
    sys.path.insert(0, ROOT)
