"""Replaced backward rules per layer type: the one mechanism under LRP, guided backprop and deconvnet.

The model's graph is walked as usual (:mod:`cnn_exposed.graph`), with every layer swapped for a version
whose forward pass is the layer's own and whose backward pass follows a rule. Relevance is carried as a
modified gradient ``g`` with the invariant ``R = a ⊙ g`` at every activation ``a`` (the LRP-as-gradient
formulation): at the output ``g`` is 1 for the explained logit, so ``R`` there is the logit itself.

- Linear layers with weights (Dense, Conv1D/2D/3D, DepthwiseConv2D), batch normalisation folded in:
  ε, z⁺ / αβ, or z^B (first layer) rules.
- Weight-free linear operations (Add, average pooling, standalone batch normalisation, Rescaling): the
  ε-rule, which splits relevance in proportion to each input's contribution (residual ``Add``).
- Element-wise activations: relevance passes unchanged (``R_z = R_a``; for ReLU this is the plain gradient).
- Routing layers (padding, reshaping, max pooling, dropout, concatenation): the plain gradient.

Guided backprop and deconvnet change only the ReLU family's backward pass.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ..engine import vjp, with_backward
from ..errors import CnnExposedError
from ..layers import is_nested_model, iter_layers

LRP_RULES = ("epsilon", "zplus", "alpha1beta0", "alpha2beta1", "zb")
DEFAULT_COMPOSITE = {"first": "zb", "conv": "zplus", "dense": "epsilon"}

_ROUTING = {
    "InputLayer", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "Reshape", "Flatten", "Permute", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity", "Concatenate",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D", "UpSampling1D", "UpSampling2D",
}  # fmt: skip
_PLAIN_LINEAR = {
    "Add", "Average", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "Rescaling", "BatchNormalization", "Subtract",
}  # fmt: skip
_WEIGHTED = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv2D,
)
_ACTIVATIONS = {"Activation", "ReLU", "LeakyReLU", "ELU", "Softmax"}
_RELU_FAMILY = {"relu", "relu6", "leaky_relu"}


class UnsupportedLayerError(CnnExposedError):
    """A layer type a rule-based backward pass cannot propagate through."""


def _is_linear_activation(fn) -> bool:
    return fn is None or getattr(fn, "__name__", "") == "linear"


def _activation_name(op) -> str:
    if isinstance(op, keras.layers.ReLU):
        return "relu6" if op.max_value is not None else ("leaky_relu" if op.negative_slope else "relu")
    if isinstance(op, keras.layers.LeakyReLU):
        return "leaky_relu"
    return getattr(getattr(op, "activation", None), "__name__", type(op).__name__.lower())


def _kind(op) -> str:
    name = type(op).__name__
    if is_nested_model(op):
        return "model"
    if isinstance(op, _WEIGHTED):
        return "weighted"
    if name in _ROUTING:
        return "routing"
    if name in _PLAIN_LINEAR:
        return "linear"
    if name in _ACTIVATIONS:
        return "activation"
    return "unsupported"


# ------------------------------------------------------------------------------------------ linear maps
def _kernel_and_bias(layer, bn=None):
    """The layer's kernel and bias as tensors, with a following batch normalisation folded in."""
    kernel = ops.convert_to_tensor(layer.kernel)
    bias = ops.convert_to_tensor(layer.bias) if getattr(layer, "bias", None) is not None else None
    if bn is None:
        return kernel, bias
    scale = ops.rsqrt(ops.convert_to_tensor(bn.moving_variance) + bn.epsilon)
    if bn.gamma is not None:
        scale = scale * ops.convert_to_tensor(bn.gamma)
    shift = -ops.convert_to_tensor(bn.moving_mean) * scale
    if bn.beta is not None:
        shift = shift + ops.convert_to_tensor(bn.beta)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = kernel * ops.reshape(scale, (kernel.shape[2], kernel.shape[3]))
    else:
        kernel = kernel * scale
    bias = shift if bias is None else bias * scale + shift
    return kernel, bias


def _linear(layer, kernel, bias):
    """``x -> layer's linear map with this kernel and bias`` (no activation)."""

    def apply(x):
        if isinstance(layer, keras.layers.Dense):
            z = ops.matmul(x, kernel)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            z = ops.depthwise_conv(
                x, kernel, strides=layer.strides, padding=layer.padding, data_format=layer.data_format,
                dilation_rate=layer.dilation_rate,
            )  # fmt: skip
        else:
            z = layer.convolution_op(x, kernel)
        return z if bias is None else z + bias

    return apply


def _safe(z, eps: float):
    """``z + ε·sign(z)``, with sign(0) taken as +1 so nothing divides by zero."""
    return z + eps * ops.where(z >= 0, 1.0, -1.0)


def _weighted_rule(layer, rule: str, epsilon: float, bn, context: dict | None):
    kernel, bias = _kernel_and_bias(layer, bn)
    full = _linear(layer, kernel, bias)
    plain = _linear(layer, kernel, None)
    pos = _linear(layer, ops.maximum(kernel, 0.0), None)
    neg = _linear(layer, ops.minimum(kernel, 0.0), None)

    if rule == "epsilon":

        def backward(inputs, z, g):
            return vjp(plain, [inputs[0]], (z * g) / _safe(z, epsilon))

        return with_backward(full, backward)
    if rule in ("zplus", "alpha1beta0", "alpha2beta1"):
        alpha, beta = (2.0, 1.0) if rule == "alpha2beta1" else (1.0, 0.0)

        def positive(x):  # Σ (x_i w_ij)⁺
            return pos(ops.maximum(x, 0.0)) + neg(ops.minimum(x, 0.0))

        def negative(x):  # Σ (x_i w_ij)⁻
            return neg(ops.maximum(x, 0.0)) + pos(ops.minimum(x, 0.0))

        def backward(inputs, z, g):
            x = inputs[0]
            r = z * g
            (gp,) = vjp(positive, [x], lambda zp: alpha * r / _safe(zp, 1e-9))
            if beta == 0.0:
                return [gp]
            (gn,) = vjp(negative, [x], lambda zn: beta * r / _safe(zn, 1e-9))
            return [gp - gn]

        return with_backward(full, backward)
    if rule == "zb":

        def backward(inputs, z, g):
            r = z * g
            bounded = lambda a, lo, hi: plain(a) - pos(lo) - neg(hi)  # noqa: E731
            return vjp(bounded, list(inputs), lambda zb: r / _safe(zb, 1e-9))

        op = with_backward(lambda x, low, high: full(x), backward)

        def first_layer(x):
            low, high = context["bounds"](x)
            context["watch"](low)
            context["watch"](high)
            context.update(first_input=x, low=low, high=high)
            return op(x, low, high)

        return first_layer
    raise ValueError(f"Unknown LRP rule {rule!r}; choose from {LRP_RULES}.")


def _plain_linear_rule(op, epsilon: float):
    """The ε-rule for a weight-free linear operation (one or several inputs)."""

    def call(*args, **kwargs):
        several = isinstance(args[0], (list, tuple))
        tensors = list(args[0]) if several else [args[0]]

        def forward(*ts):
            return op(list(ts), **kwargs) if several else op(ts[0], **kwargs)

        def backward(inputs, z, g):
            return vjp(forward, list(inputs), (z * g) / _safe(z, epsilon))

        return with_backward(forward, backward)(*tensors)

    return call


def _activation_rule(fn, mode: str, name: str):
    """Element-wise activation ``fn`` with the backward pass of ``mode``."""
    if mode == "lrp":

        def backward(inputs, a, g):
            z = inputs[0]
            ratio = ops.where(ops.abs(z) > 1e-12, a / ops.where(ops.abs(z) > 1e-12, z, 1.0), 0.0)
            return [g * ratio]

        return with_backward(fn, backward)
    if name not in _RELU_FAMILY:
        return fn  # guided backprop and deconvnet only change the ReLU family
    if mode == "guided":

        def backward(inputs, a, g):
            (normal,) = vjp(fn, [inputs[0]], g)
            return [normal * ops.cast(g > 0, g.dtype)]

        return with_backward(fn, backward)
    if mode == "redirect":
        return with_backward(fn, _redirected_backward(fn))

    def deconv_backward(inputs, a, g):
        return [ops.maximum(g, 0.0)]

    return with_backward(fn, deconv_backward)


def _redirected_backward(fn):
    """Lucid's redirected ReLU gradient, for feature visualisation of a loss being minimised.

    Where the plain gradient of an image's whole activation tensor is zero (every unit dead, as on a grey
    start image), the upstream gradient is passed through instead, except where it would push an already
    negative input lower. Without it, filters that are silent on the starting image never move.
    """

    def backward(inputs, a, g):
        z = inputs[0]
        (plain,) = vjp(fn, [z], g)
        redirected = ops.where(ops.logical_and(z < 0, g > 0), 0.0, g)
        flat = ops.reshape(plain, (ops.shape(plain)[0], -1))
        alive = ops.reshape(ops.max(ops.abs(flat), axis=1) > 0, (-1,) + (1,) * (len(plain.shape) - 1))
        return [ops.where(alive, plain, redirected)]

    return backward


def _activation_fn(op):
    if isinstance(op, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU)):
        return op
    return op.activation


def _fold_pairs(model) -> dict:
    """``id(linear layer) -> BatchNormalization`` for every BN that directly follows a linear layer with no
    activation and is that layer's only consumer."""
    pairs = {}
    for ref in iter_layers(model):
        bn = ref.layer
        if not isinstance(bn, keras.layers.BatchNormalization) or bn.axis not in (-1, len(bn.input.shape) - 1):
            continue
        try:
            producer = bn.input._keras_history[0]
        except (AttributeError, ValueError):
            continue
        if not isinstance(producer, _WEIGHTED) or not _is_linear_activation(producer.activation):
            continue
        consumers = 0
        for other in ref.models[-1].layers:
            try:
                inputs = other.input if isinstance(other.input, (list, tuple)) else [other.input]
            except (AttributeError, ValueError):
                continue
            consumers += sum(t is producer.output for t in inputs)
        if consumers == 1:
            pairs[id(producer)] = bn
    return pairs


class RuleSet:
    """Which backward rule each layer of a model gets.

    Parameters
    ----------
    mode : {"lrp", "guided", "deconv", "redirect"}
        ``"redirect"``: Lucid's redirected ReLU gradient, for feature visualisation.
    rule : str or dict
        LRP only: one rule for every weighted layer, or a composite ``{"first": ..., "conv": ...,
        "dense": ...}`` (missing entries: ``"epsilon"``).
    epsilon : float
        The ε of the ε-rule.
    bounds : (low, high) or None
        The z^B rule's input bounds; None uses each image's own minimum and maximum.
    """

    def __init__(self, mode: str, rule="composite", epsilon: float = 1e-2, bounds=None) -> None:
        if mode not in ("lrp", "guided", "deconv", "redirect"):
            raise ValueError(f"mode must be 'lrp', 'guided', 'deconv' or 'redirect', got {mode!r}.")
        if rule == "composite":
            rule = dict(DEFAULT_COMPOSITE)
        composite = dict(rule) if isinstance(rule, dict) else {"first": rule, "conv": rule, "dense": rule}
        for key, value in composite.items():
            if key not in ("first", "conv", "dense"):
                raise ValueError(f"Composite keys are 'first', 'conv' and 'dense'; got {key!r}.")
            if value not in LRP_RULES:
                raise ValueError(f"Unknown LRP rule {value!r}; choose from {LRP_RULES}.")
        for key in ("first", "conv", "dense"):
            composite.setdefault(key, "epsilon")
        if "zb" in (composite["conv"], composite["dense"]):
            raise ValueError("The z^B rule is for the first layer only: use it as the composite's 'first' entry.")
        self.mode, self.composite, self.epsilon, self.bounds = mode, composite, float(epsilon), bounds
        self.output = "relevance" if mode == "lrp" else "gradient"
        bkey = None if bounds is None else tuple(np.asarray(bounds, dtype=np.float64).ravel().tolist())
        self.key = (mode, tuple(sorted(composite.items())) if mode == "lrp" else None, self.epsilon, bkey)
        self._context: dict = {}

    def start(self, watch) -> dict:
        """Called at the start of each traced backward pass: a fresh context for the z^B rule."""
        self._context.clear()
        self._context.update(watch=watch, bounds=self._bounds, first_input=None)
        return self._context

    def _bounds(self, x):
        if self.bounds is None:
            axes = tuple(range(1, len(x.shape)))
            shape = (-1,) + (1,) * (len(x.shape) - 1)
            low = ops.reshape(ops.min(x, axis=axes), shape) * ops.ones_like(x)
            high = ops.reshape(ops.max(x, axis=axes), shape) * ops.ones_like(x)
            return ops.stop_gradient(low), ops.stop_gradient(high)
        low, high = (np.asarray(b, dtype=np.float32) for b in self.bounds)
        return ops.ones_like(x) * low, ops.ones_like(x) * high

    def replacements(self, model, head) -> dict:
        """``id(layer) -> factory(layer, final)`` for every layer (nested ones included) that needs one."""
        refs = list(iter_layers(model))
        unsupported = [r for r in refs if _kind(r.layer) == "unsupported"]
        if unsupported and self.mode == "lrp":
            r = unsupported[0]
            raise UnsupportedLayerError(
                f"LRP cannot propagate relevance through layer {r.path!r} of type {type(r.layer).__name__}. "
                "Supported: Dense, Conv1D/2D/3D, DepthwiseConv2D, BatchNormalization, pooling, Add, "
                "Concatenate, padding, reshaping, dropout and element-wise activations."
            )
        folds = _fold_pairs(model) if self.mode == "lrp" else {}
        folded_bns = {id(bn) for bn in folds.values()}
        first_id = None
        weighted = [r for r in refs if _kind(r.layer) == "weighted"]
        if self.mode == "lrp" and weighted and self.composite["first"] == "zb":
            first = weighted[0]
            before = refs[: refs.index(first)]
            if any(_kind(r.layer) not in ("routing", "model") for r in before):
                odd = next(r for r in before if _kind(r.layer) not in ("routing", "model"))
                raise UnsupportedLayerError(
                    f"The z^B rule needs the first weighted layer ({first.path!r}) to see the model input, "
                    f"but {odd.path!r} ({type(odd.layer).__name__}) transforms it first. Use "
                    "rule={'first': 'zplus', ...} or 'epsilon' for the first layer."
                )
            first_id = id(first.layer)
        out = {}
        for r in refs:
            layer, kind = r.layer, _kind(r.layer)
            if kind == "weighted":
                out[id(layer)] = self._weighted_factory(layer, folds.get(id(layer)), id(layer) == first_id, r)
            elif kind == "activation":
                out[id(layer)] = self._activation_factory(layer)
            elif kind == "linear" and self.mode == "lrp":
                if id(layer) in folded_bns:
                    out[id(layer)] = lambda op, final: lambda x, *a, **k: x
                else:
                    out[id(layer)] = lambda op, final: _plain_linear_rule(op, self.epsilon)
        return out

    def _weighted_factory(self, layer, bn, is_first: bool, ref):
        kind = "dense" if isinstance(layer, keras.layers.Dense) else "conv"
        rule = self.composite["first"] if is_first else self.composite[kind]

        def factory(op, final: bool):
            if self.mode == "lrp":
                linear = _weighted_rule(op, rule, self.epsilon, bn, self._context if rule == "zb" else None)
            else:
                kernel, bias = _kernel_and_bias(op)
                linear = _linear(op, kernel, bias)
            act = None if final or _is_linear_activation(op.activation) else op.activation
            if act is None:
                return lambda x, *a, **k: linear(x)
            act_fn = _activation_rule(act, self.mode, _activation_name(op))
            return lambda x, *a, **k: act_fn(linear(x))

        return factory

    def _activation_factory(self, layer):
        def factory(op, final: bool):
            name = _activation_name(op)
            if final and name in ("softmax", "sigmoid"):
                return lambda x, *a, **k: x
            return _activation_rule(_activation_fn(op), self.mode, name)

        return factory
