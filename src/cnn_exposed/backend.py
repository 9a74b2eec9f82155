"""The backend-specific helpers: what a rule-based backward pass, a compiled step and feature
visualisation need from TensorFlow, and nothing else.

The rules (:mod:`cnn_exposed.rules`) and the optimiser are written with ``keras.ops``; these few functions are
the TensorFlow half (custom gradients, vector-Jacobian products, fused XLA kernels, explicit padding, the
2-D inverse real FFT, ``tf.function``). A JAX or PyTorch backend for Keras 3 would reimplement this module
and :class:`cnn_exposed.engine.Engine`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import tensorflow as tf


def own_key(fn: Callable) -> Callable:
    """``fn`` wrapped so that TensorFlow's retracing detector counts this compiled function on its own.

    The detector keys its statistics by code object, so the same method compiled for ten different models
    or layers (ten engines, each traced once per input shape, as designed) looks like one function traced
    ten times and triggers a false "frequent retracing" warning. A ``partial`` has no code object and is
    keyed by identity: a function that really does retrace still warns.
    """
    return functools.partial(fn)


def depends_on(tensor, source) -> bool:
    """Whether a graph tensor is computed from ``source`` (walked back through the traced graph's operations, at
    trace time: no operation is added). Outside a traced graph (eager tensors carry no history) it answers True."""
    if not (hasattr(tensor, "op") and hasattr(source, "op")) or tf.executing_eagerly():
        return True
    target = source.op.name
    seen: set[str] = set()
    todo = [tensor.op]
    while todo:
        op = todo.pop()
        if op.name == target:
            return True
        for t in op.inputs:
            if t.op.name not in seen:
                seen.add(t.op.name)
                todo.append(t.op)
    return False


def with_backward(forward: Callable, backward: Callable) -> Callable:
    """``forward(*inputs)`` whose backward pass is ``backward(inputs, output, upstream) -> input grads``.

    The backend-specific half of a rule-based backward pass (LRP, guided backprop); the rules themselves
    are written with ``keras.ops`` in :mod:`cnn_exposed.rules`.
    """

    @tf.custom_gradient
    def op(*inputs):
        out = forward(*inputs)

        def grad(upstream, variables=None):
            grads = backward(inputs, out, upstream)
            grads = grads if len(inputs) > 1 else grads[0]
            if variables:  # the layer's weights are read inside forward; they get no gradient here
                return grads, [tf.zeros_like(v) for v in variables]
            return grads

        return out, grad

    return op


def padded_conv(x, kernel, strides, pads):
    """2-D convolution of channels-last ``x`` zero-padded by ``pads`` ``((top, bottom), (left, right))``,
    the padding done inside the convolution (TensorFlow's explicit padding) rather than by a padded copy of
    ``x``: no copy forward, no slice backward."""
    return tf.nn.conv2d(x, kernel, [1, *strides, 1], [[0, 0], list(pads[0]), list(pads[1]), [0, 0]])


def fused(fn: Callable) -> Callable:
    """``fn`` compiled by XLA: a chain of element-wise operations becomes one or two fused passes over
    memory instead of one per operation (TensorFlow's default), traced once per input shape."""
    return tf.function(fn, jit_compile=True, autograph=False)


def vjp(fn: Callable, inputs: list, cotangent) -> list:
    """Vector-Jacobian product: the gradient of ``<fn(*inputs), cotangent>`` with respect to ``inputs``.

    ``cotangent`` may be a callable of ``fn``'s output, so a rule that divides by the output (z⁺, z^B)
    runs ``fn`` once, not once for the value and again for the gradient.
    """
    inputs = [tf.convert_to_tensor(i) for i in inputs]
    with tf.GradientTape() as tape:
        for i in inputs:
            tape.watch(i)
        out = fn(*inputs)
    if callable(cotangent):
        cotangent = cotangent(out)
    return tape.gradient(out, inputs, output_gradients=cotangent, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def irfft2(real, imag, shape: tuple[int, int]):
    """The real ``shape = (h, w)`` image of a half spectrum ``(..., h, w // 2 + 1)`` given as real and imaginary
    parts: the inverse of a 2-D real FFT over the last two axes (``keras.ops`` has the 1-D one only). The
    shape must be given: an odd width and the even width below it have half spectra of the same size."""
    return tf.signal.irfft2d(tf.complex(real, imag), fft_length=list(shape))


def compiled(fn: Callable, input_signature=None) -> Any:  # a tf.function: callable, with get_concrete_function
    """``fn`` compiled into a graph: every compiled pass of the package (the Engine's, feature visualisation's
    steps, forward-only helpers) is made here, traced once per ``input_signature`` (or input shape).

    Without AutoGraph, as Keras 3 runs its own layers: nothing here has Python control flow on tensors (loops and
    branches in the graph are ``tf.while_loop`` / ``tf.cond`` written out), and converting every layer's ``call``
    source to graph code was most of the tracing time (about half of the coverage matrix's CPU time)."""
    return tf.function(own_key(fn), input_signature=input_signature, autograph=False)


def _gaussian_operators(sigma, n):
    """``(B, n, n)`` float64: for each σ of ``sigma`` (B,), ``scipy.ndimage.gaussian_filter1d`` along an axis of
    length ``n`` as a matrix (truncated at 4 σ, zero padding: mode ``'constant'``), so that blurring an image ``X``
    is ``G_H @ X @ G_Wᵀ``; σ = 0 is the identity. The kernel is normalised over all its taps, also where part of
    them falls outside the axis (so the borders darken, as scipy's do)."""
    offset = tf.cast(tf.range(n)[None, :] - tf.range(n)[:, None], tf.float64)[None]  # (1, n, n): j − i
    s = sigma[:, None, None]
    positive = s > 0
    s = tf.where(positive, s, tf.ones_like(s))
    radius = tf.floor(4.0 * s + 0.5)
    coefficient = -0.5 / (s * s)
    widest = tf.cast(tf.reduce_max(radius), tf.int32)
    t = tf.cast(tf.range(-widest, widest + 1), tf.float64)[None, None]  # every tap of the widest kernel
    taps = tf.where(tf.abs(t) <= radius, tf.exp(coefficient * t**2), tf.zeros_like(t))
    kernel = tf.where(tf.abs(offset) <= radius, tf.exp(coefficient * offset**2), tf.zeros_like(offset))
    return tf.where(positive, kernel / tf.reduce_sum(taps, axis=-1, keepdims=True), tf.eye(n, dtype=tf.float64))


def _filter(x, along_h, along_w):
    """``along_h[k] @ x[k] @ along_w[k]ᵀ`` for each image ``x[k]`` (N, H, W, C) and channel, with matrices
    (N, H, H) and (N, W, W): a separable linear filter per image. In TensorFlow, on its thread pool: NumPy's BLAS
    threads would compete with it for the cores."""
    n, h, w, c = tf.unstack(tf.shape(x))
    y = tf.reshape(tf.matmul(along_h, tf.reshape(x, (n, h, w * c))), (n, h, w, c))
    y = tf.reshape(tf.transpose(y, (0, 2, 1, 3)), (n, w, h * c))
    return tf.transpose(tf.reshape(tf.matmul(along_w, y), (n, w, h, c)), (0, 2, 1, 3))


def _blur(x, sigma):
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    return _filter(x, *(tf.cast(_gaussian_operators(sigma, n), tf.float32) for n in (h, w)))


def _blur_path_points(x, sigma, grad_step):
    ops = []
    for n in (tf.shape(x)[1], tf.shape(x)[2]):
        g, g2 = _gaussian_operators(sigma, n), _gaussian_operators(sigma + grad_step, n)
        ops.append([tf.cast(m, tf.float32) for m in (g, g2, (g2 - g) / grad_step)])
    (gh, _, dh), (gw, gw2, dw) = ops
    return _filter(x, gh, gw), _filter(x, dh, gw2) + _filter(x, gh, dw)


_IMAGES = tf.TensorSpec((None, None, None, None), tf.float32)
_SIGMAS = tf.TensorSpec((None,), tf.float64)

blur_images = compiled(_blur, [_IMAGES, _SIGMAS])
"""Images ``x`` (B, H, W, C) float32, each blurred by its own σ of ``sigma`` (B,) float64 over height and width, as
``scipy.ndimage.gaussian_filter(image, [σ, σ, 0], mode="constant")`` blurs it; compiled, a tensor."""

blur_path_points = compiled(_blur_path_points, [_IMAGES, _SIGMAS, tf.TensorSpec((), tf.float64)])
"""Blur IG's path points and their σ-derivatives, compiled, for images ``x`` (B, H, W, C) float32 at blur levels
``sigma`` (B,): ``(G_σ X G_σᵀ, ∂/∂σ of it)``, the derivative the forward difference
``(X_{σ+grad_step} − X_σ) / grad_step``, formed as ``D X G'ᵀ + G X Dᵀ`` with ``D = (G' − G) / grad_step`` taken in
float64 (no cancellation of two near-equal blurs); the matrix products in float32."""


def stateless_noise(shape: tuple, seeds):
    """Standard normal noise ``(len(seeds), *shape)``, row ``i`` drawn from ``seeds[i]`` (a pair of int32) alone:
    the same row whatever batch it is drawn in (``tf.random.stateless_normal``, Philox)."""
    return tf.map_fn(
        lambda seed: tf.random.stateless_normal(shape, seed=seed),
        tf.convert_to_tensor(seeds, tf.int32),
        fn_output_signature=tf.TensorSpec(shape, tf.float32),
    )


def scaled_backward(attempt: Callable, n, scaling) -> tuple:
    """``attempt(exponents) -> (..., gradients, peaks)`` run with every row's seed exponent at ``scaling.start``,
    then again, up to ``scaling.retries`` times, for the rows to correct: where the gradients are not finite (the
    scaled float16 pass overflowed) with an exponent ``scaling.step`` smaller; where the largest scaled gradient
    (``peaks``, as the float16 pass carried it) is below ``2**scaling.low``, so that much of it is subnormal or
    zero, with one that brings it to about ``2**scaling.peak``. Rows left as they were run with the same exponent,
    so keep their values. Returns ``attempt``'s outputs without the peaks (:class:`cnn_exposed.precision.Scaling`).
    """

    def corrected(exponents, out):
        g, peaks = out[-2], out[-1]
        finite = tf.reduce_all(tf.math.is_finite(tf.reshape(g, [tf.shape(g)[0], -1])), axis=1)
        small = tf.logical_and(finite, tf.logical_and(peaks > 0.0, peaks < 2.0**scaling.low))
        raised = exponents + scaling.peak - tf.floor(tf.math.log(tf.maximum(peaks, 1e-30)) / tf.math.log(2.0))
        return tf.where(finite, tf.where(small, raised, exponents), exponents - scaling.step)

    def more(i, exponents, out):
        return tf.logical_and(i < scaling.retries, tf.reduce_any(tf.not_equal(corrected(exponents, out), exponents)))

    def again(i, exponents, out):
        exponents = corrected(exponents, out)
        return i + 1, exponents, attempt(exponents)

    exponents = tf.fill([n], tf.constant(scaling.start, tf.float32))
    start = (tf.constant(0), exponents, attempt(exponents))
    return tf.while_loop(more, again, start)[-1][:-1]
