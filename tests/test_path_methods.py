"""The path-method family beyond integrated gradients: Blur IG, Guided IG, GradientSHAP and XRAI.

Blur IG, Guided IG and XRAI are compared with PAIR's ``saliency`` package on the same model and images: its objects
take the gradients from ``call_model_function``, written here as a compiled gradient of the same Keras model (not
through this package's engine). GradientSHAP is checked against its definition: the estimator given its own draws,
its expectation against integrated gradients averaged over the background, its seeding and batch-size invariance.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import saliency.core as saliency
import tensorflow as tf
from scipy import ndimage

import cnn_exposed as ce
from cnn_exposed.attribution.integrated_gradients import gaussian_blur
from cnn_exposed.attribution.xrai import dilated_label_masks, felzenszwalb_segments, grow_regions
from cnn_exposed.backend import blur_path_points

SIZE = 24


def cnn(size: int = SIZE) -> keras.Model:
    """A tiny ReLU CNN with logits out and non-zero biases (so the paths cross kinks)."""
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.Conv2D(8, 3, activation="relu", bias_initializer="random_normal"),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu", bias_initializer="random_normal"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, bias_initializer="random_normal"),
        ]
    )


def photos(n: int = 2, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Smooth blobs plus noise: images with regions for Felzenszwalb to find, in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        centre, colour = rng.uniform(0.2, 0.8, 2), rng.uniform(0, 1, 3)
        blob = np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / 0.03)[..., None] * colour
        out.append(np.clip(blob + 0.1 * rng.random((size, size, 3)), 0, 1))
    return np.asarray(out, np.float32)


def gradient_fn(model):
    """d logit[t] / d x as a compiled function of a float32 batch and its targets: the independent reference."""

    @tf.function(input_signature=[tf.TensorSpec((None,) + model.input_shape[1:]), tf.TensorSpec((None,), tf.int32)])
    def grad(x, t):
        with tf.GradientTape() as tape:
            tape.watch(x)
            s = tf.gather(model(x, training=False), t, batch_dims=1)
        return tape.gradient(s, x), s

    return grad


def pair_call(grad):
    """PAIR's call_model_function on the reference gradient; the class travels in call_model_args."""

    def call(batch, call_model_args=None, expected_keys=None):
        b = np.asarray(batch, np.float32)
        g, _ = grad(b, np.full(len(b), call_model_args["target"], np.int32))
        return {saliency.INPUT_OUTPUT_GRADIENTS: g.numpy()}

    return call


def logit(grad, x, targets):
    return grad(np.asarray(x, np.float32), np.asarray(targets, np.int32))[1].numpy().astype(np.float64)


@pytest.fixture(scope="module")
def setup():
    model = cnn()
    grad = gradient_fn(model)
    return model, grad, pair_call(grad), photos()


def agreement(ours, reference):
    """(max |ours − reference| / max |reference|, correlation)."""
    a, b = np.ravel(ours).astype(np.float64), np.ravel(reference).astype(np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max()), float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------------------------------------------- Blur IG
def test_the_blur_is_scipys_gaussian_filter():
    x = photos(3, size=20, seed=1)
    for sigma in (0.0, 0.7, 3.0, 50.0):
        want = [ndimage.gaussian_filter(i.astype(np.float64), [sigma, sigma, 0], mode="constant") for i in x]
        np.testing.assert_allclose(gaussian_blur(x, sigma), want, atol=2e-6)


def test_blur_ig_path_points_are_scipys_blurs_and_their_sigma_derivatives_on_a_non_square_image():
    """The compiled path points (height and width filtered by their own matrices) against scipy's blur, and their
    derivative against a central difference of scipy's blur in float64, σ per image (0, inside and past the axis)."""
    x = np.random.default_rng(2).random((4, 13, 21, 3)).astype(np.float32)
    sigmas = np.array([0.0, 0.7, 3.0, 30.0])
    blurred, derivative = blur_path_points(x, sigmas, 0.01)

    def scipy_blur(image, sigma):
        return ndimage.gaussian_filter(image.astype(np.float64), [sigma, sigma, 0], mode="constant")

    for i, sigma in enumerate(sigmas):
        np.testing.assert_allclose(blurred[i], scipy_blur(x[i], sigma), atol=2e-6)
        want = (scipy_blur(x[i], sigma + 0.01) - scipy_blur(x[i], sigma)) / 0.01
        np.testing.assert_allclose(derivative[i], want, atol=2e-5 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("options", [{}, {"max_sigma": 6.0, "steps": 30, "sqrt": True}])
def test_blur_ig_matches_pair(setup, options):
    model, grad, call, x = setup
    exp = ce.explain(model, x, "blur_ig", progress=False, batch_size=40, **options)
    pair_options = {"max_sigma": options.get("max_sigma", 50), "steps": options.get("steps", 100)}
    # PAIR weights every point of a batch with its last point's Δσ: right only for even spacing, or one point a batch
    batch = 1 if options.get("sqrt") else 100
    for i in range(len(x)):
        want = saliency.BlurIG().GetMask(
            x[i].astype(np.float64), call, {"target": int(exp.targets[i])}, batch_size=batch,
            sqrt=options.get("sqrt", False), **pair_options,
        )  # fmt: skip
        error, corr = agreement(exp.attributions[i], want)
        assert error < 1e-4 and corr > 0.99999, (error, corr)


def test_blur_ig_completeness_error_is_against_the_fully_blurred_image(setup):
    model, grad, _, x = setup
    exp = ce.explain(model, x, "blur_ig", max_sigma=10.0, steps=64, progress=False)
    blurred = [ndimage.gaussian_filter(i.astype(np.float64), [10.0, 10.0, 0], mode="constant") for i in x]
    delta = logit(grad, x, exp.targets) - logit(grad, blurred, exp.targets)
    total = exp.attributions.reshape(len(x), -1).sum(axis=1)
    np.testing.assert_allclose(exp.extras["baseline_scores"], logit(grad, blurred, exp.targets), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exp.completeness_error, np.abs(total - delta) / np.abs(delta), rtol=1e-3, atol=1e-6)
    assert exp.completeness_error.max() < 0.1  # and the path sum is close to the score change (a left Riemann sum)


# --------------------------------------------------------------------------------------------------- Guided IG
@pytest.fixture
def pair_quantile(monkeypatch):
    """PAIR's Guided IG calls np.quantile(interpolation=...), which NumPy 2 renamed to method=."""
    quantile = np.quantile

    def shim(a, q, interpolation=None, **kwargs):
        if interpolation is not None:
            kwargs["method"] = interpolation
        return quantile(a, q, **kwargs)

    monkeypatch.setattr(np, "quantile", shim)


@pytest.mark.usefixtures("pair_quantile")
def test_guided_ig_matches_pair(setup):
    model, grad, call, x = setup
    exp = ce.explain(model, x, "guided_ig", progress=False)  # PAIR's defaults: 200 steps, 0.25, 0.02, from 0
    for i in range(len(x)):
        want = saliency.GuidedIG().GetMask(x[i], call, {"target": int(exp.targets[i])})
        error, corr = agreement(exp.attributions[i], want)
        assert error < 1e-4 and corr > 0.99999, (error, corr)


@pytest.mark.usefixtures("pair_quantile")
def test_guided_ig_with_another_baseline_and_its_completeness_error(setup):
    model, grad, call, x = setup
    grey = np.full(x.shape[1:], 0.5, np.float32)
    exp = ce.explain(model, x, "guided_ig", baseline=grey, steps=50, max_dist=0.1, progress=False)
    for i in range(len(x)):
        want = saliency.GuidedIG().GetMask(
            x[i], call, {"target": int(exp.targets[i])}, x_baseline=grey, x_steps=50, max_dist=0.1
        )
        assert agreement(exp.attributions[i], want)[0] < 1e-4
    delta = logit(grad, x, exp.targets) - logit(grad, np.broadcast_to(grey, x.shape), exp.targets)
    total = exp.attributions.reshape(len(x), -1).sum(axis=1)
    np.testing.assert_allclose(exp.completeness_error, np.abs(total - delta) / np.abs(delta), rtol=1e-3, atol=1e-6)


def test_guided_ig_without_room_to_stray_is_integrated_gradients_with_a_left_riemann_sum(setup):
    """max_dist = 0 keeps every feature on the straight path: each step moves all of them to α = (k + 1) / steps,
    weighted by the gradient at the step's start, which is integrated gradients' left Riemann sum."""
    model, grad, call, x = setup
    guided = ce.explain(model, x, "guided_ig", steps=16, max_dist=0.0, progress=False)
    straight = ce.explain(
        model, x, "integrated_gradients", steps=16, quadrature="riemann_left", target=guided.targets, progress=False
    )
    scale = np.abs(straight.attributions).max()
    np.testing.assert_allclose(guided.attributions, straight.attributions, atol=1e-5 * scale)


# -------------------------------------------------------------------------------------------------------- XRAI
def test_xrai_regions_match_pair_given_the_same_attribution(setup):
    model, grad, call, x = setup
    exp = ce.explain(model, x, "xrai", steps=20, progress=False)
    params = saliency.XRAIParameters(return_xrai_segments=True)
    for i in range(len(x)):  # PAIR segments the image itself and grows regions on our IG attribution
        want = saliency.XRAI().GetMaskWithDetails(
            x[i], call, base_attribution=exp.extras["integrated_gradients"][i], extra_parameters=params
        )
        np.testing.assert_allclose(exp.raw_maps[i], want.attribution_mask, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(exp.extras["region_ranks"][i], want.segments)
    # a rough attribution: many more regions to order, ties in the gains of nested segments
    rough = np.random.default_rng(0).normal(size=x[0].shape)
    segments = felzenszwalb_segments(x[0])
    want = saliency.XRAI().GetMaskWithDetails(
        x[0], call, base_attribution=rough, segments=segments, extra_parameters=params
    )
    got, ranks = grow_regions(rough.max(axis=-1), segments)
    np.testing.assert_allclose(got, want.attribution_mask, rtol=1e-9)
    np.testing.assert_array_equal(ranks, want.segments)
    assert len(np.unique(ranks)) > 5 and len(np.unique(exp.extras["region_ranks"])) > 2


def test_segments_are_dilated_as_skimage_dilates_each_mask():
    from skimage.morphology import dilation, disk

    labels = np.random.default_rng(0).integers(2, 40, (50, 37))
    labels[:10] = 3  # a large region next to speckle
    want = [dilation(labels == label, footprint=disk(5)) for label in range(2, 40)]
    np.testing.assert_array_equal(dilated_label_masks(labels, 5), want)


def test_xrai_integrated_gradients_average_a_black_and_a_white_baseline(setup):
    model, grad, call, x = setup
    exp = ce.explain(model, x, "xrai", steps=100, progress=False)
    ours = exp.extras["integrated_gradients"]
    for i in range(len(x)):
        one = x[i : i + 1]
        black = ce.explain(model, one, "integrated_gradients", baseline=one.min(), steps=100, target=exp.targets[i])
        white = ce.explain(model, one, "integrated_gradients", baseline=one.max(), steps=100, target=exp.targets[i])
        np.testing.assert_allclose(ours[i], (black.attributions[0] + white.attributions[0]) / 2, rtol=1e-4, atol=1e-6)
        # PAIR's own IG part (100 points evenly from 0 to 1, averaged): the same integral, another quadrature
        params = saliency.XRAIParameters(steps=100, return_ig_attributions=True)
        pair = saliency.XRAI().GetMaskWithDetails(
            x[i], call, {"target": int(exp.targets[i])}, segments=[np.ones(x.shape[1:3], bool)], batch_size=100,
            extra_parameters=params,
        )  # fmt: skip
        error, corr = agreement(ours[i], np.mean(pair.ig_attribution, axis=0))
        assert error < 0.05 and corr > 0.998, (error, corr)
    f_x = logit(grad, x, exp.targets)
    lo, hi = (np.broadcast_to(f(x, axis=(1, 2, 3), keepdims=True), x.shape) for f in (np.min, np.max))
    delta = f_x - (logit(grad, lo, exp.targets) + logit(grad, hi, exp.targets)) / 2
    total = ours.reshape(len(x), -1).sum(axis=1)
    np.testing.assert_allclose(exp.completeness_error, np.abs(total - delta) / np.abs(delta), rtol=1e-3, atol=1e-6)
    assert exp.attributions is None and exp.maps.shape == (len(x), SIZE, SIZE)


# ------------------------------------------------------------------------------------------------ GradientSHAP
def test_gradient_shap_is_its_estimator_given_its_draws(setup):
    model, grad, _, x = setup
    background = photos(3, seed=7)
    shap = ce.GradientSHAP(model, samples=7, background=background, seed=3, batch_size=5, progress=False)
    exp = shap.explain(x)
    index, alpha = shap.draws(len(x), len(background))
    assert index.shape == alpha.shape == (len(x), 7) and len(np.unique(index)) == 3
    for i in range(len(x)):
        base = background[index[i]]
        points = base + alpha[i].reshape(-1, 1, 1, 1) * (x[i] - base)
        g, _ = grad(points.astype(np.float32), np.full(7, exp.targets[i], np.int32))
        want = ((x[i] - base) * g.numpy()).mean(axis=0)
        np.testing.assert_allclose(exp.attributions[i], want, rtol=1e-4, atol=1e-6)
    mean_background = logit(grad, background, [exp.targets[0]] * 3).mean()
    assert exp.extras["baseline_scores"][0] == pytest.approx(mean_background, rel=1e-5)


def quadratic(size: int = 6) -> keras.Model:
    """f_c(x) = Σ_k v_ck (w_kᵀx + b_k)² + linear: its gradient is affine in x, so integrated gradients with one
    trapezoid step is exact, and the expectation over α of GradientSHAP's terms is known."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((size, size, 1))
    h = keras.layers.Dense(4, bias_initializer="random_normal")(keras.layers.Flatten()(inp))
    out = keras.layers.Dense(2)(keras.layers.Concatenate()([keras.layers.Multiply()([h, h]), h]))
    return keras.Model(inp, out)


def test_gradient_shap_expectation_is_integrated_gradients_averaged_over_the_background():
    model = quadratic()
    rng = np.random.default_rng(1)
    x, background = rng.uniform(-1, 1, (2, 6, 6, 1)), rng.uniform(-1, 1, (3, 6, 6, 1))
    x, background = x.astype(np.float32), background.astype(np.float32)
    exp = ce.explain(model, x, "gradient_shap", samples=4000, background=background, batch_size=1000, target=1)
    ig = [ce.explain(model, x, "integrated_gradients", baseline=b, steps=1, target=1).attributions for b in background]
    want = np.mean(ig, axis=0)  # exact: the gradient is affine along every straight path
    error = np.linalg.norm(exp.attributions - want) / np.linalg.norm(want)
    assert error < 0.05, error  # 4000 samples: a few standard errors (about 1.5 % each)
    # the tolerance separates: a sampler that drew α = 1 (gradient at x) or the first baseline only is far off
    at_x = np.mean([(x - b) * ce.explain(model, x, "saliency", target=1).attributions for b in background], axis=0)
    assert np.linalg.norm(at_x - want) / np.linalg.norm(want) > 0.3
    assert np.linalg.norm(ig[0] - want) / np.linalg.norm(want) > 0.3
    # Σφ = f(x) − E f(background) in expectation: within sampling error here
    delta = exp.scores - exp.extras["baseline_scores"]
    assert exp.completeness_error.max() < 0.05
    np.testing.assert_allclose(
        exp.completeness_error, np.abs(exp.attributions.reshape(2, -1).sum(1) - delta) / np.abs(delta), rtol=1e-4
    )  # noqa: E501


def test_gradient_shap_is_seeded_and_independent_of_the_batch_size(setup):
    model, _, _, x = setup
    options = dict(samples=6, background=photos(4, seed=2), noise=0.1, progress=False)
    small = ce.explain(model, x, "gradient_shap", batch_size=5, seed=1, **options)
    large = ce.explain(model, x, "gradient_shap", batch_size=64, seed=1, **options)
    np.testing.assert_allclose(small.attributions, large.attributions, rtol=1e-5, atol=1e-7)
    again = ce.explain(model, x, "gradient_shap", batch_size=5, seed=1, **options)
    np.testing.assert_array_equal(small.attributions, again.attributions)
    scale = np.abs(small.attributions).max()
    other = ce.explain(model, x, "gradient_shap", batch_size=5, seed=2, **options)
    assert np.abs(other.attributions - small.attributions).max() > 0.05 * scale
    noiseless = ce.explain(model, x, "gradient_shap", batch_size=5, seed=1, **{**options, "noise": 0.0})
    assert np.abs(noiseless.attributions - small.attributions).max() > 0.05 * scale
    # image i's draws do not depend on the other images
    alone = ce.explain(model, x[:1], "gradient_shap", batch_size=5, seed=1, **options)
    np.testing.assert_allclose(alone.attributions[0], small.attributions[0], rtol=1e-5, atol=1e-7)


def test_gradient_shap_background_default_raw_images_and_errors(setup):
    model, _, _, x = setup
    raw = (photos(2, seed=4) * 255).astype(np.uint8)
    prep = lambda im: im.astype(np.float32) / 127.5 - 1.0  # noqa: E731
    shap = ce.GradientSHAP(model, samples=3, preprocess=prep, background=raw, progress=False)
    np.testing.assert_allclose(shap.background_images(prep(raw)), prep(raw))
    black = ce.GradientSHAP(model, samples=3, preprocess=prep, progress=False).background_images(prep(raw))
    np.testing.assert_allclose(black, -1.0)
    assert black.shape == (1, SIZE, SIZE, 3)
    with pytest.raises(ce.InputError, match="background of shape"):
        ce.explain(model, x, "gradient_shap", background=np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="background must be"):
        ce.explain(model, x, "gradient_shap", background="white")
