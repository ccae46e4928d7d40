"""The plugin author's API of kdbench: ``import kdbench`` and decorate with ``@kdbench.hookimpl``.

A plugin module implements the hooks of ``harness.hookspecs`` (``register_objectives``,
``register_backbones``, ``register_datasets``, ``register_executors``) and is named by an
entry point in the ``kdbench`` group::

    import kdbench

    class MyKD(kdbench.Objective):
        name = "mykd"
        def forward(self, student, teacher, step=0, total_steps=1):
            kdbench.check_pair(student.pred, teacher.pred)
            ...

    @kdbench.hookimpl
    def register_objectives(register):
        register(MyKD)

This package re-exports ``harness`` (the core, whose module name other distributions may
also use); ``from harness import hookimpl`` keeps working and is the same marker.  Names
that need torch are imported on first use, as in ``harness``.
"""

import harness
from harness import __all__ as _NAMES
from harness import __version__ as __version__
from harness import hookimpl as hookimpl
from harness.errors import CheckpointError as CheckpointError
from harness.errors import ConfigError as ConfigError
from harness.errors import KDBenchError as KDBenchError
from harness.errors import OptionError as OptionError
from harness.errors import PluginError as PluginError
from harness.errors import ShapeError as ShapeError
from harness.errors import TrackingError as TrackingError

__all__ = list(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(harness, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
