"""Equal-budget tuning: the same K quasi-random trials for every objective (``kdbench tune``).

After AlgoPerf's external tuning ruleset (Dahl et al., 2023, arXiv 2306.07179): each
objective declares its search space (``Objective.tunables``), every objective gets the
same budget of K trials drawn from a scrambled Sobol (or Halton) sequence with a fixed
seed (``scipy.stats.qmc``), trials are scored on tuning seeds that the final table never
reports, and the best trial per objective (mean of the metric over tuning seeds and
teachers) is written into a grid file that ``kdbench run`` turns into the final table.

Choices: options an entry sets itself stay fixed (they define the variant); objectives
with nothing to tune (``none``) run once as they are, as a reference.  Repeated points
(possible when only choices are tuned) are run once, and the note says so.  A trial with
a diverged cell scores worst and is never chosen; one with a failed or missing cell is
not eligible either.  An objective without an eligible trial keeps its grid options.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from harness.config import (
    ConfigError,
    GridConfig,
    Variant,
    config_from_dict,
    experiment_name,
    format_option,
    variant_space,
    variants,
)
from harness.schema import Kind, Status
from harness.tunables import Tunable

HIGHER_IS_BETTER = {"isc_mean", "precision", "recall", "class_acc"}


@dataclass
class Trial:
    label: str
    values: dict[str, Any]  # "weight" or "part.option" -> value
    options: dict[str, dict[str, Any]]  # per part, as an objectives entry gives them
    score: float = math.nan
    state: str = "pending"  # scored | diverged | incomplete


@dataclass
class Plan:
    """A tuning grid (ordinary cells) and, per objective variant, its trials."""

    config: GridConfig
    space: dict[str, dict[str, Tunable]]
    trials: dict[str, list[Trial]]
    variants: list[Variant]
    repeats: dict[str, int] = field(default_factory=dict)


def _points(dims: int, budget: int, sampler: str, seed: int) -> list[list[float]]:
    from scipy.stats import qmc

    engine = (qmc.Sobol if sampler == "sobol" else qmc.Halton)(d=dims, scramble=True, seed=seed)
    with warnings.catch_warnings():  # Sobol's note on non-powers of two: K is the user's
        warnings.simplefilter("ignore", UserWarning)
        return engine.random(budget).tolist()


def trial_label(v: Variant, values: dict[str, Any]) -> str:
    shown = ",".join(f"{k}={format_option(x)}" for k, x in values.items())
    return f"{v.label}[{shown}]" if shown else v.label


def plan(cfg: GridConfig, source: str = "<grid>") -> Plan:
    """The tuning grid: tuning seeds, chosen teachers, shorter schedule, one entry per trial."""
    tune = cfg.tune
    if tune is None:
        raise ConfigError(f"{source}: no [tune] section (budget, seeds, ...) to tune with")
    every = variants(cfg)
    space = {v.label: variant_space(cfg, v) for v in every}
    trials: dict[str, list[Trial]] = {}
    repeats: dict[str, int] = {}
    entries = []
    for v in every:
        dims = space[v.label]
        points = _points(len(dims), tune.budget, tune.sampler, tune.sampler_seed) if dims else [[]]
        seen: list[Trial] = []
        for point in points:
            values = {k: spec.value(u) for (k, spec), u in zip(dims.items(), point)}
            if any(t.values == values for t in seen):
                continue
            options = {p: dict(o) for p, o in v.options.items()}
            for key, value in values.items():
                part, _, option = key.rpartition(".")
                options.setdefault(part or v.spec[0]["name"], {})[option] = value
            seen.append(Trial(trial_label(v, values), values, options))
        if dims and len(seen) < tune.budget:
            repeats[v.label] = tune.budget - len(seen)
        trials[v.label] = seen
        for t in seen:
            entries.append({"name": v.name, "label": t.label, **t.options})
    data = cfg.model_dump(mode="json", exclude_none=True)
    data.pop("tune", None)
    data.pop("tuned", None)
    data["objectives"] = entries
    data["grid"]["name"] = f"{cfg.grid.name}-tune"
    data["grid"]["seeds"] = list(tune.seeds)
    if tune.teachers:
        data["teachers"] = [t for t in data["teachers"] if _cap_name(t) in tune.teachers]
    if tune.steps:
        data["train"]["steps"] = tune.steps
    data.setdefault("tracking", {})["experiment"] = f"{experiment_name(cfg)}-tune"
    trial_cfg = config_from_dict(data, source=f"{source} (tuning trials)")
    return Plan(trial_cfg, space, trials, every, repeats)


def _cap_name(data: dict[str, Any]) -> str:
    from harness.config import Capacity

    return Capacity.model_validate(data).name


def score(plan: Plan, runs: Any, metric: str) -> None:
    """Score every trial from the tuning grid's runs (one row per MLflow run).

    Mean of ``metric`` over the trial's cells (tuning seeds x teachers); the latest run of
    each cell counts.  Any diverged cell makes the trial worst; a failed or missing cell
    makes it ineligible.
    """
    import numpy as np

    cells = runs[runs["kind"] == Kind.CELL].sort_values("start_time")
    cells = cells.drop_duplicates("cell_id", keep="last")
    expected = len(plan.config.teachers) * len(plan.config.students) * len(plan.config.grid.seeds)
    worst = -math.inf if metric in HIGHER_IS_BETTER else math.inf
    for trials in plan.trials.values():
        for t in trials:
            rows = cells[cells["objective_label"] == t.label]
            finished = rows[rows["status"] == Status.FINISHED]
            diverged = int((rows["status"] == Status.DIVERGED).sum())
            values = finished[metric].to_numpy(dtype=float)
            if diverged:
                t.state, t.score = "diverged", worst
            elif len(finished) < expected or not np.isfinite(values).all():
                t.state, t.score = "incomplete", math.nan
            else:
                t.state, t.score = "scored", float(values.mean())


def best(trials: list[Trial], metric: str) -> Trial | None:
    """The best fully finished trial (ties: the earlier one in the sequence), else None."""
    eligible = [t for t in trials if t.state == "scored"]
    if not eligible:
        return None
    sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    return min(eligible, key=lambda t: sign * t.score)


def tuned_grid(source: Path, cfg: GridConfig, p: Plan, grid_id: str, out: Path) -> str:
    """The source grid file with each objective at its best trial, plus a ``[tuned]`` record."""
    import tomli_w

    tune = cfg.tune
    raw = tomllib.loads(source.read_text())
    raw.pop("tune", None)
    entries, record = [], {}
    for v in p.variants:
        space = p.space[v.label]
        if not space:
            entries.append(raw["objectives"][v.index])
            continue
        chosen = best(p.trials[v.label], tune.metric)
        options = chosen.options if chosen else v.options
        if len(v.spec) == 1:  # a single objective takes its options directly
            entries.append({"name": v.name, "label": v.label, **options.get(v.name, {})})
        else:
            entries.append({"name": v.name, "label": v.label, **options})
        entry: dict[str, Any] = {
            "space": {k: spec.describe() for k, spec in space.items()},
            "chosen": dict(chosen.values) if chosen else {},
            "trials": len(p.trials[v.label]),
        }
        if chosen is not None and math.isfinite(chosen.score):
            entry["score"] = round(chosen.score, 6)
        record[v.label] = entry
    raw["objectives"] = entries
    raw["tuned"] = {
        "budget": tune.budget,
        "seeds": list(tune.seeds),
        "sampler": f"{tune.sampler} (scrambled, seed {tune.sampler_seed})",
        "metric": tune.metric,
        "teachers": [t.name for t in p.config.teachers],
        "steps": p.config.train.steps,
        "experiment": experiment_name(p.config),
        "grid_id": grid_id,
        "objectives": record,
    }
    shipped = raw.get("cache", {}).get("shipped")
    if shipped and not Path(shipped).is_absolute():
        target = (source.parent / shipped).resolve()
        raw["cache"]["shipped"] = os.path.relpath(target, out.parent.resolve())
    header = (
        f"# Written by `kdbench tune {source}` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC: that grid with each objective\n"
        f"# at its best of {tune.budget} trials ([tuned] records how).  "
        f"`kdbench run {out}` gives the final table.\n"
    )
    return header + tomli_w.dumps(raw)


def summary(p: Plan, metric: str) -> list[list[str]]:
    """Rows for the command line: objective, trial, score, state, chosen mark."""
    rows = []
    for label, trials in p.trials.items():
        if not p.space[label]:
            rows.append([label, "(nothing to tune)", "", "", ""])
            continue
        top = best(trials, metric)
        for t in trials:
            shown = "" if math.isnan(t.score) else f"{t.score:.4g}"
            rows.append([label, t.label, shown, t.state, "*" if t is top else ""])
    return rows
