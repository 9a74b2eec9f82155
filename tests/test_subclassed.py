"""Subclassed models (``class M(keras.Model)`` with its own ``call``): their call is watched, not walked."""

from __future__ import annotations

import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

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


def copy_of(model: keras.Model, build) -> keras.Model:
    """``build(layers)``: a functional model of fresh copies of ``model``'s layers (``layers.c1`` ...), with
    its weights. Fresh, so that the user's layers stay out of any graph but the one their model traces."""
    layers = {name: type(getattr(model, name)).from_config(getattr(model, name).get_config()) for name in vars(model)
              if isinstance(getattr(model, name, None), keras.layers.Layer)}  # fmt: skip
    twin = build(types.SimpleNamespace(**layers))
    for name, layer in layers.items():
        layer.set_weights(getattr(model, name).get_weights())
    return twin


def functional_twin(model: Classifier) -> keras.Model:
    def build(own):
        inp = keras.Input((16, 16, 3))
        h = own.c1(inp)
        h = keras.layers.Add()([h, own.c2(h)])
        return keras.Model(inp, own.head(own.gap(h)))

    return copy_of(model, build)


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


RULE_BASED = [
    ("lrp", {}), ("lrp", {"rule": "epsilon"}), ("lrp", {"rule": "alpha2beta1"}), ("guided_backprop", {}),
    ("deconvnet", {}), ("guided_gradcam", {"layer": "c2"}), ("deeplift", {"baseline": "blur"}), ("deepshap", {}),
]  # fmt: skip


@pytest.mark.parametrize("method, options", RULE_BASED)
def test_rule_based_methods_walk_the_traced_call_as_its_functional_twin(pair, method, options):
    model, twin = pair
    x = images(3)
    ours = ce.explain(model, x, method, target=1, **options)
    ref = ce.explain(twin, x, method, target=1, **options)
    np.testing.assert_allclose(ours.scores, ref.scores, rtol=1e-5)
    np.testing.assert_allclose(
        ours.attributions, ref.attributions, rtol=1e-4, atol=1e-6 * np.abs(ref.attributions).max()
    )
    assert np.abs(ours.attributions).max() > 0


class Ops(keras.Model):
    """keras.ops between the layers: input scaling, a ReLU, a residual sum, a squeeze-and-excitation gate and
    global pooling, all written as operations; the head is created first (its constructor order is not the
    order call() uses the layers in)."""

    def __init__(self):
        super().__init__(name="ops_model")
        self.head = keras.layers.Dense(3, use_bias=False, name="head")
        self.c1 = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="c1")
        self.c2 = keras.layers.Conv2D(6, 3, padding="same", activation="relu", use_bias=False, name="c2")
        self.excite = keras.layers.Dense(6, activation="sigmoid", name="excite")

    def call(self, x):
        h = ops.relu(self.c1(x / 255.0 - 0.5))
        h = h + self.c2(h)
        h = h * ops.expand_dims(ops.expand_dims(self.excite(ops.mean(h, axis=(1, 2))), 1), 1)
        return self.head(ops.mean(h, axis=(1, 2)))


def ops_twin(model: Ops) -> keras.Model:
    """The same network with a layer for every operation."""

    def build(own):
        inp = keras.Input((16, 16, 3))
        h = keras.layers.Rescaling(1 / 255.0, offset=-0.5)(inp)
        h = keras.layers.ReLU()(own.c1(h))
        h = keras.layers.Add()([h, own.c2(h)])
        gate = keras.layers.Reshape((1, 1, 6))(own.excite(keras.layers.GlobalAveragePooling2D()(h)))
        h = keras.layers.Multiply()([h, gate])
        return keras.Model(inp, own.head(keras.layers.GlobalAveragePooling2D()(h)))

    return copy_of(model, build)


@pytest.fixture
def ops_pair():
    keras.utils.set_random_seed(23)
    model = Ops()
    model(np.zeros((1, 16, 16, 3), np.float32))
    return model, ops_twin(model)


@pytest.mark.parametrize(
    "method, options",
    [("lrp", {}), ("lrp", {"rule": "zplus"}), ("guided_backprop", {}), ("deconvnet", {}), ("deeplift", {})],
)
def test_keras_ops_in_call_get_the_rules_of_the_layers_that_do_the_same(ops_pair, method, options):
    model, twin = ops_pair
    x = images(3) * 255.0
    ours = ce.explain(model, x, method, target=2, **options).attributions
    ref = ce.explain(twin, x, method, target=2, **options).attributions
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
    assert np.abs(ours).max() > 0


def test_lrp_through_keras_ops_conserves_relevance(ops_pair):
    model, _ = ops_pair
    x = images(3) * 255.0
    exp = ce.explain(model, x, "lrp", rule="epsilon", epsilon=1e-9, target=0)
    np.testing.assert_allclose(exp.attributions.reshape(3, -1).sum(1), exp.scores, rtol=2e-3)
    with pytest.raises(ce.CnnExposedError, match="bounds.*TrueDivide|bounds.*truediv"):
        ce.explain(model, x, "lrp", bounds=(0.0, 255.0))  # z^B cannot map given bounds through x / 255


class Features(keras.Model):
    def __init__(self):
        super().__init__(name="features")
        self.c1 = keras.layers.Conv2D(6, 3, activation="relu", name="c1")
        self.c2 = keras.layers.Conv2D(5, 3, activation="relu", name="c2")

    def call(self, x):
        return self.c2(self.c1(x))


def test_a_subclassed_base_nested_in_a_sequential_head():
    keras.utils.set_random_seed(24)
    base = Features()
    model = keras.Sequential([keras.Input((16, 16, 3)), base, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax", name="head")])  # fmt: skip
    flat = copy_of(base, lambda own: keras.Sequential([keras.Input((16, 16, 3)), own.c1, own.c2]))
    flat = keras.Sequential([flat, keras.layers.GlobalAveragePooling2D(), model.get_layer("head")])
    x = images(2)
    for method in ("lrp", "guided_backprop"):
        ours = ce.explain(model, x, method, target=0).attributions
        ref = ce.explain(flat, x, method, target=0).attributions
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())


class TensorFlowInside(Classifier):
    def call(self, x):
        return self.head(self.gap(tf.nn.relu(self.c2(self.c1(x)))))  # a tf function: no symbolic tracing


class Stateful(Classifier):
    calls = 0

    def call(self, x):
        self.calls += 1
        return self.head(self.gap(self.c2(self.c1(x)))) * (1.0 if self.calls % 2 else 0.5)


@pytest.mark.parametrize("cls, why", [(TensorFlowInside, "could not be traced"), (Stateful, "something else")])
def test_a_call_that_cannot_be_traced_is_refused_by_rule_based_methods_only(cls, why):
    keras.utils.set_random_seed(25)
    model = cls()
    model(np.zeros((1, 16, 16, 3), np.float32))
    for method in ("lrp", "guided_backprop", "deconvnet"):
        with pytest.raises(ce.ModelError, match=f"{why}.*functional model.*keras.ops"):
            ce.explain(model, images(1), method)
    assert np.isfinite(ce.explain(model, images(2), "saliency").maps).all()


def test_layers_shared_with_a_functional_model_are_refused_with_the_way_out():
    keras.utils.set_random_seed(26)
    model = Classifier()
    model(np.zeros((1, 16, 16, 3), np.float32))
    inp = keras.Input((16, 16, 3))
    functional = keras.Model(inp, model.head(model.gap(model.c2(model.c1(inp)))))
    with pytest.raises(ce.ModelError, match="already called in another functional model. Explain that"):
        ce.explain(model, images(1), "lrp")
    assert ce.explain(functional, images(1), "lrp").maps.shape == (1, 16, 16)


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
