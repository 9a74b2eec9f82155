"""What each node of a model's graph is, for the rules: the kind of a layer or of a ``keras.ops`` operation,
what a Multiply's gates are, and what is known about the sign of a layer's input.

Which rule each kind gets is :class:`cnn_exposed.rules.RuleSet`'s choice (and the README's table).
"""

from __future__ import annotations

import keras
import numpy as np

from ..compat import functional_graph, graph_operations, producer
from ..errors import UnsupportedLayerError
from ..layers import LayerRef, is_nested_model, iter_layers, traced

# Which rule each kind of layer gets (the README's table says the same):
# - routing: moves or selects values, or is the identity at inference (dropout, augmentation, stochastic depth):
#   run as it is; its gradient routes the relevance.
IDENTITY_AT_INFERENCE = {
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "ActivityRegularization", "Identity", "RandomFlip", "RandomRotation", "RandomZoom",
    "RandomContrast", "RandomTranslation", "RandomBrightness", "StochasticDepth",
}  # fmt: skip


ROUTING = IDENTITY_AT_INFERENCE | {
    "InputLayer", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "Reshape", "Flatten", "Permute", "Concatenate", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "UpSampling1D", "UpSampling2D",
}  # fmt: skip


# - linear: a weight-free linear map, the ε-rule.
PLAIN_LINEAR = {
    "Add", "Average", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "BatchNormalization", "Subtract",
}  # fmt: skip


# - weighted: the composite's rule (z⁺ for convolutions, ε for dense layers, z^B first); a separable
#   convolution is its depthwise then its pointwise convolution, each with the rule, batch norm folded after.
WEIGHTED = (
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
ACTIVATIONS = {"Activation", "ReLU", "LeakyReLU", "ELU", "Softmax"}


ELEMENTWISE = {"Rescaling", "Normalization", "LayerScale", "PReLU"}


# - gate: Multiply, where all inputs but one are gates (squeeze-and-excitation: a sigmoid over channel means,
#   broadcast over the image): the gates count as constant weights and the relevance flows to the signal.
# - layer norm: LayerNormalization with its standard deviation treated as constant (Ali et al. 2022, "XAI for
#   transformers"): a linear map of its input, the ε-rule.
RELU_FAMILY = {"relu", "relu6", "leaky_relu"}


def is_linear_activation(fn) -> bool:
    return fn is None or getattr(fn, "__name__", "") == "linear"


def activation_name(op) -> str:
    if isinstance(op, keras.layers.ReLU):
        return "relu6" if op.max_value is not None else ("leaky_relu" if op.negative_slope else "relu")
    if isinstance(op, keras.layers.LeakyReLU):
        return "leaky_relu"
    return getattr(getattr(op, "activation", None), "__name__", type(op).__name__.lower())


NON_NEGATIVE_ACTIVATIONS = {"relu", "relu6", "sigmoid", "hard_sigmoid", "softmax", "softplus", "exponential"}


# layers whose output is >= 0 wherever all their inputs are
KEEPS_SIGN = (ROUTING - {"InputLayer", "GaussianNoise"}) | {
    "Add", "Average", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D",
}  # fmt: skip


def zero_below(fn, name: str) -> bool:
    """Whether the activation is a ReLU (any cap, threshold >= 0, no leak): 0 wherever its input is <= 0."""
    if name not in ("relu", "relu6"):
        return False
    return not getattr(fn, "negative_slope", 0.0) and (getattr(fn, "threshold", 0.0) or 0.0) >= 0.0


def output_non_negative(op, depth: int = 0) -> bool:
    """Whether a layer's output is >= 0 for every input, read from the model's graph (False when unsure)."""
    name = type(op).__name__
    weighted_act = isinstance(op, WEIGHTED) and not is_linear_activation(op.activation)
    if isinstance(op, keras.layers.ReLU) or name == "Activation" or weighted_act:
        act = activation_name(op)
        if act in ("relu", "relu6"):
            return zero_below(activation_fn(op), act)
        return act in NON_NEGATIVE_ACTIVATIONS
    if name in KEEPS_SIGN and depth < 50:
        try:
            inputs = op.input if isinstance(op.input, (list, tuple)) else [op.input]
            return all(output_non_negative(producer(t), depth + 1) for t in inputs)
        except (AttributeError, ValueError):  # a shared layer has no single input
            return False
    return False


def input_non_negative(layer) -> bool:
    """Whether ``layer``'s (single) input is >= 0 for every model input."""
    try:
        return output_non_negative(producer(layer.input))
    except (AttributeError, ValueError):
        return False


def layer_kind(op) -> str:
    name = type(op).__name__
    if is_nested_model(op):
        return "model"
    if isinstance(op, WEIGHTED):
        return "weighted"
    if name in ROUTING:
        return "routing"
    if name in PLAIN_LINEAR:
        return "linear"
    if name in ACTIVATIONS:
        return "activation"
    if name in ELEMENTWISE:
        return "elementwise"
    if name == "Multiply":
        return "gate"
    if name == "LayerNormalization":
        return "layernorm"
    return "unsupported"


def activation_fn(op):
    if isinstance(op, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU)):
        return op
    return op.activation


def signal_input(ref) -> int:
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
        gates = {i for i in full if squeezed(inputs[i]) or sigmoid_output(inputs[i])}
        full = [i for i in full if i not in gates]
    if len(full) != 1:
        raise UnsupportedLayerError(
            f"LRP treats Multiply layers as gates (squeeze-and-excitation: a signal times sigmoid weights), "
            f"but cannot tell which input of {ref.path!r} is the signal. Explain this model with a gradient "
            "method (saliency, integrated_gradients, gradcam) or guided backprop."
        )
    return full[0]


GLOBAL_POOLS = {
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D",
}  # fmt: skip


def squeezed(tensor, depth: int = 12) -> bool:
    """Whether ``tensor`` comes from a global pooling through a chain of one-input operations (the excitation
    branch of a squeeze-and-excitation block: pool, 1 x 1 convolutions, activations, ``+ 3`` and ``/ 6``)."""
    for _ in range(depth):
        try:
            op = producer(tensor)
            inputs = op.input
        except (AttributeError, ValueError):
            return False
        if type(op).__name__ in GLOBAL_POOLS:
            return True
        tensors = [t for t in (inputs if isinstance(inputs, (list, tuple)) else [inputs]) if hasattr(t, "shape")]
        tensors = [t for t in tensors if hasattr(t, "_keras_history")]
        if len(tensors) != 1:  # a merge (or the model input): the chain ends without a pooling
            return False
        tensor = tensors[0]
    return False


def sigmoid_output(tensor) -> bool:
    try:
        return activation_name(producer(tensor)) in ("sigmoid", "hard_sigmoid")
    except (AttributeError, ValueError):
        return False


# ------------------------------------------------------------------- keras.ops operations between layers
# ``x + y``, ``ops.relu(x)`` or ``x / 255.0`` on symbolic tensors are graph nodes of their own, in a functional
# model and in a traced subclassed model (cnn_exposed.layers.trace_subclassed). They get the rule of the layer
# that does the same: element-wise with one tensor input (activations; arithmetic with constants, as Rescaling):
# relevance passes; a sum of tensors (Add, Subtract, mean or sum over axes): the ε-rule; a product of tensors:
# a gate; routing (reshaping, slicing, joining, max): their gradient. LRP refuses any other.
OP_ELEMENTWISE = {
    "Relu", "Relu6", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Silu", "Swish", "HardSilu", "HardSwish",
    "Sigmoid", "HardSigmoid", "LogSigmoid", "Softplus", "Softsign", "Tanh", "Mish", "SparsePlus", "Squareplus",
    "Softmax", "LogSoftmax", "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Negative", "Clip",
    "Maximum", "Minimum", "Cast", "Identity",
}  # fmt: skip


OP_SUMS = {"Add", "Subtract", "Mean", "Sum", "Average"}


OP_ROUTING = {
    "Reshape", "Transpose", "Concatenate", "ExpandDims", "Squeeze", "GetItem", "Stack", "Pad", "Max", "Tile",
    "Repeat", "Slice", "Take", "Flip", "Roll", "Ravel", "Copy", "Swapaxes", "Moveaxis",
}  # fmt: skip


OP_RELU = {"Relu": "relu", "Relu6": "relu6", "LeakyRelu": "leaky_relu"}


def operation_inputs(op) -> list:
    """The symbolic tensors an operation node was called on (constants such as the ``255.0`` of ``x / 255.0``
    are not among them)."""
    try:
        inputs = op.input
    except (AttributeError, ValueError):
        return []
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def operation_kind(op) -> str:
    name, n = type(op).__name__, len(operation_inputs(op))
    if name == "Multiply" and n > 1:
        return "gate"
    if name in OP_ELEMENTWISE and n == 1:
        return "elementwise"
    if name in OP_SUMS:
        return "linear"
    if name in OP_ROUTING:
        return "routing"
    return "unsupported"


def operations_before(layer) -> list:
    """The ``keras.ops`` operations (not layers) on the chain of one-input nodes that leads to ``layer``'s
    input, nearest the model input first."""
    found, tensors = [], operation_inputs(layer)
    while len(tensors) == 1:
        try:
            op = producer(tensors[0])
        except AttributeError:
            break
        if isinstance(op, keras.layers.InputLayer):
            break
        if not isinstance(op, keras.layers.Layer):
            found.append(op)
        tensors = operation_inputs(op)
    return found[::-1]


def operations_in(model):
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
