"""Where reprozoo keeps what it fetches or derives (trees, dataset copies, token caches, weights).

A leaf (standard library only), so that the data, the weights and the zoo all find it from below.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$REPROZOO_CACHE_DIR, else ~/.cache/reprozoo."""
    return Path(os.environ.get("REPROZOO_CACHE_DIR", Path.home() / ".cache" / "reprozoo"))
