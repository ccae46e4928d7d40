"""The executor contract: run a list of cells, each in its own process where possible.

``run(cells, work)`` calls ``work(cell)`` (a picklable top-level function) for every
cell and returns one result dict per cell, in order.  A cell whose process dies is
reported as ``{"status": "failed", "error": ...}``; the others go on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar


class Executor:
    name: ClassVar[str] = ""

    def __init__(self, **options: Any):
        self.options = options

    def run(
        self, cells: list[dict[str, Any]], work: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> list[dict[str, Any]]:
        raise NotImplementedError


class GridInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the grid; ``results`` holds one dict per cell, in the order of cells."""

    def __init__(self, results: list[dict[str, Any]]):
        counts = Counter(r["status"] for r in results)
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        super().__init__(f"grid interrupted ({summary})")
        self.results = results
