"""Faithfulness metrics and sanity checks, on models whose right answer is known."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed import metrics
from conftest import images


def linear_model(size=8):
    keras.utils.set_random_seed(2)
    inp = keras.Input((size, size, 3))
    out = keras.layers.Dense(2, activation="softmax", name="lin")(keras.layers.Flatten()(inp))
    return keras.Model(inp, out)


def test_deletion_and_insertion_rank_a_perfect_attribution_above_a_random_one():
    model = linear_model()
    x = images(6, 8)
    w = model.get_layer("lin").kernel.numpy()
    contribution = x * (w[:, 0] - w[:, 1]).reshape(8, 8, 3)  # exact share of each pixel in logit0 - logit1
    perfect = contribution.sum(-1)
    random = np.random.default_rng(0).random(perfect.shape).astype(np.float32)
    kw = dict(target=0, fill="zeros", patch=1, steps=16)
    assert (
        metrics.deletion_curve(model, x, perfect, **kw).auc.mean()
        < metrics.deletion_curve(model, x, random, **kw).auc.mean()
    )
    assert (
        metrics.insertion_curve(model, x, perfect, **kw).auc.mean()
        > metrics.insertion_curve(model, x, random, **kw).auc.mean()
    )
    # the curve ends where it must: everything removed = the fill image's score
    curve = metrics.deletion_curve(model, x, perfect, **kw)
    np.testing.assert_allclose(curve.scores[:, -1], model.predict(np.zeros_like(x), verbose=0)[:, 0], rtol=1e-5)
    np.testing.assert_allclose(curve.scores[:, 0], model.predict(x, verbose=0)[:, 0], rtol=1e-5)
    assert curve.fractions[0] == 0 and curve.fractions[-1] == 1


def test_metrics_do_not_depend_on_batch_size(cnn, x):
    maps = ce.explain(cnn, x, "gradcam").maps
    a = metrics.deletion_curve(cnn, x, maps, batch_size=1, steps=8)
    b = metrics.deletion_curve(cnn, x, maps, batch_size=32, steps=8)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-7)
    c = metrics.insertion_curve(cnn, x, maps, batch_size=3, steps=8)
    d = metrics.insertion_curve(cnn, x, maps, batch_size=64, steps=8)
    np.testing.assert_allclose(c.auc, d.auc, rtol=1e-5)
    e1 = ce.explain(cnn, x, "integrated_gradients", batch_size=1, steps=8)
    e2 = ce.explain(cnn, x, "integrated_gradients", batch_size=32, steps=8)
    np.testing.assert_allclose(e1.maps, e2.maps, atol=1e-5)


def test_pointing_game_and_mass_in_mask():
    maps = np.zeros((3, 10, 10))
    maps[0, 2, 2] = 1
    maps[1, 8, 8] = 1
    maps[2, 5, 3] = 1  # two pixels below the mask
    masks = np.zeros((3, 10, 10), bool)
    masks[:, 1:4, 1:4] = True
    np.testing.assert_array_equal(metrics.pointing_game(maps, masks, tolerance=0.0), [True, False, False])
    np.testing.assert_array_equal(metrics.pointing_game(maps, masks, tolerance=0.2), [True, False, True])
    np.testing.assert_allclose(metrics.mass_in_mask(maps, masks), [1, 0, 0])


def test_relevance_rank_and_mass_accuracy_on_hand_made_maps():
    masks = np.zeros((4, 6, 6), bool)
    masks[:, 1:3, 1:3] = True  # K = 4 pixels
    maps = np.zeros((4, 6, 6))
    maps[0, 1:3, 1:3] = [[4, 3], [2, 1]]  # the top 4 are the mask
    maps[1, 1, 1:3], maps[1, 5, 4:6] = [5, 5], [6, 7]  # top 4: two outside, then the two inside
    maps[2, 1, 1], maps[2, 4, 4] = 3.0, -1.0  # signed: 3 inside, -1 outside
    masks[3] = False  # an empty mask
    np.testing.assert_allclose(metrics.relevance_rank_accuracy(maps, masks), [1.0, 0.5, 0.25, np.nan])
    np.testing.assert_allclose(metrics.relevance_mass_accuracy(maps, masks), [1.0, 10 / 23, 1.5, np.nan])
    np.testing.assert_allclose(metrics.mass_in_mask(maps, masks)[:3], [1.0, 10 / 23, 1.0])
    assert np.isnan(metrics.relevance_mass_accuracy(np.zeros((1, 6, 6)), masks[:1]))[0]
    with pytest.raises(ValueError, match="same shape"):
        metrics.relevance_rank_accuracy(maps, masks[:, :5])


def test_sparseness_is_the_gini_index_and_complexity_the_entropy():
    from scipy.stats import entropy

    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 5, 4, 3)) * rng.random((3, 1, 1, 1))  # signed, channels, another scale per image
    flat = np.abs(a.reshape(3, -1))
    pairwise = np.abs(flat[:, :, None] - flat[:, None, :]).sum((1, 2))  # Gini's mean-difference definition
    n = flat.shape[1]
    np.testing.assert_allclose(metrics.sparseness(a), pairwise / (2 * n * flat.sum(1)), rtol=1e-10)
    np.testing.assert_allclose(metrics.complexity(a), [entropy(f) for f in flat], rtol=1e-10)
    np.testing.assert_allclose(metrics.sparseness(np.array([[0.0, 0.0, 1.0, -3.0]])), [0.625])
    one_hot, flat_map = np.zeros((1, 8, 8)), np.full((1, 8, 8), 0.3)
    one_hot[0, 3, 5] = -2.0
    np.testing.assert_allclose(metrics.sparseness(np.concatenate([one_hot, flat_map])), [63 / 64, 0.0], atol=1e-12)
    np.testing.assert_allclose(metrics.complexity(np.concatenate([one_hot, flat_map])), [0.0, np.log(64)])
    assert np.isnan(metrics.sparseness(np.zeros((1, 4, 4)))[0]) and np.isnan(metrics.complexity(np.zeros((1, 4))))[0]


def test_spearman_and_ssim():
    a = np.random.default_rng(0).random((2, 12, 12))
    np.testing.assert_allclose(metrics.spearman(a, a), 1.0)
    np.testing.assert_allclose(metrics.spearman(a, -a), -1.0)
    np.testing.assert_allclose(metrics.ssim(a, a), 1.0)
    assert metrics.ssim(a, np.random.default_rng(1).random((2, 12, 12))).max() < 0.5


def test_spearman_ranks_ties_by_their_average_rank_as_scipy_does():
    scipy_stats = pytest.importorskip("scipy.stats")  # a dependency of tf-keras-vis, so of the test suite
    rng = np.random.default_rng(4)
    # ReLU'd maps: about half of each map is exactly 0, the case where ranking ties by position misleads.
    x = np.maximum(rng.normal(size=(5, 9, 11)), 0)
    y = np.maximum(rng.normal(size=(5, 9, 11)) + 0.5 * x, 0)
    expected = [scipy_stats.spearmanr(u.ravel(), v.ravel()).statistic for u, v in zip(x, y)]
    np.testing.assert_allclose(metrics.spearman(x, y), expected, rtol=1e-12)
    # Two maps that share only their zeros are unrelated where they are non-zero: no similarity from ties.
    u, v = np.zeros((1, 100)), np.zeros((1, 100))
    u[0, :10], v[0, 90:] = rng.random(10), rng.random(10)
    assert metrics.spearman(u, v)[0] < 0
    np.testing.assert_array_equal(metrics.average_ranks(np.array([[3.0, 1.0, 3.0, 0.0]])), [[2.5, 1.0, 2.5, 0.0]])


@pytest.mark.parametrize("shape", [(40, 33), (11, 16), (64, 64)])
def test_ssim_equals_tensorflows_reference_implementation(shape):
    import tensorflow as tf

    rng = np.random.default_rng(5)
    a = rng.random((3, *shape))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    expected = tf.image.ssim(tf.constant(a[..., None]), tf.constant(b[..., None]), max_val=1.0).numpy()
    np.testing.assert_allclose(metrics.ssim(a, b), expected, rtol=1e-5)


def edge_detector(model, x):
    """An 'attribution' that ignores the model: the image's gradient magnitude."""
    gray = np.asarray(x, np.float32).mean(-1)
    gy, gx = np.gradient(gray, axis=(1, 2))
    return ce.normalize_maps(np.hypot(gx, gy))


def test_randomisation_check_flags_a_model_independent_method_and_passes_model_dependent_ones():
    demo = ce.load_model("demo")
    x, _, _ = ce.demo.load_images("trap")
    x = x[:4]
    fake = metrics.randomisation_check(demo.model, x, edge_detector)
    assert not fake.passed and fake.spearman_abs[-1].mean() > 0.99
    for method, opts in (("gradcam", {}), ("integrated_gradients", {"steps": 8})):
        result = metrics.randomisation_check(demo.model, x, method, preprocess=demo.preprocess, **opts)
        assert result.passed, (method, result.spearman_abs.mean(1))
        assert result.layers[0] == demo.model.layers[-1].name  # top down: the head first
    weights = [w.copy() for w in demo.model.get_weights()]
    metrics.randomisation_check(demo.model, x, "saliency", preprocess=demo.preprocess)
    assert all(np.array_equal(a, b) for a, b in zip(weights, demo.model.get_weights()))  # the model is untouched


def test_random_target_check_correlates_each_map_with_one_for_a_random_other_class(cnn, x):
    from scipy.stats import spearmanr

    corr = metrics.random_target_check(cnn, x, "saliency", seed=3)
    pred = ce.explain(cnn, x, "saliency")
    k = pred.probabilities.shape[1]
    other = np.array([(t + np.random.default_rng([3, i]).integers(1, k)) % k for i, t in enumerate(pred.targets)])
    assert np.all(other != pred.targets)
    rand = ce.explain(cnn, x, "saliency", target=other)
    expected = [spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(pred.maps, rand.maps)]
    np.testing.assert_allclose(corr, expected, rtol=1e-5, atol=1e-6)
    assert corr.max() < 0.999  # the maps do depend on the class


def test_comparison_table(cnn, x):
    masks = np.zeros((4, 16, 16), bool)
    masks[:, 4:12, 4:12] = True
    rows = metrics.compare_methods(cnn, x, ["gradcam", "saliency"], masks=masks, curve_options={"steps": 4})
    assert [r["method"] for r in rows] == ["gradcam", "saliency"]
    assert {"pointing_game", "mass_in_mask", "deletion_auc", "insertion_auc"} <= set(rows[0])
    table = metrics.format_table(rows)
    assert table.count("\n") == 3 and "| gradcam |" in table


def test_bad_maps_shape(cnn, x):
    with pytest.raises(ValueError, match="must be \\(N, H, W\\)"):
        metrics.deletion_curve(cnn, x, np.zeros((4, 8, 8)))


def test_metrics_validate_targets_as_explain_does(cnn, x):
    maps = np.random.default_rng(0).random(x.shape[:3]).astype("float32")
    with pytest.raises(ce.TargetError, match="out of range"):
        metrics.deletion_curve(cnn, x, maps, target=7, steps=4)
    with pytest.raises(ce.TargetError, match="several classes per image"):
        metrics.insertion_curve(cnn, x, maps, target="top2", steps=4)
    with pytest.raises(ce.TargetError, match="out of range"):
        metrics.randomisation_check(cnn, x, "saliency", target=-3)
    per_image = metrics.deletion_curve(cnn, x, maps, target=[1] * len(x), steps=4)
    np.testing.assert_allclose(per_image.auc, metrics.deletion_curve(cnn, x, maps, target=1, steps=4).auc)
