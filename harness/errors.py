"""Errors that the command line turns into one line and exit code 2."""


class KDBenchError(Exception):
    """A problem with the user's input that deserves a one-line message, not a traceback."""


class ConfigError(KDBenchError, ValueError):
    """A grid file or an override is invalid."""


class PluginError(KDBenchError):
    """A plugin name is unknown, or a plugin misbehaves."""


class OptionError(KDBenchError, ValueError):
    """A plugin was given an unknown option or a value out of range."""


class ShapeError(KDBenchError, ValueError):
    """Student and teacher tensors do not line up."""


class TrackingError(KDBenchError):
    """The MLflow store cannot be reached or used."""


class CheckpointError(KDBenchError):
    """A checkpoint or cached model is missing, corrupt or of another architecture."""


class StorageError(KDBenchError, OSError):
    """A file could not be written (e.g. the disk is full); the message names the file."""


class DivergedError(Exception):
    """Training produced NaN/inf or an exploding loss (a result, not a crash)."""

    def __init__(self, step: int, reason: str, terms: dict | None = None):
        super().__init__(f"diverged at step {step}: {reason}")
        self.step = step
        self.reason = reason
        self.terms = terms or {}
