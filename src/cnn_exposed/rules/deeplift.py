"""DeepLIFT's rules (Shrikumar et al. 2017): each maps the multiplier of a layer's output, ``m_y = ∂⁺s/∂⁺y``,
to the multipliers of its inputs, from the layer's values on the explained images *and* on their references.

The engine runs the inputs and their references as one batch ``[x; x′]`` of ``2n`` rows (the first ``n`` the
inputs, row ``i + n`` the reference of row ``i``; :meth:`cnn_exposed.engine.Engine.multipliers`) and seeds the
backward pass on the first ``n`` rows only. So a rule reads the differences ``Δ = (first half) − (second
half)`` of its input and output, and returns the input multipliers in the first half and zeros in the second
(linear layers, which keep rows apart, keep those zeros). Every rule here keeps summation to delta,
``Σ m_in · Δin = Σ m_out · Δout``, exact up to rounding:

- element-wise nonlinearities (ReLU, sigmoid, tanh, swish ``x·σ(x)`` as one function, GELU, hard-swish, ...):
  the Rescale rule ``m = Δy / Δx``, the gradient at ``x`` where ``|Δx| <`` :data:`EPSILON` (there ``Δy ≈ 0`` too);
- a product of tensors that both vary (a squeeze-and-excitation gate times its signal): the two-player Shapley
  split shap's DeepExplainer uses, ``½[(f(a, b′) − f(a′, b′)) + (f(a, b) − f(a′, b))]`` for ``a``, which for
  ``f = a·b`` is the gradient at the midpoints ``((a + a′)/2, (b + b′)/2)`` (for three or more factors that
  midpoint gradient is not exact);
- max pooling: captum's split: ``max(y, y′) − y′`` of ``Δy`` goes to the input's maximum, ``y − max(y, y′)`` to
  the reference's, each divided by its position's ``Δx`` (the authors' code uses the gradient, which is not exact);
- layer normalisation: written as the element-wise and product steps it is made of (centring, ``c²``, its
  mean, ``1/√(v + ε)``, ``c · r``, ``γ``, ``β``), each with its rule above.

Linear maps (convolutions and dense layers with batch normalisation folded, padding, pooling by averages,
sums, concatenation, reshaping) take their plain gradient, which is their multiplier.
"""

from __future__ import annotations

import types

from keras import ops

from ..backend import fused, vjp, with_backward
from ..precision import compute_dtype, float32_rule, to_dtype, to_float32
from .lrp import layer_input_rule

EPSILON = 1e-10
"""``|Δx|`` below which the Rescale and max-pooling rules take the gradient instead of ``Δy / Δx`` (captum's
``eps``). The rules compute in float32 whatever the layer's dtype; a float32 (or float16) ``Δx`` below it is 0
or a difference of subnormal numbers, where ``Δy`` is 0 or rounding."""


def in_float32(fn):
    """``fn`` with its output in float32: the rules' arithmetic is (a float16 layer computes in float16 inside)."""
    return lambda *args: to_float32(fn(*args))


def halves(t):
    """The inputs' rows and the references' rows of a paired batch, by one split: two slices at the dynamic
    ``shape[0] // 2`` added about a dozen operations to the traced graph per call (ResNet50V2's DeepLIFT pass:
    7,246 operations, 4,104 with the split)."""
    return tuple(ops.split(t, 2, axis=0))


def with_zeros(first, t):
    """``first`` (the inputs' multipliers) stacked on zeros for the references' rows of ``t`` (as many as
    ``first``'s: a paired batch splits in two equal halves)."""
    return ops.concatenate([first, ops.zeros_like(first)], axis=0)


def divided(num, dx, grad):
    """``num / Δx``, and ``grad`` where ``|Δx| <`` :data:`EPSILON`."""
    small = ops.abs(dx) < EPSILON
    return ops.where(small, grad, num / ops.where(small, ops.ones_like(dx), dx))


_FUSED_RESCALE: dict = {}
"""``fn -> fused multipliers`` of the Rescale rule, for module-level activation functions (immortal, so the cache
holds nothing else alive)."""


def _shared_fused(fn, multipliers):
    """``fused(multipliers)``, shared by every layer whose activation is the same module-level function
    (``keras.activations.relu``): each distinct shape is then traced and XLA-compiled once, not once per layer
    (ResNet50V2 at 35 px: 14 compilations instead of 49). Layers (``ReLU``, ``PReLU``) and closures get their
    own."""
    if not (isinstance(fn, types.FunctionType) and "<" not in fn.__qualname__):
        return fused(multipliers)
    compiled = _FUSED_RESCALE.get(fn)
    if compiled is None:
        compiled = _FUSED_RESCALE[fn] = fused(multipliers)
    return compiled


def rescale_backward(fn):
    """The Rescale rule through element-wise ``fn``: ``m_x = m_y · Δy / Δx``, compiled into one fused pass (op by op
    it read and wrote the activations about ten times)."""

    def multipliers(x, y, g):
        (xa, xb), (ya, yb), ga = halves(x), halves(y), halves(g)[0]
        (grad,) = vjp(in_float32(fn), [xa], ga)
        return with_zeros(divided(ga * (ya - yb), xa - xb, grad), x)

    compiled = _shared_fused(fn, multipliers)

    def backward(inputs, y, g):
        return [compiled(inputs[0], y, g)]

    return float32_rule(backward)


def rescale(fn):
    """Element-wise ``fn`` (an activation function or layer) with the Rescale rule."""
    return with_backward(fn, rescale_backward(fn))


def rescale_layer(op):
    """An element-wise layer (``PReLU``) with the Rescale rule."""
    rule = rescale(lambda x: op(x))
    return lambda x, *a, **k: rule(x)


def product_backward(forward):
    """The Shapley split of a product of tensors: the gradient at the midpoints of inputs and references."""

    def backward(inputs, z, g):
        mids = [(a + b) / 2.0 for a, b in map(halves, inputs)]
        grads = vjp(in_float32(forward), mids, halves(g)[0])
        return [with_zeros(m, t) for m, t in zip(grads, inputs, strict=True)]

    return float32_rule(backward)


def product_rule(op):
    """A ``Multiply`` layer of tensors that all vary with the input (gates included)."""
    return layer_input_rule(op, product_backward)


def inputs_rows_only(linear):
    """A linear map (a convolution or dense layer) whose backward pass runs on the inputs' rows only: the
    references' rows carry zeros, so their half of the transposed convolution is skipped."""

    def backward(inputs, z, g):
        (grad,) = vjp(linear, [halves(inputs[0])[0]], halves(g)[0])
        return [with_zeros(grad, inputs[0])]

    return with_backward(linear, backward)


def max_split_backward(pool):
    """Max pooling (any ``pool`` that picks maxima: ``MaxPooling``, ``GlobalMaxPooling``, ``ops.max``): captum's
    split of ``Δy`` between the input's and the reference's maxima, divided by ``Δx`` there."""

    pool = in_float32(pool)

    def backward(inputs, y, g):
        (xa, xb), (ya, yb), ga = halves(inputs[0]), halves(y), halves(g)[0]
        top = ops.maximum(ya, yb)
        (via_input,) = vjp(pool, [xa], ga * (top - yb))
        (via_reference,) = vjp(pool, [xb], ga * (ya - top))
        (grad,) = vjp(pool, [xa], ga)
        return [with_zeros(divided(via_input + via_reference, xa - xb, grad), inputs[0])]

    return float32_rule(backward)


def max_split_rule(op):
    """A max-pooling layer with :func:`max_split_backward`."""
    rule = with_backward(lambda x: op(x), max_split_backward(lambda x: op(x)))
    return lambda x, *a, **k: rule(x)


def layer_norm_rule(op):
    """``LayerNormalization`` as the steps it is made of, each with its DeepLIFT rule: exact summation to delta
    (its forward pass is Keras' formula in float32, equal to the layer's own up to rounding). With
    ``rms_scaling`` Keras scales the uncentred input by the same ``1/√(var + ε)``."""
    axes = tuple(op.axis) if isinstance(op.axis, (list, tuple)) else (op.axis,)
    rms = bool(getattr(op, "rms_scaling", False))
    square = rescale(ops.square)
    inverse_root = rescale(lambda v: ops.rsqrt(v + op.epsilon))
    times = with_backward(ops.multiply, product_backward(ops.multiply))
    dtype = compute_dtype(op)

    def weight(w, x):
        shape = [1] * len(x.shape)
        for a in axes:
            shape[a] = x.shape[a]
        return ops.reshape(to_float32(ops.convert_to_tensor(w)), shape)

    def forward(x, *args, **kwargs):
        x = to_float32(x)
        centred = x - ops.mean(x, axis=axes, keepdims=True)
        y = times(x if rms else centred, inverse_root(ops.mean(square(centred), axis=axes, keepdims=True)))
        if getattr(op, "gamma", None) is not None:
            y = y * weight(op.gamma, x)
        if getattr(op, "beta", None) is not None and not rms:
            y = y + weight(op.beta, x)
        return to_dtype(y, dtype)

    return forward
