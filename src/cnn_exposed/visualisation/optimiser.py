"""The optimiser of feature visualisation: Adam on one tensor of image parameters, a whole batch of
objectives per compiled step.

Why not ``keras.optimizers.Adam``: its update is a chain of element-wise operations over the parameters,
TensorFlow's fused ``ResourceApplyAdam`` kernel (:func:`cnn_exposed.compat.apply_adam`) is one pass;
``benchmarks/optimiser.py`` measured Keras' Adam 1.32x slower over a whole 16-filter rendering (MobileNetV2,
128 px, 100 steps, best of 3; same final objectives to 8e-8), far outside the 5 % that would justify it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from ..backend import compiled, scaled_backward
from ..compat import apply_adam
from ..precision import SCALING


class GradientAscent:
    """Adam on one tensor of parameters, maximising a batch of objectives in one compiled step.

    Parameters
    ----------
    init : array
        Initial parameters (e.g. an image batch's Fourier coefficients).
    loss_fn : callable
        ``loss_fn(params, *inputs, **options) -> (loss, values)``: a scalar to minimise and a per-item
        ``(B,)`` objective that is reported. Built from ``keras.ops`` only. ``options`` are Python values
        fixed per phase of the optimisation (each distinct set is traced once).
    learning_rate : float
        Adam's step size (Lucid's default: 0.05).
    scaled : bool
        The loss runs through float16 layers (a mixed-precision model): its gradient is taken with a seed of
        2**12 and unscaled in float32, so that it does not underflow to zero on the way back
        (:mod:`cnn_exposed.precision`).

    Notes
    -----
    The step is traced once per set of ``options``: ``inputs`` (the random transformation parameters of
    each step) have fixed shapes. Adam's state lives in this object; :meth:`reset` starts a fresh
    optimisation with the compiled steps kept, so a later call with the same set-up does not trace again.
    """

    def __init__(self, init: np.ndarray, loss_fn: Callable, learning_rate: float = 0.05, scaled: bool = False) -> None:
        self.params = tf.Variable(np.asarray(init, dtype=np.float32))
        self._m = tf.Variable(tf.zeros_like(self.params))
        self._v = tf.Variable(tf.zeros_like(self.params))
        self._t = tf.Variable(0.0)
        self._loss_fn = loss_fn
        self._lr = float(learning_rate)
        self._scaled = bool(scaled)
        self._steps: dict = {}

    def reset(self, init: np.ndarray) -> None:
        """Start again from ``init`` (same shape) with fresh Adam moments."""
        self.params.assign(np.asarray(init, dtype=np.float32))
        self._m.assign(tf.zeros_like(self._m))
        self._v.assign(tf.zeros_like(self._v))
        self._t.assign(0.0)

    def _gradient(self, inputs, options, exponent=None):
        with tf.GradientTape() as tape:
            loss, values = self._loss_fn(self.params, *inputs, **options)
        if exponent is None:
            return values, tape.gradient(loss, self.params)
        scale = tf.pow(2.0, exponent[0])
        grad = tape.gradient(loss, self.params, output_gradients=scale)
        return values, (grad / scale)[None], tf.reduce_max(tf.abs(grad))[None]

    def _step_impl(self, *inputs, **options):
        if self._scaled:  # one row: the whole parameter tensor
            attempt = functools.partial(self._gradient, inputs, options)
            values, grad = scaled_backward(attempt, 1, SCALING)
            grad = grad[0]
        else:
            values, grad = self._gradient(inputs, options)
        t = self._t.assign_add(1.0)
        apply_adam(
            self.params, self._m, self._v, grad, step=t, learning_rate=self._lr, beta1=0.9, beta2=0.999,
            epsilon=1e-8,
        )  # fmt: skip
        return values

    def step(self, *inputs, **options) -> np.ndarray:
        """One Adam step; returns the per-item objective values before the step."""
        key = tuple(sorted(options.items()))
        fn = self._steps.get(key)
        if fn is None:
            fn = self._steps[key] = compiled(functools.partial(self._step_impl, **options))
        return np.asarray(fn(*[np.asarray(i, dtype=np.float32) for i in inputs]))

    def value(self) -> np.ndarray:
        return self.params.numpy()
