"""One test per entry of :mod:`cnn_exposed.compat`, on the installed Keras and TensorFlow.

When a Keras or TensorFlow release changes one of the private or version-dependent calls the package relies
on, the test named after that call fails here, whatever else still passes.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from cnn_exposed import compat


def functional(name="f"):
    inp = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3, name="conv")(inp)
    out = keras.layers.ReLU(name="relu")(h)
    return keras.Model(inp, out, name=name)


def test_functional_graph_of_a_functional_model_is_itself():
    model = functional()
    assert compat.functional_graph(model) is model


def test_functional_graph_of_a_sequential_is_the_graph_behind_it():
    seq = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, name="conv")])
    graph = compat.functional_graph(seq)
    assert graph is not None and graph is not seq
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(np.asarray(graph(x)), np.asarray(seq(x)), rtol=1e-6)


def test_functional_graph_is_none_without_a_graph():
    unbuilt = keras.Sequential([keras.layers.Dense(2)])  # no input shape: a plain list of layers

    class Sub(keras.Model):
        def call(self, x):
            return x * 2.0

    assert compat.functional_graph(unbuilt) is None
    assert compat.functional_graph(Sub()) is None


def test_run_through_graph_calls_operation_fn_for_each_layer_and_uses_what_it_returns():
    model = functional()
    seen = []

    def operation_fn(op):
        seen.append(op.name)
        if op.name == "relu":
            return lambda x, *args, **kwargs: -x  # replace the ReLU
        return op

    x = np.random.default_rng(1).normal(size=(2, 6, 6, 2)).astype("float32")
    out = compat.run_through_graph(model, ops.convert_to_tensor(x), operation_fn)
    out = out[0] if isinstance(out, (list, tuple)) else out
    conv = model.get_layer("conv")
    np.testing.assert_allclose(np.asarray(out), -np.asarray(conv(x)), rtol=1e-6)
    assert seen == ["conv", "relu"]


def test_producer_is_the_layer_whose_output_a_tensor_is():
    model = functional()
    assert compat.producer(model.outputs[0]) is model.get_layer("relu")
    assert compat.producer(model.get_layer("relu").input) is model.get_layer("conv")


def test_inbound_nodes_counts_the_calls_of_a_shared_layer():
    shared = keras.layers.Dense(2, name="shared")
    a, b = keras.Input((3,)), keras.Input((3,))
    keras.Model([a, b], [shared(a), shared(b)])
    single = keras.layers.Dense(2)
    keras.Model(a, single(a))
    assert len(compat.inbound_nodes(shared)) == 2
    assert len(compat.inbound_nodes(single)) == 1
    assert compat.inbound_nodes(keras.layers.Dense(2)) == []  # never called


def test_node_outputs_are_the_tensors_a_call_produced():
    model = functional()
    relu = model.get_layer("relu")
    outs = compat.node_outputs(compat.inbound_nodes(relu)[-1])
    assert len(outs) == 1 and tuple(outs[0].shape) == (None, 4, 4, 3)


def test_node_inputs_are_the_tensors_a_call_took():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    merge = keras.layers.Concatenate()
    keras.Model([a, b], merge([a, b]))
    got = compat.node_inputs(compat.inbound_nodes(merge)[-1])
    assert len(got) == 2 and got[0] is a and got[1] is b


@pytest.mark.parametrize("axes", [(0,), (0, 1), (0, 1, 2), (1, 3)])
def test_flip_reverses_every_axis_given(axes):
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(np.asarray(compat.flip(ops.convert_to_tensor(x), axes)), np.flip(x, axes))


@pytest.mark.parametrize(("kernel", "dilation"), [(3, 1), (4, 2), (1, 1)])
def test_causal_padding_reproduces_keras_causal_conv1d(kernel, dilation):
    layer = keras.layers.Conv1D(2, kernel, padding="causal", dilation_rate=dilation)
    x = np.random.default_rng(2).normal(size=(2, 9, 3)).astype("float32")
    expected = np.asarray(layer(x))
    padded = ops.pad(ops.convert_to_tensor(x), compat.causal_padding(layer))
    ours = ops.conv(padded, layer.kernel, strides=1, padding="valid", dilation_rate=dilation) + layer.bias
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5, atol=1e-6)
    assert compat.causal_padding(layer)[1] == [dilation * (kernel - 1), 0]


def test_apply_adam_matches_kingma_and_ba():
    rng = np.random.default_rng(3)
    init = rng.normal(size=(4, 3)).astype("float32")
    grads = [rng.normal(size=(4, 3)).astype("float32") for _ in range(3)]
    var, m, v = tf.Variable(init), tf.Variable(np.zeros_like(init)), tf.Variable(np.zeros_like(init))
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
    ref, ref_m, ref_v = init.astype(np.float64), np.zeros_like(init, np.float64), np.zeros_like(init, np.float64)
    for step, g in enumerate(grads, start=1):
        compat.apply_adam(
            var, m, v, tf.constant(g), step=tf.constant(float(step)), learning_rate=lr, beta1=b1, beta2=b2,
            epsilon=eps,
        )  # fmt: skip
        ref_m = b1 * ref_m + (1 - b1) * g
        ref_v = b2 * ref_v + (1 - b2) * g**2
        alpha = lr * np.sqrt(1 - b2**step) / (1 - b1**step)
        ref = ref - alpha * ref_m / (np.sqrt(ref_v) + eps)  # TensorFlow's form: epsilon not bias-corrected
    np.testing.assert_allclose(var.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert np.abs(var.numpy() - init).max() > 0.05  # it moved


class Sub(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(2, 3, name="conv")

    def call(self, x):
        return self.conv(x)


def test_built_input_shape_of_every_kind_of_model():
    assert compat.built_input_shape(functional()) == (None, 6, 6, 2)
    called = Sub()
    called(np.zeros((1, 9, 7, 3), np.float32))
    assert compat.built_input_shape(called)[1:] == (9, 7, 3)
    built = Sub()
    built.build((None, 5, 5, 3))
    assert compat.built_input_shape(built) == (None, 5, 5, 3)
    assert compat.built_input_shape(Sub()) is None  # never built or called


def test_patched_calls_replace_a_layers_call_and_restore_it():
    model = Sub()
    x = np.random.default_rng(4).normal(size=(1, 5, 5, 3)).astype("float32")
    before = np.asarray(model(x))
    seen = []

    def doubled(inputs, *args, **kwargs):
        out = compat.unpatched_call(model.conv)(inputs, *args, **kwargs)
        seen.append(out)
        return out * 2.0

    with compat.patched_calls([(model.conv, doubled)]):
        np.testing.assert_allclose(np.asarray(model(x)), 2 * before, rtol=1e-6)
    assert len(seen) == 1
    np.testing.assert_allclose(np.asarray(model(x)), before, rtol=1e-6)  # restored
    assert "call" not in model.conv.__dict__


def test_graph_operations_include_the_keras_ops_between_layers():
    inp = keras.Input((4, 4, 2))
    h = keras.layers.Conv2D(2, 1, name="conv")(inp)
    out = keras.layers.Flatten(name="flat")(ops.relu(h / 2.0) + h)
    model = keras.Model(inp, out)
    names = [type(op).__name__ for op in compat.graph_operations(model)]
    assert names == ["InputLayer", "Conv2D", "TrueDivide", "Relu", "Add", "Flatten"]
    assert len(model.layers) == 3  # the layers alone leave the three operations out
    seq = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Flatten()])
    assert [type(op).__name__ for op in compat.graph_operations(compat.functional_graph(seq))][-1] == "Flatten"


def test_trapezoid_integrates_by_the_trapezoid_rule_on_every_numpy():
    x = np.array([0.0, 0.5, 2.0])
    y = np.array([[1.0, 3.0, 0.0], [2.0, 2.0, 2.0]])
    np.testing.assert_allclose(compat.trapezoid(y, x, axis=1), [0.5 * (1 + 3) / 2 + 1.5 * 3 / 2, 4.0])


class _Affine(tf.Module):
    """A tiny SavedModel: a keyword-only serving signature (input 'input_1', a dict of outputs) and a plain
    ``tf.function`` attribute taking its input positionally, as Keras' model.export writes 'serve'."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(np.arange(6, dtype=np.float32).reshape(3, 2) / 10.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="input_1")])
    def signature(self, input_1):
        return {"dense_1": tf.matmul(input_1, self.w)}

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def serve(self, x):
        return tf.matmul(x, self.w) * 2.0


@pytest.fixture(scope="module")
def affine_saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("affine") / "sm"
    module = _Affine()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.signature})
    return path, module.w.numpy()


def test_saved_model_layer_calls_a_signature_by_its_input_name_and_reads_its_specs(affine_saved_model):
    path, w = affine_saved_model
    layer = compat.saved_model_layer(keras.layers.TFSMLayer, path, "serving_default", name="sm")
    assert isinstance(layer, keras.layers.TFSMLayer) and layer.name == "sm"
    signature = compat.endpoint_signature(layer)
    assert list(signature.inputs) == ["input_1"] and tuple(signature.inputs["input_1"].shape) == (None, 3)
    assert list(signature.outputs) == ["dense_1"] and tuple(signature.outputs["dense_1"].shape) == (None, 2)
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_allclose(np.asarray(compat.call_endpoint(layer, x, "input_1")["dense_1"]), x @ w, rtol=1e-6)


def test_saved_model_layer_calls_a_saved_function_positionally_and_refuses_a_missing_endpoint(affine_saved_model):
    path, w = affine_saved_model
    layer = compat.saved_model_layer(keras.layers.TFSMLayer, path, "serve")
    signature = compat.endpoint_signature(layer)
    assert list(signature.inputs) == [None] and tuple(signature.outputs.shape) == (None, 2)
    x = np.array([[1.0, 0.0, -1.0]], np.float32)
    np.testing.assert_allclose(np.asarray(compat.call_endpoint(layer, x, None)), 2 * x @ w, rtol=1e-6)
    with pytest.raises(ValueError):
        compat.saved_model_layer(keras.layers.TFSMLayer, path, "predict")
