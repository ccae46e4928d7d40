"""Content identities: a short, stable hash of JSON-able settings.

Grid cells, teachers and cached models are named by what determines them, so equal
settings give the same id on every machine and run (keys sorted, compact separators,
non-JSON values by ``str``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(obj: Any, n: int = 12) -> str:
    """The first ``n`` hex digits of SHA-256 over ``obj``'s canonical JSON."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]
