"""A thin, explicit layer over ``mlflow.tracking.MlflowClient``: one MLflow run per cell.

Choices:
- Never the fluent ``mlflow.start_run`` global state and never ``MLFLOW_EXPERIMENT_ID``:
  every call takes an explicit run id, and workers get ``(uri, experiment_id)``.
- The store is created once, up front, by ``Tracker(uri, experiment)`` in the parent
  process (a fresh SQLite store runs schema migrations that race when several processes
  open it at once); workers use ``Tracker.attach(uri, experiment_id)``, which creates nothing.
- An HTTP server is checked once with no retries and a short timeout, so a wrong URI fails
  in seconds with ``TrackingError`` instead of retrying for minutes.
- Later calls to a server (logging while cells train) ride out an outage: a call that meets
  a refused connection, a timeout or a 502/503/504 is retried with exponential backoff
  (0.5 s doubling to 30 s) for up to ``KDBENCH_TRACKING_RETRY_S`` seconds (default 300),
  with MLflow's own retries off so that the bound is ours.  Metric points keep the
  timestamps they were logged with, so a retried batch is stored once.  ``create_run`` is
  retried only when the connection was refused (nothing reached the server), so a retry
  cannot make a second run.  When the bound is spent, the Tracker raises one
  ``TrackingError`` naming the server (password masked) and what to do, and fails fast
  from then on; buffered metrics stay buffered.
- Metrics are buffered and sent with ``log_batch`` (one ``log_metric`` over HTTP costs ~60 ms).
  Non-finite values (NaN, +-inf) are logged as NaN, so a blow-up stays visible in the history
  (SQLite would otherwise store inf as the largest float).
- Our own status lives in the tag ``kdbench.status`` (finished|diverged|failed|killed|running);
  the MLflow run status follows it (FINISHED for finished and diverged: a diverged student is a
  result, not a crash).
- On a SQLite store the artifacts of a new experiment go beside the database,
  ``<db folder>/mlartifacts/<experiment>``; on a server the server decides.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from harness.errors import TrackingError
from harness.schema import Status, Tag

log = logging.getLogger("kdbench")

_MLFLOW_END_STATUS = {
    Status.FINISHED: "FINISHED",
    Status.DIVERGED: "FINISHED",
    Status.FAILED: "FAILED",
    Status.KILLED: "KILLED",
}
_SECRET_QUERY_KEYS = {
    "password",
    "passwd",
    "pwd",
    "token",
    "access_token",
    "secret",
    "api_key",
    "apikey",
    "sslpassword",
}
DEFAULT_SUBDIR = "kdbench-out"
CHECK_TIMEOUT_S = 3
FLUSH_EVERY = 100
RETRY_ENV = "KDBENCH_TRACKING_RETRY_S"
DEFAULT_RETRY_S = 300.0
REQUEST_TIMEOUT_S = 30
_REFUSED = ("Connection refused", "NewConnectionError", "Failed to establish a new connection")
_TRANSIENT = _REFUSED + (
    "Max retries exceeded",
    "Read timed out",
    "timed out",
    "Connection aborted",
    "Connection reset",
    "RemoteDisconnected",
    "error code 502",
    "error code 503",
    "error code 504",
    "too many 502",
    "too many 503",
    "too many 504",
)


def retry_budget() -> float:
    """Seconds a call to a tracking server may spend retrying (``KDBENCH_TRACKING_RETRY_S``)."""
    raw = os.environ.get(RETRY_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRY_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise TrackingError(f"{RETRY_ENV}={raw!r}: expected a number of seconds >= 0, e.g. 300")
    return value


def _transient(exc: BaseException, idempotent: bool) -> bool:
    """Whether ``exc`` says the server is away (worth retrying) rather than refusing the call."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.ConnectionError) and (
            idempotent or any(m in str(seen) for m in _REFUSED)
        ):
            return True
        if idempotent and isinstance(seen, requests.Timeout):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return any(m in text for m in (_TRANSIENT if idempotent else _REFUSED))


def _reason(exc: BaseException, uri: str) -> str:
    text = str(exc)
    for marker, short in (
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("Connection reset", "connection reset"),
        ("RemoteDisconnected", "connection closed by the server"),
        ("error code 50", "server error"),
        ("too many 50", "server error"),
    ):
        if marker in text:
            return short
    return _scrub(text, uri)[:200]


def resolve_uri(uri: str | None, workdir: str | os.PathLike = ".") -> str:
    """The tracking URI to use: explicit value, else ``MLFLOW_TRACKING_URI``, else SQLite.

    The default is ``sqlite:///<abs workdir>/kdbench-out/mlflow.db`` (folder created).  A
    relative ``sqlite:///`` path is made absolute against ``workdir``, so worker processes with
    another working directory reach the same file.
    """
    chosen = (uri or "").strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not chosen:
        folder = Path(workdir).resolve() / DEFAULT_SUBDIR
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'mlflow.db'}"
    db = sqlite_path(chosen)
    if db is not None and not db.is_absolute():
        query = chosen.partition("?")[2]
        absolute = Path(workdir).resolve() / db
        return f"sqlite:///{absolute}" + (f"?{query}" if query else "")
    return chosen


def mask_uri(uri: str) -> str:
    """``uri`` with its password (and secret query values) replaced by ``***``.

    ``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``.  Use it whenever
    a URI is printed, logged, or stored as a param or tag.
    """
    uri = str(uri)
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if sep else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
            query = urlencode(
                [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*"
            )
    if (netloc, query) == (parts.netloc, parts.query):
        return uri  # nothing secret; keep the text exactly (sqlite:////abs keeps its slashes)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other schemes or in-memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


def _is_http(uri: str) -> bool:
    return urlsplit(uri).scheme in {"http", "https"}


def _scrub(text: str, uri: str) -> str:
    """One line of an error message, with the URI's password hidden."""
    password = urlsplit(uri).password
    if password:
        text = text.replace(password, "***").replace(unquote(password), "***")
    line = " ".join(str(text).split())
    return line if len(line) <= 400 else line[:397] + "..."


@contextmanager
def env_override(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_store(client, uri: str) -> None:
    """One cheap call that creates a SQLite store or proves an HTTP server answers.

    Over HTTP it runs with no retries and a ``CHECK_TIMEOUT_S`` timeout; any failure
    raises ``TrackingError`` naming the (masked) URI.
    """
    if _is_http(uri):
        env = {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CHECK_TIMEOUT_S),
        }
        try:
            with env_override(**env):
                client.search_experiments(max_results=1)
        except Exception as exc:
            raise TrackingError(
                f"cannot reach tracking server {mask_uri(uri)}: {_scrub(str(exc), uri)}"
            ) from None
        return
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:
        raise TrackingError(
            f"cannot open tracking store {mask_uri(uri)}: {_scrub(str(exc), uri)}"
        ) from None


def open_client(uri: str, create: bool = False):
    """A checked ``MlflowClient`` for ``uri``.

    With ``create=False`` (readers such as leaderboards) a missing SQLite file is an error
    instead of a fresh, empty store.
    """
    db = sqlite_path(uri)
    if db is not None:
        if not create and not db.exists():
            raise TrackingError(
                f"no tracking store at {db} (run a grid first, or pass "
                "--tracking-uri / MLFLOW_TRACKING_URI)"
            )
        db.parent.mkdir(parents=True, exist_ok=True)
        # Two `kdbench run`s started together on a fresh file would both run MLflow's
        # table migrations and one would fail ("table _alembic_tmp_experiments already
        # exists"): the first to take the lock creates the tables, the other finds them.
        from filelock import FileLock

        with FileLock(f"{db}.lock"):
            return _checked_client(uri)
    return _checked_client(uri)


def _checked_client(uri: str):
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
    except Exception as exc:
        raise TrackingError(
            f"cannot open tracking store {mask_uri(uri)}: {_scrub(str(exc), uri)}"
        ) from None
    check_store(client, uri)
    return client


def _stringify(value: Any, limit: int) -> str:
    """A param/tag value as MLflow stores it: JSON for containers, cut to ``limit`` chars."""
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    if len(text) > limit:
        marker = "...[truncated]"
        text = text[: limit - len(marker)] + marker
    return text


def _finite_or_nan(value: Any) -> float:
    value = float(value)
    return value if math.isfinite(value) else math.nan


class Tracker:
    """Logs kdbench runs to one MLflow experiment through ``MlflowClient``.

    ``Tracker(uri, experiment)`` creates the store and the experiment (in the parent);
    ``Tracker.attach(uri, experiment_id)`` rebuilds one in a worker.  Pickling keeps only
    ``(uri, experiment_id)``; buffered metrics stay with the original object.
    """

    def __init__(self, uri: str, experiment: str, *, artifact_location: str | None = None):
        self._setup(uri, None, experiment, open_client(uri, create=True))
        self.experiment_id = self._get_or_create_experiment(experiment, artifact_location)

    @classmethod
    def attach(cls, uri: str, experiment_id: str) -> Tracker:
        """A Tracker for an existing store and experiment; creates nothing."""
        db = sqlite_path(uri)
        if db is not None and not db.exists():
            raise TrackingError(
                f"no tracking store at {db}; create it with Tracker(uri, experiment) first"
            )
        tracker = cls.__new__(cls)
        tracker._setup(uri, str(experiment_id), None)
        return tracker

    def _setup(
        self, uri: str, experiment_id: str | None, experiment: str | None, client=None
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.experiment_id = experiment_id
        self._experiment = experiment
        self._lock = threading.Lock()
        self._buffer: dict[str, list] = {}
        self._buffered = 0
        self.retry_s = retry_budget()
        self._down: str | None = None
        if client is not None:
            self._client = client
            return
        try:
            self._client = MlflowClient(tracking_uri=uri)
        except Exception as exc:
            raise TrackingError(
                f"cannot open tracking store {mask_uri(uri)}: {_scrub(str(exc), uri)}"
            ) from None

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "experiment_id": self.experiment_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(state["uri"], state["experiment_id"], None)

    def __repr__(self) -> str:
        return f"Tracker(uri={mask_uri(self.uri)!r}, experiment_id={self.experiment_id!r})"

    @property
    def client(self):
        """The underlying ``MlflowClient`` (for reads the Tracker does not wrap)."""
        return self._client

    @property
    def experiment(self) -> str:
        if self._experiment is None:
            found = self._call("read experiment", self._client.get_experiment, self.experiment_id)
            self._experiment = found.name
        return self._experiment

    # -- store and experiment --------------------------------------------------------------
    @property
    def down(self) -> bool:
        """True once a call gave up on an unreachable server (later calls fail at once)."""
        return self._down is not None

    def call(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on this store, with the tracker's retries and one-line errors."""
        return self._call(what, fn, *args, **kwargs)

    def _call(self, what: str, fn, *args: Any, idempotent: bool = True, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; errors become one-line ``TrackingError``s.

        On an HTTP server, an outage is retried with backoff for ``retry_s`` seconds
        (see the module's notes); a refused call (bad input, 4xx) fails at once.
        """
        if self._down is not None:
            raise TrackingError(self._down)
        if not _is_http(self.uri):
            try:
                return fn(*args, **kwargs)
            except TrackingError:
                raise
            except Exception as exc:
                raise TrackingError(
                    f"{what} failed on {mask_uri(self.uri)}: {_scrub(str(exc), self.uri)}"
                ) from None
        env = {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
            # MLflow prints "View run ... at <uri>" on stdout, password included
            "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        }
        started, delay = None, 0.5
        while True:
            try:
                with env_override(**env):
                    result = fn(*args, **kwargs)
                if started is not None:
                    log.warning(
                        "tracking server %s is back after %.0f s; %s went through",
                        mask_uri(self.uri),
                        time.monotonic() - started,
                        what,
                    )
                return result
            except TrackingError:
                raise
            except Exception as exc:
                if not _transient(exc, idempotent):
                    raise TrackingError(
                        f"{what} failed on {mask_uri(self.uri)}: {_scrub(str(exc), self.uri)}"
                    ) from None
                now = time.monotonic()
                if started is None:
                    started = now
                    log.warning(
                        "tracking server %s does not answer (%s: %s); retrying for up to %g s",
                        mask_uri(self.uri),
                        what,
                        _reason(exc, self.uri),
                        self.retry_s,
                    )
                if now - started >= self.retry_s:
                    self._down = (
                        f"tracking server {mask_uri(self.uri)} did not answer for "
                        f"{now - started:.0f} s ({what}: {_reason(exc, self.uri)}); finished "
                        "cells are recorded and checkpoints kept: once the server is back, "
                        "re-run the grid to resume the rest (to wait longer during a run, set "
                        f"{RETRY_ENV}, now {self.retry_s:g} s)"
                    )
                    raise TrackingError(self._down) from None
                time.sleep(min(delay, max(0.0, started + self.retry_s - now)))
                delay = min(delay * 2, 30.0)

    def _default_artifact_location(self, experiment: str) -> str | None:
        db = sqlite_path(self.uri)
        if db is None:
            return None
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("_") or "experiment"
        return (db.resolve().parent / "mlartifacts" / slug).as_uri()

    def _get_or_create_experiment(self, name: str, artifact_location: str | None) -> str:
        what = f"get or create experiment {name!r}"
        found = self._call(what, self._client.get_experiment_by_name, name)
        if found is None:
            location = artifact_location or self._default_artifact_location(name)
            try:
                return self._call(
                    what,
                    self._client.create_experiment,
                    name,
                    artifact_location=location,
                    idempotent=False,
                )
            except TrackingError:
                found = self._call(what, self._client.get_experiment_by_name, name)  # raced
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise TrackingError(
                f"experiment {name!r} is deleted in {mask_uri(self.uri)}; restore it "
                f"(mlflow experiments restore --experiment-id {found.experiment_id}) "
                "or choose another name"
            )
        return found.experiment_id

    # -- runs ------------------------------------------------------------------------------
    def start_run(
        self,
        name: str,
        tags: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> str:
        """Create a run; tags get ``kdbench.status=running``. Returns the run id."""
        from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

        all_tags = {str(k): _stringify(v, MAX_TAG_VAL_LENGTH) for k, v in (tags or {}).items()}
        all_tags[str(Tag.STATUS)] = str(Status.RUNNING)
        run = self._call(
            f"start run {name!r}",
            self._client.create_run,
            self.experiment_id,
            run_name=name,
            tags=all_tags,
            idempotent=False,
        )
        run_id = run.info.run_id
        if params:
            self.log_params(run_id, params)
        return run_id

    def resume_run(self, run_id: str) -> None:
        """Mark an existing run as running again (MLflow status RUNNING)."""
        what = f"resume run {run_id}"
        self._call(what, self._client.update_run, run_id, status="RUNNING")
        self._call(what, self._client.set_tag, run_id, str(Tag.STATUS), str(Status.RUNNING))

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Params as strings (containers as JSON), cut to MLflow's length limit."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        items = [Param(str(k), _stringify(v, MAX_PARAM_VAL_LENGTH)) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = items[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            self._call(f"log params of run {run_id}", self._client.log_batch, run_id, params=chunk)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

        items = [RunTag(str(k), _stringify(v, MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = items[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            self._call(f"set tags of run {run_id}", self._client.log_batch, run_id, tags=chunk)

    def log_metrics(
        self, run_id: str, metrics: Mapping[str, float], step: int | None = None
    ) -> None:
        """Buffer metrics; sent with ``log_batch`` every ~100 values or on ``flush()``.

        Non-finite values are logged as NaN.
        """
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        entries = [
            Metric(str(k), _finite_or_nan(v), stamp, int(step or 0)) for k, v in metrics.items()
        ]
        with self._lock:
            self._buffer.setdefault(run_id, []).extend(entries)
            self._buffered += len(entries)
            full = self._buffered >= FLUSH_EVERY
        if full:
            self.flush()

    def flush(self, run_id: str | None = None) -> None:
        """Send buffered metrics (of one run, or of all runs).

        What could not be sent stays buffered (a later flush sends it, with the timestamps
        it was logged with) and the ``TrackingError`` is raised.
        """
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        with self._lock:
            ids = [run_id] if run_id is not None else list(self._buffer)
            for rid in ids:
                entries = self._buffer.get(rid, [])
                while entries:
                    chunk = entries[:MAX_METRICS_PER_BATCH]
                    self._call(
                        f"log metrics of run {rid}", self._client.log_batch, rid, metrics=chunk
                    )
                    del entries[: len(chunk)]
                    self._buffered -= len(chunk)
                self._buffer.pop(rid, None)

    def finish(self, run_id: str, status: str, error: str | None = None) -> None:
        """Flush, set ``kdbench.status`` and end the MLflow run.

        ``status`` is one of finished|diverged (MLflow FINISHED), failed (FAILED),
        killed (KILLED); ``error`` goes to the tag ``kdbench.error``.
        """
        if status not in _MLFLOW_END_STATUS:
            raise ValueError(
                f"unknown run status {status!r}; valid: {', '.join(_MLFLOW_END_STATUS)}"
            )
        self.flush(run_id)
        tags: dict[str, Any] = {Tag.STATUS: status}
        if error:
            tags[Tag.ERROR] = _scrub(error, self.uri)
        self.set_tags(run_id, tags)
        self._call(
            f"finish run {run_id}",
            self._client.set_terminated,
            run_id,
            status=_MLFLOW_END_STATUS[status],
        )

    # -- artifacts -------------------------------------------------------------------------
    def log_artifact(
        self, run_id: str, path: str | os.PathLike, artifact_path: str | None = None
    ) -> None:
        what = f"log artifact {path} of run {run_id}"
        self._call(what, self._client.log_artifact, run_id, str(path), artifact_path)

    def log_artifacts(
        self, run_id: str, folder: str | os.PathLike, artifact_path: str | None = None
    ) -> None:
        """Every file under ``folder``, kept in its layout under ``artifact_path``."""
        what = f"log artifacts {folder} of run {run_id}"
        self._call(what, self._client.log_artifacts, run_id, str(folder), artifact_path)

    def log_json(self, run_id: str, obj: Any, name: str) -> None:
        """``obj`` as a JSON artifact ``name`` (e.g. ``config.json``)."""
        plain = json.loads(json.dumps(obj, default=str))
        self._call(f"log {name} of run {run_id}", self._client.log_dict, run_id, plain, name)

    def log_image(self, run_id: str, image: Any, name: str) -> None:
        """A PIL image or an ``[H,W(,C)]`` array (uint8, or float in [0,1]) as a PNG."""
        what = f"log image {name} of run {run_id}"
        self._call(what, self._client.log_image, run_id, image, artifact_file=name)

    def log_figure(self, run_id: str, figure: Any, name: str) -> None:
        """A matplotlib figure (or, like ``log_image``, a PIL image / array)."""
        from matplotlib.figure import Figure

        if not isinstance(figure, Figure):
            self.log_image(run_id, figure, name)
            return
        self._call(
            f"log figure {name} of run {run_id}", self._client.log_figure, run_id, figure, name
        )

    # -- reading ---------------------------------------------------------------------------
    def find_runs(self, tag_filters: Mapping[str, str]) -> list[dict[str, Any]]:
        """Runs of this experiment whose tags equal ``tag_filters``, newest first.

        Each is a dict: run_id, run_name, status (``kdbench.status``, else MLflow's, lower
        case), mlflow_status, start_time (ms), tags, metrics, params.
        """
        clauses = [f"tags.`{key}` = {_quote(str(value))}" for key, value in tag_filters.items()]
        runs: list[dict[str, Any]] = []
        token = None
        while True:
            page = self._call(
                "search runs",
                self._client.search_runs,
                [self.experiment_id],
                filter_string=" and ".join(clauses),
                order_by=["attributes.start_time DESC"],
                max_results=1000,
                page_token=token,
            )
            runs.extend(_run_dict(run) for run in page)
            token = page.token
            if not token:
                return runs

    def last_step(self, run_id: str, key: str) -> int:
        """The highest step logged for metric ``key`` of a run (-1 when none)."""
        self.flush(run_id)
        what = f"read the history of {key} in run {run_id}"
        points = self._call(what, self._client.get_metric_history, run_id, key)
        return max((p.step for p in points), default=-1)

    def latest_run_for_cell(self, cell_id: str) -> dict[str, Any] | None:
        """The newest run tagged ``kdbench.cell_id=cell_id``, or None."""
        runs = self.find_runs({Tag.CELL_ID: cell_id})
        return runs[0] if runs else None


def _quote(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise TrackingError(f"cannot search for a tag value with both quote kinds: {value!r}")


def _run_dict(run) -> dict[str, Any]:
    tags = dict(run.data.tags)
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": tags.get(Tag.STATUS, str(run.info.status).lower()),
        "mlflow_status": run.info.status,
        "start_time": run.info.start_time,
        "tags": tags,
        "metrics": dict(run.data.metrics),
        "params": dict(run.data.params),
    }
