"""Occlusion sensitivity against a plain hand loop."""

from __future__ import annotations

import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed.attribution.occlusion import patch_positions
from conftest import small_cnn


def test_patch_positions_cover_the_border():
    assert patch_positions(16, 4, 4).tolist() == [0, 4, 8, 12]
    assert patch_positions(16, 5, 4).tolist() == [0, 4, 8, 11]
    with pytest.raises(ValueError, match="larger than the image"):
        patch_positions(8, 9, 1)


@pytest.mark.parametrize("fill", [0.0, "mean"])
def test_occlusion_equals_hand_loop(cnn, x, fill):
    patch, stride = 5, 3
    exp = ce.explain(cnn, x[:2], "occlusion", target=[1, 2], patch=patch, stride=stride, fill=fill, batch_size=7)
    # the logit is explained: recompute it with a copy of the model whose head has no softmax
    lin = small_cnn(activation=None)
    lin.set_weights(cnn.get_weights())
    for i, t in enumerate([1, 2]):
        base = lin(x[i : i + 1]).numpy()[0, t]
        total = np.zeros((16, 16))
        count = np.zeros((16, 16))
        value = x[i].mean(axis=(0, 1)) if fill == "mean" else fill
        for y0 in patch_positions(16, patch, stride):
            for x0 in patch_positions(16, patch, stride):
                occ = x[i].copy()
                occ[y0 : y0 + patch, x0 : x0 + patch] = value
                total[y0 : y0 + patch, x0 : x0 + patch] += base - lin(occ[None]).numpy()[0, t]
                count[y0 : y0 + patch, x0 : x0 + patch] += 1
        np.testing.assert_allclose(exp.raw_maps[i], total / count, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(exp.maps, ce.normalize_maps(np.maximum(exp.raw_maps, 0)), atol=1e-6)
    assert exp.attributions is None


def test_occlusion_is_batch_size_invariant(cnn, x):
    a = ce.explain(cnn, x, "occlusion", patch=4, stride=4, batch_size=1)
    b = ce.explain(cnn, x, "occlusion", patch=4, stride=4, batch_size=100)
    np.testing.assert_allclose(a.raw_maps, b.raw_maps, rtol=1e-5, atol=1e-6)


def test_one_blur_serves_occlusion_the_curves_and_the_integrated_gradients_baseline(cnn, x):
    """Every "blur" of the package is fill_images': a Gaussian of σ = 1/16 of the longer side."""
    import cv2

    from cnn_exposed.inputs import fill_images

    blurred = fill_images(x, "blur")
    sigma = max(x.shape[1:3]) / 16
    np.testing.assert_allclose(blurred[0], cv2.GaussianBlur(x[0], (0, 0), sigma), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ce.IntegratedGradients(cnn, baseline="blur").baselines(x), blurred)
    # everything deleted: the deletion curve ends at the blurred images' score
    maps = np.random.default_rng(0).random(x.shape[:3]).astype("float32")
    curve = ce.metrics.deletion_curve(cnn, x, maps, target=1, steps=4, fill="blur")
    ends = ce.explain(cnn, blurred, "saliency", target=1, score="probability").scores
    np.testing.assert_allclose(curve.scores[:, -1], ends, rtol=1e-5, atol=1e-7)
    # a patch as large as the image, hidden by the blur: the score drop is the blurred image's
    occ = ce.explain(cnn, x, "occlusion", target=1, patch=x.shape[1], stride=x.shape[1], fill="blur")
    full = ce.explain(cnn, x, "saliency", target=1).scores - ce.explain(cnn, blurred, "saliency", target=1).scores
    np.testing.assert_allclose(occ.raw_maps.max(axis=(1, 2)), full, rtol=1e-4, atol=1e-6)
