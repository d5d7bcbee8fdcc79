"""Exceptions a user can cause; each message names the thing and what was expected."""


class SparseCircuitsError(ValueError):
    """Base class of every user-facing error raised by sparse-circuits."""


class HookError(SparseCircuitsError, KeyError):
    """A hook name the model does not have."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class DictionaryFileError(SparseCircuitsError):
    """A dictionary file that is missing, corrupt or inconsistent."""


class ModelLoadError(SparseCircuitsError):
    """A model source that cannot be loaded."""


class ShapeError(SparseCircuitsError):
    """A tensor whose shape does not match what the model or dictionary expects."""


class NonFiniteError(SparseCircuitsError):
    """NaN or infinite values where finite numbers are expected (weights, graph entries)."""
