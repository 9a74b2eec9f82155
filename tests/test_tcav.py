"""TCAV: concept activation vectors and their test against random concepts (Kim et al. 2018)."""

from __future__ import annotations

import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed.tcav import concept_layer, outlier_p_value, random_crops, tcav


def _rail_crops(images, rails, pad=3):
    """The rails' bounding boxes (from the generator's masks), grown by ``pad`` px, at the image size."""
    out = []
    for img, mask in zip(images, rails):
        ys, xs = np.nonzero(mask)
        y0, y1 = max(0, ys.min() - pad), min(img.shape[0], ys.max() + pad + 1)
        x0, x1 = max(0, xs.min() - pad), min(img.shape[1], xs.max() + pad + 1)
        out.append(ce.images.resize_image(img[y0:y1, x0:x1], img.shape[:2]))
    return np.stack(out)


@pytest.fixture(scope="module")
def scenes():
    loaded = ce.load_model("demo")
    clean, labels, masks = ce.demo.generate(120, "clean", seed=7)
    trap, _, trap_masks = ce.demo.generate(60, "trap", seed=7)
    return loaded, clean, labels, masks, _rail_crops(trap, trap_masks["rail"])


def test_rails_drive_bathroom_and_not_pool(scenes):
    loaded, clean, labels, masks, rails = scenes
    pool_class, bathroom = loaded.class_names.index("pool"), loaded.class_names.index("bathroom")
    randoms = random_crops(clean, 100, seed=3)
    up = tcav(loaded.model, None, rails, clean[labels == bathroom], bathroom, random_images=randoms,
              preprocess=loaded.preprocess)  # fmt: skip
    assert up.significant and up.score >= 0.8 and up.derivative > np.percentile(up.random_derivatives, 90)
    assert up.layer == "base/conv3_relu"  # not the last spatial layer (see concept_layer)
    assert up.scores.shape == up.random_scores.shape == (20,)
    down = tcav(loaded.model, None, rails, clean[labels == pool_class], pool_class, random_images=randoms,
                preprocess=loaded.preprocess)  # fmt: skip
    assert down.score <= 0.2 and down.derivative < np.median(down.random_derivatives)  # rails argue against pool


def test_a_concept_drawn_from_the_random_pool_is_not_significant(scenes):
    loaded, clean, labels, _, _ = scenes
    bathroom = loaded.class_names.index("bathroom")
    pool = random_crops(clean, 160, seed=3)
    verdicts = []
    for k in range(3):  # three such concepts, three seeds: the test must hold its level, not get lucky once
        fake = tcav(loaded.model, None, pool[k * 20 : (k + 1) * 20], clean[labels == bathroom], bathroom,
                    random_images=pool, preprocess=loaded.preprocess, seed=k)  # fmt: skip
        verdicts.append(fake.p_value)
    assert min(verdicts) > 0.05, verdicts


def test_the_prediction_interval_p_value_matches_students_t():
    from scipy import stats

    rng = np.random.default_rng(0)
    null = rng.normal(0.1, 0.3, size=20)
    for value in (0.1, 0.5, -0.9, 1.7):
        t = (value - null.mean()) / (null.std(ddof=1) * np.sqrt(1 + 1 / len(null)))
        assert outlier_p_value(value, null) == pytest.approx(2 * stats.t.sf(abs(t), len(null) - 1), rel=1e-9)
    assert outlier_p_value(0.5, np.full(5, 0.5)) == 1.0 and outlier_p_value(0.6, np.full(5, 0.5)) == 0.0


def test_the_default_layer_is_before_the_last_convolution():
    import keras

    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(4, 3, name="c1")(inp)
    h = keras.layers.ReLU(name="r1")(h)
    h = keras.layers.Conv2D(4, 3, name="c2")(h)
    h = keras.layers.ReLU(name="r2")(h)
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    assert concept_layer(keras.Model(inp, out)).path == "r1"


def test_tcav_says_what_is_missing(scenes):
    loaded, clean, labels, _, rails = scenes
    with pytest.raises(ce.InputError, match="at least 5 concept images"):
        tcav(loaded.model, None, rails[:3], clean[:20], 1, preprocess=loaded.preprocess)
    with pytest.raises(ce.InputError, match="not a class"):
        tcav(loaded.model, None, rails, clean[:20], 7, preprocess=loaded.preprocess)
    with pytest.warns(UserWarning, match="Only 4 target images"):
        tcav(loaded.model, None, rails, clean[:4], 1, preprocess=loaded.preprocess, runs=3)
