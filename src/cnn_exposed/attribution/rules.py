"""Replaced backward rules per layer type: the one mechanism under LRP, guided backprop and deconvnet.

The model's graph is walked as usual (:mod:`cnn_exposed.graph`), with every layer swapped for a version
whose forward pass is the layer's own and whose backward pass follows a rule. In LRP mode what flows
backward is the relevance itself: the engine seeds the explained logit with its own value, and each rule
maps the relevance of a layer's output to that of its inputs. (Carrying relevance rather than a modified
gradient ``g`` with ``R = a ⊙ g`` saves the element-wise passes that would turn one into the other at every
activation, which on a CPU cost as much as the convolutions.)

- Linear layers with weights (Dense, Conv1D/2D/3D, DepthwiseConv2D), batch normalisation folded in:
  ε, z⁺ / αβ, or z^B (first layer) rules.
- Weight-free linear operations (Add, average pooling, standalone batch normalisation, Rescaling): the
  ε-rule, which splits relevance in proportion to each input's contribution (residual ``Add``).
- Element-wise activations: relevance passes unchanged (``R_z = R_a``; for ReLU this is the plain gradient).
- Routing layers (padding, reshaping, max pooling, dropout, concatenation): the plain gradient.

Guided backprop and deconvnet change only the ReLU family's backward pass; the ``"gradient"`` mode
changes none (feature visualisation uses it for the faster linear layers).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ..backend import fused, padded_conv, vjp, with_backward
from ..compat import causal_padding, flip, functional_graph, graph_operations, producer
from ..errors import UnsupportedLayerError
from ..graph import call_count
from ..layers import LayerRef, is_nested_model, is_subclassed, iter_layers, trace_subclassed, traced

LRP_RULES = ("epsilon", "zplus", "alpha1beta0", "alpha2beta1", "zb")
DEFAULT_COMPOSITE = {"first": "zb", "conv": "zplus", "dense": "epsilon"}

# Which rule each kind of layer gets (the README's table says the same):
# - routing: moves or selects values, or is the identity at inference (dropout, augmentation, stochastic depth):
#   run as it is; its gradient routes the relevance.
_IDENTITY_AT_INFERENCE = {
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "ActivityRegularization", "Identity", "RandomFlip", "RandomRotation", "RandomZoom",
    "RandomContrast", "RandomTranslation", "RandomBrightness", "StochasticDepth",
}  # fmt: skip
_ROUTING = _IDENTITY_AT_INFERENCE | {
    "InputLayer", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "Reshape", "Flatten", "Permute", "Concatenate", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "UpSampling1D", "UpSampling2D",
}  # fmt: skip
# - linear: a weight-free linear map, the ε-rule.
_PLAIN_LINEAR = {
    "Add", "Average", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "BatchNormalization", "Subtract",
}  # fmt: skip
# - weighted: the composite's rule (z⁺ for convolutions, ε for dense layers, z^B first); a separable
#   convolution is its depthwise then its pointwise convolution, each with the rule, batch norm folded after.
_WEIGHTED = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
)
# - activation / elementwise: relevance passes unchanged (R_in = R_out), as through a ReLU: every element-wise
#   activation (GELU, swish, hard-swish, sigmoid, ...), and per-element affine maps that rescale a signal
#   without mixing it (input Rescaling / Normalization, ConvNeXt's layer scale, PReLU).
_ACTIVATIONS = {"Activation", "ReLU", "LeakyReLU", "ELU", "Softmax"}
_ELEMENTWISE = {"Rescaling", "Normalization", "LayerScale", "PReLU"}
# - gate: Multiply, where all inputs but one are gates (squeeze-and-excitation: a sigmoid over channel means,
#   broadcast over the image): the gates count as constant weights and the relevance flows to the signal.
# - layer norm: LayerNormalization with its standard deviation treated as constant (Ali et al. 2022, "XAI for
#   transformers"): a linear map of its input, the ε-rule.
_RELU_FAMILY = {"relu", "relu6", "leaky_relu"}


def _is_linear_activation(fn) -> bool:
    return fn is None or getattr(fn, "__name__", "") == "linear"


def _activation_name(op) -> str:
    if isinstance(op, keras.layers.ReLU):
        return "relu6" if op.max_value is not None else ("leaky_relu" if op.negative_slope else "relu")
    if isinstance(op, keras.layers.LeakyReLU):
        return "leaky_relu"
    return getattr(getattr(op, "activation", None), "__name__", type(op).__name__.lower())


_NON_NEGATIVE_ACTIVATIONS = {"relu", "relu6", "sigmoid", "hard_sigmoid", "softmax", "softplus", "exponential"}
# layers whose output is >= 0 wherever all their inputs are
_KEEPS_SIGN = (_ROUTING - {"InputLayer", "GaussianNoise"}) | {
    "Add", "Average", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D",
}  # fmt: skip


def _zero_below(fn, name: str) -> bool:
    """Whether the activation is a ReLU (any cap, threshold >= 0, no leak): 0 wherever its input is <= 0."""
    if name not in ("relu", "relu6"):
        return False
    return not getattr(fn, "negative_slope", 0.0) and (getattr(fn, "threshold", 0.0) or 0.0) >= 0.0


def _output_non_negative(op, depth: int = 0) -> bool:
    """Whether a layer's output is >= 0 for every input, read from the model's graph (False when unsure)."""
    name = type(op).__name__
    weighted_act = isinstance(op, _WEIGHTED) and not _is_linear_activation(op.activation)
    if isinstance(op, keras.layers.ReLU) or name == "Activation" or weighted_act:
        act = _activation_name(op)
        if act in ("relu", "relu6"):
            return _zero_below(_activation_fn(op), act)
        return act in _NON_NEGATIVE_ACTIVATIONS
    if name in _KEEPS_SIGN and depth < 50:
        try:
            inputs = op.input if isinstance(op.input, (list, tuple)) else [op.input]
            return all(_output_non_negative(producer(t), depth + 1) for t in inputs)
        except (AttributeError, ValueError):  # a shared layer has no single input
            return False
    return False


def _input_non_negative(layer) -> bool:
    """Whether ``layer``'s (single) input is >= 0 for every model input."""
    try:
        return _output_non_negative(producer(layer.input))
    except (AttributeError, ValueError):
        return False


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
    if name in _ELEMENTWISE:
        return "elementwise"
    if name == "Multiply":
        return "gate"
    if name == "LayerNormalization":
        return "layernorm"
    return "unsupported"


# ------------------------------------------------------------------------------------------ linear maps
def _kernel_and_bias(layer, bn=None):
    """The layer's kernel and bias as tensors, with a following batch normalisation folded in."""
    kernel = ops.convert_to_tensor(layer.kernel)
    bias = ops.convert_to_tensor(layer.bias) if getattr(layer, "bias", None) is not None else None
    return _fold(layer, kernel, bias, bn)


def _fold(layer, kernel, bias, bn):
    """``kernel`` and ``bias`` of ``layer`` with the batch normalisation ``bn`` (or None) that follows it folded in."""
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


def _transposed_conv(layer, kernel):
    """``g -> the convolution's input gradient``, written as a forward convolution, or None where that is
    not exact.

    For a stride-1, undilated, ungrouped convolution whose kernel is 1 wide (any padding) or odd-sized
    with ``"same"`` padding, the transpose is the same convolution of ``g`` with the kernel flipped in
    space and its two channel axes swapped. On a 2-core CPU, TensorFlow's own ``Conv2DBackpropInput``
    measured up to 2.3x slower than this forward convolution (1x1 kernels of MobileNetV2: 1.1-2.3x; 3x3
    and 5x5 kernels: 1.1-1.6x), so the rule-based passes use it for their backward passes.
    """
    if type(layer) not in (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D):
        return None
    rank = len(kernel.shape) - 2
    sizes = tuple(kernel.shape[:rank])
    pointwise = all(k == 1 for k in sizes)
    if (
        getattr(layer, "groups", 1) != 1
        or any(s != 1 for s in layer.strides)
        or any(d != 1 for d in layer.dilation_rate)
        or layer.padding not in ("valid", "same")
        or not (pointwise or (layer.padding == "same" and all(k % 2 for k in sizes)))
    ):
        return None
    flipped = kernel if pointwise else flip(kernel, tuple(range(rank)))
    transposed = ops.swapaxes(flipped, -1, -2)

    def transpose(g):
        return ops.conv(g, transposed, strides=1, padding=layer.padding, data_format=layer.data_format)

    return transpose


def _linear(layer, kernel, bias, pads=None):
    """``x -> layer's linear map with this kernel and bias`` (no activation).

    ``pads``: the ``((top, bottom), (left, right))`` zeros of a ``ZeroPadding2D`` layer just before this
    one, added inside the convolution instead (:func:`_pad_pairs`).
    """
    transpose = None if pads is not None else _transposed_conv(layer, kernel)

    def conv(x):
        if pads is not None:
            return padded_conv(x, kernel, layer.strides, pads)
        padding = layer.padding
        if padding == "causal":  # Conv1D pads on the left in call(), not in convolution_op()
            x, padding = ops.pad(x, causal_padding(layer)), "valid"
        return ops.conv(
            x, kernel, strides=layer.strides, padding=padding, data_format=layer.data_format,
            dilation_rate=layer.dilation_rate,
        )  # fmt: skip

    if transpose is not None:
        conv = with_backward(conv, lambda inputs, z, g: [transpose(g)])

    def apply(x):
        if isinstance(layer, keras.layers.Dense):
            z = ops.matmul(x, kernel)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            z = ops.depthwise_conv(
                x, kernel, strides=layer.strides, padding=layer.padding, data_format=layer.data_format,
                dilation_rate=layer.dilation_rate,
            )  # fmt: skip
        else:
            z = conv(x)
        return z if bias is None else z + bias

    return apply


class _Stack:
    """``(x_1, ..., x_k) -> Σ_k layer(x_k; W_k)``: one layer's linear map of k inputs, one kernel each, summed.

    Where the layer allows it (channels last, not depthwise or grouped), this is one convolution (or
    matrix product) of the inputs stacked along the channel axis with the kernels stacked along their input
    axis: one call each way instead of k, and no sum of k full-size outputs.
    """

    def __init__(self, layer, kernels: list, pads=None) -> None:
        self.k = len(kernels)
        grouped = isinstance(layer, keras.layers.DepthwiseConv2D) or getattr(layer, "groups", 1) != 1
        channels_last = getattr(layer, "data_format", "channels_last") == "channels_last"
        self.fused = self.k > 1 and not grouped and channels_last
        if self.fused:
            self.maps = [_linear(layer, ops.concatenate(kernels, axis=-2), None, pads)]
            self._combine = fused(self._weighted_sum)  # one pass instead of a product, then a sum
        else:
            self.maps = [_linear(layer, kernel, None, pads) for kernel in kernels]

    def inputs(self, xs: list) -> list:
        return [ops.concatenate(xs, axis=-1)] if self.fused else list(xs)

    def __call__(self, *inputs):
        out = self.maps[0](inputs[0])
        for m, x in zip(self.maps[1:], inputs[1:], strict=True):
            out = out + m(x)
        return out

    def relevance(self, inputs: list, ratio) -> object:
        """``Σ_k x_k ⊙ (W_kᵀ s)`` with ``s = ratio(output)``: the relevance the k inputs together receive."""
        cs = vjp(self, inputs, ratio)
        if not self.fused:
            total = inputs[0] * cs[0]
            for x, c in zip(inputs[1:], cs[1:], strict=True):
                total = total + x * c
            return total
        return self._combine(inputs[0], cs[0])

    def _weighted_sum(self, x, c):
        prod = x * c
        shape = (-1,) + tuple(prod.shape[1:-1]) + (self.k, prod.shape[-1] // self.k)
        return ops.sum(ops.reshape(prod, shape), axis=-2)


def _stages(layer, bn=None) -> list:
    """The linear map of a weighted layer as a chain of ``(layer-like, kernel, bias)``: one stage for dense and
    convolution layers; for a separable convolution its depthwise convolution then its pointwise (1 x 1) one,
    a following batch normalisation folded into the latter. The stand-in layers carry only the configuration
    :func:`_linear` reads (named, so they take no automatic layer name from the user's session)."""
    if not isinstance(layer, keras.layers.SeparableConv2D):
        return [(layer, *_kernel_and_bias(layer, bn))]
    depthwise = keras.layers.DepthwiseConv2D(
        layer.kernel_size, strides=layer.strides, padding=layer.padding, depth_multiplier=layer.depth_multiplier,
        data_format=layer.data_format, dilation_rate=layer.dilation_rate, use_bias=False,
        name=f"{layer.name}__depthwise",
    )  # fmt: skip
    pointwise = keras.layers.Conv2D(layer.filters, 1, data_format=layer.data_format, name=f"{layer.name}__pointwise")
    bias = ops.convert_to_tensor(layer.bias) if getattr(layer, "bias", None) is not None else None
    kernel, bias = _fold(pointwise, ops.convert_to_tensor(layer.pointwise_kernel), bias, bn)
    return [(depthwise, ops.convert_to_tensor(layer.depthwise_kernel), None), (pointwise, kernel, bias)]


def _stabilised_ratio(r, z, eps: float):
    """``r / (z + ε·sign(z))``, and 0 where ``z`` is exactly 0 (its relevance is 0 there too)."""
    return ops.divide_no_nan(r, z + eps * ops.sign(z))


def _weighted_rule(layer, rule: str, epsilon: float, kernel, bias, bounds=None, non_negative=False, pads=None):
    """The layer's linear map (``kernel``, ``bias``) with an LRP backward rule (upstream and result are
    relevances).

    ``bounds``: the z^B rule's ``x -> (low, high)``. ``non_negative``: the layer's input is known to be
    >= 0 (it comes from a ReLU, possibly through pooling or padding), so the z⁺ / αβ rules skip the half of
    their sums that only negative inputs feed.
    """
    full = _linear(layer, kernel, bias, pads)
    plain = _linear(layer, kernel, None, pads)
    kpos, kneg = ops.maximum(kernel, 0.0), ops.minimum(kernel, 0.0)

    if rule == "epsilon":

        def backward(inputs, z, r):
            x = inputs[0]
            (c,) = vjp(plain, [x], _stabilised_ratio(r, z, epsilon))
            return [x * c]

        return with_backward(full, backward)
    if rule in ("zplus", "alpha1beta0", "alpha2beta1"):
        alpha, beta = (2.0, 1.0) if rule == "alpha2beta1" else (1.0, 0.0)
        # z⁺_j = Σ_i (x_i w_ij)⁺ = Σ x⁺ w⁺ + Σ x⁻ w⁻, and z⁻_j = Σ x⁺ w⁻ + Σ x⁻ w⁺: sums of same-signed terms,
        # so a neuron with no positive (negative) contribution gets exactly 0 and passes no relevance
        positive = _Stack(layer, [kpos] if non_negative else [kpos, kneg], pads)
        negative = _Stack(layer, [kneg] if non_negative else [kneg, kpos], pads) if beta else None

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

        return with_backward(full, backward)
    if rule == "zb":
        # (x, low, high) -> Σ x w - low w⁺ - high w⁻; no pads: replacements() keeps z^B's padding layer
        bounded = _Stack(layer, [kernel, -kpos, -kneg])

        def backward(inputs, z, r):
            parts = bounded.inputs([inputs[0], *bounds(inputs[0])])
            return [bounded.relevance(parts, lambda zb: _stabilised_ratio(r, zb, 1e-9))]

        return with_backward(full, backward)
    raise ValueError(f"Unknown LRP rule {rule!r}; choose from {LRP_RULES}.")


def _identity_backward(inputs, z, r):
    """Relevance passes unchanged: ``R_in = R_out``."""
    return [r]


def _epsilon_backward(forward, epsilon: float):
    """The ε-rule through a weight-free linear ``forward`` of one or several inputs: each input gets
    ``x ⊙ ∂(z · s)/∂x`` with ``s = R / (z + ε sign z)``, its share of each output's relevance."""

    def backward(inputs, z, r):
        cs = vjp(forward, list(inputs), _stabilised_ratio(r, z, epsilon))
        return [t * c for t, c in zip(inputs, cs, strict=True)]

    return backward


def _gate_backward(signal: int):
    """All the relevance to input ``signal``; the gates, held as constant weights, get none."""

    def backward(inputs, z, r):
        return [r if i == signal else ops.zeros_like(t) for i, t in enumerate(inputs)]

    return backward


def _layer_input_rule(op, make_backward):
    """``op``'s call with the backward pass ``make_backward(forward)``, for a layer called on one tensor or
    on a list of tensors (``Add``, ``Multiply``)."""

    def call(*args, **kwargs):
        several = isinstance(args[0], (list, tuple))
        tensors = list(args[0]) if several else [args[0]]

        def forward(*ts):
            return op(list(ts), **kwargs) if several else op(ts[0], **kwargs)

        return with_backward(forward, make_backward(forward))(*tensors)

    return call


def _plain_linear_rule(op, epsilon: float):
    """The ε-rule for a weight-free linear layer (one or several inputs)."""
    return _layer_input_rule(op, lambda forward: _epsilon_backward(forward, epsilon))


def _chain(maps: list):
    """``x -> maps[-1](... maps[0](x))``."""

    def run(x):
        for m in maps:
            x = m(x)
        return x

    return run


def _pass_through_rule(op):
    """An element-wise layer whose relevance passes unchanged (``R_in = R_out``): per-element scaling such as
    ``Rescaling``, ``Normalization``, ConvNeXt's layer scale."""

    rule = with_backward(lambda x: op(x), _identity_backward)
    return lambda x, *a, **k: rule(x)


def _signal_input(ref) -> int:
    """Which input of a ``Multiply`` layer is the signal, the others being gates.

    A gate is an input the layer broadcasts (squeeze-and-excitation's ``(N, 1, 1, C)`` channel weights) or,
    among inputs as large as the output (a 1 x 1 feature map late in a small-input network), one computed
    from a global pooling of the features (the squeeze) or by a sigmoid. Raises when one signal cannot be
    told apart: a product of two signals has no rule here.
    """
    layer = ref.layer
    try:
        inputs = list(layer.input)
        out_size = int(np.prod(layer.output.shape[1:]))
    except (AttributeError, ValueError, TypeError):  # a shared layer has no single input
        inputs, out_size = [], 0
    full = [i for i, t in enumerate(inputs) if int(np.prod(t.shape[1:])) == out_size]
    if len(full) > 1:
        gates = {i for i in full if _squeezed(inputs[i]) or _sigmoid_output(inputs[i])}
        full = [i for i in full if i not in gates]
    if len(full) != 1:
        raise UnsupportedLayerError(
            f"LRP treats Multiply layers as gates (squeeze-and-excitation: a signal times sigmoid weights), "
            f"but cannot tell which input of {ref.path!r} is the signal. Explain this model with a gradient "
            "method (saliency, integrated_gradients, gradcam) or guided backprop."
        )
    return full[0]


_GLOBAL_POOLS = {
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D",
}  # fmt: skip


def _squeezed(tensor, depth: int = 12) -> bool:
    """Whether ``tensor`` comes from a global pooling through a chain of one-input operations (the excitation
    branch of a squeeze-and-excitation block: pool, 1 x 1 convolutions, activations, ``+ 3`` and ``/ 6``)."""
    for _ in range(depth):
        try:
            op = producer(tensor)
            inputs = op.input
        except (AttributeError, ValueError):
            return False
        if type(op).__name__ in _GLOBAL_POOLS:
            return True
        tensors = [t for t in (inputs if isinstance(inputs, (list, tuple)) else [inputs]) if hasattr(t, "shape")]
        tensors = [t for t in tensors if hasattr(t, "_keras_history")]
        if len(tensors) != 1:  # a merge (or the model input): the chain ends without a pooling
            return False
        tensor = tensors[0]
    return False


def _sigmoid_output(tensor) -> bool:
    try:
        return _activation_name(producer(tensor)) in ("sigmoid", "hard_sigmoid")
    except (AttributeError, ValueError):
        return False


def _gate_rule(op, signal: int):
    """``Multiply`` as a gate: the gates are constant weights, all the relevance flows to input ``signal``
    (the signal and the output have the same shape)."""
    return _layer_input_rule(op, lambda forward: _gate_backward(signal))


# ------------------------------------------------------------------- keras.ops operations between layers
# ``x + y``, ``ops.relu(x)`` or ``x / 255.0`` on symbolic tensors are graph nodes of their own, in a functional
# model and in a traced subclassed model (cnn_exposed.layers.trace_subclassed). They get the rule of the layer
# that does the same: element-wise with one tensor input (activations; arithmetic with constants, as Rescaling):
# relevance passes; a sum of tensors (Add, Subtract, mean or sum over axes): the ε-rule; a product of tensors:
# a gate; routing (reshaping, slicing, joining, max): their gradient. LRP refuses any other.
_OP_ELEMENTWISE = {
    "Relu", "Relu6", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Silu", "Swish", "HardSilu", "HardSwish",
    "Sigmoid", "HardSigmoid", "LogSigmoid", "Softplus", "Softsign", "Tanh", "Mish", "SparsePlus", "Squareplus",
    "Softmax", "LogSoftmax", "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Negative", "Clip",
    "Maximum", "Minimum", "Cast", "Identity",
}  # fmt: skip
_OP_SUMS = {"Add", "Subtract", "Mean", "Sum", "Average"}
_OP_ROUTING = {
    "Reshape", "Transpose", "Concatenate", "ExpandDims", "Squeeze", "GetItem", "Stack", "Pad", "Max", "Tile",
    "Repeat", "Slice", "Take", "Flip", "Roll", "Ravel", "Copy", "Swapaxes", "Moveaxis",
}  # fmt: skip
_OP_RELU = {"Relu": "relu", "Relu6": "relu6", "LeakyRelu": "leaky_relu"}


def _operation_inputs(op) -> list:
    """The symbolic tensors an operation node was called on (constants such as the ``255.0`` of ``x / 255.0``
    are not among them)."""
    try:
        inputs = op.input
    except (AttributeError, ValueError):
        return []
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def _operation_kind(op) -> str:
    name, n = type(op).__name__, len(_operation_inputs(op))
    if name == "Multiply" and n > 1:
        return "gate"
    if name in _OP_ELEMENTWISE and n == 1:
        return "elementwise"
    if name in _OP_SUMS:
        return "linear"
    if name in _OP_ROUTING:
        return "routing"
    return "unsupported"


def _operation_rule(op, make_backward=None, wrap=None):
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


def _passes(forward):
    return _identity_backward


def _operations_before(layer) -> list:
    """The ``keras.ops`` operations (not layers) on the chain of one-input nodes that leads to ``layer``'s
    input, nearest the model input first."""
    found, tensors = [], _operation_inputs(layer)
    while len(tensors) == 1:
        try:
            op = producer(tensors[0])
        except AttributeError:
            break
        if isinstance(op, keras.layers.InputLayer):
            break
        if not isinstance(op, keras.layers.Layer):
            found.append(op)
        tensors = _operation_inputs(op)
    return found[::-1]


def _graph_operations(model):
    """A :class:`LayerRef` for every ``keras.ops`` operation (not a layer) in the graphs of ``model`` and of
    the models nested in it (a subclassed model's: its traced twin's)."""
    chains = [(model,)] + [r.models + (r.layer,) for r in iter_layers(model) if is_nested_model(r.layer)]
    for chain in chains:
        graph = functional_graph(chain[-1]) or traced(chain[-1])
        if graph is None:
            continue
        prefix = "".join(m.name + "/" for m in chain[1:])
        for op in graph_operations(graph):
            if not isinstance(op, keras.layers.Layer):
                yield LayerRef(chain, op, prefix + op.name)


def _layer_norm_rule(op, epsilon: float):
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
        (c,) = vjp(linear, [x], _stabilised_ratio(r, z, epsilon))
        return [x * c]

    rule = with_backward(lambda x: op(x), backward)
    return lambda x, *a, **k: rule(x)


def _activation_rule(fn, mode: str, name: str):
    """Element-wise activation ``fn`` with the backward pass of ``mode``."""
    if mode == "lrp":  # relevance passes unchanged: R_z = R_a
        return with_backward(fn, _identity_backward)
    if name not in _RELU_FAMILY or mode == "gradient":
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

    The element-wise chain is compiled into fused kernels (:func:`fused`): run op by op it read and wrote
    the activation tensor about five times, and cost 4x the plain gradient (measured on a 16x64x64x96
    ReLU6 input: 53 ms fused to 14 ms, against 10 ms for the plain gradient).
    """

    def redirected(z, g):
        (plain,) = vjp(fn, [z], g)
        alive = ops.any(ops.not_equal(plain, 0.0), axis=tuple(range(1, len(plain.shape))), keepdims=True)
        return ops.where(alive, plain, ops.where(z < 0, ops.minimum(g, 0.0), g))

    compiled_redirect = fused(redirected)

    def backward(inputs, a, g):
        return [compiled_redirect(inputs[0], g)]

    return backward


def _activation_fn(op):
    if isinstance(op, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU)):
        return op
    return op.activation


def _only_consumer(layer, models) -> object | None:
    """The one layer that reads ``layer``'s output in its model, or None (several, none, or unknown)."""
    try:
        output = layer.output
    except (AttributeError, ValueError):  # a shared layer has no single output
        return None
    consumers = []
    for other in models[-1].layers:
        try:
            inputs = other.input if isinstance(other.input, (list, tuple)) else [other.input]
        except (AttributeError, ValueError):
            continue
        consumers.extend(other for t in inputs if t is output)
    return consumers[0] if len(consumers) == 1 else None


def _fold_pairs(model) -> dict:
    """``id(linear layer) -> BatchNormalization`` for every BN that directly follows a linear layer with no
    activation and is that layer's only consumer."""
    pairs = {}
    for ref in iter_layers(model):
        bn = ref.layer
        if not isinstance(bn, keras.layers.BatchNormalization) or bn.axis not in (-1, len(bn.input.shape) - 1):
            continue
        try:
            linear = producer(bn.input)
        except (AttributeError, ValueError):
            continue
        if not isinstance(linear, _WEIGHTED) or not _is_linear_activation(linear.activation):
            continue
        if _only_consumer(linear, ref.models) is bn:
            pairs[id(linear)] = bn
    return pairs


def _pad_pairs(model) -> dict:
    """``id(convolution) -> ZeroPadding2D`` for every zero padding whose only consumer is a 2-D convolution
    with ``"valid"`` padding, stride any, no dilation, channels last.

    The convolution then pads inside itself (explicit padding) and the padding layer passes its input
    through: no padded copy forward and no slice backward (ResNet pads this way before its 7x7 stem).

    Depthwise convolutions keep their padding layer, although padding inside them measured faster (MobileNetV2's
    stride-2 blocks, 8 images at 112x112x96: 95 ms padded then convolved, 50 ms inside): in TensorFlow 2.19,
    2.20 and 2.21 a graph with an explicitly padded ``DepthwiseConv2dNative`` followed by a bias add aborts
    the whole process (grappler fuses the two, then "Check failed: ... Invalid index from the dimension:
    1, 0, H" in ``tensor_format.h``); ``padded_cnn`` in ``tests/test_rules.py`` has that pattern.
    """
    pairs = {}
    for ref in iter_layers(model):
        pad = ref.layer
        if type(pad) is not keras.layers.ZeroPadding2D or pad.data_format != "channels_last":
            continue
        conv = _only_consumer(pad, ref.models)
        if (
            type(conv) is keras.layers.Conv2D
            and conv.padding == "valid"
            and conv.data_format == "channels_last"
            and all(d == 1 for d in conv.dilation_rate)
            and getattr(conv, "groups", 1) == 1
            and call_count(conv) == 1
            and call_count(pad) == 1
        ):
            pairs[id(conv)] = pad
    return pairs


class RuleSet:
    """Which backward rule each layer of a model gets.

    Parameters
    ----------
    mode : {"lrp", "guided", "deconv", "redirect", "gradient"}
        ``"redirect"``: Lucid's redirected ReLU gradient, for feature visualisation. ``"gradient"``: the
        plain gradient, computed faster than the model's own backward pass (below).
    rule : str or dict
        LRP only: one rule for every weighted layer, or a composite ``{"first": ..., "conv": ...,
        "dense": ...}`` (missing entries: ``"epsilon"``).
    epsilon : float
        The ε of the ε-rule.
    bounds : (low, high) or None
        The z^B rule's input bounds; None uses each image's own minimum and maximum.
    """

    def __init__(self, mode: str, rule="composite", epsilon: float = 1e-2, bounds=None) -> None:
        if mode not in ("lrp", "guided", "deconv", "redirect", "gradient"):
            raise ValueError(f"mode must be 'lrp', 'guided', 'deconv', 'redirect' or 'gradient', got {mode!r}.")
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

    def _bounds(self, x):
        if self.bounds is None:
            axes = tuple(range(1, len(x.shape)))
            shape = (-1,) + (1,) * (len(x.shape) - 1)
            low = ops.reshape(ops.min(x, axis=axes), shape) * ops.ones_like(x)
            high = ops.reshape(ops.max(x, axis=axes), shape) * ops.ones_like(x)
            return ops.stop_gradient(low), ops.stop_gradient(high)
        low, high = (np.asarray(b, dtype=np.float32) for b in self.bounds)
        return ops.ones_like(x) * low, ops.ones_like(x) * high

    def replacements(self, model, head, keep=()) -> dict:
        """``id(layer) -> factory(layer, final)`` for every layer (nested ones included) that needs one.

        In every mode, a batch normalisation that follows a linear layer is folded into that layer's kernel
        and bias (one pass instead of two, forward and backward), and stride-1 convolutions are
        differentiated through a transposed forward convolution (:func:`_transposed_conv`). ``keep``: layers
        (or :class:`LayerRef`) whose own output is read, so that no batch normalisation is folded into them
        (LRP folds regardless: the relevance at a convolution and at its normalisation is the same).
        """
        subclassed = [m for m in [model] + [r.layer for r in iter_layers(model)] if is_subclassed(m)]
        if subclassed and self.mode in ("gradient", "redirect"):
            return {}  # the model's own gradient (feature visualisation of a subclassed model)
        for m in subclassed:  # walked through their functional twins (run_model)
            trace_subclassed(m)
        refs = list(iter_layers(model, graph_order=True))
        operations = list(_graph_operations(model))
        unsupported = [r for r in refs if _kind(r.layer) == "unsupported"]
        if unsupported and self.mode == "lrp":
            r = unsupported[0]
            raise UnsupportedLayerError(
                f"LRP cannot propagate relevance through layer {r.path!r} of type {type(r.layer).__name__}. "
                "Supported: Dense, Conv1D/2D/3D, DepthwiseConv2D, SeparableConv2D, BatchNormalization, "
                "LayerNormalization, pooling, Add, Concatenate, Multiply gates, padding, reshaping, dropout, "
                "augmentation layers, Rescaling / Normalization and element-wise activations. Wrap a custom "
                "layer's computation in these, or explain it with a gradient method (saliency, "
                "integrated_gradients, gradcam)."
            )
        odd_ops = [r for r in operations if _operation_kind(r.layer) == "unsupported"]
        if odd_ops and self.mode == "lrp":
            r = odd_ops[0]
            raise UnsupportedLayerError(
                f"LRP has no rule for the keras.ops operation {r.path!r} ({type(r.layer).__name__}) that the "
                "model applies between its layers. Supported between layers: element-wise activations and "
                "arithmetic with constants, sums of tensors (x + y, ops.mean), products that gate a signal, "
                "and reshaping, slicing or joining. Write it as a layer of those kinds, or explain the model "
                "with a gradient method (saliency, integrated_gradients, gradcam)."
            )
        kept = {id(getattr(k, "layer", k)) for k in keep} if self.mode != "lrp" else set()
        folds = {k: bn for k, bn in _fold_pairs(model).items() if k not in kept}
        folded_bns = {id(bn) for bn in folds.values()}
        weighted = [r for r in refs if _kind(r.layer) == "weighted"]
        first_id = id(weighted[0].layer) if weighted else None  # the composite's "first" entry applies here
        # z^B keeps its padding layer: its bounds cover the padded border too
        zb_first = self.mode == "lrp" and self.composite["first"] == "zb"
        pads = {
            k: pad for k, pad in _pad_pairs(model).items() if id(pad) not in kept and not (zb_first and k == first_id)
        }
        padding_layers = {id(pad) for pad in pads.values()}
        zb_bounds = self._bounds
        if zb_first and weighted:
            first = weighted[0]
            before = refs[: refs.index(first)]
            odd = next((r for r in before if _kind(r.layer) not in ("routing", "model", "elementwise")), None)
            if odd is not None:
                raise UnsupportedLayerError(
                    f"The z^B rule needs the first weighted layer ({first.path!r}) to see the model input, "
                    f"but {odd.path!r} ({type(odd.layer).__name__}) transforms it first. Use "
                    "rule={'first': 'zplus', ...} or 'epsilon' for the first layer."
                )
            # keras.ops between the input and the first layer (x / 255.0 in a call()): element-wise only
            upstream = _operations_before(first.layer)
            odd = next((op for op in upstream if _operation_kind(op) not in ("elementwise", "routing")), None)
            if odd is not None:
                raise UnsupportedLayerError(
                    f"The z^B rule needs the first weighted layer ({first.path!r}) to see the model input, "
                    f"but the keras.ops operation {odd.name!r} ({type(odd).__name__}) transforms it first. Use "
                    "rule={'first': 'zplus', ...} or 'epsilon' for the first layer."
                )
            # A model that scales or normalises its own input: the bounds are mapped through that scaling.
            scaling = [r.layer for r in before if _kind(r.layer) == "elementwise"]
            zb_bounds = self._bounds_after(
                scaling + [op for op in upstream if _operation_kind(op) == "elementwise"], first.layer
            )
        out = {}
        for r in refs:
            layer, kind = r.layer, _kind(r.layer)
            if kind == "weighted":
                pad = pads.get(id(layer))
                factory = self._weighted_factory(layer, folds.get(id(layer)), id(layer) == first_id, pad, zb_bounds)
                out[id(layer)] = factory
            elif kind == "activation" and self.mode != "gradient":
                out[id(layer)] = self._activation_factory(layer)
            elif id(layer) in folded_bns or id(layer) in padding_layers:
                out[id(layer)] = lambda op, final: lambda x, *a, **k: x
            elif self.mode != "lrp":
                continue  # below: LRP's rules; the other modes take these layers' own gradient
            elif kind == "linear":
                out[id(layer)] = lambda op, final: _plain_linear_rule(op, self.epsilon)
            elif kind == "elementwise":
                out[id(layer)] = lambda op, final: _pass_through_rule(op)
            elif kind == "gate":
                signal = _signal_input(r)  # decided now, so an ambiguous product fails before any tracing
                out[id(layer)] = lambda op, final, signal=signal: _gate_rule(op, signal)
            elif kind == "layernorm":
                out[id(layer)] = lambda op, final: _layer_norm_rule(op, self.epsilon)
        for r in operations:
            factory = self._operation_factory(r)
            if factory is not None:
                out[id(r.layer)] = factory
        return out

    def _operation_factory(self, ref):
        """The rule of a ``keras.ops`` operation between layers, or None for its own gradient."""
        name, kind = type(ref.layer).__name__, _operation_kind(ref.layer)
        if self.mode != "lrp":
            if name not in _OP_RELU or self.mode == "gradient":
                return None  # guided backprop, deconvnet and redirection change only the ReLU family
            return lambda op, final: _operation_rule(
                op, wrap=lambda forward: _activation_rule(forward, self.mode, _OP_RELU[name])
            )
        if kind == "elementwise":
            if name in ("Softmax", "Sigmoid"):  # the model's last operation: the logit is explained
                return lambda op, final: (lambda x, *a, **k: x) if final else _operation_rule(op, _passes)
            return lambda op, final: _operation_rule(op, _passes)
        if kind == "linear":
            return lambda op, final: _operation_rule(op, lambda forward: _epsilon_backward(forward, self.epsilon))
        if kind == "gate":
            signal = _signal_input(ref)
            return lambda op, final: _operation_rule(op, lambda forward: _gate_backward(signal))
        return None  # routing

    def _bounds_after(self, layers: list, first):
        """The z^B bounds for the first weighted layer when ``layers`` (per-element affine maps such as
        ``Rescaling`` and ``Normalization``) come between it and the model input.

        Without given bounds, each image's own minimum and maximum are read at the first layer's input, which
        already includes the scaling. Given bounds are in model-input units: mapped through ``x -> a x + b``
        (``a`` and ``b`` measured by running the layers on zeros and ones), low and high swapped where ``a < 0``.
        """
        if self.bounds is None or not layers:
            return self._bounds
        channels = int(first.input.shape[-1])
        zeros, ones = np.zeros((1, 1, 1, channels), np.float32), np.ones((1, 1, 1, channels), np.float32)
        for layer in layers:
            if type(layer).__name__ not in ("Rescaling", "Normalization"):  # a keras.ops operation too
                raise UnsupportedLayerError(
                    f"The z^B rule with given bounds cannot map them through {layer.name!r} "
                    f"({type(layer).__name__}); leave bounds=None (each image's own range)."
                )
            zeros, ones = np.asarray(layer(zeros)), np.asarray(layer(ones))
        a, b = (ones - zeros).reshape(-1), zeros.reshape(-1)
        low, high = (np.asarray(v, np.float32) for v in self.bounds)
        mapped_low, mapped_high = a * low + b, a * high + b
        low, high = np.minimum(mapped_low, mapped_high), np.maximum(mapped_low, mapped_high)

        def bounds(x):
            return ops.ones_like(x) * low, ops.ones_like(x) * high

        return bounds

    def _weighted_factory(self, layer, bn, is_first: bool, pad, bounds=None):
        bounds = bounds or self._bounds
        kind = "dense" if isinstance(layer, keras.layers.Dense) else "conv"
        rule = self.composite["first"] if is_first else self.composite[kind]
        pads = None if pad is None else tuple(tuple(int(p) for p in side) for side in pad.padding)

        def factory(op, final: bool):
            maps = []
            for i, (stage, kernel, bias) in enumerate(_stages(op, bn)):
                if self.mode == "lrp":  # later stages of a separable convolution: the conv rule, signed input
                    first = i == 0
                    maps.append(
                        _weighted_rule(
                            stage,
                            rule if first else self.composite["conv"],
                            self.epsilon,
                            kernel,
                            bias,
                            bounds if first else None,
                            first and _input_non_negative(op),
                            pads if first else None,
                        )  # fmt: skip
                    )
                else:
                    maps.append(_linear(stage, kernel, bias, pads if i == 0 else None))
            linear = maps[0] if len(maps) == 1 else _chain(maps)
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
