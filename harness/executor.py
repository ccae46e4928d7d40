"""The executor contract: run a list of cells, each in its own process where possible.

``run(cells, work)`` calls ``work(cell)`` (a picklable top-level function) for every
cell and returns one result dict per cell, in order.  A cell whose process dies is
reported as ``{"status": "failed", "error": ...}``; the others go on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar


class Executor:
    name: ClassVar[str] = ""

    def __init__(self, **options: Any):
        self.options = options

    def run(self, cells: list[dict[str, Any]], work: Callable[[dict[str, Any]], dict[str, Any]]
            ) -> list[dict[str, Any]]:
        raise NotImplementedError
