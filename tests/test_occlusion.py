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
