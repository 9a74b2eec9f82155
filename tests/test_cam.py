"""The CAM family against formulas computed by hand, and on nested models."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed.explanation import upsample_maps
from conftest import images, nested_and_flat, small_cnn


def hand_model():
    """input -> 1x1 conv (known weights, linear) -> GAP -> Dense (known weights, softmax).

    Then A = x @ K, ∂logit_c/∂A_k(i, j) = W[k, c] / (h w), so every CAM has a closed form.
    """
    inp = keras.Input((6, 6, 3))
    conv = keras.layers.Conv2D(4, 1, use_bias=False, name="feat")
    dense = keras.layers.Dense(2, activation="softmax", name="head")
    out = dense(keras.layers.GlobalAveragePooling2D()(conv(inp)))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(1, 1, 3, 4)).astype(np.float32)
    weights = rng.normal(size=(4, 2)).astype(np.float32)
    conv.set_weights([kernel])
    dense.set_weights([weights, np.zeros(2, np.float32)])
    return model, kernel[0, 0], weights


def test_gradcam_equals_hand_formula():
    model, kernel, weights = hand_model()
    x = images(3, 6)
    exp = ce.explain(model, x, "gradcam", target=1)
    acts = x @ kernel  # (n, 6, 6, 4)
    alpha = weights[:, 1] / 36.0
    cam = (acts * alpha).sum(-1)
    np.testing.assert_allclose(exp.layer_maps, cam, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exp.maps, ce.normalize_maps(np.maximum(cam, 0)), atol=1e-5)
    assert exp.layer == "feat"


def test_layercam_and_gradcampp_equal_hand_formulas():
    model, kernel, weights = hand_model()
    x = images(3, 6)
    acts = x @ kernel
    g = np.broadcast_to(weights[:, 0] / 36.0, acts.shape)
    layer = ce.explain(model, x, "layercam", target=0)
    np.testing.assert_allclose(layer.layer_maps, (np.maximum(g, 0) * acts).sum(-1), rtol=1e-5, atol=1e-7)
    # Grad-CAM++ with a gradient constant over positions: alpha = 1 / (2 + g * sum A)
    alphas = 1.0 / (2.0 + g * acts.sum(axis=(1, 2), keepdims=True))
    alphas = alphas / alphas.sum(axis=(1, 2), keepdims=True)
    w = (alphas * np.maximum(g, 0)).sum(axis=(1, 2))
    pp = ce.explain(model, x, "gradcam++", target=0)
    np.testing.assert_allclose(pp.layer_maps, np.einsum("nhwk,nk->nhw", acts, w), rtol=1e-4, atol=1e-7)


def test_cam_upsampling_is_bilinear_to_input_size(cnn, x):
    exp = ce.explain(cnn, x, "gradcam")
    assert exp.layer_maps.shape == (len(x), 12, 12) and exp.maps.shape == (len(x), 16, 16)
    np.testing.assert_allclose(exp.raw_maps, upsample_maps(np.maximum(exp.layer_maps, 0), (16, 16)), atol=1e-6)
    # half-pixel centres: a map that is a ramp stays a ramp, centred
    ramp = np.tile(np.arange(4, dtype=np.float32), (1, 4, 1))
    up = upsample_maps(ramp, (8, 8))[0, 0]
    np.testing.assert_allclose(up, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "scorecam"])
def test_nested_layer_equals_flat_twin(method):
    nested, flat = nested_and_flat()
    x = images(3)
    a = ce.explain(nested, x, method, layer="base/c2")
    b = ce.explain(flat, x, method, layer="c2")
    np.testing.assert_allclose(nested.predict(x, verbose=0), flat.predict(x, verbose=0), rtol=1e-5)
    np.testing.assert_allclose(a.layer_maps, b.layer_maps, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.maps, b.maps, atol=1e-4)
    # an inner layer that is not the base's output, and the default layer choice
    c = ce.explain(nested, x, method, layer="c1")
    d = ce.explain(flat, x, method, layer="c1")
    np.testing.assert_allclose(c.layer_maps, d.layer_maps, rtol=1e-4, atol=1e-6)
    assert ce.explain(nested, x, method).layer == "base/c2"


def test_layer_given_as_object_and_full_path(cnn, x):
    by_name = ce.explain(cnn, x, "gradcam", layer="c1")
    by_obj = ce.explain(cnn, x, "gradcam", layer=cnn.get_layer("c1"))
    by_root_path = ce.explain(cnn, x, "gradcam", layer="small_cnn/c1")
    np.testing.assert_array_equal(by_name.layer_maps, by_obj.layer_maps)
    np.testing.assert_array_equal(by_name.layer_maps, by_root_path.layer_maps)


def test_different_targets_give_different_cams(cnn, x):
    a = ce.explain(cnn, x, "gradcam", target=0).layer_maps
    b = ce.explain(cnn, x, "gradcam", target=1).layer_maps
    assert np.abs(a - b).max() > 1e-4


def test_scorecam_equals_hand_loop():
    model = small_cnn(size=12)
    x = images(2, 12)
    exp = ce.explain(model, x, "scorecam", layer="c2", target=[2, 0])
    acts_model = keras.Model(model.inputs[0], model.get_layer("c2").output)
    for i, t in enumerate([2, 0]):
        acts = acts_model(x[i : i + 1]).numpy()[0]
        scores = []
        for k in range(acts.shape[-1]):
            m = upsample_maps(acts[None, :, :, k], (12, 12))[0]
            m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m)
            scores.append(model.predict(x[i : i + 1] * m[..., None], verbose=0)[0, t])
        w = np.exp(scores) / np.exp(scores).sum()
        np.testing.assert_allclose(exp.layer_maps[i], (acts * w).sum(-1), rtol=1e-4, atol=1e-6)
    assert exp.params["score"] == "probability"


def test_scorecam_top_channels_by_variance():
    model = small_cnn(size=12)
    x = images(2, 12)
    full = ce.explain(model, x, "scorecam", layer="c2")
    top = ce.explain(model, x, "scorecam", layer="c2", channels=2)
    assert top.extras["channel_scores"].shape == (2, 2)
    assert full.extras["channel_scores"].shape == (2, 5)
    assert not np.allclose(full.layer_maps, top.layer_maps)
    same = ce.explain(model, x, "scorecam", layer="c2", channels=5, batch_size=3)
    np.testing.assert_allclose(same.layer_maps, full.layer_maps, rtol=1e-5, atol=1e-7)
