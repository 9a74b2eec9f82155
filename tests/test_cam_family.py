"""The CAM variants added to the family (Eigen-CAM, EigenGrad-CAM, HiResCAM, XGrad-CAM, Ablation-CAM, FEM) against
independent computations: hand formulas in NumPy, a compiled GradientTape on models split by hand at the layer,
and brute-force ablation through those split models."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import cnn_exposed as ce
from conftest import images, nested_and_flat

SIZE = 12


def split_model(head: str = "flatten", skip: bool = False):
    """``input -> c1 -> c2 [-> add(c1', c2)] -> head -> logits`` and the same layers as two models split at ``c2``:
    ``trunk(x) = [skip features, A]`` and ``top([skip features, A]) = logits`` (for the references)."""
    keras.utils.set_random_seed(5)
    c1 = layers.Conv2D(6, 3, activation="relu", bias_initializer="random_normal", name="c1")
    c2 = layers.Conv2D(6, 3, padding="same", activation="relu", bias_initializer="random_normal", name="c2")
    pool = layers.Flatten() if head == "flatten" else layers.GlobalAveragePooling2D()
    dense = layers.Dense(3, bias_initializer="random_normal", name="logits")
    add = layers.Add(name="add")  # named: Keras numbers unnamed layers per process, and xdist workers share it

    def top(s, a):
        return dense(pool(add([s, a]) if skip else a))

    inp = keras.Input((SIZE, SIZE, 3))
    s = c1(inp)
    a = c2(s)
    model = keras.Model(inp, top(s, a))
    trunk = keras.Model(inp, [s, a])
    s_in, a_in = keras.Input(s.shape[1:]), keras.Input(a.shape[1:])
    if skip:
        return model, trunk, keras.Model([s_in, a_in], top(s_in, a_in)), dense
    # Keras 3.10 refuses a model with an input its output does not use: without the skip, the top takes A alone
    head_only = keras.Model(a_in, top(None, a_in))
    return model, trunk, lambda inputs, training=False: head_only(inputs[1], training=training), dense


def tape_reference(trunk, top):
    """Compiled: (A, G = d logit_t / dA) for images and targets."""

    @tf.function
    def run(x, t):
        s, a = trunk(x, training=False)
        with tf.GradientTape() as tape:
            tape.watch(a)
            y = tf.gather(top([s, a], training=False), t, batch_dims=1)
        return a, tape.gradient(y, a)

    return lambda x, t: [v.numpy() for v in run(tf.constant(x), tf.constant(t, tf.int32))]


def numpy_first_component(values):
    """Per image: centre channels over positions, full SVD, project on the first right singular vector, make the
    largest-magnitude value positive."""
    out = []
    for v in values:
        flat = v.reshape(-1, v.shape[-1]).astype(np.float64)
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat)
        p = flat @ vt[0]
        out.append((p if p[np.abs(p).argmax()] >= 0 else -p).reshape(v.shape[:2]))
    return np.stack(out)


def test_hirescam_and_eigengradcam_equal_a_compiled_tape():
    model, trunk, top, _ = split_model("flatten")
    x, t = images(3, SIZE), np.array([0, 2, 1])
    a, g = tape_reference(trunk, top)(x, t)
    hires = ce.explain(model, x, "hirescam", layer="c2", target=t, progress=False)
    want = (g * a).sum(-1)
    scale = np.abs(want).max()
    np.testing.assert_allclose(hires.layer_maps, want, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(hires.raw_maps, ce.explain(model, x, "hirescam", layer="c2", target=t).raw_maps)
    assert np.abs(g.std(axis=(1, 2))).max() > 1e-3  # a flatten head: gradients vary over positions
    gradcam = ce.explain(model, x, "gradcam", layer="c2", target=t, progress=False)
    assert not np.allclose(gradcam.layer_maps, want, atol=1e-2 * scale)  # so HiResCAM is not Grad-CAM here
    eigengrad = ce.explain(model, x, "eigengradcam", layer="c2", target=t, progress=False)
    want = numpy_first_component(g * a)
    np.testing.assert_allclose(eigengrad.layer_maps, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_hirescam_on_a_gap_head_sums_to_the_logit_minus_its_bias():
    """Global average pooling and a dense layer: y_c = Σ_k W_kc (1/hw) Σ_ij A^k_ij + b_c and G^k_ij = W_kc / hw,
    so Σ_ij Σ_k G^k_ij A^k_ij = y_c − b_c exactly: the layer map (before ReLU) splits the logit over positions."""
    model, trunk, _, dense = split_model("gap", skip=True)
    x = images(3, SIZE, seed=1)
    exp = ce.explain(model, x, "hirescam", layer="add", target="top-2", progress=False)
    s, a = (v.numpy() for v in trunk(x[exp.image_index]))
    kernel, bias = dense.get_weights()
    logits = (s + a).mean(axis=(1, 2)) @ kernel + bias  # by hand
    want = logits[np.arange(len(exp.targets)), exp.targets]
    np.testing.assert_allclose(exp.scores, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exp.layer_maps.sum(axis=(1, 2)), want - bias[exp.targets], rtol=1e-4, atol=1e-5)


def test_xgradcam_weights_equal_their_definition_on_a_hand_model():
    """input -> linear 1x1 conv (A = x K) -> flatten -> dense (W): G^k_ij = W[(i, j, k), c], known in closed form."""
    inp = keras.Input((4, 4, 2))
    conv = layers.Conv2D(3, 1, use_bias=False, name="feat")
    dense = layers.Dense(2, name="out")
    model = keras.Model(inp, dense(layers.Flatten()(conv(inp))))
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(1, 1, 2, 3)).astype(np.float32)
    w = rng.normal(size=(48, 2)).astype(np.float32)
    conv.set_weights([kernel])
    dense.set_weights([w, np.zeros(2, np.float32)])
    x = images(2, 4)[..., :2]
    a = x @ kernel[0, 0]
    g = w[:, 1].reshape(4, 4, 3)
    weights = (a * g).sum(axis=(1, 2)) / (a.sum(axis=(1, 2)) + 1e-7)
    exp = ce.explain(model, x, "xgradcam", target=1, progress=False)
    np.testing.assert_allclose(exp.extras["channel_weights"], weights, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(exp.layer_maps, np.einsum("nhwk,nk->nhw", a, weights), rtol=1e-4, atol=1e-6)
    hires = ce.explain(model, x, "hirescam", target=1, progress=False)
    np.testing.assert_allclose(hires.layer_maps, (a * g).sum(-1), rtol=1e-4, atol=1e-6)


def test_eigencam_and_fem_equal_their_definitions_without_a_backward_pass():
    model, trunk, _, _ = split_model("flatten")
    x = images(3, SIZE, seed=2)
    a = trunk(x)[1].numpy()
    eigen = ce.EigenCAM(model, layer="c2", progress=False)
    exp = eigen.explain(x, target=2)
    want = numpy_first_component(a)
    np.testing.assert_allclose(exp.layer_maps, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    assert (exp.layer_maps.reshape(3, -1).max(1) >= -exp.layer_maps.reshape(3, -1).min(1)).all()  # the sign fix
    fem = ce.FEM(model, layer="c2", progress=False).explain(x)
    mean, std = a.mean(axis=(1, 2), keepdims=True), a.std(axis=(1, 2), keepdims=True)
    weights = (a > mean + 2 * std).mean(axis=(1, 2))
    assert 0 < weights.max() < 0.5  # some positions pass the threshold
    np.testing.assert_allclose(fem.extras["channel_weights"], weights, atol=1e-7)
    np.testing.assert_allclose(fem.layer_maps, np.einsum("nhwk,nk->nhw", a, weights), rtol=1e-5, atol=1e-6)
    # forward passes only (this model's engine ran no gradient pass)
    assert {key[0] for key in eigen.engine.tracing_counts()} == {"activations"}


def test_eigencam_with_fewer_positions_than_channels():
    """hw = 16 positions, k = 20 channels: the other side of the projection's computation."""
    keras.utils.set_random_seed(6)
    inp = keras.Input((SIZE, SIZE, 3))
    wide = layers.Conv2D(20, 3, strides=3, activation="relu", bias_initializer="random_normal", name="wide")(inp)
    model = keras.Model(inp, layers.Dense(3)(layers.GlobalAveragePooling2D()(wide)))
    x = images(2, SIZE, seed=4)
    a = keras.Model(inp, wide)(x).numpy()
    assert a.shape[1] * a.shape[2] < a.shape[3]
    exp = ce.explain(model, x, "eigencam", progress=False)
    want = numpy_first_component(a)
    np.testing.assert_allclose(exp.layer_maps, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("channels", [None, 2])
def test_ablationcam_weights_equal_score_drops_measured_one_channel_at_a_time(channels):
    """A residual branch skips past the ablated layer (it must still run from the input); the targets include
    a negative logit (its drops are divided by |y|)."""
    model, trunk, top, dense = split_model("gap", skip=True)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, bias - np.array([0, 0, 4], np.float32)])  # class 2: a negative logit
    x = images(2, SIZE, seed=3)
    method = ce.AblationCAM(model, layer="c2", channels=channels, batch_size=5, progress=False)
    exp = method.explain(x, target="top-3")
    s, a = (v.numpy() for v in trunk(x[exp.image_index]))
    logits = top.predict([s, a], verbose=0)
    rows = np.arange(len(exp.targets))
    y = logits[rows, exp.targets]
    assert (y < 0).any() and (y > 0).any()
    drops = np.zeros(a.shape[0::3], np.float32)
    for k in range(a.shape[-1]):
        ablated = a.copy()
        ablated[..., k] = 0.0
        drops[:, k] = y - top.predict([s, ablated], verbose=0)[rows, exp.targets]
    weights = drops / np.abs(y)[:, None]
    if channels is not None:  # the channels of largest spatial variance keep their weight, the others weigh 0
        var = a.reshape(len(a), -1, a.shape[-1]).var(axis=1)
        top_n = np.argsort(-var, axis=1)[:, :channels]
        keep = np.zeros_like(weights, bool)
        np.put_along_axis(keep, top_n, True, axis=1)
        weights = np.where(keep, weights, 0.0)
        np.testing.assert_array_equal(np.sort(exp.extras["channels"], 1), np.sort(top_n, 1))
    scale = np.abs(weights).max()
    np.testing.assert_allclose(exp.extras["channel_weights"], weights, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(exp.layer_maps, np.einsum("nhwk,nk->nhw", a, weights), rtol=1e-3, atol=1e-4 * scale)
    raw = ce.explain(
        model, x, "ablationcam", layer="c2", channels=channels, normalize=False, target="top-3", progress=False
    )
    np.testing.assert_allclose(raw.extras["channel_weights"], weights * np.abs(y)[:, None], rtol=1e-3, atol=1e-4)
    passes = {key[0] for key in method.engine.tracing_counts()}
    assert "ablated_scores" in passes and "layer_gradients" not in passes  # forward passes only


@pytest.mark.parametrize("method", ["ablationcam", "eigencam", "hirescam", "xgradcam", "fem", "eigengradcam"])
def test_nested_layer_equals_flat_twin(method):
    nested, flat = nested_and_flat()
    x = images(3)
    a = ce.explain(nested, x, method, layer="base/c2", batch_size=4, progress=False)
    b = ce.explain(flat, x, method, layer="c2", progress=False)
    scale = np.abs(b.layer_maps).max()
    assert scale > 0
    np.testing.assert_allclose(a.layer_maps, b.layer_maps, rtol=1e-4, atol=1e-5 * scale)
