"""kdbench: a plugin-based benchmark harness for knowledge distillation of diffusion models."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("kdbench")


def __getattr__(name):
    # Lazy exports keep `import harness` (and `kdbench --help`) free of torch's import time.
    if name in {"Outputs", "Objective", "Combination", "check_pair"}:
        from harness import objective

        return getattr(objective, name)
    if name in {"LogUniform", "Uniform", "Choice"}:
        from harness import tunables

        return getattr(tunables, name)
    if name in {"Backbone", "DiffusionModel", "pair_taps"}:
        from harness import backbone

        return getattr(backbone, name)
    if name == "ImageDataset":
        from harness.datasets import ImageDataset

        return ImageDataset
    if name == "Executor":
        from harness.executor import Executor

        return Executor
    if name in {
        "get_objective",
        "build_combination",
        "get_backbone",
        "get_dataset",
        "get_executor",
    }:
        from harness import factories

        return getattr(factories, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


__all__ = [
    "hookimpl",
    "Outputs",
    "Objective",
    "get_objective",
    "Combination",
    "build_combination",
    "LogUniform",
    "Uniform",
    "Choice",
    "Backbone",
    "DiffusionModel",
    "pair_taps",
    "ImageDataset",
    "Executor",
    "get_backbone",
    "get_dataset",
    "get_executor",
    "__version__",
]
