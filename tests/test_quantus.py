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
