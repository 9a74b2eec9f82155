"""The bundled files: found through the installed package, and the demo model rebuilt from code + weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed import bundled


def test_bundled_files_are_found_in_the_installed_package(monkeypatch):
    monkeypatch.delenv("CNN_EXPOSED_DATA", raising=False)
    root = bundled.data_dir()
    assert root.parts[-2:] == ("cnn_exposed", "data") or root.name == "data"
    for rel in ("demo/demo_model.json", f"demo/{bundled.DEMO_WEIGHTS}", "demo/masks.npz", "images/CREDITS.md"):
        assert (root / rel).is_file(), rel
    assert len(list((root / "demo" / "images").glob("*/*/*.png"))) == 20
    assert len([p for p in (root / "images").iterdir() if p.suffix in (".png", ".jpg")]) == 4


def test_data_dir_can_be_pointed_elsewhere(monkeypatch, tmp_path):
    monkeypatch.setenv("CNN_EXPOSED_DATA", str(tmp_path))
    assert bundled.data_dir() == tmp_path
    with pytest.raises(ce.ModelError, match="bundled demo files are missing"):
        ce.load_model("demo")


def test_demo_model_is_built_from_public_layers_with_the_documented_shape():
    model = bundled.demo_model()
    assert [layer.name for layer in model.layers] == ["base", "gap", "predictions"]
    assert ce.list_layers(model, spatial_only=True)[-1] == "base/last_conv"
    assert model.count_params() == 60_848 + 64 * 3 + 3
    assert model.get_layer("predictions").activation.__name__ == "softmax"


def test_weights_round_trip_through_npz(tmp_path):
    keras.utils.set_random_seed(0)
    source = bundled.build_demo_model((32, 40), 2)
    keras.utils.set_random_seed(1)
    target = bundled.build_demo_model((32, 40), 2)
    x = np.random.default_rng(0).uniform(size=(3, 32, 40, 3)).astype("float32")
    assert not np.allclose(source.predict(x, verbose=0), target.predict(x, verbose=0))
    bundled.save_weights(source, tmp_path / "w.npz")
    bundled.load_weights(target, tmp_path / "w.npz")
    np.testing.assert_array_equal(source.predict(x, verbose=0), target.predict(x, verbose=0))
    # Batch-norm statistics (non-trainable weights) travel too.
    np.testing.assert_array_equal(
        source.get_layer("base").get_layer("conv1_bn").moving_variance.numpy(),
        target.get_layer("base").get_layer("conv1_bn").moving_variance.numpy(),
    )


def test_weights_that_do_not_fit_are_refused_with_the_layers_named(tmp_path):
    bundled.save_weights(bundled.build_demo_model((96, 96), 3), tmp_path / "three.npz")
    with pytest.raises(ce.ModelError, match=r"other shape: predictions/0, predictions/1"):
        bundled.load_weights(bundled.build_demo_model((96, 96), 4), tmp_path / "three.npz")
    arrays = dict(np.load(tmp_path / "three.npz"))
    del arrays["base/conv1/0"]
    arrays["extra/0"] = np.zeros(2)
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(ce.ModelError, match=r"missing: base/conv1/0.*not in the model: extra/0"):
        bundled.load_weights(bundled.build_demo_model((96, 96), 3), tmp_path / "broken.npz")
