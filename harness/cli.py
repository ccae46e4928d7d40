"""The ``kdbench`` command line.

Bad input ends with one line on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

import click

from harness import __version__
from harness.errors import KDBenchError


class _Group(click.Group):
    """Turns KDBenchError into a one-line message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KDBenchError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"kdbench: error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            code = getattr(exc, "exit_code", 130)  # GridInterrupted: 143 after SIGTERM
            click.echo(
                "kdbench: interrupted; finished cells are recorded, a re-run resumes the rest",
                err=True,
            )
            ctx.exit(code)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="kdbench")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """kdbench: which KD objective trains your small diffusion student best?"""
    debug = debug or bool(os.environ.get("KDBENCH_DEBUG"))
    # Offline first: no usage telemetry from MLflow unless the user asks for it.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    ctx.obj = {"debug": debug}
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="kdbench: %(levelname)s: %(message)s",
    )
    if not debug:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.formatwarning = lambda msg, cat, *a, **k: f"kdbench: warning: {msg}\n"


# ---------------------------------------------------------------------- run


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set train.steps=100 (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Validate and print the cells; run nothing.")
@click.option("--rerun", is_flag=True, help="Run cells again even if finished in MLflow.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: local SQLite).")
@click.option("--cache-dir", default=None, help="Where teachers and checkpoints are cached.")
@click.option("--no-leaderboard", is_flag=True, help="Do not print leaderboards at the end.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run(
    config: Path,
    overrides: tuple[str, ...],
    dry_run: bool,
    rerun: bool,
    tracking_uri: str | None,
    cache_dir: str | None,
    no_leaderboard: bool,
    quiet: bool,
) -> None:
    """Run the grid in CONFIG (a TOML file)."""
    from harness.config import expand, experiment_name, load_config

    cfg = load_config(config, overrides)
    cells = expand(cfg)
    if dry_run:
        _preflight_dry(cfg)
        _print_cells(cfg, cells)
        return
    from harness.grid import run_grid
    from harness.schema import Status
    from harness.tracking import mask_uri

    result = run_grid(
        cfg,
        tracking_uri=tracking_uri,
        rerun=rerun,
        cache_dir=cache_dir,
        progress=not quiet,
        debug=bool((click.get_current_context().obj or {}).get("debug")),
    )
    claimed = result.claimed
    click.echo(
        f"grid {cfg.grid.name} ({result.grid_id}): {result.count(Status.FINISHED)} finished, "
        f"{result.count(Status.DIVERGED)} diverged, {result.count(Status.FAILED)} failed, "
        f"{len(result.skipped)} already done"
        + (f", {len(claimed)} claimed by another run" if claimed else "")
    )
    for r in claimed:
        click.echo(f"  claimed by another run: {r.get('cell_id')}: {r['claimed_by']}")
    for r in result.results + result.teacher_results:
        if r.get("status") == Status.FAILED:
            click.echo(f"  failed: {r.get('cell_id')}: {r.get('error', '')}", err=True)
    if not no_leaderboard:
        if result.leaderboard:  # rendered once, when it was logged to the grid run
            click.echo(result.leaderboard["text"])
            click.echo(f"plots: {result.plot_dir}")
        else:
            from leaderboards import report

            plots = Path("kdbench-out") / "plots" / cfg.grid.name
            try:
                board = report(
                    result.tracking_uri,
                    experiments=[experiment_name(cfg)],
                    grid_ids=[result.grid_id],
                    fmt="text",
                    plot_dir=plots,
                )
            except KDBenchError as exc:  # e.g. every cell failed: nothing to rank
                click.echo(f"kdbench: leaderboard: {exc}", err=True)
            else:
                click.echo(board)
            click.echo(f"plots: {plots.resolve()}")
    click.echo(
        f"MLflow store: {mask_uri(result.tracking_uri)} (experiment {experiment_name(cfg)}, "
        f"grid run {result.grid_run_id} with the leaderboard; `kdbench ui` to browse)"
    )
    if result.count(Status.FAILED):
        sys.exit(1)


def _preflight_dry(cfg) -> None:
    from harness.factories import dataset_from_config
    from harness.grid import preflight
    from harness.registry import lookup

    try:
        channels = dataset_from_config(cfg.dataset).channels
    except KDBenchError as exc:  # e.g. a GPU grid validated where its data are absent
        channels = lookup("dataset", cfg.dataset.name).channels
        click.echo(f"kdbench: note: {exc} (a run stops there)", err=True)
    preflight(cfg, channels)


def _print_cells(cfg, cells) -> None:
    from harness.config import grid_id, variants

    labels = [v.label for v in variants(cfg)]
    click.echo(
        f"grid {cfg.grid.name} ({grid_id(cfg)}): {len(cells)} cells, "
        f"{len(cfg.teachers)} teachers x {len(cfg.students)} students x "
        f"{len(labels)} objective variants x {len(cfg.grid.seeds)} seeds"
        + (
            f" ({shared} teacher-independent, run once for all teachers)"
            if (shared := sum(1 for c in cells if c["shared_teachers"]))
            else ""
        )
    )
    if len(labels) != len(cfg.objectives):
        click.echo(f"variants: {', '.join(labels)}")
    for cell in cells:
        click.echo(f"  {cell['cell_id']}  {cell['label']}")


# ---------------------------------------------------------------------- tune


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="The tuned grid file to write (default: CONFIG's folder, <name>-tuned.toml).",
)
@click.option("--dry-run", is_flag=True, help="Print the search spaces and trial cells only.")
@click.option("--rerun", is_flag=True, help="Run trials again even if finished in MLflow.")
@click.option("--tracking-uri", default=None)
@click.option("--cache-dir", default=None)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def tune(config, overrides, output, dry_run, rerun, tracking_uri, cache_dir, quiet) -> None:
    """Tune every objective in CONFIG with the same budget ([tune]); write the tuned grid.

    The trials are ordinary cells of a grid of their own (tuning seeds, its own MLflow
    experiment, resumable); each objective's best trial goes into the written grid file,
    and `kdbench run` of that file gives the final table on the grid's own seeds.
    """
    from tabulate import tabulate

    from harness import tuning
    from harness.config import expand, load_config

    cfg = load_config(config, overrides)
    p = tuning.plan(cfg, str(config))
    out = output or config.with_name(f"{config.stem}-tuned.toml")
    tune_cfg = cfg.tune
    if dry_run:
        _preflight_dry(p.config)
        click.echo(
            f"tuning: {tune_cfg.budget} trials per objective, {tune_cfg.sampler} "
            f"(scrambled, seed {tune_cfg.sampler_seed}), seeds {tune_cfg.seeds}, "
            f"selected on mean {tune_cfg.metric}"
        )
        for label, space in p.space.items():
            shown = "; ".join(f"{k}: {s.describe()}" for k, s in space.items()) or "nothing"
            click.echo(f"  {label}: {shown}")
        _print_cells(p.config, expand(p.config))
        return
    from harness.grid import run_grid
    from leaderboards.load import load_runs

    result = run_grid(
        p.config, tracking_uri=tracking_uri, rerun=rerun, cache_dir=cache_dir, progress=not quiet
    )
    # By cell, as run_grid skips finished cells: trials finished by an earlier tuning run
    # (another [tune] section, hence another grid id) count here too.
    runs = load_runs(result.tracking_uri, [result.experiment])
    runs = runs[runs["cell_id"].isin({cell["cell_id"] for cell in result.cells})]
    tuning.score(p, runs, tune_cfg.metric)
    rows = tuning.summary(p, tune_cfg.metric)
    click.echo(tabulate(rows, headers=["objective", "trial", tune_cfg.metric, "state", "best"]))
    for label, n in p.repeats.items():
        click.echo(f"note: {label}: {n} of {tune_cfg.budget} points repeated an earlier one")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(tuning.tuned_grid(config, cfg, p, result.grid_id, out))
    click.echo(
        f"tuning trials: experiment {result.experiment}, grid {result.grid_id}; "
        f"wrote {out}; `kdbench run {out}` gives the final table"
    )
    missing = [
        label
        for label, trials in p.trials.items()
        if p.space[label] and tuning.best(trials, tune_cfg.metric) is None
    ]
    if missing:
        click.echo(
            f"kdbench: no trial finished without divergence for {', '.join(missing)}: their grid options kept",
            err=True,
        )
        sys.exit(1)


# ---------------------------------------------------------------------- plugins


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List installed objectives, backbones, datasets and executors."""
    from harness import registry

    rows = []
    for kind in registry.KINDS:
        for name, entry in sorted(registry.entries(kind).items()):
            p = entry.provenance
            rows.append(
                {
                    "kind": kind,
                    "name": name,
                    "distribution": p.distribution,
                    "version": p.version,
                    "module": p.module,
                    "summary": entry.summary,
                }
            )
    failures = [{"plugin": f.plugin, "error": f.error} for f in registry.failures()]
    if as_json:
        click.echo(json.dumps({"plugins": rows, "failures": failures}, indent=2))
        return
    from tabulate import tabulate

    table = [
        [r["kind"], r["name"], f"{r['distribution']} {r['version']}", r["summary"][:60]]
        for r in rows
    ]
    click.echo(tabulate(table, headers=["kind", "name", "provided by", "summary"]))
    for f in failures:
        click.echo(f"failed to load plugin {f['plugin']}: {f['error']}", err=True)


# ---------------------------------------------------------------------- models


@cli.command()
@click.argument("backbone", required=False)
@click.option("--image-size", default=16, show_default=True)
@click.option("--channels", default=1, show_default=True)
@click.option("--num-classes", default=10, show_default=True)
def models(backbone: str | None, image_size: int, channels: int, num_classes: int) -> None:
    """Show each backbone's size presets with parameter counts."""
    from tabulate import tabulate

    from harness import registry
    from harness.models import preset_table

    names = [backbone] if backbone else sorted(registry.entries("backbone"))
    for name in names:
        registry.lookup("backbone", name)
        rows = preset_table(name, image_size, channels=channels, num_classes=num_classes)
        click.echo(f"{name} (image {image_size}x{image_size}, {channels} channel(s)):")
        click.echo(
            tabulate(
                [[r["name"], f"{r['params']:,}"] for r in rows], headers=["preset", "parameters"]
            )
        )
        click.echo()


# ---------------------------------------------------------------------- leaderboard


@cli.command()
@click.option("--experiment", "experiments", multiple=True, help="MLflow experiment name(s).")
@click.option("--grid", "grids", multiple=True, help="Grid id(s).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "md", "csv", "html"]),
    default="text",
    show_default=True,
)
@click.option(
    "--metric",
    default="fid",
    show_default=True,
    type=click.Choice(["fid", "kid_mean", "isc_mean", "precision", "recall", "class_acc"]),
)
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Write plots (PNG) into this folder.",
)
@click.option(
    "--compare",
    nargs=2,
    default=None,
    metavar="GRID_A GRID_B",
    help="Compare two grids (ids or experiment names).",
)
@click.option(
    "--baseline",
    default=None,
    metavar="NAME",
    help="Objective the seed-paired differences and pooled verdicts compare against "
    "[default: none, when it ran].",
)
@click.option(
    "--alpha",
    type=float,
    default=0.05,
    show_default=True,
    help="Level of the tests; intervals are 1 - alpha.",
)
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None)
@click.option(
    "--screenshot",
    type=click.Path(path_type=Path),
    default=None,
    help="Also open the HTML page in headless Chromium, check it, and save a full-page PNG.",
)
@click.option("--tracking-uri", default=None)
def leaderboard(
    experiments,
    grids,
    fmt,
    metric,
    plot_dir,
    compare,
    baseline,
    alpha,
    output,
    screenshot,
    tracking_uri,
) -> None:
    """Render leaderboards from the MLflow runs."""
    import leaderboards
    from harness.tracking import resolve_uri

    uri = resolve_uri(tracking_uri, ".")
    options = dict(
        experiments=list(experiments) or None,
        grid_ids=list(grids) or None,
        metric=metric,
        compare_ids=tuple(compare) if compare else None,
        baseline=baseline,
        alpha=alpha,
    )
    text = leaderboards.report(uri, fmt=fmt, plot_dir=plot_dir, **options)
    if output:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}")
    else:
        click.echo(text)
    if screenshot is not None:
        page = text if fmt == "html" else leaderboards.report(uri, fmt="html", **options)
        click.echo(_screenshot(page, screenshot))


def _screenshot(page: str, path: Path) -> str:
    """Open ``page`` in headless Chromium, refuse a page with problems, save a PNG."""
    import tempfile

    from leaderboards.browser import inspect_page

    with tempfile.TemporaryDirectory() as tmp:
        html_file = Path(tmp) / "leaderboard.html"
        html_file.write_text(page, encoding="utf-8")
        seen = inspect_page(html_file, screenshot=path)
    problems = (
        seen.errors
        + [f"request to {url}" for url in seen.requests]
        + [f"figure {name} did not decode" for name in seen.broken_images]
    )
    if problems:
        raise KDBenchError(f"the HTML page has problems in Chromium: {'; '.join(problems[:3])}")
    return f"wrote {path} ({len(seen.tables)} tables, {len(seen.images)} figures)"


# ---------------------------------------------------------------------- teachers, classifier


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--cache-dir", default=None)
@click.option(
    "--export",
    "export_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Also copy the built models here (a folder for `cache.shipped`).",
)
def teachers(
    config: Path, overrides: tuple[str, ...], cache_dir: str | None, export_dir: Path | None
) -> None:
    """Build (pretrain, prune, fine-tune) and cache the grid's teachers and assistants.

    With --export, the models are also written to a folder that a grid names as
    `cache.shipped`: this is how the embedded default's teachers are rebuilt.
    """
    from harness.capacity import Context
    from harness.cell import pick_device
    from harness.config import load_config

    cfg = load_config(config, overrides)
    ctx = Context.create(cfg, pick_device(), cache_dir)
    for cap in cfg.teachers:
        model = ctx.teacher(cap)
        click.echo(f"{cap.name}: {model.num_parameters():,} parameters")
    for cap in cfg.students:
        model = ctx.student_init(cap, cfg.grid.seeds[0])
        click.echo(f"student {cap.name}: {model.num_parameters():,} parameters")
    from harness import capacity
    from harness.config import variants

    for variant in variants(cfg):
        spec = variant.spec
        if not any(registry_needs_assistant(part["name"]) for part in spec):
            continue
        for t_cap in cfg.teachers:
            for s_cap in cfg.students:
                model, info = capacity.assistant(ctx, t_cap, s_cap, spec, ctx.teacher(t_cap))
                click.echo(
                    f"assistant {info.get('capacity')} for {t_cap.name} -> {s_cap.name} "
                    f"({'+'.join(p['name'] for p in spec)}): "
                    f"{model.num_parameters():,} parameters"
                )
    click.echo(f"cache: {ctx.cache_dir}")
    if export_dir is not None:
        written = ctx.export(export_dir)
        click.echo(f"exported {len(written)} model(s) to {export_dir}")


@cli.command("train-classifier")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the weights (default: the shipped file).",
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--dataset",
    default="digits",
    show_default=True,
    help="The data set whose own feature classifier to retrain.",
)
def train_classifier_cmd(out: Path | None, seed: int, dataset: str) -> None:
    """Retrain the classifier a data set ships for its metrics (digits: the embedded default)."""
    from harness.registry import lookup

    own = lookup("dataset", dataset).feature_classifier
    if own is None:
        raise KDBenchError(f"data set {dataset!r} ships no feature classifier to retrain")
    path = out or own.default_path()
    metrics = own.train(seed=seed, out_path=path)
    click.echo(f"wrote {path}: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))


# ---------------------------------------------------------------------- ui


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind; the default keeps the UI private to this machine.",
)
@click.option("--port", default=5000, show_default=True)
@click.option("--tracking-uri", default=None)
def ui(host: str, port: int, tracking_uri: str | None) -> None:
    """Open the MLflow UI on the kdbench store."""
    import subprocess

    from harness.tracking import mask_uri, resolve_uri

    uri = resolve_uri(tracking_uri, ".")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}"
    click.echo(f"MLflow UI for {mask_uri(uri)} at {base}")
    try:
        from harness.gridrun import ui_addresses
        from harness.tracking import open_client

        for line in ui_addresses(open_client(uri), base):
            click.echo(line)
    except Exception as exc:  # the addresses are a convenience: the UI starts anyway
        click.echo(f"kdbench: note: cannot list the grids: {' '.join(str(exc).split())}", err=True)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    raise SystemExit(subprocess.call(cmd))


def registry_needs_assistant(name: str) -> bool:
    from harness.registry import lookup

    return bool(getattr(lookup("objective", name), "needs_assistant", False))


def main() -> None:
    cli(prog_name="kdbench")


if __name__ == "__main__":
    main()
