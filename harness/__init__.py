"""kdbench: a plugin-based benchmark harness for knowledge distillation of diffusion models.

The plugin API is served here and, under the distinctive name plugin authors should use,
by the ``kdbench`` package (``import kdbench`` / ``@kdbench.hookimpl``), which re-exports
it.  Names that need torch are imported on first use.
"""

from importlib import metadata

import pluggy

from harness.errors import (
    CheckpointError,
    ConfigError,
    KDBenchError,
    OptionError,
    PluginError,
    ShapeError,
    TrackingError,
)

try:
    __version__ = metadata.version("kdbench")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

hookimpl = pluggy.HookimplMarker("kdbench")

# name -> (module, attribute): the lazy exports.  They keep `import harness` (and
# `kdbench --help`) free of torch's import time.
_LAZY = {
    "Outputs": ("harness.objective", "Outputs"),
    "Objective": ("harness.objective", "Objective"),
    "Combination": ("harness.objective", "Combination"),
    "check_pair": ("harness.objective", "check_pair"),
    "LogUniform": ("harness.tunables", "LogUniform"),
    "Uniform": ("harness.tunables", "Uniform"),
    "Choice": ("harness.tunables", "Choice"),
    "Backbone": ("harness.backbone", "Backbone"),
    "DiffusionModel": ("harness.backbone", "DiffusionModel"),
    "pair_taps": ("harness.backbone", "pair_taps"),
    "ImageDataset": ("harness.datasets", "ImageDataset"),
    "Executor": ("harness.executor", "Executor"),
    "get_objective": ("harness.factories", "get_objective"),
    "build_combination": ("harness.factories", "build_combination"),
    "get_backbone": ("harness.factories", "get_backbone"),
    "get_dataset": ("harness.factories", "get_dataset"),
    "get_executor": ("harness.factories", "get_executor"),
    "did_you_mean": ("harness.registry", "did_you_mean"),
    "lookup": ("harness.registry", "lookup"),
    "reload_plugins": ("harness.registry", "reload"),
    "plugin_failures": ("harness.registry", "failures"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "hookimpl",
    # errors
    "KDBenchError",
    "ConfigError",
    "PluginError",
    "OptionError",
    "ShapeError",
    "TrackingError",
    "CheckpointError",
    # plugin base classes and what they receive
    "Objective",
    "Outputs",
    "Combination",
    "check_pair",
    # search spaces of tuned options
    "LogUniform",
    "Uniform",
    "Choice",
    "Backbone",
    "DiffusionModel",
    "pair_taps",
    "ImageDataset",
    "Executor",
    # factories
    "get_objective",
    "build_combination",
    "get_backbone",
    "get_dataset",
    "get_executor",
    # the registry
    "did_you_mean",
    "lookup",
    "reload_plugins",
    "plugin_failures",
]
