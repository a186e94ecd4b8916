"""KARL studio from a checkout: ``python app.py [--checkpoint MODEL] [--host H] [--port P] ...``.

The command line lives in :mod:`app.cli` (installed as ``karl-app``); ``python app.py --help``
lists the options. See docs/APP.md.
"""

from app.cli import LOOPBACK_HOSTS, main, parse_args, server_paths_allowed, warmup  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
