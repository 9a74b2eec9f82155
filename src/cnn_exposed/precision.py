"""Mixed precision: which dtype each part of a pass runs in, decided once, at trace time, in Python.

A model built under ``keras.mixed_precision.set_global_policy("mixed_float16")`` (or ``"mixed_bfloat16"``) keeps
its weights in float32 and computes in float16 (bfloat16); its softmax head is often float32. cnn-exposed runs it
as it computes:

- every layer in its own compute dtype: the fast plan's kernels (batch normalisation folded in float32) are cast to
  the layer's compute dtype, and its input too, as the layer's own ``__call__`` would (:func:`to_compute`);
- float16 gradients are scaled so they do not underflow: the backward pass is seeded with a power of two (as
  loss scaling does in training) and unscaled in float32 (:func:`seed_exponent`, used by the engine and feature
  visualisation); bfloat16 has float32's range and needs no scale;
- LRP's rule arithmetic (ratios, stabilisers, sums over inputs) runs in float32 (:func:`float32_rule`); the
  relevance between layers is the layer's dtype, scaled like a gradient;
- sums over many passes (integrated gradients' path, SmoothGrad's means, Score-CAM's weights) are float32, and
  every map and attribution leaves the engine as float32.

A float32 model gets none of this: each helper returns its input unchanged when nothing differs, so its traced
graph has no extra operation.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
from keras import ops

FLOAT32 = "float32"
LOW = ("float16", "bfloat16")


class Scaling(NamedTuple):
    """How float16 backward passes are seeded (:func:`cnn_exposed.backend.scaled_backward`), as log2 values.

    The seed is about ``2**start``, so that gradients many orders of magnitude below it stay above float16's
    smallest normal number (6e-5) while the seed itself (largest 65504, about 2**16) has room to grow through the
    last layers. A batch row whose gradient overflows runs again with its seed ``2**step`` smaller; one whose
    largest scaled gradient is below ``2**low`` (values 2**8 below its largest are then subnormal, below
    2**-14: a float32 head with tiny weights) again with its largest at about ``2**peak``; at most ``retries``
    times.
    """

    start: float = 12.0
    step: float = 6.0
    low: float = -6.0
    peak: float = 8.0
    retries: int = 3


SCALING = Scaling()


def dtype_name(dtype) -> str:
    """``"float16"`` for ``tf.float16``, ``"float16"``, a NumPy dtype, ..."""
    return keras.backend.standardize_dtype(dtype)


def compute_dtype(layer) -> str:
    """The dtype ``layer`` computes in (its dtype policy's; float32 for an object without a policy)."""
    return dtype_name(getattr(layer, "compute_dtype", None) or FLOAT32)


def to_dtype(x, dtype: str):
    """``x`` cast to ``dtype``; ``x`` itself (no operation) when it already is."""
    return x if dtype_name(x.dtype) == dtype else ops.cast(x, dtype)


def to_float32(x):
    return to_dtype(x, FLOAT32)


def to_compute(layer, *tensors):
    """``tensors`` cast to ``layer``'s compute dtype (a layer's kernels, or its input: what ``__call__`` does)."""
    dtype = compute_dtype(layer)
    return tuple(None if t is None else to_dtype(t, dtype) for t in tensors)


def low_precision(layers) -> str | None:
    """The lowest-precision compute dtype among ``layers``: ``"float16"`` if any computes in float16, else
    ``"bfloat16"`` if any does, else None (a float32 model)."""
    found = {compute_dtype(layer) for layer in layers}
    return next((d for d in LOW if d in found), None)


def needs_scaling(precision: str | None) -> bool:
    """Whether gradients through layers of this precision need a scaled seed: float16 only (its smallest
    normal number is 6e-5; bfloat16's range is float32's)."""
    return precision == "float16"


def float32_rule(backward):
    """A rule's ``backward(inputs, output, upstream) -> input relevances`` run in float32 (LRP's arithmetic: an
    ε of 1e-9 is 0 in float16), its results cast back to each input's dtype. Unchanged when all are float32."""

    def run(inputs, out, upstream):
        tensors = [*inputs, out, upstream]
        if all(dtype_name(t.dtype) == FLOAT32 for t in tensors):
            return backward(inputs, out, upstream)
        grads = backward([to_float32(t) for t in inputs], to_float32(out), to_float32(upstream))
        return [to_dtype(g, dtype_name(t.dtype)) for g, t in zip(grads, inputs, strict=True)]

    return run


def seed_scale(base, exponent):
    """``2 ** (exponent - floor(log2 |base|))`` per row: the power of two that brings the seed ``base * scale`` to
    ``[2**exponent, 2**(exponent + 1))`` in magnitude (a zero ``base`` stays a zero seed)."""
    magnitude = ops.floor(ops.log2(ops.maximum(ops.abs(base), 1e-30)))
    return ops.power(2.0, exponent - magnitude)
