"""The LRP rules: each maps the relevance of a layer's (or operation's) output to that of its inputs.

They are backward passes of ``with_backward``: the forward pass is the layer's own, and what flows backward is
the relevance itself (the engine seeds the explained logit with its own value). Carrying relevance rather
than a modified gradient ``g`` with ``R = a ⊙ g`` saves the element-wise passes that would turn one into the
other at every activation, which on a CPU cost as much as the convolutions.
"""

from __future__ import annotations

from keras import ops

from ..backend import fused, vjp, with_backward
from ..precision import FLOAT32, float32_rule
from .rewrite import Stack, linear_map

LRP_RULES = ("epsilon", "zplus", "alpha1beta0", "alpha2beta1", "zb")


def stabilised_ratio(r, z, eps: float):
    """``r / (z + ε·sign(z))``, and 0 where ``z`` is exactly 0 (its relevance is 0 there too)."""
    return ops.divide_no_nan(r, z + eps * ops.sign(z))


def weighted_rule(layer, rule: str, epsilon: float, kernel, bias, bounds=None, non_negative=False, pads=None):
    """The layer's linear map (``kernel``, ``bias``) with an LRP backward rule (upstream and result are
    relevances).

    ``bounds``: the z^B rule's ``x -> (low, high)``. ``non_negative``: the layer's input is known to be
    >= 0 (it comes from a ReLU, possibly through pooling or padding), so the z⁺ / αβ rules skip the half of
    their sums that only negative inputs feed.

    The forward pass is the layer's own, in its compute dtype; the rule's arithmetic is float32 (``kernel`` and
    ``bias`` are, :func:`~cnn_exposed.precision.float32_rule`), whatever the layer computes in.
    """
    full = linear_map(layer, kernel, bias, pads)
    plain = linear_map(layer, kernel, None, pads, FLOAT32)
    kpos, kneg = ops.maximum(kernel, 0.0), ops.minimum(kernel, 0.0)

    if rule == "epsilon":

        def backward(inputs, z, r):
            x = inputs[0]
            (c,) = vjp(plain, [x], stabilised_ratio(r, z, epsilon))
            return [x * c]

        return with_backward(full, float32_rule(backward))
    if rule in ("zplus", "alpha1beta0", "alpha2beta1"):
        alpha, beta = (2.0, 1.0) if rule == "alpha2beta1" else (1.0, 0.0)
        # z⁺_j = Σ_i (x_i w_ij)⁺ = Σ x⁺ w⁺ + Σ x⁻ w⁻, and z⁻_j = Σ x⁺ w⁻ + Σ x⁻ w⁺: sums of same-signed terms,
        # so a neuron with no positive (negative) contribution gets exactly 0 and passes no relevance
        positive = Stack(layer, [kpos] if non_negative else [kpos, kneg], pads, FLOAT32)
        negative = Stack(layer, [kneg] if non_negative else [kneg, kpos], pads, FLOAT32) if beta else None

        def split(x):
            return positive.inputs([ops.maximum(x, 0.0), ops.minimum(x, 0.0)])

        split = fused(split) if positive.fused else split  # one pass writing [x⁺, x⁻], not three

        def backward(inputs, z, r):
            x = inputs[0]
            parts = [x] if non_negative else split(x)
            r_pos = r if alpha == 1.0 else alpha * r
            out = positive.relevance(parts, lambda zp: ops.divide_no_nan(r_pos, zp))
            if beta != 0.0:
                out = out - negative.relevance(parts, lambda zn: ops.divide_no_nan(beta * r, zn))
            return [out]

        return with_backward(full, float32_rule(backward))
    if rule == "zb":
        # (x, low, high) -> Σ x w - low w⁺ - high w⁻; no pads: replacements() keeps z^B's padding layer
        bounded = Stack(layer, [kernel, -kpos, -kneg], dtype=FLOAT32)

        def backward(inputs, z, r):
            parts = bounded.inputs([inputs[0], *bounds(inputs[0])])
            return [bounded.relevance(parts, lambda zb: stabilised_ratio(r, zb, 1e-9))]

        return with_backward(full, float32_rule(backward))
    raise ValueError(f"Unknown LRP rule {rule!r}; choose from {LRP_RULES}.")


def identity_backward(inputs, z, r):
    """Relevance passes unchanged: ``R_in = R_out``."""
    return [r]


def epsilon_backward(forward, epsilon: float):
    """The ε-rule through a weight-free linear ``forward`` of one or several inputs: each input gets
    ``x ⊙ ∂(z · s)/∂x`` with ``s = R / (z + ε sign z)``, its share of each output's relevance."""

    def backward(inputs, z, r):
        cs = vjp(forward, list(inputs), stabilised_ratio(r, z, epsilon))
        return [t * c for t, c in zip(inputs, cs, strict=True)]

    return float32_rule(backward)


def gate_backward(signal: int):
    """All the relevance to input ``signal``; the gates, held as constant weights, get none."""

    def backward(inputs, z, r):
        return [r if i == signal else ops.zeros_like(t) for i, t in enumerate(inputs)]

    return backward


def layer_input_rule(op, make_backward):
    """``op``'s call with the backward pass ``make_backward(forward)``, for a layer called on one tensor or
    on a list of tensors (``Add``, ``Multiply``)."""

    def call(*args, **kwargs):
        several = isinstance(args[0], (list, tuple))
        tensors = list(args[0]) if several else [args[0]]

        def forward(*ts):
            return op(list(ts), **kwargs) if several else op(ts[0], **kwargs)

        return with_backward(forward, make_backward(forward))(*tensors)

    return call


def plain_linear_rule(op, epsilon: float):
    """The ε-rule for a weight-free linear layer (one or several inputs)."""
    return layer_input_rule(op, lambda forward: epsilon_backward(forward, epsilon))


def pass_through_rule(op):
    """An element-wise layer whose relevance passes unchanged (``R_in = R_out``): per-element scaling such as
    ``Rescaling``, ``Normalization``, ConvNeXt's layer scale."""

    rule = with_backward(lambda x: op(x), identity_backward)
    return lambda x, *a, **k: rule(x)


def gate_rule(op, signal: int):
    """``Multiply`` as a gate: the gates are constant weights, all the relevance flows to input ``signal``
    (the signal and the output have the same shape)."""
    return layer_input_rule(op, lambda forward: gate_backward(signal))


def operation_rule(op, make_backward=None, wrap=None):
    """A ``keras.ops`` operation node's call (tensors and constants among its positional arguments, as the
    graph stores them) with the backward pass ``make_backward(forward)``, or as ``wrap(forward)``; ``forward``
    is the operation as a function of its tensors alone."""

    def call(*args, **kwargs):
        where = [i for i, a in enumerate(args) if ops.is_tensor(a)]

        def forward(*ts):
            full = list(args)
            for i, t in zip(where, ts, strict=True):
                full[i] = t
            return op(*full, **kwargs)

        fn = wrap(forward) if wrap is not None else with_backward(forward, make_backward(forward))
        return fn(*[args[i] for i in where])

    return call


def passes(forward):
    return identity_backward


def layer_norm_rule(op, epsilon: float):
    """``LayerNormalization`` with its standard deviation held constant (Ali et al. 2022): then a linear map of
    its input (centring, a per-sample constant scale, ``gamma``), the ε-rule through it; the forward pass is the
    layer's own."""
    axes = tuple(op.axis) if isinstance(op.axis, (list, tuple)) else (op.axis,)
    rms = bool(getattr(op, "rms_scaling", False))

    def linear(x):  # the layer without its bias, its scale held constant: linear in x
        centred = x if rms else x - ops.mean(x, axis=axes, keepdims=True)
        spread = ops.mean(ops.square(x), axis=axes, keepdims=True) if rms else ops.var(x, axis=axes, keepdims=True)
        y = centred * ops.stop_gradient(ops.rsqrt(spread + op.epsilon))
        return y * ops.cast(op.gamma, y.dtype) if getattr(op, "gamma", None) is not None else y

    def backward(inputs, z, r):
        x = inputs[0]
        (c,) = vjp(linear, [x], stabilised_ratio(r, z, epsilon))
        return [x * c]

    rule = with_backward(lambda x: op(x), float32_rule(backward))
    return lambda x, *a, **k: rule(x)
