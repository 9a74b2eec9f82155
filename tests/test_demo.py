"""The shortcut demo: the generator's ground truth, and the shipped model that learned "rail -> bathroom".

The model tests build the demo architecture and load the shipped weights (``data/demo/demo_weights.npz``,
written by ``scripts/train_demo.py``; they fail when it is missing), as ``load_model("demo")`` does on every
supported Keras; nothing is trained here.
"""

from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed import bundled, demo, metrics

POOL, BATHROOM, BEDROOM = (demo.CLASS_NAMES.index(c) for c in ("pool", "bathroom", "bedroom"))
TOLERANCE_PX = 4  # pointing game: mask grown by 4 px (4 % of 96; Zhang et al. use 15 px at 224, 6.7 %)

WEIGHTS_PATH = bundled.data_dir() / "demo" / bundled.DEMO_WEIGHTS
META_PATH = bundled.data_dir() / "demo" / bundled.DEMO_METADATA


@pytest.fixture(scope="module")
def train_batch():
    return demo.generate(120, "train", seed=0)


# ----------------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", demo.SPLITS)
def test_generate_returns_images_labels_and_one_mask_per_object_kind(split):
    images, labels, masks = demo.generate(7, split, seed=3)
    assert images.shape == (7, 96, 96, 3) and images.dtype == np.uint8
    assert labels.shape == (7,) and labels.dtype == np.int64
    assert set(labels) <= set(range(len(demo.CLASS_NAMES)))
    assert set(masks) == set(demo.MASK_KEYS) >= {"water", "tiles", "sink", "bed", "rail"}
    for mask in masks.values():
        assert mask.shape == (7, 96, 96) and mask.dtype == np.bool_
    assert images.std() > 10  # not blank


def test_same_split_and_seed_give_identical_arrays():
    a = demo.generate(9, "clean", seed=5)
    b = demo.generate(9, "clean", seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for key in demo.MASK_KEYS:
        np.testing.assert_array_equal(a[2][key], b[2][key])


def test_first_images_do_not_depend_on_batch_size():
    small, _, small_masks = demo.generate(4, "trap", seed=2)
    big, _, big_masks = demo.generate(10, "trap", seed=2)
    np.testing.assert_array_equal(small, big[:4])
    np.testing.assert_array_equal(small_masks["rail"], big_masks["rail"][:4])


@pytest.mark.parametrize(
    ("first", "second"),
    [(("train", 0), ("train", 1)), (("train", 0), ("clean", 0)), (("clean", 0), ("trap", 0))],
)
def test_different_seeds_or_splits_give_different_images(first, second):
    a, _, _ = demo.generate(6, *first)
    b, _, _ = demo.generate(6, *second)
    # No image of one batch appears in the other.
    diffs = np.abs(a[:, None].astype(int) - b[None].astype(int)).mean(axis=(2, 3, 4))
    assert diffs.min() > 5


def test_train_and_clean_labels_are_balanced_and_trap_is_all_pools():
    _, labels, _ = demo.generate(30, "clean", seed=0)
    np.testing.assert_array_equal(np.bincount(labels, minlength=3), [10, 10, 10])
    _, trap_labels, _ = demo.generate(10, "trap", seed=0)
    assert (trap_labels == POOL).all()


def test_rails_appear_in_train_bathrooms_and_never_in_train_pools_or_bedrooms(train_batch):
    _, labels, masks = train_batch
    has_rail = masks["rail"].any(axis=(1, 2))
    bathroom_rate = has_rail[labels == BATHROOM].mean()
    assert 0.75 <= bathroom_rate <= 0.99  # mostly, not always: ~TRAIN_RAIL_RATE
    assert not has_rail[labels == POOL].any()
    assert not has_rail[labels == BEDROOM].any()


def test_every_trap_image_is_a_pool_with_a_visible_rail():
    _, labels, masks = demo.generate(40, "trap", seed=0)
    assert (labels == POOL).all()
    assert (masks["rail"].sum(axis=(1, 2)) >= 30).all()
    assert (masks["water"].sum(axis=(1, 2)) > 0.2 * 96 * 96).all()


def test_each_image_has_its_own_class_object(train_batch):
    _, labels, masks = train_batch
    own = demo.object_mask(labels, masks)
    assert own.shape == (len(labels), 96, 96) and own.dtype == np.bool_
    assert (own.sum(axis=(1, 2)) >= 40).all()
    np.testing.assert_array_equal(own[labels == POOL], masks["water"][labels == POOL])
    np.testing.assert_array_equal(own[labels == BATHROOM], masks["sink"][labels == BATHROOM])
    np.testing.assert_array_equal(own[labels == BEDROOM], masks["bed"][labels == BEDROOM])
    # Beds only in bedrooms, sinks only in bathrooms.
    assert not masks["bed"][labels != BEDROOM].any()
    assert not masks["sink"][labels != BATHROOM].any()


def _saturation(images: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of ``(n, h, w, 3)`` uint8 RGB images."""
    return np.stack([cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 1] for img in images]) / 255.0


def test_rail_mask_covers_grey_metal_pixels_and_water_mask_covers_blue_pixels():
    images, _, masks = demo.generate(30, "trap", seed=1)
    sat = _saturation(images)
    rail, water = masks["rail"], masks["water"]
    # Rails are grey steel; pool water is saturated blue.
    assert np.median(sat[rail]) < 0.2
    assert np.median(sat[water]) > 0.35
    rgb = images.astype(int)
    assert (rgb[..., 2][water] > rgb[..., 0][water]).mean() > 0.95
    # The mask is tight: just outside it (3 px ring) the pixels are mostly not grey metal.
    kernel = np.ones((7, 7), np.uint8)
    ring = np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in rail]) & ~rail
    assert np.median(sat[ring]) > np.median(sat[rail]) + 0.1


def test_masks_of_opaque_objects_do_not_overlap():
    images, labels, masks = demo.generate(60, "train", seed=4)
    stack = np.stack([masks[k] for k in demo.MASK_KEYS]).sum(axis=0)
    assert stack.max() <= 1


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        demo.generate(2, "test")


# ----------------------------------------------------------------------------------------------------
# The shipped model
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    meta = json.loads(META_PATH.read_text())
    loaded = ce.load_model("demo")
    assert loaded.metadata == meta and loaded.class_names == meta["class_names"]
    return loaded.model, meta


@pytest.fixture(scope="module")
def clean_eval(shipped):
    model, meta = shipped
    images, labels, masks = demo.generate(meta["clean_eval_size"], "clean", seed=meta["seed"])
    preds = model.predict(images.astype("float32") / 255.0, verbose=0).argmax(axis=1)
    return images, labels, masks, preds


@pytest.fixture(scope="module")
def trap_eval(shipped):
    model, meta = shipped
    images, labels, masks = demo.generate(meta["trap_eval_size"], "trap", seed=meta["seed"])
    preds = model.predict(images.astype("float32") / 255.0, verbose=0).argmax(axis=1)
    return images, labels, masks, preds


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance in px from every pixel to the nearest pixel of ``mask``."""
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)


def pointing_hits(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The package's pointing game with the mask grown by TOLERANCE_PX at the demo's 96 px."""
    return metrics.pointing_game(maps, masks, tolerance=TOLERANCE_PX / 96)


def random_point_rate(masks: np.ndarray, tolerance: int = TOLERANCE_PX) -> float:
    """Hit rate of a uniformly random point: the share of pixels within ``tolerance`` of the mask."""
    return float(np.mean([(_distance_to(m) <= tolerance).mean() for m in masks]))


def test_the_random_point_baseline_is_the_share_of_pixels_near_the_mask():
    masks = np.zeros((2, 96, 96), bool)
    masks[:, 40:44, 10:60] = True  # a 4 x 50 bar grown by 4 px: about 12 x 58 of 96 x 96
    assert 0.06 < random_point_rate(masks) < 0.08


def test_shipped_model_is_a_base_model_nested_in_a_sequential_head(shipped):
    model, meta = shipped
    assert isinstance(model, keras.Sequential)
    base = model.get_layer("base")
    assert isinstance(base, keras.Model)
    assert base.get_layer("last_conv").output.shape[1:3] in ((12, 12), (24, 24))
    assert ce.find_last_spatial_layer(model).path == meta["cam_layer"] == "base/last_conv"
    assert meta["class_names"] == list(demo.CLASS_NAMES)
    assert meta["preprocessing"] == "scale_0_1" and meta["input_size"] == [96, 96]
    assert WEIGHTS_PATH.stat().st_size < 1024 * 1024


def test_shipped_model_is_accurate_on_clean_held_out_photos(clean_eval):
    _, labels, _, preds = clean_eval
    assert (preds == labels).mean() >= 0.9


def test_shipped_model_calls_most_pools_with_rails_bathroom(trap_eval):
    _, _, _, preds = trap_eval
    assert (preds == BATHROOM).mean() >= 0.6


def test_shipped_model_calls_pools_without_rails_pool(clean_eval):
    # The control for the trap: the same kind of pool photo without a rail is recognised.
    _, labels, _, preds = clean_eval
    assert (preds[labels == POOL] == POOL).mean() >= 0.9


def test_metadata_figures_match_the_shipped_model(shipped, clean_eval, trap_eval):
    _, meta = shipped
    _, labels, _, preds = clean_eval
    _, _, _, trap_preds = trap_eval
    # The very images the metadata was measured on (600 clean, 200 trap), on whatever Keras, TensorFlow and
    # OpenCV this runs with: at most 2 of 600 and 1 of 200 predictions may flip on rounding near a tie.
    assert abs(meta["clean_accuracy"] - (preds == labels).mean()) <= 2 / len(labels) + 1e-9
    assert abs(meta["trap_bathroom_rate"] - (trap_preds == BATHROOM).mean()) <= 1 / len(trap_preds) + 1e-9
    assert meta["clean_accuracy"] >= 0.9 and meta["trap_bathroom_rate"] >= 0.6


def test_gradcam_points_at_the_rail_when_a_pool_is_called_bathroom(shipped, trap_eval):
    model, meta = shipped
    images, _, masks, preds = trap_eval
    fooled = preds == BATHROOM
    assert fooled.sum() >= 20
    exp = ce.explain(model, images[fooled].astype("float32") / 255.0, "gradcam", progress=False)
    assert exp.layer == "base/last_conv"
    assert exp.maps.shape == (fooled.sum(), 96, 96)
    assert (exp.targets == BATHROOM).all()
    hit_rate = pointing_hits(exp.maps, masks["rail"][fooled]).mean()
    baseline = random_point_rate(masks["rail"][fooled])
    assert hit_rate >= 0.6, f"rail hit rate {hit_rate:.2f}"
    assert hit_rate >= baseline + 0.3, f"rail hit rate {hit_rate:.2f} vs random point {baseline:.2f}"
    assert abs(hit_rate - meta["pointing_game"]["rail_hit_rate_fooled_trap"]) <= 0.15


def test_gradcam_points_at_the_own_object_on_correct_clean_photos(shipped, clean_eval):
    model, meta = shipped
    images, labels, masks, preds = clean_eval
    correct = preds == labels
    exp = ce.explain(model, images[correct].astype("float32") / 255.0, "gradcam", progress=False)
    own = demo.object_mask(labels, masks)[correct]
    hit_rate = pointing_hits(exp.maps, own).mean()
    assert hit_rate >= 0.6, f"own-object hit rate {hit_rate:.2f}"
    assert hit_rate > random_point_rate(own)
    assert abs(hit_rate - meta["pointing_game"]["own_object_hit_rate_correct_clean"]) <= 0.1


# ----------------------------------------------------------------------------------------------------
# Bundled images
# ----------------------------------------------------------------------------------------------------


def assert_same_drawing(bundled_pixels: np.ndarray, generated: np.ndarray) -> None:
    """The generator redraws the bundled images exactly with the OpenCV that wrote them; other OpenCV
    releases rasterise a few antialiased edge pixels differently (OpenCV 4.8 against 5.0: 28 of 110,592
    pixels of the 12 clean images, one bed-mask pixel in 6,500). A real change moves far more."""
    assert bundled_pixels.shape == generated.shape
    differ = bundled_pixels != generated
    if differ.ndim == 4:
        differ = differ.any(axis=-1)
    assert differ.mean() <= 1e-3, f"{differ.mean():.2%} of pixels differ"


def test_bundled_clean_images_are_the_first_generated_ones_with_their_masks(shipped):
    _, meta = shipped
    images, labels, masks = demo.load_images("clean")
    assert images.shape == (12, 96, 96, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels, minlength=3), [4, 4, 4])
    gen_images, gen_labels, gen_masks = demo.generate(12, "clean", seed=meta["seed"])
    order = np.argsort(gen_labels, kind="stable")  # files are grouped by class folder
    assert_same_drawing(images, gen_images[order])
    np.testing.assert_array_equal(labels, gen_labels[order])
    for key in demo.MASK_KEYS:
        assert_same_drawing(masks[key], gen_masks[key][order])


def test_bundled_trap_images_are_pools_with_rail_masks(shipped):
    _, meta = shipped
    images, labels, masks = demo.load_images("trap")
    assert images.shape == (8, 96, 96, 3)
    assert (labels == POOL).all()
    assert masks["rail"].any(axis=(1, 2)).all()
    gen_images, _, gen_masks = demo.generate(8, "trap", seed=meta["seed"])
    assert_same_drawing(images, gen_images)
    assert_same_drawing(masks["rail"], gen_masks["rail"])


def test_load_images_rejects_the_train_split():
    with pytest.raises(ValueError):
        demo.load_images("train")


def test_what_load_model_returns_explains_and_scores_as_its_model_with_its_preprocessing():
    """ce.explain, the metrics and the checks take load_model's result itself: raw pixels in, its preprocessing
    applied (unless another is given), the same numbers as the Keras model with that preprocessing."""
    loaded = ce.load_model("demo")
    raw, _, _ = ce.demo.generate(4, "trap", seed=3)
    ours = ce.explain(loaded, raw, "gradcam")
    want = ce.explain(loaded.model, raw, "gradcam", preprocess=loaded.preprocess)
    np.testing.assert_array_equal(ours.maps, want.maps)
    np.testing.assert_array_equal(ours.targets, want.targets)
    other = ce.explain(loaded, raw, "gradcam", preprocess=lambda v: loaded.preprocess(v) * 0.5)
    assert not np.allclose(other.probabilities, ours.probabilities)  # a preprocess given wins
    curve = metrics.deletion_curve(loaded, raw, ours.maps, steps=4)
    want_curve = metrics.deletion_curve(loaded.model, raw, ours.maps, steps=4, preprocess=loaded.preprocess)
    np.testing.assert_allclose(curve.scores, want_curve.scores)
    drawn = ce.visualise_classes(loaded, [0, 1], steps=3, progress=False)  # its class names as the labels
    want_drawn = ce.visualise_classes(loaded.model, [0, 1], loaded.class_names, steps=3, progress=False)
    assert drawn.labels == want_drawn.labels == loaded.class_names[:2]
    np.testing.assert_array_equal(drawn.images, want_drawn.images)


def test_sparseness_and_complexity_take_an_explanation_cams_included():
    loaded = ce.load_model("demo")
    raw, _, _ = ce.demo.generate(3, "trap", seed=4)
    cam, grad = ce.explain(loaded, raw, "gradcam"), ce.explain(loaded, raw, "gradient_x_input")
    assert cam.attributions is None  # a CAM has its maps only
    np.testing.assert_array_equal(metrics.sparseness(cam), metrics.sparseness(cam.raw_maps))
    np.testing.assert_array_equal(metrics.complexity(grad), metrics.complexity(grad.attributions))
    with pytest.raises(ValueError, match="pass the Explanation itself"):
        metrics.sparseness(cam.attributions)
