"""Every exception cnn-exposed defines.

Every error says what was wrong and how to fix it. They subclass :class:`CnnExposedError`, itself a
``ValueError``, so code that already catches ``ValueError`` keeps working. The one exception that is not an
error, :class:`StopForward`, is a signal the package raises and catches itself.
"""

from __future__ import annotations


class CnnExposedError(ValueError):
    """Base class of every error about the caller's input."""


class LayerNotFoundError(CnnExposedError):
    """A layer name or path that is not in the model (the message lists candidates)."""


class NoSpatialLayerError(CnnExposedError):
    """A CAM method was asked for on a model without a layer of 4-D ``(N, H, W, C)`` output."""


class TargetError(CnnExposedError):
    """A target class that is out of range or malformed."""


class InputError(CnnExposedError):
    """Images of the wrong rank, size, channel count, or with NaN / Inf values."""


class ModelError(CnnExposedError):
    """A model this package cannot explain (e.g. several outputs, no classification head)."""


class ModelIOError(ModelError):
    """An ``input=`` or ``output=`` that is ambiguous or not in a model with several inputs or outputs, or side
    inputs that do not fit (the message lists the model's inputs or outputs with their shapes)."""


class UnsupportedLayerError(CnnExposedError):
    """A layer or ``keras.ops`` operation a rule-based backward pass (LRP) has no rule for (the message names
    it and the methods that work instead)."""


class ImageReadError(CnnExposedError):
    """A file that is not a readable image; the message says why (batch work reports it and skips the file)."""


class OfflineError(CnnExposedError):
    """Weights that have to be downloaded, asked for without a network."""


class UsageError(CnnExposedError):
    """A problem with the command line; printed without a traceback."""


class StopForward(Exception):  # noqa: N818 (a signal, not an error)
    """Not an error: raised by a :class:`~cnn_exposed.graph.Plan` with ``stop_when_recorded`` once every
    recorded layer has run, so that the rest of the model is neither run nor traced (feature visualisation
    needs only the layers it reads), and caught where the walk started. Deliberately not a
    ``CnnExposedError`` (a ``ValueError``), so that no ``except ValueError`` on the way can swallow it."""


class LayerAccessError(ModelError):
    """A method that needs the model's layers (the CAM family, LRP, guided backprop, ...) asked of a model whose
    layers cannot be reached, such as a SavedModel; the message names the methods that work on it."""
