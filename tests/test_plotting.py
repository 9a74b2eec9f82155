"""Overlays and the explanation grid."""

from __future__ import annotations

import numpy as np
import pytest

import cnn_exposed as ce
from conftest import images


def test_to_uint8_ranges():
    assert ce.to_uint8(np.full((2, 2, 3), 1.0))[0, 0, 0] == 255
    assert ce.to_uint8(np.full((2, 2, 3), 128.0))[0, 0, 0] == 128
    stretched = ce.to_uint8(np.array([[[-1.0] * 3, [1.0] * 3]]))
    assert stretched[0, 0, 0] == 0 and stretched[0, 1, 0] == 255
    assert ce.to_uint8(np.zeros((4, 4))).shape == (4, 4, 3)
    assert ce.to_uint8(np.zeros((4, 4, 4), np.uint8)).shape == (4, 4, 3)


def test_overlay_blends_the_colormap():
    img = np.zeros((8, 8, 3), np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[:, 2:] = 1.0
    over = ce.overlay_heatmap(img, heat, alpha=1.0, colormap="jet")
    assert over.shape == (8, 8, 3) and over.dtype == np.uint8
    # jet: low values blue, high values red (RGB order)
    assert over[0, 0, 2] > 100 and over[0, 0, 0] < 50
    assert over[0, 7, 0] > 100 and over[0, 7, 2] < 50
    full = np.kron(heat, np.ones((2, 2), np.float32))  # already image-sized: no resize
    half = ce.overlay_heatmap(np.full((8, 8, 3), 200, np.uint8), full, alpha=0.5)
    np.testing.assert_allclose(half, np.rint(100 + 0.5 * ce.colorize(full).astype(float)), atol=1)
    with pytest.raises(ValueError, match="Unknown colormap"):
        ce.overlay_heatmap(img, heat, colormap="rainbowz")


def test_grid_of_images_by_methods(cnn, tmp_path):
    x = images(3)
    exps = {m: ce.explain(cnn, x, m) for m in ("saliency", "gradcam")}
    fig = ce.plot_explanations(exps, ["cat", "dog", "pool"], true_labels=[0, 1, 2])
    assert len(fig.axes) == 3 * 3
    titles = [ax.get_title() for ax in fig.axes]
    pred = exps["gradcam"].predictions
    assert titles[0].startswith("true cat\npred " + ["cat", "dog", "pool"][pred[0]])
    assert titles[2].startswith("gradcam\n")
    fig.savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 1000
    ce.save_png(ce.overlay_heatmap(x[0], exps["gradcam"].maps[0]), tmp_path / "o.png")
    import cv2

    assert cv2.imread(str(tmp_path / "o.png")).shape == (16, 16, 3)


def test_signed_maps_keep_the_sign_and_show_sparse_evidence():
    a = np.zeros((1, 20, 20, 3), np.float32)
    a[0, 0, 0] = 100.0  # one hot pixel, as LRP maps often have
    a[0, 5:15, 5:15, 0] = 1.0  # the weaker evidence that a plain max would wash out
    a[0, 18, 2:18, :] = -0.5  # evidence against
    s = ce.signed_maps(a)
    assert s.shape == (1, 20, 20) and s.max() == 1.0 and s.min() < 0
    assert s[0, 10, 10] > 0.3  # still visible: scaled by the 99.5th percentile, not the hot pixel
    assert s[0, 18, 10] < -0.3 and s[0, 2, 10] == 0.0
    np.testing.assert_allclose(ce.signed_maps(-a), -s)


def test_signed_overlay_is_red_for_blue_against_and_gray_where_neutral():
    img = np.full((6, 6, 3), [200, 100, 0], np.uint8)
    value = np.zeros((6, 6), np.float32)
    value[0, 0], value[0, 5] = 1.0, -1.0
    over = ce.overlay_signed(img, value, alpha=1.0)
    assert over[0, 0, 0] > 200 and over[0, 0, 2] < 50  # red
    assert over[0, 5, 2] > 200 and over[0, 5, 0] < 50  # blue
    assert len(set(over[3, 3].tolist())) == 1  # the photo in gray


def test_signed_methods_are_drawn_signed(cnn):
    x = images(2)
    for method, signed in (("gradient_x_input", True), ("integrated_gradients", True), ("lrp", True),
                           ("saliency", False), ("gradcam", False)):  # fmt: skip
        exp = ce.explain(cnn, x, method)
        assert exp.signed is signed, method
        drawn = ce.draw_map(exp, 0)
        expected = (
            ce.overlay_signed(exp.images[0], exp.signed_maps[0])
            if signed
            else ce.overlay_heatmap(exp.images[0], exp.maps[0])
        )
        np.testing.assert_array_equal(drawn, expected)
