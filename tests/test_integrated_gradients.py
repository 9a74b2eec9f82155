"""Integrated gradients: completeness, quadrature rules, baselines."""

from __future__ import annotations

import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed.attribution import path_nodes
from conftest import images


def test_completeness_error_under_one_percent_with_64_steps(cnn, x):
    exp = ce.explain(cnn, x, "integrated_gradients", steps=64)
    assert exp.completeness_error.shape == (len(x),)
    assert exp.completeness_error.max() < 0.01
    # and the error is what it claims to be: recompute f(x) - f(x') independently
    lin_scores = exp.scores
    base = ce.explain(cnn, np.zeros_like(x), "saliency", target=exp.targets).scores
    delta = lin_scores - base
    sums = exp.attributions.reshape(len(x), -1).sum(1)
    np.testing.assert_allclose(exp.completeness_error, np.abs(sums - delta) / np.abs(delta), rtol=1e-4)


def test_completeness_error_shrinks_with_steps(cnn, x):
    errors = [
        ce.explain(cnn, x, "integrated_gradients", steps=s, quadrature="riemann_right").completeness_error.mean()
        for s in (2, 8, 64)
    ]
    assert errors[0] > errors[1] > errors[2]


def test_linear_model_is_exact_with_one_step():
    """For a linear score, IG = (x - x') * w with any quadrature and any number of steps."""
    from test_gradients import linear_model

    model = linear_model()
    x = images(2, 8)
    w = model.get_layer("lin").kernel.numpy()[:, 1].reshape(8, 8, 3)
    for quadrature in ("trapezoid", "riemann", "riemann_left", "riemann_right", "gausslegendre"):
        exp = ce.explain(model, x, "integrated_gradients", target=1, steps=1, quadrature=quadrature)
        np.testing.assert_allclose(exp.attributions, x * w, rtol=1e-5, atol=1e-7)
        assert exp.completeness_error.max() < 1e-4


@pytest.mark.parametrize("rule", ["trapezoid", "riemann", "riemann_left", "riemann_right", "gausslegendre"])
def test_quadrature_integrates_polynomials(rule):
    alphas, weights = path_nodes(16, rule)
    assert weights.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.all((alphas >= 0) & (alphas <= 1))
    # all rules integrate a line exactly only if symmetric; the cubic is a convergence check
    tol = {"riemann_left": 0.04, "riemann_right": 0.04}.get(rule, 2e-3)
    assert float((weights * alphas**3).sum()) == pytest.approx(0.25, abs=tol)


def test_baselines(cnn, x):
    ig = ce.IntegratedGradients(cnn, baseline="blur", steps=4)
    blurred = ig.baselines(x)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    noise = ce.IntegratedGradients(cnn, baseline="noise", seed=1).baselines(x)
    assert noise.min() >= x.min() - 1e-6 and noise.max() <= x.max() + 1e-6
    np.testing.assert_array_equal(noise, ce.IntegratedGradients(cnn, baseline="noise", seed=1).baselines(x))
    grey = ce.explain(cnn, x, "integrated_gradients", baseline=np.full((1, 1, 3), 0.5), steps=32)
    black = ce.explain(cnn, x, "integrated_gradients", steps=32)
    assert np.abs(grey.attributions - black.attributions).max() > 1e-4
    assert grey.completeness_error.max() < 0.05
    with pytest.raises(ce.InputError, match="broadcast"):
        ce.explain(cnn, x, "integrated_gradients", baseline=np.zeros((5, 5, 3)))
    with pytest.raises(ValueError, match="baseline must be one of"):
        ce.explain(cnn, x, "integrated_gradients", baseline="white")


def test_black_baseline_goes_through_preprocess(cnn):
    raw = (images(2) * 255).astype(np.uint8)
    prep = lambda im: im.astype(np.float32) / 127.5 - 1.0  # noqa: E731
    ig = ce.IntegratedGradients(cnn, preprocess=prep, steps=4)
    np.testing.assert_allclose(ig.baselines(prep(raw)), -1.0)
    exp = ig.explain(raw)
    assert exp.images.dtype == np.uint8 and exp.images.shape == raw.shape


def test_batch_size_invariance(cnn, x):
    a = ce.explain(cnn, x, "integrated_gradients", steps=10, batch_size=3)
    b = ce.explain(cnn, x, "integrated_gradients", steps=10, batch_size=64)
    np.testing.assert_allclose(a.attributions, b.attributions, rtol=1e-5, atol=1e-8)


def test_the_old_keyword_rule_still_chooses_the_quadrature_with_a_deprecation_warning(cnn, x):
    with pytest.warns(DeprecationWarning, match="quadrature="):
        old = ce.explain(cnn, x, "integrated_gradients", steps=4, rule="riemann_left")
    new = ce.explain(cnn, x, "integrated_gradients", steps=4, quadrature="riemann_left")
    np.testing.assert_array_equal(old.attributions, new.attributions)
    assert old.params["quadrature"] == "riemann_left"
    assert not np.array_equal(new.attributions, ce.explain(cnn, x, "integrated_gradients", steps=4).attributions)


def _sharp_model():
    """Large random weights and biases: each image's path crosses many ReLU kinks, some far more than others.
    (Without biases the network would be homogeneous, its gradient constant along a path from black.)"""
    import keras

    keras.utils.set_random_seed(4)
    init = keras.initializers.RandomNormal(stddev=1.5, seed=4)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", kernel_initializer=init, bias_initializer=init),
            keras.layers.Conv2D(8, 3, activation="relu", kernel_initializer=init, bias_initializer=init),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, kernel_initializer=init, bias_initializer=init),
        ]
    )


def test_auto_steps_refine_each_image_until_it_is_complete():
    model = _sharp_model()
    contrast = np.array([0.1, 0.3, 1, 2, 4, 8], np.float32).reshape(-1, 1, 1, 1)  # faint paths cross few kinks
    x = np.random.default_rng(5).uniform(-1, 1, (6, 8, 8, 1)).astype("float32") * contrast
    auto = ce.explain(model, x, "integrated_gradients", steps="auto", tolerance=0.01, progress=False)
    steps = auto.params["steps"]
    assert len(steps) == 6 and len(set(steps)) > 1  # each image its own
    assert all(s >= 16 and (s & (s - 1)) == 0 for s in steps)  # 16 doubled
    assert (auto.completeness_error <= 0.01).all()
    assert auto.params["passes"] == sum(s + 1 for s in steps) < (max(steps) + 1) * len(steps)
    for i, n in enumerate(steps):  # the refined sums are exactly the trapezoid rule with that many steps
        fixed = ce.explain(model, x[i : i + 1], "integrated_gradients", steps=n, progress=False)
        np.testing.assert_allclose(auto.attributions[i], fixed.attributions[0], rtol=1e-4, atol=1e-6)
        if n > 16:  # and it needed them: half as many miss the tolerance
            half = ce.explain(model, x[i : i + 1], "integrated_gradients", steps=n // 2, progress=False)
            assert half.completeness_error[0] > 0.01


def test_auto_steps_name_the_images_that_reach_the_cap():
    model = _sharp_model()
    x = np.random.default_rng(5).uniform(-1, 1, (3, 8, 8, 1)).astype("float32")
    with pytest.warns(UserWarning, match=r"did not reach a completeness error of 0\.0% in 16 steps: 0 \("):
        exp = ce.explain(model, x, "integrated_gradients", steps="auto", tolerance=1e-9, max_steps=16, progress=False)
    assert exp.params["steps"] == [16, 16, 16]
    with pytest.raises(ValueError, match="refines the trapezoid rule"):
        ce.explain(model, x, "integrated_gradients", steps="auto", quadrature="riemann")
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        ce.explain(model, x, "integrated_gradients", steps="many")


def test_the_fast_layer_plan_leaves_layers_it_does_not_know_alone():
    import keras

    from cnn_exposed.engine import Engine
    from cnn_exposed.rules import GRADIENT_RULES

    class Swish(keras.layers.Layer):  # a user's own layer: no rule knows it
        def call(self, x):
            return x * keras.ops.sigmoid(2.0 * x)

    keras.utils.set_random_seed(1)
    inp = keras.Input((12, 12, 3))
    h = keras.layers.ZeroPadding2D(1)(inp)
    h = keras.layers.Conv2D(6, 3, use_bias=False)(h)
    h = keras.layers.BatchNormalization()(h)
    h = Swish()(h)
    h = keras.layers.Conv2D(6, 3, padding="same")(h)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    model.layers[3].set_weights([np.random.default_rng(2).uniform(0.5, 2, 6).astype("float32") for _ in range(4)])
    x = np.random.default_rng(3).normal(size=(4, 12, 12, 3)).astype("float32")
    saliency = ce.Saliency(model, progress=False)
    assert saliency.engine.rules is GRADIENT_RULES  # the gradient methods run on the fast plan
    got = saliency.engine.input_gradients(x, np.zeros(4, np.int32)).gradients
    expected = Engine(model).input_gradients(x, np.zeros(4, np.int32)).gradients  # the model's own layers
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
