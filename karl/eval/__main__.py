"""``python -m karl.eval``: the same as ``karl-eval``."""

import sys

from karl.eval.cli import main

sys.exit(main())
