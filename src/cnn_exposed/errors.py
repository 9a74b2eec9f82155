"""The exceptions cnn-exposed raises for bad input.

Every error says what was wrong and how to fix it. They subclass ``ValueError`` so code that already
catches ``ValueError`` keeps working.
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
