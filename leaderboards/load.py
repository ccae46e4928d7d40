"""MLflow runs -> one typed pandas row per run, plus the metadata a leaderboard prints.

Columns: run_id, run_name, experiment, experiment_id, mlflow_status, start_time, end_time;
the ``kdbench.*`` tags without their prefix (kind, grid_id, grid_name, cell_id, status,
git_commit, version, fid_features, teacher_mode, torch_fidelity, fid_reference, teacher_id, tuning, tuned); every param (known numeric ones typed: nullable Int64
for counts and sizes, float for ``lr``; the rest strings); every metric's last value as
float.  ``status`` falls back to MLflow's own status (lower case) when the tag is missing.
A param whose name collides with a metric or tag column is stored as ``param:<name>``.
A grid's own run (``kdbench.kind=grid``, the parent that holds the rendered leaderboard) is
left out: tables are rebuilt from the cell and teacher runs alone.

A teacher-independent cell (the no-KD baseline, run once for all teachers; tag
``kdbench.shared_teachers``) becomes one row per teacher it stands for, with that
teacher's name and size and the same ``run_id``: every table, plot and seed-paired
statistic then finds the baseline at each teacher.  Count runs with ``run_id.nunique()``.

``objective_label`` is the leaderboard's row key: one value per objective *specification*
(name and every option).  It is the run's label (``objective`` for runs that predate
labels); when runs with one label carry different options (e.g. ``lift`` at L1 in one grid
and at L2 in another), each gets the options that tell them apart, ``lift {coarse=l2}``,
so that runs whose options differ are never averaged together.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from typing import Any

import pandas as pd

from harness.errors import TrackingError
from harness.schema import (
    FLOAT_PARAMS,
    INT_PARAMS,
    STR_PARAMS,
    TABLE_METRICS,
    TABLE_TAGS,
    Kind,
    Tag,
)
from harness.tracking import mask_uri, open_client, resolve_uri

TAGS = tuple(tag.column for tag in TABLE_TAGS)
METRICS = tuple(str(metric) for metric in TABLE_METRICS)
BASE = (
    "run_id",
    "run_name",
    "experiment",
    "experiment_id",
    "mlflow_status",
    "start_time",
    "end_time",
)


def _quote(value: str) -> str:
    return f"'{value}'" if "'" not in value else f'"{value}"'


def _experiments(client, names: Iterable[str] | None, uri: str) -> list:
    from mlflow.entities import ViewType

    every = []
    token = None
    while True:
        page = client.search_experiments(
            view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token
        )
        every.extend(page)
        token = page.token
        if not token:
            break
    if names is None:
        return every
    by_name = {e.name: e for e in every}
    missing = [n for n in names if n not in by_name]
    if missing:
        known = ", ".join(sorted(by_name)) or "none"
        raise TrackingError(
            f"no experiment named {', '.join(map(repr, missing))} in "
            f"{mask_uri(uri)}; experiments there: {known}"
        )
    return [by_name[n] for n in names]


def _search(client, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _row(run, experiment_names: dict[str, str]) -> dict:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    row = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment": experiment_names.get(run.info.experiment_id),
        "experiment_id": run.info.experiment_id,
        "mlflow_status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
    }
    for tag in TABLE_TAGS:
        row[tag.column] = tags.get(tag)
    if row["status"] is None:
        row["status"] = str(run.info.status).lower()
    row.update({k: float(v) for k, v in metrics.items()})
    for key, value in params.items():
        row[f"param:{key}" if key in row else key] = value
    return row


def _typed(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in BASE + TAGS + STR_PARAMS + INT_PARAMS + FLOAT_PARAMS + METRICS:
        if col not in df.columns:
            df[col] = pd.Series([None] * len(df), dtype=object)
    for col in INT_PARAMS:
        df[col] = pd.to_numeric(df[col], errors="coerce").round().astype("Int64")
    for col in FLOAT_PARAMS + METRICS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in ("start_time", "end_time"):
        df[col] = pd.to_datetime(pd.to_numeric(df[col], errors="coerce"), unit="ms", utc=True)
    for col in (
        TAGS + STR_PARAMS + ("run_id", "run_name", "experiment", "experiment_id", "mlflow_status")
    ):
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    front = [c for c in BASE + TAGS + STR_PARAMS + INT_PARAMS + FLOAT_PARAMS + METRICS]
    rest = sorted(c for c in df.columns if c not in front)
    return df[front + rest].reset_index(drop=True)


def _teacher_sizes(df: pd.DataFrame) -> tuple[dict, dict]:
    """Teacher parameter counts by (grid_id, teacher) and by teacher, from the other runs."""
    known = df[df["shared_teachers"].isna() & df["teacher"].notna() & df["teacher_params"].notna()]
    by_grid = known.groupby(["grid_id", "teacher"], dropna=True)["teacher_params"].first()
    by_name = known.groupby("teacher")["teacher_params"].first()
    return by_grid.to_dict(), by_name.to_dict()


def _members(text: Any) -> list[tuple[str, str | None]]:
    """The (teacher, teacher_id) pairs of a ``kdbench.shared_teachers`` tag (names alone too)."""
    try:
        items = json.loads(text)
    except (TypeError, ValueError):
        return []
    if not isinstance(items, list):
        return []
    return [
        (str(m.get("teacher")), m.get("teacher_id")) if isinstance(m, dict) else (str(m), None)
        for m in items
    ]


def spread_shared_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Each teacher-independent cell once per teacher it stands for (see the module doc)."""
    shared = (df["kind"] == Kind.CELL) & df["shared_teachers"].notna()
    if not shared.any():
        return df
    by_grid, by_name = _teacher_sizes(df)
    index, teachers, ids, copies = [], [], [], []
    for i in df.index:
        members = [(df.at[i, "teacher"], df.at[i, "teacher_id"])]
        if shared[i]:
            members = _members(df.at[i, "shared_teachers"]) or members
        index += [i] * len(members)
        teachers += [name for name, _ in members]
        ids += [teacher_id for _, teacher_id in members]
        copies += [bool(shared[i])] * len(members)
    out = df.loc[index].reset_index(drop=True)
    out["teacher"] = pd.Series(teachers, dtype=object)
    out["teacher_id"] = pd.Series(ids, dtype=object)
    sizes = [
        by_grid.get((g, t), by_name.get(t)) if copy else p
        for g, t, p, copy in zip(out["grid_id"], out["teacher"], out["teacher_params"], copies)
    ]
    out["teacher_params"] = pd.array(
        pd.to_numeric(pd.Series(sizes, dtype=object), errors="coerce").round(), dtype="Int64"
    )
    out.attrs.update(df.attrs)
    return out


def _plugin_defaults(name: str) -> dict[str, Any]:
    try:
        from harness.registry import lookup

        return lookup("objective", name).option_defaults()
    except Exception:  # an objective whose plugin is not installed here: compare as logged
        return {}


def _flat_spec(text: Any) -> dict[str, str] | None:
    """``[{"name": "lift", "weight": 1.0, ...}]`` -> {"lift.weight": "1.0", ...}, defaults filled."""
    try:
        spec = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    if not isinstance(spec, list) or not all(isinstance(p, dict) and "name" in p for p in spec):
        return None
    flat: dict[str, str] = {}
    for part in spec:
        name = str(part["name"])
        options = {**_plugin_defaults(name), "weight": 1.0, **part}
        options.pop("name")
        for key, value in options.items():
            shown = f"{value:g}" if isinstance(value, float) else json.dumps(value, default=str)
            flat[f"{name}.{key}"] = shown.strip('"')
    return flat


def key_objectives(df: pd.DataFrame) -> pd.DataFrame:
    """Set ``objective_label`` to one value per objective specification (see module doc)."""
    label = df["objective_label"].where(df["objective_label"].notna(), df["objective"])
    df["objective_label"] = label
    cells = df["kind"] == Kind.CELL
    for name, group in df[cells].groupby("objective_label"):
        flats = {spec: _flat_spec(spec) for spec in group["objective_spec"].dropna().unique()}
        canon = {spec: json.dumps(f, sort_keys=True) if f else spec for spec, f in flats.items()}
        if len(set(canon.values())) <= 1:
            continue
        parsed = [f for f in flats.values() if f]
        keys = sorted({k for f in parsed for k in f})
        differ = [k for k in keys if len({f.get(k) for f in parsed}) > 1]
        single = "+" not in str(name)
        for spec, flat in flats.items():
            if flat and differ:
                shown = ",".join(
                    f"{k.split('.', 1)[1] if single else k}={flat.get(k, '-')}" for k in differ
                )
                suffix = f" {{{shown}}}"
            else:
                suffix = " #" + hashlib.sha256(str(spec).encode()).hexdigest()[:6]
            rows = cells & (df["objective_label"] == name) & (df["objective_spec"] == spec)
            df.loc[rows, "objective_label"] = f"{name}{suffix}"
    return df


def load_runs(
    uri: str | None, experiment_names: list[str] | None = None, grid_ids: list[str] | None = None
) -> pd.DataFrame:
    """All runs of the given experiments (default: every active one), one row per run
    (a teacher-independent cell: one per teacher it stands for).

    ``grid_ids`` keeps runs tagged with one of those ``kdbench.grid_id`` values.
    """
    uri = resolve_uri(uri)
    client = open_client(uri)
    experiments = _experiments(client, experiment_names, uri)
    names = {e.experiment_id: e.name for e in experiments}
    rows: list[dict] = []
    if names:
        filters = [f"tags.`kdbench.grid_id` = {_quote(g)}" for g in grid_ids] if grid_ids else [""]
        seen = set()
        for filter_string in filters:
            for run in _search(client, list(names), filter_string):
                if run.data.tags.get(Tag.KIND) == Kind.GRID:
                    continue
                if run.info.run_id not in seen:
                    seen.add(run.info.run_id)
                    rows.append(_row(run, names))
    df = spread_shared_cells(key_objectives(_typed(rows)))
    df.attrs["tracking_uri"] = mask_uri(uri)
    return df


def _unique(series: pd.Series) -> str:
    values = sorted({str(v) for v in series.dropna() if str(v)})
    return ", ".join(values) if values else "n/a"


def _provenance(df: pd.DataFrame) -> str:
    """torch-fidelity version, generated-sample counts and the reference set of the cells."""
    cells = df[df["kind"] == Kind.CELL]
    version = _unique(cells["torch_fidelity"])
    samples = _unique(cells["num_samples"])
    reference = _unique(cells["fid_reference"])
    return f"torch-fidelity {version}; {samples} generated samples per run; reference: {reference}"


def run_metadata(df: pd.DataFrame) -> dict[str, str]:
    """What a reader needs to trust a table: grids, commit, versions, data, FID, dates."""
    import mlflow

    cells = df[df["kind"] == Kind.CELL]
    teachers = df[df["kind"] == Kind.TEACHER]
    counts = cells.drop_duplicates("run_id")["status"].value_counts()
    status = ", ".join(f"{n} {s}" for s, n in counts.items())
    grids = sorted(
        {(str(g), str(n)) for g, n in zip(df["grid_id"], df["grid_name"]) if g is not None}
    )
    dates = df["start_time"].dropna()
    meta = {
        "tracking store": df.attrs.get("tracking_uri", "n/a"),
        "experiments": _unique(df["experiment"]),
        "grid": ", ".join(f"{g} ({n})" if n != "None" else g for g, n in grids) or "n/a",
        "git commit": _unique(df["git_commit"]),
        "versions": f"kdbench {_unique(df['version'])}; read with mlflow {mlflow.__version__}, "
        f"pandas {pd.__version__}",
        "dataset": _unique(df["dataset"])
        + (f" at {_unique(df['image_size'])} px" if df["image_size"].notna().any() else ""),
        "FID computed with": _unique(df["fid_features"]),
        "metric provenance": _provenance(df),
        "runs": f"{cells['run_id'].nunique()} cells ({status or 'none'}), "
        f"{len(teachers)} teacher evaluations",
        "run dates": (f"{dates.min():%Y-%m-%d} .. {dates.max():%Y-%m-%d}" if len(dates) else "n/a"),
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return meta
