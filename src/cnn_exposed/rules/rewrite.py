"""Graph rewriting, zennit's "canonizers": the same function computed in fewer or cheaper passes.

Batch normalisation folded into the linear layer before it, zero padding done inside the convolution after
it, a separable convolution as its two stages, and stride-1 convolutions differentiated by a transposed
forward convolution. Every rule set uses them, in every mode; none changes a result.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from ..backend import fused, padded_conv, vjp, with_backward
from ..compat import causal_padding, flip, producer
from ..graph import call_count
from ..layers import iter_layers
from ..precision import compute_dtype, to_dtype, to_float32
from .kinds import WEIGHTED, is_linear_activation


# ------------------------------------------------------------------------------------------ linear maps
def kernel_and_bias(layer, bn=None):
    """The layer's kernel and bias as float32 tensors (its variables' dtype under a mixed policy), with a following
    batch normalisation folded in; :func:`linear_map` casts them to the layer's compute dtype after folding."""
    kernel = to_float32(ops.convert_to_tensor(layer.kernel))
    bias = to_float32(ops.convert_to_tensor(layer.bias)) if getattr(layer, "bias", None) is not None else None
    return fold_bn(layer, kernel, bias, bn)


def fold_bn(layer, kernel, bias, bn):
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


def transposed_conv(layer, kernel):
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


def linear_map(layer, kernel, bias, pads=None, dtype=None):
    """``x -> layer's linear map with this kernel and bias`` (no activation).

    ``pads``: the ``((top, bottom), (left, right))`` zeros of a ``ZeroPadding2D`` layer just before this
    one, added inside the convolution instead (:func:`pad_pairs`). ``dtype``: what the map computes in (kernel,
    bias and input cast to it), by default the layer's compute dtype (float16 under a mixed policy).
    """
    dtype = dtype or compute_dtype(layer)
    kernel, bias = to_dtype(kernel, dtype), None if bias is None else to_dtype(bias, dtype)
    transpose = None if pads is not None else transposed_conv(layer, kernel)

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
        x = to_dtype(x, dtype)
        if isinstance(layer, keras.layers.Dense):
            z = ops.matmul(x, kernel)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            z = depthwise(layer, x, kernel, pads)
        else:
            z = conv(x)
        return z if bias is None else z + bias

    return apply


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """The zeros ``(before, after)`` that ``"same"`` padding adds on one side of an axis of ``size`` elements
    (TensorFlow's rule: the output has ``ceil(size / stride)`` elements, the odd zero goes after)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pads_as_same(pads, sizes, kernel_sizes, strides) -> bool:
    """Whether zero padding by ``pads`` ``((top, bottom), (left, right))`` then a ``"valid"`` convolution
    computes what the ``"same"`` convolution of the unpadded input (spatial ``sizes``; None: unknown) does.

    It does when, along each axis, the zeros before are those ``"same"`` puts there and the outputs are as
    many: every window then reads the same inputs and zeros. Keras' ``correct_pad`` (MobileNet, EfficientNet:
    before every strided depthwise convolution) pads this way whenever the size is known.
    """
    for (before, after), size, k, s in zip(pads, sizes, kernel_sizes, strides, strict=True):
        if size is None or before != same_padding(size, k, s)[0]:
            return False
        if (size + before + after - k) // s + 1 != -(-size // s):
            return False
    return True


def depthwise(layer, x, kernel, pads=None):
    """``layer``'s depthwise convolution of ``x`` with ``kernel``; ``pads``: the zeros of a ``ZeroPadding2D``
    just before it (:func:`pad_pairs`).

    The padding is done inside the convolution where it amounts to ``"same"`` padding for ``x``'s size (known
    when the step is traced), else by a padded copy as the padding layer would. Never by explicit padding: in
    TensorFlow 2.19, 2.20 and 2.21 a compiled graph with an explicitly padded ``DepthwiseConv2dNative``
    followed by a bias add aborts the whole process (grappler fuses the two, then "Check failed: ... Invalid
    index from the dimension" in ``tensor_format.h``).
    """
    padding = layer.padding
    if pads is not None:
        if pads_as_same(pads, tuple(x.shape[1:3]), layer.kernel_size, layer.strides):
            padding = "same"
        else:
            x = ops.pad(x, ((0, 0), *pads, (0, 0)))

    def conv(x):
        return ops.depthwise_conv(
            x, kernel, strides=layer.strides, padding=padding, data_format=layer.data_format,
            dilation_rate=layer.dilation_rate,
        )  # fmt: skip

    transpose = transposed_depthwise(layer, kernel, padding)
    if transpose is not None:
        conv = with_backward(conv, lambda inputs, z, g: [transpose(g)])
    return conv(x)


def transposed_depthwise(layer, kernel, padding: str):
    """``g -> the depthwise convolution's input gradient``, written as a forward depthwise convolution, or None
    where that is not exact: for stride 1, no dilation, one output per channel and odd-sized kernels with
    ``"same"`` padding it is the same convolution of ``g`` with the kernel flipped in space (as
    :func:`transposed_conv` for ordinary convolutions)."""
    if (
        layer.depth_multiplier != 1
        or padding != "same"
        or any(s != 1 for s in layer.strides)
        or any(d != 1 for d in layer.dilation_rate)
        or not all(k % 2 for k in layer.kernel_size)
    ):
        return None
    flipped = flip(kernel, (0, 1))

    def transpose(g):
        return ops.depthwise_conv(g, flipped, strides=1, padding="same", data_format=layer.data_format)

    return transpose


class Stack:
    """``(x_1, ..., x_k) -> Σ_k layer(x_k; W_k)``: one layer's linear map of k inputs, one kernel each, summed.

    Where the layer allows it (channels last, not depthwise or grouped), this is one convolution (or
    matrix product) of the inputs stacked along the channel axis with the kernels stacked along their input
    axis: one call each way instead of k, and no sum of k full-size outputs.
    """

    def __init__(self, layer, kernels: list, pads=None, dtype=None) -> None:
        self.k = len(kernels)
        grouped = isinstance(layer, keras.layers.DepthwiseConv2D) or getattr(layer, "groups", 1) != 1
        channels_last = getattr(layer, "data_format", "channels_last") == "channels_last"
        self.fused = self.k > 1 and not grouped and channels_last
        if self.fused:
            self.maps = [linear_map(layer, ops.concatenate(kernels, axis=-2), None, pads, dtype)]
            self._combine = fused(self._weighted_sum)  # one pass instead of a product, then a sum
        else:
            self.maps = [linear_map(layer, kernel, None, pads, dtype) for kernel in kernels]

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


def stages(layer, bn=None) -> list:
    """The linear map of a weighted layer as a chain of ``(layer-like, kernel, bias)``: one stage for dense and
    convolution layers; for a separable convolution its depthwise convolution then its pointwise (1 x 1) one,
    a following batch normalisation folded into the latter. The stand-in layers carry only the configuration
    :func:`linear_map` reads (named, so they take no automatic layer name from the user's session)."""
    if not isinstance(layer, keras.layers.SeparableConv2D):
        return [(layer, *kernel_and_bias(layer, bn))]
    depthwise = keras.layers.DepthwiseConv2D(
        layer.kernel_size, strides=layer.strides, padding=layer.padding, depth_multiplier=layer.depth_multiplier,
        data_format=layer.data_format, dilation_rate=layer.dilation_rate, use_bias=False,
        name=f"{layer.name}__depthwise", dtype=layer.dtype_policy,
    )  # fmt: skip
    pointwise = keras.layers.Conv2D(
        layer.filters, 1, data_format=layer.data_format, name=f"{layer.name}__pointwise", dtype=layer.dtype_policy
    )
    bias = to_float32(ops.convert_to_tensor(layer.bias)) if getattr(layer, "bias", None) is not None else None
    kernel, bias = fold_bn(pointwise, to_float32(ops.convert_to_tensor(layer.pointwise_kernel)), bias, bn)
    return [(depthwise, to_float32(ops.convert_to_tensor(layer.depthwise_kernel)), None), (pointwise, kernel, bias)]


def chain_maps(maps: list):
    """``x -> maps[-1](... maps[0](x))``."""

    def run(x):
        for m in maps:
            x = m(x)
        return x

    return run


def only_consumer(layer, models) -> object | None:
    """The one layer that reads ``layer``'s output in its model, or None (several, none, or unknown).

    A consumer is found by who produced its input (the tensor's history), not by identity with ``layer.output``:
    a nested ``Sequential`` loaded from a ``.keras`` file has called its layers once per rebuild while loading
    (conv1 of the demo model: 11 nodes), and ``layer.output`` is the first node's output while the next layer reads
    a later one's; by identity no batch normalisation was folded there, and LRP's z+ rule then went through the
    unfolded normalisation (relevance summing to -0.18 for a logit of 6.85)."""
    consumers: list = []
    for other in models[-1].layers:
        try:
            inputs = other.input if isinstance(other.input, (list, tuple)) else [other.input]
        except (AttributeError, ValueError):
            continue
        for t in inputs:
            try:
                if producer(t) is layer:
                    consumers.append(other)
            except AttributeError:
                continue
    return consumers[0] if len(consumers) == 1 else None


def fold_pairs(model) -> dict:
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
        if not isinstance(linear, WEIGHTED) or not is_linear_activation(linear.activation):
            continue
        if only_consumer(linear, ref.models) is bn:
            pairs[id(linear)] = bn
    return pairs


def pad_pairs(model) -> dict:
    """``id(convolution) -> ZeroPadding2D`` for every zero padding whose only consumer is a 2-D convolution
    with ``"valid"`` padding, stride any, no dilation, channels last.

    The convolution then pads inside itself and the padding layer passes its input through: no padded copy
    forward and no slice backward. A convolution pads explicitly (ResNet pads this way before its 7x7 stem);
    a depthwise one as ``"same"`` where that is the same padding (:func:`depthwise`; MobileNetV2's stride-2
    blocks, 8 images at 112x112x96: 95 ms padded then convolved, 50 ms inside), as its padding layer would
    otherwise.
    """
    pairs = {}
    for ref in iter_layers(model):
        pad = ref.layer
        if type(pad) is not keras.layers.ZeroPadding2D or pad.data_format != "channels_last":
            continue
        conv: Any = only_consumer(pad, ref.models)
        if (
            type(conv) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
            and conv.padding == "valid"
            and conv.data_format == "channels_last"
            and all(d == 1 for d in conv.dilation_rate)
            and getattr(conv, "groups", 1) == 1
            and call_count(conv) == 1
            and call_count(pad) == 1
        ):
            pairs[id(conv)] = pad
    return pairs
