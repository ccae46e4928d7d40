"""Hook specifications of kdbench (pluggy project ``kdbench``).

Each hook receives a ``register`` callback; call it once per class you provide.
A class must carry a unique string attribute ``name``.
"""

import pluggy

hookspec = pluggy.HookspecMarker("kdbench")


@hookspec
def register_objectives(register):
    """Register KD objectives: subclasses of ``harness.Objective``."""


@hookspec
def register_backbones(register):
    """Register backbones: subclasses of ``harness.Backbone``."""


@hookspec
def register_datasets(register):
    """Register datasets: subclasses of ``harness.ImageDataset``."""


@hookspec
def register_executors(register):
    """Register grid executors: subclasses of ``harness.Executor``."""
