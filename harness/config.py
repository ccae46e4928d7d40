"""Grid files: parse TOML, apply ``--set`` overrides, validate up front, expand into cells.

A grid is ``teachers x students x objectives x seeds``.  Each cell gets a stable id: a
hash of its resolved settings (tracking and executor settings excluded), used to cache
teachers, to find finished cells in MLflow and to resume interrupted ones.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import ConfigError, KDBenchError
from harness.ids import stable_hash as _hash
from harness.registry import did_you_mean


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GridSection(_Strict):
    name: str = "grid"
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)


class DatasetSection(_Strict):
    name: str = "digits"
    image_size: int = Field(16, ge=4, le=1024)
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class Capacity(_Strict):
    """One model of the capacity ladder: a preset, a pruning ratio of the base, or weights."""

    preset: str | None = None
    prune: float | None = None
    pretrained: str | None = None
    label: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Capacity:
        given = [k for k in ("preset", "prune", "pretrained") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of preset, prune, pretrained")
        if self.prune is not None and not (0.0 <= self.prune < 1.0):
            raise ValueError(f"prune ratio must be in [0, 1), got {self.prune}")
        return self

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if self.preset is not None:
            return self.preset
        if self.prune is not None:
            return f"prune{self.prune:g}"
        return Path(str(self.pretrained)).name or str(self.pretrained)


class ModelSection(_Strict):
    backbone: str = "unet"
    process: str | None = None
    base: str | None = None  # preset of the base model that pruning ratios refer to
    base_pretrained: str | None = None
    conditional: bool = True
    config: dict[str, Any] = Field(default_factory=dict)  # explicit backbone config overrides


class PretrainSection(_Strict):
    """Training of teachers: the base model, presets, and fine-tuning of pruned teachers."""

    steps: int = Field(2000, ge=0)
    finetune_steps: int = Field(500, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    ema_decay: float = Field(0.995, ge=0, lt=1)
    warmup_steps: int = Field(100, ge=0)
    prune_batches: int = Field(4, ge=1)
    seed: int = 0


class TrainSection(_Strict):
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    ema_decay: float = Field(0.99, ge=0, lt=1)
    lambda_diff: float = Field(1.0, ge=0)
    log_every: int = Field(25, ge=1)
    checkpoint_every: int = Field(250, ge=1)
    diverge_factor: float = Field(1e3, gt=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    teacher_cache_mb: int = Field(2048, ge=0)
    threads: int | None = Field(None, ge=1)
    assistant_steps: int | None = Field(None, ge=1)
    # Official training semantics (see harness.trainer and configs/README.md); the
    # defaults keep kdbench's own behaviour and stay out of cell ids (TRAIN_OPT_IN).
    loss_reduction: str = "mean"
    grad_clip_scope: str = "all"
    lr_schedule: str = "constant"
    lr_min: float = Field(0.0, ge=0)

    @field_validator("loss_reduction", "grad_clip_scope", "lr_schedule", mode="before")
    @classmethod
    def _choice(cls, value: Any, info: Any) -> Any:
        valid = TRAIN_CHOICES[info.field_name]
        if value not in valid:
            listed = ", ".join(repr(v) for v in valid)
            raise ValueError(
                f"{value!r} is not valid{did_you_mean(str(value), valid)}; use {listed}"
            )
        return value

    def identity(self) -> dict[str, Any]:
        """The settings that identify a cell: opt-in options only when they are set."""
        data = self.model_dump(exclude={"threads"})
        for key, default in TRAIN_OPT_IN.items():
            if data[key] == default:
                del data[key]
        return data


TRAIN_CHOICES = {
    "loss_reduction": ("mean", "sum"),
    "grad_clip_scope": ("all", "model"),
    "lr_schedule": ("constant", "cosine"),
}
TRAIN_OPT_IN = {
    "loss_reduction": "mean",
    "grad_clip_scope": "all",
    "lr_schedule": "constant",
    "lr_min": 0.0,
}


class EvalSection(_Strict):
    num_samples: int = Field(1000, ge=2)
    sample_steps: int = Field(50, ge=1)
    batch_size: int = Field(500, ge=1)
    metrics: list[Literal["fid", "kid", "isc", "prc"]] = Field(
        default_factory=lambda: ["fid", "kid", "isc", "prc"]
    )
    inception_weights: str | None = None
    save_student: bool = False
    collapse_fid: float | None = None


class TrackingSection(_Strict):
    uri: str | None = None
    experiment: str | None = None


class ExecutorSection(_Strict):
    name: str = "local"
    options: dict[str, Any] = Field(default_factory=dict)


class CacheSection(_Strict):
    dir: str | None = None
    # A read-only folder of prebuilt models (same layout as the cache), relative to the
    # grid file: the embedded default ships its teachers this way.
    shipped: str | None = None


class TuneSection(_Strict):
    """Equal-budget tuning (``kdbench tune``): the same K trials for every objective.

    ``space`` narrows what objectives declare: ``{place = ["weight"]}`` tunes only those
    options over their declared ranges; ``[tune.space.place] weight = [0.1, 10]`` also
    sets the range (a choice takes a list of values).  Objectives without an entry are
    searched over everything they declare.
    """

    budget: int = Field(ge=1)
    seeds: list[int] = Field(min_length=1)
    sampler: Literal["sobol", "halton"] = "sobol"
    sampler_seed: int = 0
    metric: Literal["fid", "kid_mean", "isc_mean", "precision", "recall", "class_acc"] = "fid"
    teachers: list[str] | None = None
    steps: int | None = Field(None, ge=1)
    space: dict[str, list[str] | dict[str, Any]] = Field(default_factory=dict)


class TunedSection(_Strict):
    """Written by ``kdbench tune`` into the grid it produces: how each value was chosen.

    ``objectives`` maps each label to ``{space, chosen, score, trials}``.  Cells of the
    grid carry it as tags, and the leaderboard prints it.
    """

    budget: int
    seeds: list[int]
    sampler: str
    metric: str
    teachers: list[str]
    steps: int
    experiment: str
    grid_id: str
    objectives: dict[str, dict[str, Any]] = Field(default_factory=dict)


class GridConfig(_Strict):
    grid: GridSection = Field(default_factory=GridSection)
    dataset: DatasetSection = Field(default_factory=DatasetSection)
    model: ModelSection = Field(default_factory=ModelSection)
    teachers: list[Capacity] = Field(min_length=1)
    students: list[Capacity] = Field(min_length=1)
    objectives: list[str | dict[str, Any]] = Field(min_length=1)
    objective: dict[str, dict[str, Any]] = Field(default_factory=dict)
    pretrain: PretrainSection = Field(default_factory=PretrainSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    executor: ExecutorSection = Field(default_factory=ExecutorSection)
    cache: CacheSection = Field(default_factory=CacheSection)
    tune: TuneSection | None = None
    tuned: TunedSection | None = None

    @field_validator("teachers", "students", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value


_SECTIONS = list(GridConfig.model_fields)


# ---------------------------------------------------------------- loading and overrides


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """``train.steps=100`` -> data["train"]["steps"] = 100 (values parsed as TOML)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.steps=100")
    key, _, raw = assignment.partition("=")
    parts = [p.strip() for p in key.strip().split(".") if p.strip()]
    if not parts:
        raise ConfigError(f"--set {assignment!r}: empty key")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a table")
        node = child
    node[parts[-1]] = _parse_value(raw.strip())


def _format_validation_error(source: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        parent = err["loc"][:-1]
        key = str(err["loc"][-1])
        model: Any = GridConfig
        for p in parent:
            field = getattr(model, "model_fields", {}).get(str(p))
            model = field.annotation if field is not None else None
        valid = list(getattr(model, "model_fields", {})) if model is not None else _SECTIONS
        msg = f"unknown key{did_you_mean(key, valid)}; valid keys: {', '.join(valid)}"
    elif "input" in err and err["type"] not in ("missing",):
        msg = f"{msg} (got {err['input']!r})"
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {loc or 'grid'}: {msg}{suffix}"


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> GridConfig:
    """Read a grid file (TOML), apply ``--set`` style ``overrides`` (``key=value``, value
    in TOML syntax) and validate it; every problem is a ``ConfigError`` naming the file
    and the key.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: grid file not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    cfg = config_from_dict(data, overrides, source=str(path))
    if cfg.cache.shipped and not Path(cfg.cache.shipped).is_absolute():
        cfg.cache.shipped = str((path.parent / cfg.cache.shipped).resolve())
    return cfg


def config_from_dict(
    data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), source: str = "<grid>"
) -> GridConfig:
    data = copy.deepcopy(data)
    for assignment in overrides:
        apply_override(data, assignment)
    for key, value in _non_finite(data):
        raise ConfigError(
            f"{source}: {key}: must be a finite number, got {value!r} "
            "(inf/nan, or a literal too large for a float such as 1e400)"
        )
    try:
        cfg = GridConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None
    validate_plugins(cfg, source)
    return cfg


def _non_finite(node: Any, key: str = "") -> Iterator[tuple[str, float]]:
    """``(dotted key, value)`` of every inf/nan float anywhere in a parsed config.

    TOML allows ``inf`` and ``nan``, and a literal beyond the float range (``1e400``)
    parses as ``inf``; no setting of a grid means either, so all are refused.
    """
    if isinstance(node, float) and not math.isfinite(node):
        yield key or "grid", node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _non_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _non_finite(v, f"{key}[{i}]")


# ---------------------------------------------------------------- objectives

SWEEP_KEY = "sweep"


def objective_defaults(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``[objective.NAME]`` tables without their ``sweep`` sub-table."""
    return {
        name: {k: v for k, v in (opts or {}).items() if k != SWEEP_KEY}
        for name, opts in table.items()
    }


def format_option(value: Any) -> str:
    """An option value as labels show it: ``0.1``, ``1e-06``, ``l2``, ``true``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def variant_label(names: list[str], options: dict[str, dict[str, Any]]) -> str:
    """``place[weight=0.1,coarse=l2]+featkd``: each part with the options set for it."""
    out = []
    for name in names:
        opts = options.get(name) or {}
        shown = ",".join(f"{k}={format_option(v)}" for k, v in opts.items())
        out.append(f"{name}[{shown}]" if shown else name)
    return "+".join(out)


def _parse_entry(entry: str | dict[str, Any]) -> tuple[str, list[str], str | None, dict]:
    """An ``objectives`` entry -> (name, parts, explicit label, per-part options).

    Tables: ``{name = "place", label = "place-l2", coarse = "l2"}`` (a single objective
    takes its options directly) or ``{name = "place+featkd", featkd = {weight = 1e-6}}``
    (per part).
    """
    if isinstance(entry, str):
        name, label, rest = entry, None, {}
    else:
        rest = dict(entry)
        name = rest.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError("an objectives table needs a string 'name', e.g. name = \"place\"")
        label = rest.pop("label", None)
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise ConfigError(f"objective {name!r}: label must be a non-empty string")
    names = [n.strip() for n in name.split("+") if n.strip()]
    if not names:
        raise ConfigError(f"objective {name!r}: empty name")
    per_part: dict[str, dict[str, Any]] = {}
    strays = [k for k, v in rest.items() if isinstance(v, dict) and k not in names]
    if strays and (len(names) > 1 or not set(strays) <= set(_option_names(names[0]))):
        raise ConfigError(
            f"objective {name!r}: options for {sorted(strays)} which are not parts of it"
        )
    for key, value in rest.items():
        if key in names and isinstance(value, dict):
            per_part.setdefault(key, {}).update(value)
        elif len(names) == 1:
            per_part.setdefault(names[0], {})[key] = value
        elif key in names:
            raise ConfigError(f"objective {name!r}: {key} = ... must be a table of its options")
        else:
            raise ConfigError(
                f"objective {name!r}: option {key!r} belongs to no part; give options per "
                f"part, e.g. {names[-1]} = {{{key} = ...}}"
            )
    return name, names, label, per_part


def _option_names(name: str) -> list[str]:
    from harness.registry import lookup

    try:
        return lookup("objective", name).option_names()
    except KDBenchError:
        return []


def _spec(names: list[str], defaults: dict, per_part: dict) -> list[dict[str, Any]]:
    spec = []
    for part in names:
        options = {**defaults.get(part, {}), **per_part.get(part, {})}
        weight = options.pop("weight", 1.0)
        spec.append({"name": part, "weight": weight, **options})
    return spec


def objective_spec(
    entry: str | dict[str, Any], defaults: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """An ``objectives`` entry -> list of {name, weight, **options} (defaults filled in).

    Entries: ``"place+featkd"`` (each part takes ``[objective.NAME]`` defaults), or a table
    ``{name = "place+featkd", featkd = {weight = 1e-6}}`` overriding per part.
    """
    _, names, _, per_part = _parse_entry(entry)
    return _spec(names, objective_defaults(defaults), per_part)


def spec_label(spec: list[dict[str, Any]]) -> str:
    return "+".join(part["name"] for part in spec)


@dataclass(frozen=True)
class Variant:
    """One row of the leaderboard: an objective with its options, under a unique label.

    ``index`` is the ``objectives`` entry it comes from; ``options`` are the per-part
    options the entry (or a sweep) sets, beyond the ``[objective.NAME]`` defaults.
    """

    index: int
    label: str
    spec: list[dict[str, Any]]
    options: dict[str, dict[str, Any]]
    explicit: bool = False  # the label was given in the grid file

    @property
    def name(self) -> str:
        return spec_label(self.spec)


def _sweeps(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    """``[objective.NAME.sweep]`` tables, checked: options of NAME, non-empty lists."""
    from harness.registry import lookup

    out = {}
    for name, opts in table.items():
        sweep = (opts or {}).get(SWEEP_KEY)
        if sweep is None:
            continue
        key = f"objective.{name}.{SWEEP_KEY}"
        if not isinstance(sweep, dict) or not sweep:
            raise ConfigError(f"{key}: give a table of option = [values], e.g. weight = [0.1, 1]")
        try:
            valid = ["weight", *lookup("objective", name).option_names()]
        except KDBenchError as exc:
            raise ConfigError(f"objective.{name}: {exc}") from exc
        for option, values in sweep.items():
            if option not in valid:
                raise ConfigError(
                    f"{key}: unknown option {option!r} of objective {name!r}"
                    f"{did_you_mean(option, valid)}; valid: {', '.join(valid)}"
                )
            if not isinstance(values, list):
                raise ConfigError(f"{key}.{option}: give a list of values, got {values!r}")
            if not values:
                raise ConfigError(f"{key}.{option}: empty sweep (give at least one value)")
        out[name] = sweep
    return out


def variants(cfg: GridConfig) -> list[Variant]:
    """The grid's objective variants, sweeps expanded, each with a unique label.

    A sweep ``[objective.NAME.sweep]`` expands every entry that uses NAME and has no label
    of its own into the product of the swept values (in the order the file lists them),
    labelled like ``place[weight=0.1,coarse=l2]``; labelled entries are fixed variants.
    Without a label, an entry is labelled by its name plus the options it sets.
    """
    defaults = objective_defaults(cfg.objective)
    sweeps = _sweeps(cfg.objective)
    used: set[str] = set()
    out: list[Variant] = []
    for i, entry in enumerate(cfg.objectives):
        try:
            _, names, label, per_part = _parse_entry(entry)
        except ConfigError as exc:
            raise ConfigError(f"objectives[{i}]: {exc}") from exc
        used.update(names)
        swept = [] if label else [n for n in names if n in sweeps]
        axes = []
        for part in swept:
            for option, values in sweeps[part].items():
                if option in per_part.get(part, {}):
                    raise ConfigError(
                        f"objectives[{i}]: sets {part}.{option}, which "
                        f"[objective.{part}.sweep] sweeps; drop one, or give the entry a label"
                    )
                axes.append([(part, option, v) for v in values])
        for point in itertools.product(*axes):
            options = copy.deepcopy(per_part)
            for part, option, value in point:
                options.setdefault(part, {})[option] = value
            out.append(
                Variant(
                    index=i,
                    label=label or variant_label(names, options),
                    spec=_spec(names, defaults, options),
                    options=options,
                    explicit=label is not None,
                )
            )
    unused = sorted(set(sweeps) - used)
    if unused:
        raise ConfigError(
            f"objective.{unused[0]}.{SWEEP_KEY}: no objectives entry uses {unused[0]!r}"
        )
    seen: dict[str, int] = {}
    for v in out:
        if v.label in seen:
            raise ConfigError(
                f"objectives[{v.index}]: duplicate label {v.label!r} (also objectives"
                f"[{seen[v.label]}]); give each variant its own label"
            )
        seen[v.label] = v.index
    return out


# ---------------------------------------------------------------- tuning search spaces


def _key(v: Variant, part: str, option: str) -> str:
    return option if len(v.spec) == 1 else f"{part}.{option}"


def variant_space(cfg: GridConfig, v: Variant) -> dict[str, Any]:
    """What ``kdbench tune`` searches for one variant: declared, narrowed by ``tune.space``."""
    from harness.registry import lookup

    space: dict[str, Any] = {}
    given = cfg.tune.space if cfg.tune else {}
    for part in v.spec:
        name = part["name"]
        declared = lookup("objective", name).tunable_options()
        chosen = given.get(name)
        if chosen is None:
            wanted = {option: None for option in declared}
        elif isinstance(chosen, list):
            wanted = {option: None for option in chosen}
        else:
            wanted = dict(chosen)
        for option, bounds in wanted.items():
            if option not in declared:
                listed = ", ".join(declared) or "nothing"
                raise ConfigError(
                    f"tune.space.{name}: objective {name!r} declares no tunable {option!r}; "
                    f"it declares: {listed}"
                )
            if option in v.options.get(name, {}):
                continue  # set by the entry itself: part of the variant's identity
            spec = declared[option]
            if bounds is not None:
                try:
                    spec = spec.narrowed(bounds)
                except KDBenchError as exc:
                    raise ConfigError(f"tune.space.{name}.{option}: {exc}") from exc
            space[_key(v, name, option)] = spec
    return space


def check_tune(cfg: GridConfig, every: list[Variant] | None = None) -> None:
    """Refuse a ``[tune]`` section that could leak, or names what does not exist."""
    tune = cfg.tune
    assert tune is not None
    every = every if every is not None else variants(cfg)
    leaked = sorted(set(tune.seeds) & set(cfg.grid.seeds))
    if leaked:
        raise ConfigError(
            f"tune.seeds: seed {leaked[0]} is also a final seed (grid.seeds = {cfg.grid.seeds}); "
            "a tuned value must never be chosen on the seeds the final table reports"
        )
    if any((opts or {}).get("sweep") for opts in cfg.objective.values()):
        raise ConfigError(
            "[tune] and [objective.NAME.sweep] together: tuning searches the space itself; "
            "drop the sweep"
        )
    names = [t.name for t in cfg.teachers]
    for teacher in tune.teachers or []:
        if teacher not in names:
            raise ConfigError(
                f"tune.teachers: no teacher named {teacher!r}; the grid's teachers: "
                f"{', '.join(names)}"
            )
    used = {part["name"] for v in every for part in v.spec}
    for name in tune.space:
        if name not in used:
            raise ConfigError(f"tune.space.{name}: no objectives entry uses {name!r}")
    for v in every:
        variant_space(cfg, v)


# ---------------------------------------------------------------- validation against plugins


def validate_plugins(cfg: GridConfig, source: str = "<grid>") -> None:
    """Check plugin names and options before anything runs (errors name file and key)."""
    from harness import factories
    from harness.factories import build_combination

    def fail(key: str, exc: Exception) -> None:
        raise ConfigError(f"{source}: {key}: {exc}") from exc

    from harness.registry import lookup

    try:
        lookup("dataset", cfg.dataset.name)
    except KDBenchError as exc:
        fail("dataset.name", exc)
    try:
        backbone = factories.get_backbone(cfg.model.backbone)
    except KDBenchError as exc:
        fail("model.backbone", exc)
    try:
        lookup("executor", cfg.executor.name)
    except KDBenchError as exc:
        fail("executor.name", exc)
    if cfg.model.process is not None:
        from harness.process import get_process

        try:
            get_process(cfg.model.process)
        except KDBenchError as exc:
            fail("model.process", exc)
    presets = getattr(backbone, "presets", {})
    needs_base = False
    for section in ("teachers", "students"):
        for i, cap in enumerate(getattr(cfg, section)):
            if cap.preset is not None and cap.preset not in presets:
                fail(
                    f"{section}[{i}].preset",
                    KDBenchError(
                        f"unknown preset {cap.preset!r} of backbone {cfg.model.backbone!r}"
                        f"{did_you_mean(cap.preset, presets)}; valid: {', '.join(presets)}"
                    ),
                )
            if cap.prune is not None:
                needs_base = True
            if cap.preset is not None:
                try:
                    backbone.check_image_size(cfg.dataset.image_size, cap.preset)
                except KDBenchError as exc:
                    fail(f"{section}[{i}].preset", exc)
    if needs_base and cfg.model.base is None and cfg.model.base_pretrained is None:
        fail(
            "model.base",
            KDBenchError(
                "pruning ratios need a base model: set model.base (a preset) or model.base_pretrained"
            ),
        )
    if cfg.model.base is not None:
        if cfg.model.base not in presets:
            fail(
                "model.base",
                KDBenchError(
                    f"unknown preset {cfg.model.base!r}{did_you_mean(cfg.model.base, presets)}; "
                    f"valid: {', '.join(presets)}"
                ),
            )
        try:
            backbone.check_image_size(cfg.dataset.image_size, cfg.model.base)
        except KDBenchError as exc:
            fail("model.base", exc)
    for name in cfg.objective:
        try:
            lookup("objective", name)
        except KDBenchError as exc:
            fail(f"objective.{name}", exc)
    try:
        every = variants(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    for v in every:
        try:
            build_combination(v.spec)
        except KDBenchError as exc:
            fail(f"objectives[{v.index}]" + (f" ({v.label})" if v.label != v.name else ""), exc)
        _warn_doubled(v.index, [part["name"] for part in v.spec])
    if cfg.tune is not None:
        try:
            check_tune(cfg, every)
        except KDBenchError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    _warn_inverted_gap(cfg, presets)


def _warn_doubled(index: int, names: list[str]) -> None:
    """``"place+place"`` adds PLACE's term twice: legal, but rarely meant."""
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        warnings.warn(
            f"objectives[{index}] {'+'.join(names)!r} names {', '.join(map(repr, doubled))} "
            "more than once: its term is added once per mention (a doubled weight); write it "
            "once, with weight = 2.0 if that is meant",
            stacklevel=3,
        )


def _capacity_rank(cap: Capacity, presets: dict[str, Any]) -> float | None:
    if cap.prune is not None:
        return (1 - cap.prune) ** 2
    if cap.preset is not None:
        order = list(presets)
        return 4.0 ** order.index(cap.preset) if cap.preset in order else None
    return None


def _warn_inverted_gap(cfg: GridConfig, presets: dict[str, Any]) -> None:
    for t in cfg.teachers:
        for s in cfg.students:
            rt, rs = _capacity_rank(t, presets), _capacity_rank(s, presets)
            same_kind = (t.prune is None) == (s.prune is None)
            if rt is not None and rs is not None and same_kind and rt <= rs:
                warnings.warn(
                    f"teacher {t.name!r} is not larger than student {s.name!r}: "
                    "that cell measures no capacity gap",
                    stacklevel=2,
                )


# ---------------------------------------------------------------- expansion into cells


def teacher_key(cfg: GridConfig, cap: Capacity) -> dict[str, Any]:
    """Everything that determines a trained teacher (its cache identity).

    Pruning settings enter only the keys of pruned models, so changing how pruned
    teachers are fine-tuned does not retrain the base model.
    """
    pretrain = cfg.pretrain.model_dump()
    pruning = {k: pretrain.pop(k) for k in ("finetune_steps", "prune_batches")}
    key = {
        "dataset": cfg.dataset.model_dump(),
        "model": cfg.model.model_dump(),
        "capacity": cap.model_dump(exclude={"label"}),
        "pretrain": pretrain,
    }
    if cap.prune:
        key["pruning"] = pruning
    return key


def expand(cfg: GridConfig) -> list[dict[str, Any]]:
    """The grid's cells as JSON-able dicts, each with a stable ``cell_id``.

    A teacher-independent objective (``harness.factories.teacher_independent``: the no-KD
    baseline) gives one cell per (student, variant, seed) instead of one per teacher: its
    identity leaves the teacher out, ``shared_teachers`` lists every teacher it stands for
    (name, id and capacity; empty for every other cell) and the leaderboards show its
    result at each of them.  The other cells' ids are unchanged.
    """
    from harness.factories import teacher_independent

    cells: list[dict[str, Any]] = []
    shared_cells: dict[str, dict[str, Any]] = {}
    every = variants(cfg)
    independent = [teacher_independent(variant.spec) for variant in every]
    shared = {
        "dataset": cfg.dataset.model_dump(),
        "model": cfg.model.model_dump(),
        "pretrain": cfg.pretrain.model_dump(),
        "train": cfg.train.identity(),
        "eval": cfg.eval.model_dump(exclude={"save_student"}),
    }
    for teacher in cfg.teachers:
        teacher_id = _hash(teacher_key(cfg, teacher))
        for student in cfg.students:
            for variant, alone in zip(every, independent):
                spec = variant.spec
                for seed in cfg.grid.seeds:
                    identity = {
                        **shared,
                        "teacher": None if alone else teacher.model_dump(exclude={"label"}),
                        "student": student.model_dump(exclude={"label"}),
                        "objective": spec,
                        "seed": seed,
                    }
                    if variant.label != variant.name:  # plain names keep their cell ids
                        identity["objective_label"] = variant.label
                    cell_id = _hash(identity)
                    member = {
                        "teacher": teacher.model_dump(),
                        "teacher_name": teacher.name,
                        "teacher_id": teacher_id,
                    }
                    if alone and cell_id in shared_cells:
                        members = shared_cells[cell_id]["shared_teachers"]
                        if any(m["teacher_id"] == teacher_id for m in members):
                            raise ConfigError(
                                "the grid lists the same cell twice (duplicate teacher, "
                                "student, objective or seed)"
                            )
                        members.append(member)
                        continue
                    where = "all teachers" if alone else teacher.name
                    cell = {
                        "cell_id": cell_id,
                        "label": f"{variant.label} | {where} -> {student.name} | s{seed}",
                        "objective_label": variant.label,
                        "objective": spec,
                        **member,
                        "student": student.model_dump(),
                        "student_name": student.name,
                        "seed": seed,
                        "shared_teachers": [member] if alone else [],
                    }
                    if alone:
                        shared_cells[cell_id] = cell
                    cells.append(cell)
    ids = [c["cell_id"] for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError(
            "the grid lists the same cell twice (duplicate teacher, student, objective or seed)"
        )
    return cells


def grid_id(cfg: GridConfig) -> str:
    return _hash({"name": cfg.grid.name, "cells": sorted(c["cell_id"] for c in expand(cfg))}, 10)


def experiment_name(cfg: GridConfig) -> str:
    return cfg.tracking.experiment or f"kdbench-{cfg.grid.name}"
