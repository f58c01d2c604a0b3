"""``python -m sente_lite``: the ``sente-lite`` command line."""

import sys

from .cli import main

sys.exit(main())
