"""Bad input gets a clear error that says what was wrong and how to fix it."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed.inputs import convert_channels
from conftest import images, nested_and_flat


def test_unknown_layer_lists_candidates():
    nested, _ = nested_and_flat()
    with pytest.raises(ce.LayerNotFoundError) as err:
        ce.explain(nested, images(1), "gradcam", layer="c3")
    msg = str(err.value)
    assert "No layer 'c3'" in msg
    assert "'base/c2'" in msg and "'base/c1'" in msg  # the spatial candidates, as paths
    assert "Did you mean" in msg
    with pytest.raises(ce.LayerNotFoundError, match="'base/c2'"):
        ce.explain(nested, images(1), "gradcam", layer="base/conv2")


def test_ambiguous_name_asks_for_a_path():
    base = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name="conv")], name="base")
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(2, 1, name="conv")(base(inp))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    with pytest.raises(ce.LayerNotFoundError, match="occurs 2 times.*'base/conv'"):
        ce.resolve_layer(model, "conv")
    assert ce.resolve_layer(model, "base/conv").layer is base.get_layer("conv")


def test_model_without_spatial_layer():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    with pytest.raises(ce.NoSpatialLayerError, match="no layer with a 4-D"):
        ce.explain(model, images(1, 8), "gradcam")
    # gradient methods still work on it
    assert ce.explain(model, images(1, 8), "saliency").maps.shape == (1, 8, 8)


def test_non_spatial_layer_for_cam(cnn):
    with pytest.raises(ce.NoSpatialLayerError, match="'gap'.*4-D.*'c2'"):
        ce.explain(cnn, images(1), "gradcam", layer="gap")


@pytest.mark.parametrize(
    "target, match",
    [
        (3, "out of range.*3 classes"),
        (-1, "out of range"),
        ([0, 1], "one class index per image"),
        ("top9", "asks for 9 classes"),
        ("best", "Unknown target"),
        (1.5, "integer"),
    ],
)
def test_bad_targets(cnn, target, match):
    with pytest.raises(ce.TargetError, match=match):
        ce.explain(cnn, images(3), "saliency", target=target)


def test_bad_images(cnn):
    with pytest.raises(ce.InputError, match=r"\(N, height, width, channels\).*\(16, 16\).*channel axis"):
        ce.explain(cnn, np.zeros((16, 16)), "saliency")
    with pytest.raises(ce.InputError, match="16x16 pixels but got 20x20.*Resize"):
        ce.explain(cnn, np.zeros((2, 20, 20, 3)), "saliency")
    with pytest.raises(ce.InputError, match="3 channels but the images have 2"):
        ce.explain(cnn, np.zeros((2, 16, 16, 2)), "saliency")  # gray + alpha: no conversion is obvious
    bad = images(3)
    bad[1, 2, 3, 0] = np.nan
    with pytest.raises(ce.InputError, match=r"1 NaN or infinite values \(in image\(s\) \[1\]\)"):
        ce.explain(cnn, bad, "gradcam")
    with pytest.raises(ce.InputError, match="empty"):
        ce.explain(cnn, np.zeros((0, 16, 16, 3)), "saliency")


def test_unknown_method_and_options(cnn):
    with pytest.raises(ValueError, match=r"Unknown attribution method 'gradcam\+'.*gradcam\+\+"):
        ce.explain(cnn, images(1), "gradcam+")
    with pytest.raises(ValueError, match="does not use a layer"):
        ce.explain(cnn, images(1), "saliency", layer="c2")
    with pytest.raises(ValueError, match="score must be one of"):
        ce.explain(cnn, images(1), "saliency", score="margin")
    with pytest.raises(TypeError, match="steps"):
        ce.explain(cnn, images(1), "gradcam", steps=3)


def test_not_a_model():
    with pytest.raises(ce.ModelError, match="Expected a keras.Model"):
        ce.explain(lambda x: x, images(1), "saliency")


def test_multi_output_model():
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Flatten()(inp)
    model = keras.Model(inp, [keras.layers.Dense(2)(h), keras.layers.Dense(3)(h)])
    with pytest.raises(ce.ModelError, match="output"):
        ce.explain(model, images(1, 8), "saliency")


def gray_cnn():
    keras.utils.set_random_seed(2)
    inp = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inp)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inp, out)


def test_rgb_photos_for_a_grayscale_model_are_converted_to_gray_and_said_so():
    model = gray_cnn()
    rgb = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    gray = np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    prep = lambda im: np.asarray(im, np.float32) / 255.0  # noqa: E731
    with pytest.warns(UserWarning, match="1-channel images and these have 3: converted to gray"):
        exp = ce.explain(model, rgb, "gradcam", preprocess=prep)
    expected = ce.explain(model, gray.astype(np.uint8), "gradcam", preprocess=prep)
    np.testing.assert_allclose(exp.maps, expected.maps, rtol=1e-5, atol=1e-6)
    assert exp.images.shape == (3, 16, 16, 3)  # heatmaps are drawn over the photos as given
    np.testing.assert_array_equal(convert_channels(rgb[:1], 1), gray[:1].astype(np.uint8))


def test_gray_images_for_an_rgb_model_are_repeated_into_rgb(cnn):
    gray = images(2)[..., :1]
    with pytest.warns(UserWarning, match="3-channel images and these have 1: converted to RGB"):
        exp = ce.explain(cnn, gray, "saliency")
    np.testing.assert_allclose(exp.attributions, ce.explain(cnn, np.repeat(gray, 3, -1), "saliency").attributions)
    rgba = np.concatenate([images(2), np.ones((2, 16, 16, 1), np.float32)], axis=-1)
    with pytest.warns(UserWarning, match="converted to RGB"):
        ce.explain(cnn, rgba, "saliency")


def test_every_exception_the_package_defines_lives_in_errors_and_is_a_cnn_exposed_error():
    import importlib
    import inspect
    import pkgutil

    import cnn_exposed
    from cnn_exposed import errors

    defined = {}
    for info in pkgutil.walk_packages(cnn_exposed.__path__, "cnn_exposed."):
        if info.name.startswith("cnn_exposed.data"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__.startswith("cnn_exposed"):
                defined[name] = obj.__module__
    assert set(defined.values()) == {"cnn_exposed.errors"}, defined
    signals = {"StopForward"}  # raised and caught inside the package, deliberately not a ValueError
    for name in set(defined) - signals:
        assert issubclass(getattr(errors, name), ce.CnnExposedError), name
        assert name in ce.__all__ or name == "UsageError", f"{name} is not exported from the package root"
    assert not issubclass(errors.StopForward, ValueError)
