"""``karl-eval`` and ``python -m karl.evaluate``: kept as the entry point; the code lives in
:mod:`karl.eval` (regimes, sources, results, runner, summary, rfid, cli).

Every public name of the former single module is re-exported here, so existing imports
(``from karl.evaluate import main, EvalError, ...``) keep working.
"""

from __future__ import annotations

import sys

from karl.eval import *  # noqa: F401,F403  (the re-exports are this module's purpose)
from karl.eval import __all__  # noqa: F401
from karl.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
