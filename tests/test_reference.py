"""Agreement with tf-keras-vis, the reference implementation, on flat models (same layer, linear score)."""

from __future__ import annotations

import numpy as np
import pytest

import cnn_exposed as ce
from conftest import images, small_cnn

tkv = pytest.importorskip("tf_keras_vis", reason="tf-keras-vis is a test dependency: pip install -r requirements.txt")
from tf_keras_vis.gradcam import Gradcam  # noqa: E402
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus  # noqa: E402
from tf_keras_vis.layercam import Layercam  # noqa: E402
from tf_keras_vis.saliency import Saliency  # noqa: E402
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear  # noqa: E402
from tf_keras_vis.utils.scores import CategoricalScore  # noqa: E402

# tf-keras-vis passes a list to single-input models; Keras warns about it inside tf-keras-vis.
pytestmark = pytest.mark.filterwarnings("ignore:The structure of `inputs`:UserWarning")

TARGETS = [0, 1, 2, 1]


@pytest.fixture(scope="module")
def setup():
    import keras

    keras.utils.set_random_seed(99)
    model = small_cnn()
    x = images(4, seed=3) * 4.0  # larger activations: maps far from float32 noise
    return model, x


def test_saliency_matches(setup):
    model, x = setup
    ref = Saliency(model, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore(TARGETS), x, keepdims=True, normalize_map=False
    )
    ours = ce.explain(model, x, "saliency", target=TARGETS)
    np.testing.assert_allclose(ours.attributions, np.abs(ref) * np.sign(ours.attributions), rtol=1e-4, atol=1e-7)
    ref_map = Saliency(model, model_modifier=ReplaceToLinear(), clone=True)(CategoricalScore(TARGETS), x)
    np.testing.assert_allclose(ours.maps, ref_map, atol=1e-4)


@pytest.mark.parametrize(
    "method, cls, exp_score",
    [("gradcam", Gradcam, False), ("gradcam++", GradcamPlusPlus, True), ("layercam", Layercam, False)],
)
def test_cams_match_at_layer_resolution(setup, method, cls, exp_score):
    model, x = setup
    ref = cls(model, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore(TARGETS), x, penultimate_layer="c2", expand_cam=False, normalize_cam=False
    )
    ours = ce.explain(model, x, method, target=TARGETS, layer="c2")
    mine = np.maximum(ours.layer_maps, 0.0)
    if exp_score:  # tf-keras-vis' Grad-CAM++ keeps a factor exp(score) per image
        mine = mine * np.exp(ours.scores)[:, None, None]
    assert mine.max() > 1e-3  # a non-trivial map
    np.testing.assert_allclose(mine, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
