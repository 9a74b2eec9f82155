"""TensorFlow SavedModel directories through load_model: the same maps as the model they were saved from."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import cnn_exposed as ce
from cnn_exposed.savedmodel import LAYER_FREE_METHODS
from conftest import images, small_cnn

OPTIONS = {
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"samples": 4},
    "occlusion": {"patch": 4},
    "blur_ig": {"steps": 8},
    "guided_ig": {"steps": 8},
    "gradient_shap": {"samples": 4},
    "xrai": {"steps": 4},
    "rise": {"samples": 16, "grid": 4},
    "sobol": {"grid": 2, "designs": 4},
    "kernel_shap": {"samples": 16},
    "lime": {"samples": 16, "segmentation": "slic"},  # quickshift finds one superpixel in 16 px noise
}


class Served(tf.Module):
    """What TensorFlow code (and tf-keras 2.x's model.save) writes: a serving signature with its own input
    name and a dict of named outputs, here the probabilities and the logits of the same network."""

    def __init__(self, model, logits_model):
        super().__init__()
        self.model, self.logits_model = model, logits_model

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="input_1")])
    def serve(self, input_1):
        return {"dense_1": self.model(input_1, training=False), "logits": self.logits_model(input_1, training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="pixels")])
    def any_size(self, pixels):  # a signature that leaves the image size open
        return {"logits": self.logits_model(pixels, training=False)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The original softmax CNN, its Keras 3 ``model.export`` directory and a ``tf.saved_model.save`` one."""
    keras.utils.set_random_seed(7)
    model = small_cnn()
    logits = small_cnn(activation=None)
    logits.set_weights(model.get_weights())
    root = tmp_path_factory.mktemp("saved")
    model.export(root / "exported", verbose=False)
    module = Served(model, logits)
    tf.saved_model.save(
        module, str(root / "module"), signatures={"serving_default": module.serve, "any_size": module.any_size}
    )
    return model, root


def explained(model, x, method, **kwargs):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*SavedModelHead.*")  # a SavedModel's probabilities: expected
        return ce.explain(model, x, method, target=1, **OPTIONS.get(method, {}), **kwargs)


def assert_same(ours, reference):
    np.testing.assert_allclose(ours.scores, reference.scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours.probabilities, reference.probabilities, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours.maps, reference.maps, atol=1e-5)
    if reference.attributions is not None:
        np.testing.assert_allclose(ours.attributions, reference.attributions, rtol=1e-4, atol=1e-7)


def test_an_exported_model_explains_as_the_model_it_was_exported_from(saved):
    model, root = saved
    loaded = ce.load_model(root / "exported")
    assert loaded.metadata["head"] == "softmax" and loaded.metadata["endpoint"] == "serving_default"
    assert loaded.input_size == (16, 16) and loaded.class_names == ["0", "1", "2"]
    x = images(3)
    for method in LAYER_FREE_METHODS:  # the probability: a SavedModel's softmax cannot be undone
        assert_same(explained(loaded.model, x, method), explained(model, x, method, score="probability"))


def test_a_tf_saved_model_signature_with_its_own_input_name_and_a_dict_of_outputs(saved):
    model, root = saved
    with pytest.raises(ce.ModelError, match="2 outputs: 'dense_1', 'logits'"):
        ce.load_model(root / "module")
    x = images(3)
    probs = ce.load_model(root / "module", output="dense_1")
    assert probs.metadata["input"] == "input_1" and probs.metadata["head"] == "softmax"
    logits = ce.load_model(root / "module", output="logits")
    assert logits.metadata["head"] == "logits"
    for method in ("saliency", "integrated_gradients", "occlusion"):
        assert_same(explained(probs.model, x, method), explained(model, x, method, score="probability"))
        # logits out: the logit is explained, as for the softmax model itself
        assert_same(explained(logits.model, x, method), explained(model, x, method))


def test_methods_that_need_layers_refuse_a_saved_model_and_name_those_that_work(saved):
    model, root = saved
    loaded = ce.load_model(root / "exported")
    needs_layers = [m for m in ce.METHODS if m not in LAYER_FREE_METHODS]
    assert set(needs_layers) >= {"gradcam", "gradcam++", "layercam", "scorecam", "lrp", "guided_backprop"}
    for method in needs_layers:
        with pytest.raises(ce.LayerAccessError) as err:
            ce.explain(loaded.model, images(1), method)
        assert all(m in str(err.value) for m in LAYER_FREE_METHODS) and ".keras" in str(err.value)
    with pytest.raises(ce.LayerAccessError, match="saliency"):
        ce.tcav(loaded.model, None, images(4), images(4, seed=1), 0)


def test_endpoints_heads_and_folders_that_are_not_saved_models(saved, tmp_path):
    model, root = saved
    x = images(2)
    serve = ce.load_model(root / "exported", endpoint="serve", head="softmax")  # a function, called positionally
    np.testing.assert_allclose(serve.model.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)
    assert ce.load_model(root / "exported" / "saved_model.pb").metadata["head"] == "softmax"
    with pytest.raises(ce.ModelError, match="no endpoint 'predict'. It offers: .*'serving_default'"):
        ce.load_model(root / "exported", endpoint="predict")
    with pytest.raises(ce.ModelError, match="no output 'probs'; its outputs are: 'dense_1', 'logits'"):
        ce.load_model(root / "module", output="probs")
    # declared logits: the probabilities are then softmax(output), not the output
    declared = ce.load_model(root / "module", output="dense_1", head="logits")
    exp = ce.explain(declared.model, x, "saliency")
    p = model.predict(x, verbose=0)
    np.testing.assert_allclose(exp.probabilities, np.exp(p) / np.exp(p).sum(1, keepdims=True), rtol=1e-5)
    with pytest.raises(ce.ModelError, match=r"\(None, None, None, 3\).*input_size=\(height, width\)"):
        ce.load_model(root / "module", endpoint="any_size")
    sized = ce.load_model(root / "module", endpoint="any_size", input_size=(16, 16))
    assert sized.input_size == (16, 16) and sized.metadata["head"] == "logits"
    assert_same(explained(sized.model, x, "saliency"), explained(model, x, "saliency"))
    (tmp_path / "variables").mkdir()
    with pytest.raises(ce.CnnExposedError, match="without saved_model.pb"):
        ce.load_model(tmp_path)
