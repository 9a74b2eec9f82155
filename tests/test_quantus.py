"""Agreement with Quantus 0.6.0 (Hedström et al. 2023), the field's reference implementation of these metrics,
on the same attributions, masks and images. Quantus is channel-first (``(N, C, H, W)`` images, ``(N, 1, H, W)``
attributions); its base package runs beside our stack without its TensorFlow extra (which pins Keras 2), so it
is installed with a stand-in for its GUI OpenCV requirement (tests/stubs/opencv-python).

Convention differences, written down where they change a number:
- Quantus adds 1e-7 to every value before sparseness (Gini) and 1e-12 inside complexity's logarithm; ours
  take the values as they are (NaN for an all-zero attribution, where Quantus reports about 0).
- Quantus normalises attributions by their largest magnitude over the batch first: these four metrics do not
  see the scale.
- ROAD: Quantus ranks the attribution broadcast to C·H·W values but removes H·W pixels; ours ranks the channel
  sum. The imputation itself is the same linear system (compared here without noise).
- IROF: Quantus reports ``n − Σ trapz(y_k / y_0)`` without the unperturbed point; ours divides the area by the
  segment count and starts the curve at the image itself (see ``cnn_exposed.faithfulness.irof``); Quantus' "mean"
  baseline is recomputed on the already perturbed image at every step, ours is the image's; Quantus 0.6.0's IROF
  refuses RGB images (its mask has one channel) and calls ``np.trapz``, gone in NumPy 2.4.
- ROAD: Quantus removes ``int(H·W·p/100)`` pixels (truncated), ours rounds; Quantus reports only the accuracy
  (is the class still predicted?) per percentage, ours the probabilities too (``Curves.scores``, ``.kept``).
- Max-/average-sensitivity: the noise is the same uniform ±0.2 on images whose values span 1 (ours scales the
  radius by each image's value range); Quantus draws it from NumPy's global state, ours per image from the seed
  and its position. Quantus 0.6.0 compares a given channel-first attribution with the channel-last ones it makes
  for a Keras model (flattened in different orders): only maps without a channel axis compare right there.
- Random logit: Quantus' default similarity is scikit-image's SSIM on the flattened maps (a 7-value window along
  the raster order), ours SSIM on the 2-D maps (Wang et al.'s 11 × 11 Gaussian window); both offer Spearman.
  Quantus draws the other class from ``np.random`` seeded with 42, ours per image from the seed and its position.
- MPRT and its smooth and efficient forms have no agreement test: Quantus 0.6.0's Keras wrapper randomises a
  layer by permuting its weights along their first axis (a convolution kernel's rows) where ours re-initialises
  it with the layer's own initialiser (Adebayo et al.), and it builds the randomised model with ``clone_model``,
  which re-initialises *every* layer: checked here, after "randomising" only the top Dense layer its
  convolution kernel has changed too, so its cascade is fully random from the first step.
"""

import warnings

import numpy as np
import pytest

from cnn_exposed import metrics
from cnn_exposed.faithfulness import noisy_linear_imputation

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import quantus
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (5, 3, 12, 14)).astype(np.float32)
    a = rng.normal(size=(5, 1, 12, 14)).astype(np.float32)
    a[1] = np.abs(a[1])  # one non-negative map
    a[2, 0, 2:8, 3:10] += 5.0  # one that points at the mask
    masks = np.zeros((5, 1, 12, 14), bool)
    masks[:, :, 2:8, 3:10] = True
    masks[4, :, :6] = False  # a smaller mask
    return x, a, masks, np.zeros(5, int)


def _quantus(metric, x, a, y, **batch):
    return np.asarray(metric(disable_warnings=True)(model=None, x_batch=x, y_batch=y, a_batch=a, **batch), float)


def test_sparseness_and_complexity_agree_with_quantus(batch):
    x, a, _, y = batch
    np.testing.assert_allclose(metrics.sparseness(a[:, 0]), _quantus(quantus.Sparseness, x, a, y), atol=1e-5)
    np.testing.assert_allclose(metrics.complexity(a[:, 0]), _quantus(quantus.Complexity, x, a, y), atol=1e-5)


def test_relevance_rank_and_mass_accuracy_agree_with_quantus(batch):
    x, a, masks, y = batch
    rank = _quantus(quantus.RelevanceRankAccuracy, x, a, y, s_batch=masks)
    np.testing.assert_allclose(metrics.relevance_rank_accuracy(a[:, 0], masks[:, 0]), rank, atol=1e-12)
    mass = _quantus(quantus.RelevanceMassAccuracy, x, a, y, s_batch=masks)
    np.testing.assert_allclose(metrics.relevance_mass_accuracy(a[:, 0], masks[:, 0]), mass, rtol=1e-5)
    assert rank[2] == 1.0 and len(set(np.round(mass, 6))) == 5  # the test can tell the maps apart


def test_road_imputation_agrees_with_quantus(batch):
    x, _, _, _ = batch
    rng = np.random.default_rng(1)
    for image in x[:3]:
        hidden = rng.uniform(size=image.shape[1:]) < 0.4
        hidden[0, 0] = hidden[-1, 5] = True  # a corner and an edge
        ours = noisy_linear_imputation(image.transpose(1, 2, 0), hidden, 0.0, rng)
        theirs = quantus_imputation(image, np.flatnonzero(hidden), noise=0.0)
        np.testing.assert_allclose(ours, theirs.reshape(image.shape).transpose(1, 2, 0), atol=1e-5)
        assert np.abs(ours - image.transpose(1, 2, 0)).max() > 0.1  # something was filled


def test_faithfulness_correlation_agrees_with_quantus_where_the_answer_is_known():
    """Class 0's logit is linear, so gradient x input is exact and hiding a subset (to the image's lowest value, 0
    here: Quantus' "black") lowers the logit by its attribution's sum: both must find +1 and -1. Quantus draws its
    subsets from NumPy's global state, so on other attributions the two agree only in distribution."""
    import keras

    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.05, (8, 8, 3)).astype(np.float32)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2, use_bias=False)])
    model.layers[-1].set_weights([np.stack([weights.reshape(-1), np.zeros(192, np.float32)], 1)])
    x = rng.uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
    x[:, 0, 0, 0] = 0.0
    exact = weights * x
    functional = keras.Model(model.inputs, model.outputs)  # Quantus' TensorFlow wrapper reads model.input
    for sign in (1.0, -1.0):
        theirs = quantus.FaithfulnessCorrelation(
            nr_runs=30, subset_size=20, perturb_baseline="black", disable_warnings=True, return_aggregate=False
        )(model=functional, x_batch=x, y_batch=np.zeros(4, int), a_batch=sign * exact.transpose(0, 3, 1, 2),
          channel_first=False)  # fmt: skip
        ours = metrics.faithfulness_correlation(model, x, sign * exact, runs=30, subset_size=20, target=0)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
        np.testing.assert_allclose(ours, sign, atol=1e-5)


def test_irof_agrees_with_quantus_after_converting_its_scale(monkeypatch):
    """Quantus reports ``Q = n − Σ trapz(y_k / y_0)`` over k = 1 … n; ours is the area over the curve that starts at
    the image itself, divided by the segment count: ``ours · n + (1 + y_1) / 2 = Q``, with ``y_1`` the score left
    after the first segment goes. Grayscale: Quantus 0.6.0's IROF asserts that its one-channel mask has the
    image's shape, so it refuses RGB images. The baseline is "black" (each image's lowest value, 0 here, which
    Quantus recomputes on the perturbed image every step: still 0). Quantus calls ``np.trapz``, which NumPy 2.4
    removed; the test hands it ``np.trapezoid``, the same function under its new name."""
    import keras

    from cnn_exposed.segmentation import segment_images

    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3, 16, 16, 1)).astype(np.float32)
    x[:, 0, 0], x[:, -1, -1] = 0.0, 1.0  # in [0, 1] already: our per-image scaling before SLIC changes nothing
    a = rng.normal(size=(3, 16, 16)).astype(np.float32)
    y = model.predict(x, verbose=0).argmax(1)
    theirs = quantus.IROF(perturb_baseline="black", disable_warnings=True, return_aggregate=False)(
        model=keras.Model(model.inputs, model.outputs), x_batch=x, y_batch=y, a_batch=a[:, None], channel_first=False
    )
    slic = {"n_segments": 100, "compactness": 10.0, "sigma": 0.0}  # scikit-image's defaults, which Quantus uses
    ours = metrics.irof(model, x, a, baseline="black", target=y, segment_options=slic)
    labels = segment_images(x, "slic", segment_options=slic)
    n = labels.reshape(3, -1).max(1) + 1
    y0 = model.predict(x, verbose=0)[np.arange(3), y]
    first = []
    for i in range(3):
        means = np.array([a[i][labels[i] == s].mean() for s in range(n[i])])
        hidden = x[i].copy()
        hidden[labels[i] == np.argmax(means)] = 0.0
        first.append(model.predict(hidden[None], verbose=0)[0, y[i]] / y0[i])
    np.testing.assert_allclose(ours * n + (1 + np.array(first)) / 2, theirs, rtol=1e-4)


def _explain_func(method: str, **options):
    """Quantus' ``explain_func``, for grayscale models: it hands over the inputs as the model takes them and wants
    maps ``(N, H, W)`` (a channel axis it lays out channel-first in one place and channel-last in another)."""
    import cnn_exposed as ce

    def explain(model, inputs, targets, **_):
        exp = ce.explain(model, np.asarray(inputs, np.float32), method, target=np.asarray(targets), **options)
        a = exp.attributions if exp.attributions is not None else exp.raw_maps
        return a[..., 0] if a.ndim == 4 else a

    return explain


def _tiny_model(shape, classes: int, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(shape), keras.layers.Conv2D(6, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(classes, activation="softmax")])  # fmt: skip


def test_road_accuracy_curve_agrees_with_quantus():
    """The whole MoRF curve of ROAD's accuracy (is the class still predicted?) without noise. Grayscale, where the
    two rank the same H·W values, and 10 × 10 images, where every percentage is a whole number of pixels (Quantus
    truncates ``H·W·p/100``, ours rounds)."""
    import keras

    model = _tiny_model((10, 10, 1), 3, 1)
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (12, 10, 10, 1)).astype(np.float32)
    a = rng.normal(size=(12, 10, 10)).astype(np.float32)
    y = model.predict(x, verbose=0).argmax(1)
    percentages = [10, 30, 50, 70, 90]
    theirs = quantus.ROAD(percentages=percentages, noise=0.0, disable_warnings=True, return_aggregate=False)(
        model=keras.Model(model.inputs, model.outputs), x_batch=x, y_batch=y, a_batch=a[:, None], channel_first=False
    )
    ours = metrics.road(model, x, a, percentages=percentages, noise=0.0, target=y)
    accuracy = ours.kept.mean(0)
    np.testing.assert_allclose(accuracy[1:], [theirs[p] for p in percentages], atol=1e-12)
    assert accuracy[0] == 1.0 and len(set(accuracy)) >= 3  # the curve moves: the test can tell orders apart


def _our_noise(shape):
    """A Quantus ``perturb_func`` adding the noise our sensitivities draw: uniform ±0.2, per image from seed 0 and
    its position, one draw per call."""
    from cnn_exposed.faithfulness import image_rng

    draws = [image_rng(0, i) for i in range(shape[0])]

    def replay(arr, indices, **_):
        return arr + np.stack([g.uniform(-0.2, 0.2, shape[1:]) for g in draws]).reshape(arr.shape)

    return replay


def test_max_and_average_sensitivity_agree_with_quantus_on_the_same_noise():
    """Quantus draws its noise from NumPy's global state, ours per image from the seed and its position; handed our
    draws (its ``perturb_func``: the same uniform ±0.2 × the image's value range, 1 here, so the same distribution
    as its default), it must find the same relative Frobenius distances, the largest and the mean. Grayscale:
    Quantus 0.6.0 compares a given channel-first attribution with channel-last ones it makes for a Keras model."""
    import keras

    model = _tiny_model((8, 8, 1), 3, 3)
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (3, 8, 8, 1)).astype(np.float32)
    x[:, 0, 0], x[:, -1, -1] = 0.0, 1.0  # each image's value range is 1
    y = model.predict(x, verbose=0).argmax(1)
    explain = _explain_func("saliency")
    for ours_fn, metric in ((metrics.max_sensitivity, quantus.MaxSensitivity),
                            (metrics.average_sensitivity, quantus.AvgSensitivity)):  # fmt: skip
        theirs = metric(nr_samples=6, perturb_func=_our_noise(x.shape), disable_warnings=True, return_aggregate=False)(
            model=keras.Model(model.inputs, model.outputs), x_batch=x, y_batch=y, a_batch=explain(model, x, y)[:, None],
            channel_first=False, explain_func=explain,
        )  # fmt: skip
        ours = ours_fn(model, x, "saliency", samples=6, target=y)
        np.testing.assert_allclose(ours, theirs, rtol=1e-4)
        assert np.all(np.asarray(theirs) > 0.01)  # the maps did move


def test_random_logit_with_spearman_agrees_with_quantus():
    """With two classes the "random other class" is the other one in both; Quantus normalises the maps by their
    largest magnitude first, which Spearman's correlation does not see."""
    import keras
    from quantus.functions.similarity_func import correlation_spearman

    model = _tiny_model((8, 8, 3), 2, 5)
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
    y = model.predict(x, verbose=0).argmax(1)
    explain = _explain_func("gradcam", layer=model.layers[0].name)
    theirs = quantus.RandomLogit(num_classes=2, similarity_func=correlation_spearman, disable_warnings=True)(
        model=keras.Model(model.inputs, model.outputs), x_batch=x, y_batch=y, a_batch=explain(model, x, y)[:, None],
        channel_first=False, explain_func=explain,
    )  # fmt: skip
    ours = metrics.random_logit(model, x, "gradcam", similarity="spearman", layer=model.layers[0].name)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert np.ptp(ours) > 0.05  # the images differ
