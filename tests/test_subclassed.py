"""Subclassed models (``class M(keras.Model)`` with its own ``call``): their call is watched, not walked."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed.visualisation import visualise_classes, visualise_filters
from conftest import images


class Classifier(keras.Model):
    """A small CNN written as a subclass, with a residual connection computed in call()."""

    def __init__(self, classes=3, activation="softmax"):
        super().__init__(name="classifier")
        self.c1 = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c1")
        self.c2 = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c2")
        self.gap = keras.layers.GlobalAveragePooling2D(name="gap")
        self.head = keras.layers.Dense(classes, activation=activation, name="head")

    def call(self, x):
        h = self.c1(x)
        h = h + self.c2(h)  # an op the walk could not see anyway
        return self.head(self.gap(h))


def functional_twin(model: Classifier) -> keras.Model:
    inp = keras.Input((16, 16, 3))
    h = model.c1(inp)
    h = keras.layers.Add()([h, model.c2(h)])
    return keras.Model(inp, model.head(model.gap(h)))


@pytest.fixture
def pair():
    keras.utils.set_random_seed(21)
    model = Classifier()
    model(np.zeros((1, 16, 16, 3), np.float32))  # built by a first call, as users do
    return model, functional_twin(model)


@pytest.mark.parametrize(
    "method, options",
    [("saliency", {}), ("integrated_gradients", {"steps": 8}), ("smoothgrad", {"samples": 4}),
     ("gradcam", {"layer": "c2"}), ("gradcam++", {"layer": "c2"}), ("layercam", {"layer": "c1"}),
     ("scorecam", {"layer": "c2"}), ("occlusion", {"patch": 4, "stride": 4})],
)  # fmt: skip
def test_methods_on_a_subclassed_model_equal_those_on_its_functional_twin(pair, method, options):
    model, twin = pair
    x = images(3)
    ours = ce.explain(model, x, method, target=1, **options)
    ref = ce.explain(twin, x, method, target=1, **options)
    np.testing.assert_allclose(ours.scores, ref.scores, rtol=1e-5)  # logits: the softmax was undone
    np.testing.assert_allclose(ours.maps, ref.maps, rtol=1e-4, atol=1e-6)
    assert ours.maps.std() > 0


def test_layers_of_a_subclassed_model_are_found_with_their_shapes(pair):
    model, _ = pair
    assert ce.list_layers(model) == ["c1", "c2", "gap", "head"]
    assert ce.list_layers(model, spatial_only=True) == ["c1", "c2"]
    assert ce.find_last_spatial_layer(model).path == "c2"
    assert ce.explain(model, images(2), "gradcam").layer == "c2"
    with pytest.raises(ce.LayerNotFoundError, match="'c2'"):
        ce.explain(model, images(1), "gradcam", layer="c3")


def test_rule_based_methods_say_how_to_rebuild_the_model(pair):
    model, _ = pair
    for method in ("lrp", "guided_backprop", "deconvnet"):
        with pytest.raises(ce.CnnExposedError, match="subclassed model.*functional model"):
            ce.explain(model, images(1), method)


def test_an_unbuilt_subclassed_model_is_refused_clearly():
    with pytest.raises(ce.ModelError, match="not been built.*model.build"):
        ce.explain(Classifier(), images(1), "saliency")


def test_feature_visualisation_of_a_subclassed_model(pair):
    model, twin = pair
    vis = visualise_filters(model, "c2", [0, 1], steps=30, size=16, progress=False)
    assert vis.images.shape == (2, 16, 16, 3) and np.all(vis.objective > vis.start_objective)
    ref = ce.visualisation.evaluate_objective(twin, ce.visualisation.channel("c2", [0, 1]), vis.images)
    np.testing.assert_allclose(vis.objective, ref, rtol=1e-4, atol=1e-6)
    cls = visualise_classes(model, [2], steps=30, size=16, progress=False)
    assert cls.objective[0] > cls.start_objective[0]


def test_a_binary_subclassed_model():
    keras.utils.set_random_seed(22)
    model = Classifier(classes=1, activation="sigmoid")
    model.build((None, 16, 16, 3))
    model(np.zeros((1, 16, 16, 3), np.float32))
    x = images(4)
    p = model.predict(x, verbose=0)[:, 0]
    exp = ce.explain(model, x, "saliency")
    np.testing.assert_array_equal(exp.targets, (p > 0.5).astype(int))
    np.testing.assert_allclose(exp.scores, np.abs(np.log(p / (1 - p))), rtol=1e-3)
