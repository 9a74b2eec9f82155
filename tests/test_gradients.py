"""Saliency, gradient × input and SmoothGrad against quantities known analytically."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import cnn_exposed as ce
from conftest import images


def linear_model(size=8, classes=3):
    inp = keras.Input((size, size, 3))
    flat = keras.layers.Flatten()(inp)
    out = keras.layers.Dense(classes, bias_initializer="random_normal", name="lin")(flat)
    return keras.Model(inp, out)


def smooth_cnn(classes=3):
    """Softplus instead of ReLU: no kinks, so finite differences converge everywhere."""
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(4, 3, activation="softplus", name="c1")(inp)
    h = keras.layers.Conv2D(4, 3, strides=2, activation="softplus", name="c2")(h)
    out = keras.layers.Dense(classes, activation="softmax", name="head")(keras.layers.Flatten()(h))
    return keras.Model(inp, out)


def test_gradient_of_linear_model_is_its_weights():
    model = linear_model()
    x = images(3, 8)
    w = model.get_layer("lin").kernel.numpy()  # (8*8*3, classes)
    for target in range(3):
        exp = ce.explain(model, x, "saliency", target=target)
        expected = np.broadcast_to(w[:, target].reshape(8, 8, 3), x.shape)
        np.testing.assert_allclose(exp.attributions, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(exp.scores, model.predict(x, verbose=0)[:, target], rtol=1e-5)
        # maps are |gradient| max over channels, min-max normalised
        shown = np.abs(expected).max(-1)
        shown = (shown - shown.min()) / (shown.max() - shown.min())
        np.testing.assert_allclose(exp.maps, shown, atol=1e-5)


def test_saliency_agrees_with_finite_differences():
    model = smooth_cnn()
    # the logit of the softmax model, computed independently of cnn-exposed: the head without softmax
    head = model.get_layer("head")
    trunk = keras.Model(model.inputs[0], head.input)

    def logit(v):
        feats = trunk(v).numpy().astype(np.float64)
        return feats @ head.kernel.numpy().astype(np.float64) + head.bias.numpy()

    x = images(2, 12)
    targets = [0, 2]
    exp = ce.explain(model, x, "saliency", target=targets)
    rng = np.random.default_rng(5)
    h = 1e-2
    for i, t in enumerate(targets):
        for _ in range(12):
            y, xx, c = rng.integers(0, 12), rng.integers(0, 12), rng.integers(0, 3)
            up, down = x[i : i + 1].copy(), x[i : i + 1].copy()
            up[0, y, xx, c] += h
            down[0, y, xx, c] -= h
            fd = (logit(up)[0, t] - logit(down)[0, t]) / (2 * h)
            assert exp.attributions[i, y, xx, c] == pytest.approx(fd, rel=1e-2, abs=1e-4)


def test_gradient_x_input_is_gradient_times_input(cnn, x):
    sal = ce.explain(cnn, x, "saliency", target=1)
    gxi = ce.explain(cnn, x, "gradient_x_input", target=1)
    np.testing.assert_allclose(gxi.attributions, sal.attributions * x, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gxi.maps, ce.normalize_maps(np.abs(sal.attributions * x).max(-1)), atol=1e-6)


def test_smoothgrad_without_noise_is_the_wrapped_method(cnn, x):
    sal = ce.explain(cnn, x, "saliency")
    smooth = ce.explain(cnn, x, "smoothgrad", samples=3, noise=0.0)
    np.testing.assert_allclose(smooth.attributions, sal.attributions, rtol=1e-5, atol=1e-7)
    var = ce.explain(cnn, x, "smoothgrad", samples=3, noise=0.0, reduction="vargrad")
    assert np.abs(var.attributions).max() < 1e-10
    square = ce.explain(cnn, x, "smoothgrad", samples=3, noise=0.0, reduction="squaregrad")
    np.testing.assert_allclose(square.attributions, sal.attributions**2, rtol=1e-4, atol=1e-12)


def test_smoothgrad_is_the_mean_of_noisy_gradients(cnn, x):
    """Re-derive SmoothGrad by hand from the documented noise stream."""
    samples, noise, seed = 4, 0.2, 7
    exp = ce.explain(cnn, x[:2], "smoothgrad", target=[0, 1], samples=samples, noise=noise, seed=seed)
    import tensorflow as tf

    eps = np.stack(
        [[tf.random.stateless_normal(x.shape[1:], seed=[seed, i * samples + j]).numpy() for j in range(samples)]
         for i in range(2)]
    )  # fmt: skip
    sigma = noise * (x[:2].reshape(2, -1).max(1) - x[:2].reshape(2, -1).min(1))
    grads = []
    for i, t in enumerate([0, 1]):
        noisy = x[i] + eps[i] * sigma[i]
        g = ce.explain(cnn, noisy, "saliency", target=t).attributions
        grads.append(g.mean(0))
    np.testing.assert_allclose(exp.attributions, np.stack(grads), rtol=1e-4, atol=1e-7)


def test_smoothgrad_does_not_depend_on_batch_size_and_is_seeded(cnn, x):
    kw = dict(samples=6, noise=0.15, seed=3)
    a = ce.explain(cnn, x, "smoothgrad", batch_size=1, **kw)
    b = ce.explain(cnn, x, "smoothgrad", batch_size=32, **kw)
    np.testing.assert_allclose(a.attributions, b.attributions, rtol=1e-5, atol=1e-8)
    c = ce.explain(cnn, x, "smoothgrad", samples=6, noise=0.15, seed=4)
    assert np.abs(c.attributions - b.attributions).max() > 1e-4


def test_smoothgrad_wraps_gradient_x_input_and_integrated_gradients(cnn, x):
    gxi = ce.explain(cnn, x, "smoothgrad", base="gradient_x_input", samples=2, noise=0.0)
    np.testing.assert_allclose(gxi.attributions, ce.explain(cnn, x, "gradient_x_input").attributions, rtol=1e-5)
    ig = ce.explain(cnn, x, "smoothgrad", base="integrated_gradients", samples=2, noise=0.0, steps=8)
    ref = ce.explain(cnn, x, "integrated_gradients", steps=8)
    np.testing.assert_allclose(ig.attributions, ref.attributions, rtol=1e-4, atol=1e-7)
    assert ig.params["base"] == "integrated_gradients" and ig.params["base_steps"] == 8
    with pytest.raises(ValueError, match="gradient method"):
        ce.explain(cnn, x, "smoothgrad", base="gradcam")
