"""The compiled passes: how every graph of the package is made (cnn_exposed.backend.compiled)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cnn_exposed.backend import compiled


def test_compiled_passes_run_without_autograph():
    # Tracing without AutoGraph halves the tracing time of a model's passes. The price: Python control flow on a
    # tensor is an error at trace time instead of being converted, so graph code writes tf.cond / tf.while_loop.
    def branchy(x):
        if tf.reduce_sum(x) > 0:
            return x
        return -x

    with pytest.raises((TypeError, tf.errors.OperatorNotAllowedInGraphError)):
        compiled(branchy)(np.ones((2, 3), np.float32))


def test_compiled_traces_once_per_signature():
    calls = []

    def double(x):
        calls.append(1)  # runs at trace time only
        return 2.0 * x

    fn = compiled(double, input_signature=[tf.TensorSpec((None, 3), tf.float32)])
    for n in (1, 4, 7):
        np.testing.assert_array_equal(fn(np.ones((n, 3), np.float32)), np.full((n, 3), 2.0))
    assert len(calls) == 1
