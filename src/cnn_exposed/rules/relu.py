"""The ReLU modes: what an element-wise activation passes backward in each mode of a rule set.

LRP: the relevance, unchanged. DeepLIFT: the Rescale rule. Guided backprop (Springenberg et al. 2014) and
deconvnet (Zeiler & Fergus 2014) change only the ReLU family's backward pass; "redirect" is Lucid's redirected
ReLU gradient for feature visualisation; "gradient" changes nothing.
"""

from __future__ import annotations

from keras import ops

from ..backend import fused, vjp, with_backward
from .deeplift import rescale
from .kinds import RELU_FAMILY
from .lrp import identity_backward

NOT_ELEMENTWISE = {"softmax", "log_softmax"}


def activation_rule(fn, mode: str, name: str):
    """Element-wise activation ``fn`` with the backward pass of ``mode``."""
    if mode == "lrp":  # relevance passes unchanged: R_z = R_a
        return with_backward(fn, identity_backward)
    if mode == "deeplift":  # every element-wise function, the Rescale rule; softmax (not element-wise): its gradient
        return fn if name in NOT_ELEMENTWISE else rescale(fn)
    if name not in RELU_FAMILY or mode == "gradient":
        return fn  # guided backprop and deconvnet only change the ReLU family
    if mode == "guided":

        def backward(inputs, a, g):
            (normal,) = vjp(fn, [inputs[0]], g)
            return [normal * ops.cast(g > 0, g.dtype)]

        return with_backward(fn, backward)
    if mode == "redirect":
        return with_backward(fn, redirected_backward(fn))

    def deconv_backward(inputs, a, g):
        return [ops.maximum(g, 0.0)]

    return with_backward(fn, deconv_backward)


def redirected_backward(fn):
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
