"""The faithfulness metrics against their definitions, on models whose true attribution is known."""

import keras
import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed import metrics
from cnn_exposed.attribution import Result
from cnn_exposed.faithfulness import noisy_linear_imputation

SIZE = 8


def linear_model(weights: np.ndarray) -> keras.Model:
    """Class 0's logit is ``Σ weights · x``, class 1's is 0 (a softmax head): gradient × input is its exact
    attribution, and hiding a set S (setting it to 0) lowers the logit by exactly the attribution's sum over S."""
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(2, use_bias=False, activation="softmax"),
        ]
    )
    kernel = np.zeros((SIZE * SIZE * 3, 2), np.float32)
    kernel[:, 0] = weights.reshape(-1)
    model.layers[-1].set_weights([kernel])
    return model


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.05, (SIZE, SIZE, 3)).astype(np.float32)
    x = rng.uniform(0, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
    return linear_model(weights), x, weights * x  # the model, images, their exact attributions


@pytest.fixture(scope="module")
def left_half():
    """A model that reads only the left half of the image: a checkerboard detector there. The images carry the
    checkerboard on their left half, so class 0 wins; any fill of those pixels (ROAD's smooth imputation, IROF's
    mean colour, a black map) takes the evidence away. Maps: ``left`` (1 on that half, 0 elsewhere, ranked by
    position within it), ``right`` its mirror."""
    rng = np.random.default_rng(1)
    checker = np.indices((SIZE, SIZE)).sum(0) % 2 * 2.0 - 1.0
    weights = np.zeros((SIZE, SIZE, 3), np.float32)
    weights[:, : SIZE // 2] = 0.08 * checker[:, : SIZE // 2, None]
    x = 0.5 + rng.uniform(-0.05, 0.05, (3, SIZE, SIZE, 3))
    x[:, :, : SIZE // 2] += 0.3 * checker[:, : SIZE // 2, None]
    left = np.zeros((3, SIZE, SIZE), np.float32)
    left[:, :, : SIZE // 2] = 1.0
    return linear_model(weights), x.astype(np.float32), left, left[:, :, ::-1].copy()


def test_faithfulness_correlation_is_one_for_the_exact_attribution(linear):
    model, x, exact = linear
    run = dict(baseline="zeros", runs=30, subset_size=20, target=0)
    np.testing.assert_allclose(metrics.faithfulness_correlation(model, x, exact, **run), 1.0, atol=1e-5)
    np.testing.assert_allclose(metrics.faithfulness_correlation(model, x, -exact, **run), -1.0, atol=1e-5)
    noise = np.random.default_rng(5).normal(size=exact.shape).astype(np.float32)
    assert np.abs(metrics.faithfulness_correlation(model, x, noise, **run)).mean() < 0.5
    # Spearman too; and maps (N, H, W) hide whole pixels: the channel sum is then exact
    np.testing.assert_allclose(
        metrics.faithfulness_correlation(model, x, exact.sum(-1), correlation="spearman", **run), 1.0, atol=1e-5
    )


def test_faithfulness_correlation_does_not_depend_on_the_batch_size(linear):
    model, x, exact = linear
    noise = np.random.default_rng(6).normal(size=exact.shape).astype(np.float32)
    run = dict(runs=10, subset_size=30, target=0)
    whole = metrics.faithfulness_correlation(model, x, noise, batch_size=4, **run)
    np.testing.assert_allclose(metrics.faithfulness_correlation(model, x, noise, batch_size=3, **run), whole, atol=1e-6)
    assert not np.allclose(whole, metrics.faithfulness_correlation(model, x, noise, seed=1, **run))


def test_mu_fidelity_is_one_for_the_exact_attribution(linear):
    model, x, exact = linear
    np.testing.assert_allclose(metrics.mu_fidelity(model, x, exact, grid=4, samples=40, target=0), 1.0, atol=1e-6)
    upside_down = metrics.mu_fidelity(model, x, exact[:, ::-1], grid=4, samples=40, target=0)
    assert upside_down.mean() < 0.5


def test_average_drop_and_increase_in_confidence_by_hand(left_half):
    model, x, left, right = left_half
    probs = model.predict(x, verbose=0)[:, 0]
    # the map keeps the half the model reads: the same logits, no drop, no increase
    np.testing.assert_allclose(metrics.average_drop(model, x, left, target=0), 0.0, atol=1e-4)
    np.testing.assert_array_equal(metrics.increase_in_confidence(model, x, left, target=0), 0.0)
    # the other half: class 0's logit becomes 0, its probability 0.5
    expected = 100 * np.maximum(0, probs - 0.5) / probs
    np.testing.assert_allclose(metrics.average_drop(model, x, right, target=0), expected, rtol=1e-4)
    assert expected.min() > 10


def test_road_imputation_is_the_neighbours_weighted_mean():
    rng = np.random.default_rng(2)
    r, c = np.mgrid[0:12, 0:10]
    ramp = np.stack([0.3 * r + 0.1 * c, -0.2 * r + 0.5 * c, 0 * r + 1.0], -1).astype(np.float32)
    hidden = np.zeros((12, 10), bool)
    hidden[3:8, 2:7] = True
    hidden[5, 8] = True
    filled = noisy_linear_imputation(ramp, hidden, 0.0, rng)
    np.testing.assert_allclose(filled, ramp, atol=1e-4)  # a linear ramp inside the image is its own mean
    image = rng.uniform(0, 1, (12, 10, 3)).astype(np.float32)
    hidden[0, 0] = hidden[11, 4] = True  # a corner and an edge: only the neighbours inside count
    filled = noisy_linear_imputation(image, hidden, 0.0, rng)
    np.testing.assert_array_equal(filled[~hidden], image[~hidden])
    padded = np.pad(filled.astype(np.float64), ((1, 1), (1, 1), (0, 0)))
    inside = np.pad(np.ones((12, 10)), 1)
    for rr, cc in zip(*np.nonzero(hidden)):
        total, weight = 0.0, 0.0
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if (dr, dc) != (0, 0):
                    w = (1 / 6 if dr == 0 or dc == 0 else 1 / 12) * inside[rr + 1 + dr, cc + 1 + dc]
                    total, weight = total + w * padded[rr + 1 + dr, cc + 1 + dc], weight + w
        np.testing.assert_allclose(filled[rr, cc], total / weight, atol=1e-5)
    noisy = noisy_linear_imputation(image, hidden, 0.5, np.random.default_rng(3))
    assert 0.3 < np.std(noisy[hidden] - filled[hidden]) < 0.7


def test_road_ranks_the_map_of_the_half_the_model_reads_first(left_half):
    model, x, left, right = left_half
    good = metrics.road(model, x, left, target=0, noise=0.0, percentages=(25, 50))
    bad = metrics.road(model, x, right, target=0, noise=0.0, percentages=(25, 50))
    assert good.fractions.tolist() == [0.0, 0.25, 0.5] and good.mode == "road-morf"
    np.testing.assert_allclose(good.scores[:, 0], model.predict(x, verbose=0)[:, 0], rtol=1e-5)
    assert (good.auc < bad.auc).all()  # removing the read half first makes the score fall first
    lerf = metrics.road(model, x, left, order="lerf", target=0, noise=0.0, percentages=(25, 50))
    np.testing.assert_allclose(lerf.scores, bad.scores, rtol=1e-5)  # least relevant first = the mirror map
    assert good.kept.shape == (3, 3) and good.kept[:, 0].all()


def test_irof_is_zero_when_the_score_never_moves_and_prefers_the_read_half(left_half):
    model, x, left, right = left_half
    options = dict(segment_options={"n_segments": 8, "compactness": 10.0, "sigma": 0.0})
    flat = linear_model(np.zeros((SIZE, SIZE, 3), np.float32))  # its probabilities never move
    np.testing.assert_allclose(metrics.irof(flat, x, left, **options), 0.0, atol=1e-6)
    good, bad = metrics.irof(model, x, left, target=0, **options), metrics.irof(model, x, right, target=0, **options)
    assert (good > bad).all()


def two_class_model(w0: np.ndarray, w1: np.ndarray) -> keras.Model:
    model = linear_model(w0)
    kernel = model.layers[-1].get_weights()[0]
    kernel[:, 1] = w1.reshape(-1)
    model.layers[-1].set_weights([kernel])
    return model


def test_sensitivity_is_zero_for_a_constant_gradient_and_scales_with_the_radius(linear):
    model, x, _ = linear
    np.testing.assert_allclose(metrics.max_sensitivity(model, x, "saliency", samples=3, target=0), 0.0, atol=1e-6)
    no_gradient = metrics.max_sensitivity(model, x, "saliency", samples=2, target=1)  # class 1's logit is 0
    assert np.isnan(no_gradient).all()
    run = dict(samples=4, target=0)
    big = metrics.max_sensitivity(model, x, "gradient_x_input", radius=0.2, **run)
    small = metrics.max_sensitivity(model, x, "gradient_x_input", radius=0.1, **run)
    np.testing.assert_allclose(big, 2 * small, rtol=1e-4)  # a − a′ = w · noise: linear in the radius
    mean = metrics.average_sensitivity(model, x, "gradient_x_input", radius=0.2, **run)
    assert (mean <= big + 1e-7).all() and (mean < big).any() and (mean > 0).all()
    np.testing.assert_allclose(
        metrics.max_sensitivity(model, x, "gradient_x_input", radius=0.2, batch_size=3, **run), big, rtol=1e-5
    )


def test_random_logit_is_one_when_the_classes_share_their_evidence(linear):
    _, x, _ = linear
    w = np.random.default_rng(7).normal(0, 0.05, (SIZE, SIZE, 3)).astype(np.float32)
    same = two_class_model(w, 2 * w)  # class 1's gradient is twice class 0's: the same normalised map
    np.testing.assert_allclose(metrics.random_logit(same, x, "saliency"), 1.0, atol=1e-5)
    np.testing.assert_allclose(metrics.random_logit(same, x, "saliency", similarity="spearman"), 1.0, atol=1e-6)
    halves = np.zeros_like(w), np.zeros_like(w)
    halves[0][:, : SIZE // 2], halves[1][:, SIZE // 2 :] = w[:, : SIZE // 2], w[:, SIZE // 2 :]
    apart = two_class_model(*halves)  # each class reads its own half
    assert metrics.random_logit(apart, x, "saliency").max() < 0.5
    with pytest.raises(ValueError, match="similarity must be one of"):
        metrics.random_logit(same, x, "saliency", similarity="pearson")


class _Fixed(ce.AttributionMethod):
    """The same map whatever the model: no randomisation can change it."""

    name = "fixed"

    def compute(self, x, targets, images) -> Result:
        targets, scores, probs = self.resolve(x, targets)
        maps = np.broadcast_to(np.linspace(0.0, 1.0, x.shape[1] * x.shape[2]).reshape(x.shape[1:3]), x.shape[:3])
        return Result(np.ascontiguousarray(maps, np.float32), targets, scores, probs)


def test_efficient_mprt_against_its_definition(linear):
    from scipy.stats import entropy

    model, x, _ = linear
    np.testing.assert_array_equal(metrics.efficient_mprt(model, x, _Fixed), 0.0)
    check = metrics.randomisation_check(model, x, "saliency", final_only=True, target=0)
    before = np.array([entropy(np.histogram(m, bins=100)[0]) for m in check.maps[0]])
    after = np.array([entropy(np.histogram(m, bins=100)[0]) for m in check.maps[-1]])
    np.testing.assert_allclose(metrics.efficient_mprt(model, x, "saliency", target=0), (after - before) / before,
                               rtol=1e-9)  # fmt: skip
    assert len(check.layers) == 1 and not metrics.randomisation_check(model, x, _Fixed).passed


def test_smooth_mprt_averages_noisy_copies(linear):
    model, x, _ = linear
    plain = metrics.randomisation_check(model, x, "gradient_x_input", target=0)
    np.testing.assert_array_equal(metrics.randomisation_check(model, x, "gradient_x_input", target=0, smooth=1).maps,
                                  plain.maps)  # fmt: skip
    smoothed = metrics.randomisation_check(model, x, "gradient_x_input", target=0, smooth=4)
    assert np.abs(smoothed.maps - plain.maps).max() > 1e-3  # gradient x input moves with the noise
    # the gradient of a linear logit does not: saliency's smoothed maps are its plain ones
    np.testing.assert_allclose(metrics.randomisation_check(model, x, "saliency", target=0, smooth=4).maps,
                               metrics.randomisation_check(model, x, "saliency", target=0).maps, atol=1e-6)  # fmt: skip
