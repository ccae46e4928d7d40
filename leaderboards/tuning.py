"""The tuning statement of a tuned grid: budget, search space and chosen values per objective.

Cells of a grid written by ``kdbench tune`` carry two tags: ``kdbench.tuning`` (the
budget, sampler, tuning seeds, teachers, schedule and the trials' experiment and grid)
and ``kdbench.tuned`` (this objective's search space, chosen values, trial count and best
tuning score).  Nothing is shown for grids that were not tuned.
"""

from __future__ import annotations

import json

import pandas as pd

from harness.schema import Kind
from leaderboards.tables import Table, objective_order, row_key


def _load(text) -> dict:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def tuning_table(df: pd.DataFrame) -> Table | None:
    """One row per objective variant of the tuned cells; None when no cell was tuned."""
    if "tuned" not in df:
        return None
    cells = df[(df["kind"] == Kind.CELL) & df["tuned"].notna()]
    if cells.empty:
        return None
    keys = row_key(cells)
    rows, settings = [], set()
    for label in objective_order(keys):
        group = cells[keys == label]
        record = _load(group["tuned"].iloc[-1])
        settings |= {str(t) for t in group["tuning"].dropna()}
        space = record.get("space", {})
        chosen = record.get("chosen", {})
        rows.append(
            {
                "objective": label,
                "search space": "; ".join(f"{k}: {v}" for k, v in space.items()),
                "chosen": ", ".join(
                    f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items()
                )
                or "(no trial finished: grid options)",
                "trials": str(record.get("trials", "")),
                "tuning score": "" if record.get("score") is None else f"{record['score']:.4g}",
            }
        )
    display = pd.DataFrame(rows).set_index("objective")
    notes = []
    for text in sorted(settings):
        s = _load(text)
        notes.append(
            f"Equal budget: {s.get('budget')} trials per objective, {s.get('sampler')}; "
            f"scored by mean {s.get('metric')} over tuning seeds {s.get('seeds')} "
            f"(disjoint from the final seeds) and teachers {', '.join(s.get('teachers', []))} "
            f"at {s.get('steps')} steps; trials in experiment {s.get('experiment')}, "
            f"grid {s.get('grid_id')}."
        )
    notes.append("Objectives without a row had nothing to tune and ran as they are.")
    return Table(title="Tuning (kdbench tune)", data=display.copy(), display=display, notes=notes)
