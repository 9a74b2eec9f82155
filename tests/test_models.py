"""Model handling: softmax/sigmoid heads, binary models, functional and shared layers, the model untouched."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import cnn_exposed as ce
from conftest import images, nested_and_flat, small_cnn


def snapshot(model):
    return [w.copy() for w in model.get_weights()], [getattr(layer, "activation", None) for layer in model.layers]


@pytest.mark.parametrize("method", ["saliency", "gradcam", "integrated_gradients"])
def test_softmax_model_explains_logit_and_is_unchanged(method):
    model = small_cnn()
    lin = small_cnn(activation=None)
    lin.set_weights(model.get_weights())
    x = images(3)
    before_w, before_act = snapshot(model)
    before_pred = model.predict(x, verbose=0)
    n_layers = len(model.layers)
    opts = {"steps": 8} if method == "integrated_gradients" else {}
    ours = ce.explain(model, x, method, target=1, **opts)
    ref = ce.explain(lin, x, method, target=1, **opts)
    np.testing.assert_allclose(ours.scores, lin.predict(x, verbose=0)[:, 1], rtol=1e-5)
    np.testing.assert_allclose(ours.maps, ref.maps, atol=1e-5)
    after_w, after_act = snapshot(model)
    assert all(np.array_equal(a, b) for a, b in zip(before_w, after_w))
    assert before_act == after_act and model.get_layer("head").activation is keras.activations.softmax
    np.testing.assert_array_equal(model.predict(x, verbose=0), before_pred)
    assert len(model.layers) == n_layers


def test_probability_can_be_explained_instead():
    model = small_cnn()
    x = images(2)
    exp = ce.explain(model, x, "saliency", target=0, score="probability")
    np.testing.assert_allclose(exp.scores, model.predict(x, verbose=0)[:, 0], rtol=1e-5)
    logit = ce.explain(model, x, "saliency", target=0)
    assert not np.allclose(exp.attributions, logit.attributions)
    # d p0 / dx = p0 * (d z0/dx - Σ_j p_j d z_j/dx)
    p = model.predict(x, verbose=0)
    dz = np.stack([ce.explain(model, x, "saliency", target=j).attributions for j in range(3)], 1)
    expected = p[:, 0, None, None, None] * (dz[:, 0] - (p[:, :, None, None, None] * dz).sum(1))
    np.testing.assert_allclose(exp.attributions, expected, rtol=1e-3, atol=1e-7)


def test_separate_softmax_activation_layer_and_logit_models():
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="c")(inp)
    z = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(h))
    with_act = keras.Model(inp, keras.layers.Activation("softmax")(z))
    with_softmax_layer = keras.Model(inp, keras.layers.Softmax()(z))
    logits_only = keras.Model(inp, z)
    x = images(2)
    expected = logits_only.predict(x, verbose=0)[:, 2]
    for model in (with_act, with_softmax_layer, logits_only):
        exp = ce.explain(model, x, "gradcam", target=2)
        np.testing.assert_allclose(exp.scores, expected, rtol=1e-5)
        np.testing.assert_allclose(exp.probabilities, with_act.predict(x, verbose=0), rtol=1e-5)


def test_multi_label_sigmoid_model_reports_independent_probabilities():
    model = small_cnn(classes=4, activation="sigmoid")
    x = images(5)
    p = model.predict(x, verbose=0)
    exp = ce.explain(model, x, "saliency", target=2)
    np.testing.assert_allclose(exp.probabilities, p, rtol=1e-5)  # not a softmax over the labels
    np.testing.assert_allclose(exp.scores, np.log(p[:, 2] / (1 - p[:, 2])), rtol=1e-3, atol=1e-5)
    prob = ce.explain(model, x, "saliency", target=2, score="probability")
    np.testing.assert_allclose(prob.scores, p[:, 2], rtol=1e-5)


def test_binary_sigmoid_model():
    model = small_cnn(classes=1, activation="sigmoid")
    x = images(6)
    p = model.predict(x, verbose=0)[:, 0]
    z = np.log(p / (1 - p))
    exp = ce.explain(model, x, "saliency")
    np.testing.assert_array_equal(exp.targets, (p > 0.5).astype(int))
    np.testing.assert_allclose(exp.scores, np.abs(z), rtol=1e-3)
    one = ce.explain(model, x, "saliency", target=1)
    zero = ce.explain(model, x, "saliency", target=0)
    np.testing.assert_allclose(zero.attributions, -one.attributions, rtol=1e-6)
    np.testing.assert_allclose(one.scores, z, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(zero.probabilities[:, 1], p, rtol=1e-5)
    prob = ce.explain(model, x, "saliency", target=0, score="probability")
    np.testing.assert_allclose(prob.scores, 1 - p, rtol=1e-5)
    with pytest.raises(ce.TargetError, match="classes 0 and 1"):
        ce.explain(model, x, "saliency", target=2)


def test_targets_per_image_and_top_k(cnn, x):
    per = ce.explain(cnn, x, "gradcam", target=[2, 1, 0, 2])
    np.testing.assert_array_equal(per.targets, [2, 1, 0, 2])
    top = ce.explain(cnn, x, "gradcam", target="top2")
    order = np.argsort(-cnn.predict(x, verbose=0), axis=1)[:, :2]
    np.testing.assert_array_equal(top.targets, order.reshape(-1))
    np.testing.assert_array_equal(top.image_index, np.repeat(np.arange(4), 2))
    single = ce.explain(cnn, x, "gradcam", target=order[:, 1])
    np.testing.assert_allclose(top.maps[1::2], single.maps, atol=1e-6)
    pred = ce.explain(cnn, x, "gradcam")
    np.testing.assert_array_equal(pred.targets, order[:, 0])
    np.testing.assert_array_equal(pred.predictions, order[:, 0])


def test_shared_layer_called_twice_records_last_call():
    shared = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="shared")
    inp = keras.Input((10, 10, 3))
    h1 = shared(inp)
    h2 = shared(h1)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h2))
    model = keras.Model(inp, out)
    x = images(2, 10)
    exp = ce.explain(model, x, "gradcam", layer="shared", target=0)
    # reference: Grad-CAM on the second call's output, written out
    import tensorflow as tf

    with tf.GradientTape() as tape:
        a1 = shared(x)
        a2 = shared(a1)
        tape.watch(a2)
        z = model.layers[-1](model.layers[-2](a2))[:, 0]
    g = tape.gradient(z, a2).numpy()
    cam = (a2.numpy() * g.mean(axis=(1, 2), keepdims=True)).sum(-1)
    np.testing.assert_allclose(exp.layer_maps, cam, rtol=1e-4, atol=1e-7)


def test_nested_functional_in_functional_two_levels_deep():
    inner = keras.Sequential(
        [keras.Input((12, 12, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="deep")], name="inner"
    )
    inp = keras.Input((12, 12, 3))
    middle = keras.Model(inp, keras.layers.Conv2D(3, 1, name="mix")(inner(inp)), name="middle")
    top_in = keras.Input((12, 12, 3))
    flat = keras.layers.Flatten(name="flat")(middle(top_in))
    out = keras.layers.Dense(2, activation="softmax", name="out")(flat)
    model = keras.Model(top_in, out)
    x = images(2, 12)
    exp = ce.explain(model, x, "gradcam", layer="middle/inner/deep")
    assert exp.layer == "middle/inner/deep" and exp.layer_maps.shape == (2, 10, 10)
    assert ce.explain(model, x, "gradcam").layer == "middle/mix"
    assert ce.list_layers(model) == [
        "middle",
        "middle/inner",
        "middle/inner/deep",
        "middle/mix",
        "flat",
        "out",
    ]


def test_nested_model_saliency_equals_flat():
    nested, flat = nested_and_flat()
    x = images(3)
    np.testing.assert_allclose(
        ce.explain(nested, x, "saliency").attributions,
        ce.explain(flat, x, "saliency").attributions,
        rtol=1e-5,
        atol=1e-8,
    )


def test_preprocess_and_raw_images(cnn):
    raw = (images(2) * 255).astype(np.uint8)
    prep = lambda im: im.astype(np.float32) / 255.0  # noqa: E731
    exp = ce.explain(cnn, raw, "gradcam", preprocess=prep)
    ref = ce.explain(cnn, prep(raw), "gradcam")
    np.testing.assert_allclose(exp.maps, ref.maps, atol=1e-6)
    assert exp.images.dtype == np.uint8
    np.testing.assert_array_equal(exp.images, raw)


def test_single_image_without_batch_axis(cnn, x):
    exp = ce.explain(cnn, x[0], "saliency")
    assert exp.maps.shape == (1, 16, 16)


def test_compiled_functions_trace_once_per_shape(cnn):
    method = ce.Saliency(cnn, batch_size=4)
    for n in (4, 3, 9, 1):  # full batches and smaller last batches
        method.explain(images(n))
    assert method.engine.tracing_counts() == {("input_gradients", (16, 16, 3)): 1}
    # explain() in a loop reuses the cached engine and its graphs
    for _ in range(3):
        ce.explain(cnn, images(2), "saliency")
    engine = ce.Saliency(cnn).engine  # the cached engine explain() used (on the fast layer plan)
    assert engine.tracing_counts() == {("input_gradients", (16, 16, 3)): 1}


def test_methods_of_one_model_share_its_forward_passes(cnn):
    """Whatever their score and layer, a model's engines run one traced forward pass and one traced activations
    pass per layer: RISE and Score-CAM (probabilities) trace nothing after integrated gradients' baseline
    scores and Eigen-CAM (logits), and their scores are the model's probabilities."""
    from cnn_exposed.engine import engine_for
    from cnn_exposed.rules import GRADIENT_RULES

    x, layer = images(3), ce.find_last_spatial_layer(cnn).path
    ce.explain(cnn, x, "integrated_gradients", steps=4, progress=False)
    ce.explain(cnn, x, "eigencam", progress=False)
    ce.explain(cnn, x, "rise", samples=8, grid=4, progress=False)
    ce.explain(cnn, x, "scorecam", progress=False)
    shape = (16, 16, 3)
    assert engine_for(cnn, None, "logit", GRADIENT_RULES).tracing_counts()[("outputs", shape)] == 1
    assert engine_for(cnn, layer, "logit", GRADIENT_RULES).tracing_counts() == {("activations", shape): 1}
    for which in (None, layer):
        probability = engine_for(cnn, which, "probability", GRADIENT_RULES)
        assert probability.tracing_counts() == {}
        targets = np.array([2, -1, 0], np.int32)
        want = keras.ops.convert_to_numpy(cnn(x))
        picked = np.where(targets < 0, want.argmax(1), targets)
        np.testing.assert_allclose(probability.scores(x, targets), want[np.arange(3), picked], rtol=1e-5)
    # the probability engine's activations come from its layer's twin: that layer's output, its probabilities
    got = engine_for(cnn, layer, "probability", GRADIENT_RULES).activations(x)
    trunk = keras.Model(cnn.inputs, cnn.get_layer(layer).output)
    np.testing.assert_allclose(got.activations, keras.ops.convert_to_numpy(trunk(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.probabilities, want, rtol=1e-5)
    np.testing.assert_allclose(got.outputs, want, rtol=1e-5)  # the probability is this engine's score


def test_engine_results_are_named_and_stay_named_over_batches(cnn):
    from cnn_exposed.engine import InputGradients, engine_for

    engine = engine_for(cnn)
    x, t = images(5), np.array([0, 1, 2, -1, 0], np.int32)
    one = engine.input_gradients(x, t)
    assert isinstance(one, InputGradients) and one.gradients.shape == x.shape
    many = engine.map_batches(engine.input_gradients, (x, t), batch_size=2)
    assert isinstance(many, InputGradients)
    np.testing.assert_allclose(many.gradients, one.gradients, rtol=1e-5, atol=1e-7)
    assert many.targets[3] == one.probabilities[3].argmax()  # -1 resolved to the top class


def test_a_model_that_rescales_its_input_itself_gets_raw_pixels(tmp_path):
    """Keras' image-classification tutorial puts Rescaling(1./255) first (and EfficientNet rescales inside): scaling
    the pixels again by default would feed it nearly black images. Such a model is loaded with "none"."""
    import cnn_exposed as ce

    pixels = np.full((1, 8, 8, 3), 200.0, np.float32)
    layers = [keras.layers.Conv2D(2, 3), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")]
    tutorial = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), *layers])
    plain = keras.Sequential([keras.Input((8, 8, 3)), *[keras.layers.deserialize(keras.layers.serialize(x))
                                                        for x in layers]])  # fmt: skip
    nested = keras.Sequential([keras.Input((8, 8, 3)), tutorial, keras.layers.Dense(2)])  # a base inside a head
    for model, want in ((tutorial, 200.0), (plain, 200.0 / 255), (nested, 200.0)):
        path = tmp_path / f"{model.name}.keras"
        model.save(path)
        loaded = ce.load_model(path)
        np.testing.assert_allclose(loaded.preprocess(pixels), want, rtol=1e-6)
        assert ("rescales its input itself" in loaded.metadata.get("preprocess", "")) == (want == 200.0)
    assert ce.load_model(tmp_path / f"{tutorial.name}.keras", preprocess="scale_0_1").preprocess(pixels).max() < 1
