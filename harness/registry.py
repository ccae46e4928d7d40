"""The plugin manager and the registries it fills.

Every plugin, built-in or third-party, is a module named by an entry point in the
``kdbench`` group.  Each module's ``hookimpl`` functions are called with a ``register``
callback bound to that plugin, so every registered class knows the distribution and
version that provided it (shown by ``kdbench plugins``).

Environment variables (as in simonw/llm):

- ``KDBENCH_LOAD_PLUGINS=a,b``: load only the entry points (or distributions) named.
  An empty value loads none.
- ``KDBENCH_DISABLE_PLUGINS=a,b``: skip those entry points (or distributions).

A plugin that raises on import, or registers something malformed, is recorded in
``failures()`` and skipped; the others keep working.
"""

from __future__ import annotations

import difflib
import os
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from harness import hookspecs
from harness.errors import PluginError

PROJECT = "kdbench"
KINDS = ("objective", "backbone", "dataset", "executor")
_HOOK_OF_KIND = {
    "objective": "register_objectives",
    "backbone": "register_backbones",
    "dataset": "register_datasets",
    "executor": "register_executors",
}


@dataclass(frozen=True)
class Provenance:
    plugin: str  # entry-point (or registration) name
    module: str
    distribution: str | None
    version: str | None


@dataclass
class Entry:
    name: str
    kind: str
    cls: type
    provenance: Provenance

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


@dataclass
class Failure:
    plugin: str
    error: str


@dataclass
class PluginState:
    manager: pluggy.PluginManager
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    failures: list[Failure] = field(default_factory=list)


_state: PluginState | None = None
_lock = threading.RLock()


def _env_list(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def _base_class(kind: str) -> type:
    # Imported lazily: these modules import torch.
    if kind == "objective":
        from harness.objective import Objective

        return Objective
    if kind == "backbone":
        from harness.backbone import Backbone

        return Backbone
    if kind == "dataset":
        from harness.datasets import ImageDataset

        return ImageDataset
    from harness.executor import Executor

    return Executor


def _make_register(state: PluginState, kind: str, prov: Provenance):
    base = _base_class(kind)

    def register(cls: Any) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(cls, type) or not issubclass(cls, base):
            raise PluginError(
                f"plugin {prov.plugin!r} registered {cls!r} as a {kind}, "
                f"which is not a subclass of {base.__module__}.{base.__name__}"
            )
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {prov.plugin!r} registered {cls.__name__} without a name")
        table = state.entries[kind]
        if name in table and table[name].cls is not cls:
            other = table[name].provenance.plugin
            raise PluginError(
                f"plugin {prov.plugin!r} registered {kind} {name!r}, already provided by {other!r}"
            )
        table[name] = Entry(name, kind, cls, prov)

    return register


def _wanted(ep: metadata.EntryPoint, only: set[str] | None, skip: set[str] | None) -> bool:
    dist = ep.dist.name if ep.dist is not None else None
    names = {ep.name, dist} - {None}
    if only is not None and not (names & only):
        return False
    if skip and names & skip:
        return False
    return True


def _load(extra_modules: list[Any] | None = None) -> PluginState:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    state = PluginState(manager)
    only = _env_list("KDBENCH_LOAD_PLUGINS")
    skip = _env_list("KDBENCH_DISABLE_PLUGINS")
    provenance: dict[str, Provenance] = {}

    for ep in sorted(metadata.entry_points(group=PROJECT), key=lambda e: e.name):
        if not _wanted(ep, only, skip) or manager.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
            manager.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            state.failures.append(Failure(ep.name, f"{type(exc).__name__}: {exc}"))
            continue
        dist = ep.dist
        provenance[ep.name] = Provenance(
            ep.name, ep.value, dist.name if dist else None, dist.version if dist else None
        )

    for module in extra_modules or []:
        name = getattr(module, "__name__", repr(module))
        manager.register(module, name=name)
        provenance[name] = Provenance(name, name, None, None)

    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements an unknown hook: {exc}") from None

    for kind, hook_name in _HOOK_OF_KIND.items():
        hook = getattr(manager.hook, hook_name)
        for impl in hook.get_hookimpls():
            prov = provenance.get(impl.plugin_name) or Provenance(
                impl.plugin_name, impl.plugin_name, None, None
            )
            try:
                impl.function(register=_make_register(state, kind, prov))
            except Exception as exc:
                state.failures.append(Failure(impl.plugin_name, f"{type(exc).__name__}: {exc}"))
    return state


def state() -> PluginState:
    global _state
    with _lock:
        if _state is None:
            _state = _load()
        return _state


def reload(extra_modules: list[Any] | None = None) -> PluginState:
    """Forget loaded plugins and load them again (tests; after installing a plugin)."""
    global _state
    with _lock:
        _state = _load(extra_modules)
        return _state


def entries(kind: str) -> dict[str, Entry]:
    return state().entries[kind]


def failures() -> list[Failure]:
    return list(state().failures)


def did_you_mean(name: str, choices: list[str] | set[str] | dict) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def lookup(kind: str, name: str) -> type:
    """The class registered under ``name``, or a PluginError listing what is valid."""
    table = entries(kind)
    if name in table:
        return table[name].cls
    valid = ", ".join(sorted(table)) or "none are installed"
    broken = [f.plugin for f in failures()]
    note = f"; plugins that failed to load: {', '.join(broken)}" if broken else ""
    raise PluginError(f"unknown {kind} {name!r}{did_you_mean(name, table)}; valid: {valid}{note}")
