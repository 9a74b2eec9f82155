"""LRP, guided backprop, deconvnet and guided Grad-CAM: conservation, known equalities, folding, nesting."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed.engine import Engine
from cnn_exposed.rules import RuleSet
from conftest import images

SIZE = 12


def relu_cnn(bias=False, softmax=True, name="cnn"):
    """A bias-free ReLU CNN with pooling, padding, dropout, flatten and a ReLU6 layer."""
    keras.utils.set_random_seed(7)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.ZeroPadding2D(1, name="pad")(inp)
    h = keras.layers.Conv2D(6, 3, activation="relu", use_bias=bias, name="c1")(h)
    h = keras.layers.Conv2D(6, 3, use_bias=bias, name="c2")(h)
    h = keras.layers.ReLU(max_value=6.0, name="relu6")(h)
    h = keras.layers.MaxPooling2D(name="maxpool")(h)
    h = keras.layers.AveragePooling2D(2, padding="same", name="avgpool")(h)
    h = keras.layers.Dropout(0.3, name="drop")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(8, activation="relu", use_bias=bias, name="d1")(h)
    out = keras.layers.Dense(3, activation="softmax" if softmax else None, use_bias=bias, name="head")(h)
    return keras.Model(inp, out, name=name)


def with_positive_logit(model):
    """Raise class 0's bias so its logit is positive (the relevance to explain must be positive)."""
    kernel, bias = model.get_layer("head").get_weights()
    bias[0] = 5.0
    model.get_layer("head").set_weights([kernel, bias])
    return 0


def test_epsilon_rule_conserves_relevance_layer_by_layer():
    model = relu_cnn()
    x = images(3, SIZE)
    exp = ce.explain(model, x, "lrp", rule="epsilon", epsilon=1e-9)
    np.testing.assert_allclose(exp.attributions.reshape(3, -1).sum(1), exp.scores, rtol=1e-3)
    rules = RuleSet("lrp", "epsilon", 1e-9)
    for layer in ("c1", "c2", "relu6", "maxpool", "avgpool", "d1"):
        engine = Engine(model, layer, rules=rules)
        s, r = engine.layer_relevance(x, np.full(3, -1, np.int32))
        np.testing.assert_allclose(r.reshape(3, -1).sum(1), s, rtol=1e-3, err_msg=layer)


def test_epsilon_to_zero_equals_gradient_times_input():
    model = relu_cnn()
    x = images(3, SIZE)
    lrp = ce.explain(model, x, "lrp", rule="epsilon", epsilon=1e-10, target=1)
    gxi = ce.explain(model, x, "gradient_x_input", target=1)
    np.testing.assert_allclose(
        lrp.attributions, gxi.attributions, rtol=1e-4, atol=1e-6 * np.abs(gxi.attributions).max()
    )
    # with a large epsilon they differ: the rule is really in the path
    coarse = ce.explain(model, x, "lrp", rule="epsilon", epsilon=1.0, target=1)
    assert np.abs(coarse.attributions - gxi.attributions).max() > 1e-3 * np.abs(gxi.attributions).max()


@pytest.mark.parametrize("rule", ["zplus", "alpha1beta0"])
def test_zplus_relevance_is_non_negative_for_non_negative_inputs(rule):
    model = relu_cnn(bias=True)
    x = images(4, SIZE)  # in [0, 1]
    target = with_positive_logit(model)
    exp = ce.explain(model, x, "lrp", rule=rule, target=target)
    assert np.all(exp.scores > 0)
    assert exp.attributions.min() >= -1e-7
    assert exp.attributions.max() > 0
    # and alpha2beta1 does produce negative relevance on the same input: the test can tell them apart
    ab = ce.explain(model, x, "lrp", rule="alpha2beta1", target=target)
    assert ab.attributions.min() < 0


def test_batch_normalisation_is_folded():
    keras.utils.set_random_seed(11)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(4, 3, use_bias=True, name="conv")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="act")(h)
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    with_bn = keras.Model(inp, out)
    bn = with_bn.get_layer("bn")
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 2, 4), rng.normal(0, 0.3, 4), rng.normal(0, 0.3, 4), rng.uniform(0.5, 2, 4)])
    gamma, beta, mean, var = bn.get_weights()
    kernel, bias = with_bn.get_layer("conv").get_weights()
    scale = gamma / np.sqrt(var + bn.epsilon)
    inp2 = keras.Input((SIZE, SIZE, 3))
    h2 = keras.layers.Conv2D(4, 3, name="conv")(inp2)
    h2 = keras.layers.ReLU(name="act")(h2)
    out2 = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(h2))
    folded = keras.Model(inp2, out2)
    folded.get_layer("conv").set_weights([kernel * scale, (bias - mean) * scale + beta])
    folded.get_layer("head").set_weights(with_bn.get_layer("head").get_weights())
    x = images(3, SIZE)
    np.testing.assert_allclose(with_bn.predict(x, verbose=0), folded.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    for rule in ("epsilon", "zplus", "composite"):
        a = ce.explain(with_bn, x, "lrp", rule=rule, target=0)
        b = ce.explain(folded, x, "lrp", rule=rule, target=0)
        np.testing.assert_allclose(a.attributions, b.attributions, rtol=1e-4, atol=1e-6 * np.abs(b.attributions).max())


def test_a_nested_sequential_loaded_from_a_keras_file_is_explained_as_the_one_in_memory(tmp_path):
    """Loading a .keras file calls a nested Sequential's layers once per rebuild, so that a convolution's
    ``output`` is not the tensor its batch normalisation reads: the normalisation must still be folded (it was
    not, and LRP's relevance then summed to -0.18 for a logit of 6.85 on the demo model)."""
    keras.utils.set_random_seed(5)
    layers = [keras.layers.Conv2D(4, 3, use_bias=False, name="conv"), keras.layers.BatchNormalization(name="bn")]
    base = keras.Sequential([keras.Input((SIZE, SIZE, 3)), *layers, keras.layers.ReLU(name="act")], name="base")
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), base, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, name="head")])  # fmt: skip
    rng = np.random.default_rng(1)
    base.get_layer("bn").set_weights([rng.uniform(0.5, 2, 4), rng.normal(0, 0.3, 4), rng.normal(0, 0.3, 4),
                                      rng.uniform(0.5, 2, 4)])  # fmt: skip
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    x = images(3, SIZE)
    for method in ("lrp", "deeplift"):
        here, there = (ce.explain(m, x, method, target=0, progress=False) for m in (model, loaded))
        np.testing.assert_allclose(there.attributions, here.attributions, atol=1e-3 * np.abs(here.attributions).max())


def test_rule_based_methods_take_what_load_model_returns():
    loaded = ce.load_model("demo")
    x, _, _ = ce.demo.generate(2, "clean", seed=1)
    for method in ("lrp", "deeplift", "guided_backprop"):
        via_loaded = ce.explain(loaded, x, method, progress=False)
        direct = ce.explain(loaded.model, x, method, preprocess=loaded.preprocess, progress=False)
        np.testing.assert_array_equal(via_loaded.maps, direct.maps)


@pytest.mark.filterwarnings("ignore:The structure of `inputs`:UserWarning")  # inside tf-keras-vis
def test_guided_backprop_matches_tf_keras_vis():
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils.model_modifiers import GuidedBackpropagation, ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    keras.utils.set_random_seed(5)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c2")(h)
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(h))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(h))
    x = images(3, SIZE)
    targets = [0, 1, 2]
    ref = Saliency(model, model_modifier=[ReplaceToLinear(), GuidedBackpropagation()], clone=True)(
        CategoricalScore(targets), x, keepdims=True, normalize_map=False
    )
    ours = ce.explain(model, x, "guided_backprop", target=targets)
    np.testing.assert_allclose(np.abs(ours.attributions), ref, rtol=1e-4, atol=1e-7)
    plain = ce.explain(model, x, "saliency", target=targets)
    assert not np.allclose(ours.attributions, plain.attributions)  # the rule changed something


def modified_relu_gradient(model, x, target: int, mode: str) -> np.ndarray:
    """Guided backprop or deconvnet written out for a chain model: a GradientTape over the model's own layers,
    every ReLU (ReLU6 included) with its backward pass replaced, the logit of ``target`` differentiated."""
    import tensorflow as tf

    def modified(fn, low, high):
        @tf.custom_gradient
        def relu(z):
            def grad(g):
                if mode == "deconv":
                    return tf.maximum(g, 0.0)
                inside = tf.cast((z > low) & (z < high), g.dtype)
                return g * inside * tf.cast(g > 0, g.dtype)

            return fn(z), grad

        return relu

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        h = xt
        for layer in model.layers[1:]:
            if isinstance(layer, keras.layers.ReLU):
                h = modified(layer, 0.0, float(layer.max_value or np.inf))(h)
                continue
            if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
                h = layer(h, training=False) if isinstance(layer, keras.layers.Dropout) else layer(h)
                continue
            act, layer.activation = layer.activation, keras.activations.linear
            try:
                h = layer(h)
            finally:
                layer.activation = act
            if act is keras.activations.relu:
                h = modified(tf.nn.relu, 0.0, np.inf)(h)
        logit = h[:, target]  # the head's softmax left out
    return tape.gradient(logit, xt).numpy()


@pytest.mark.parametrize("method, mode", [("guided_backprop", "guided"), ("deconvnet", "deconv")])
def test_guided_backprop_and_deconvnet_equal_their_definitions_with_signs(method, mode):
    model = relu_cnn(bias=True)
    x = images(2, SIZE)
    ours = ce.explain(model, x, method, target=1).attributions
    ref = modified_relu_gradient(model, x, 1, mode)
    assert (ref > 0).any() and (ref < 0).any()  # signed: a sign flip would fail
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())


def test_deconvnet_and_guided_gradcam():
    model = relu_cnn(bias=True)
    x = images(2, SIZE)
    deconv = ce.explain(model, x, "deconvnet", target=0)
    guided = ce.explain(model, x, "guided_backprop", target=0)
    assert not np.allclose(deconv.attributions, guided.attributions)
    ggc = ce.explain(model, x, "guided_gradcam", target=0, layer="c2")
    cam = ce.explain(model, x, "gradcam", target=0, layer="c2")
    expected = guided.attributions * ce.normalize_maps(cam.raw_maps)[..., None]
    np.testing.assert_allclose(ggc.attributions, expected, rtol=1e-5, atol=1e-9)
    assert ggc.layer == "c2"


def test_nested_model_gives_the_same_relevance_as_its_flat_twin():
    from conftest import nested_and_flat

    nested, flat = nested_and_flat(size=SIZE)
    x = images(3, SIZE)
    for method, opts in (("lrp", {}), ("lrp", {"rule": "epsilon"}), ("guided_backprop", {})):
        a = ce.explain(nested, x, method, target=1, **opts)
        b = ce.explain(flat, x, method, target=1, **opts)
        np.testing.assert_allclose(a.attributions, b.attributions, rtol=1e-4, atol=1e-6 * np.abs(b.attributions).max())


def test_residual_add_splits_relevance_in_proportion():
    keras.utils.set_random_seed(9)
    inp = keras.Input((SIZE, SIZE, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", use_bias=False, name="c1")(inp)
    b = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="branch")(a)
    z = keras.layers.Add(name="add")([a, b])
    h = keras.layers.ReLU(name="act")(z)
    out = keras.layers.Dense(3, use_bias=False)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    x = images(2, SIZE)
    rules = RuleSet("lrp", "epsilon", 1e-9)
    t = np.zeros(2, np.int32)
    _, r_add = Engine(model, "add", rules=rules).layer_relevance(x, t)
    _, r_branch = Engine(model, "branch", rules=rules).layer_relevance(x, t)
    branch_out = keras.Model(inp, b)(x).numpy()
    add_out = keras.Model(inp, z)(x).numpy()
    ok = np.abs(add_out) > 1e-4
    np.testing.assert_allclose(r_branch[ok], (branch_out / add_out * r_add)[ok], rtol=1e-3, atol=1e-7)
    exp = ce.explain(model, x, "lrp", rule="epsilon", epsilon=1e-9, target=0)
    np.testing.assert_allclose(exp.attributions.reshape(2, -1).sum(1), exp.scores, rtol=1e-3)


class Squash(keras.layers.Layer):
    """A custom layer no rule knows."""

    def call(self, x):
        return x / (1.0 + keras.ops.abs(x))


def test_unsupported_layer_is_named():
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(4, 3, name="conv")(inp)
    h = Squash(name="squash")(h)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    with pytest.raises(ce.CnnExposedError, match="'squash' of type Squash.*gradient method"):
        ce.explain(model, images(1, SIZE), "lrp")
    assert ce.explain(model, images(1, SIZE), "guided_backprop").maps.shape == (1, SIZE, SIZE)


def test_a_product_of_two_signals_is_refused():
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(4, 3, name="conv")(inp)
    h = keras.layers.Multiply(name="square")([h, h])
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    with pytest.raises(ce.CnnExposedError, match="which input of 'square' is the signal"):
        ce.explain(model, images(1, SIZE), "lrp")


def test_zb_needs_the_model_input():
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.LayerNormalization(name="norm")(inp)
    h = keras.layers.Conv2D(4, 3, name="conv")(h)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    with pytest.raises(ce.CnnExposedError, match="z\\^B rule.*'norm'"):
        ce.explain(model, images(1, SIZE), "lrp")
    assert ce.explain(model, images(1, SIZE), "lrp", rule={"first": "epsilon"}).maps.shape == (1, SIZE, SIZE)


# ---------------------------------------------------------------- the layers of keras.applications families
def conserved(model, x, **kwargs):
    """LRP-ε with ε → 0 on a bias-free model: the input relevance sums to the explained logit."""
    exp = ce.explain(model, x, "lrp", rule="epsilon", epsilon=1e-9, **kwargs)
    np.testing.assert_allclose(exp.attributions.reshape(len(x), -1).sum(1), exp.scores, rtol=2e-3, atol=1e-6)
    assert np.abs(exp.attributions).max() > 0
    return exp


def _randomise_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 1.5, c)])  # fmt: skip


def separable_pair():
    """The same network twice: with a SeparableConv2D (+ batch norm), and with its depthwise and pointwise
    convolutions as two layers."""
    keras.utils.set_random_seed(11)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", use_bias=False, name="c1")(inp)
    h = keras.layers.SeparableConv2D(6, 3, strides=2, padding="same", depth_multiplier=2, name="sep")(h)
    h = keras.layers.BatchNormalization(name="sep_bn")(h)
    h = keras.layers.ReLU(name="sep_relu")(h)
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    sep = keras.Model(inp, out)
    _randomise_bn(sep)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", use_bias=False, name="c1")(inp)
    h = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, use_bias=False, name="dw")(h)
    h = keras.layers.Conv2D(6, 1, name="pw")(h)
    h = keras.layers.BatchNormalization(name="sep_bn")(h)
    h = keras.layers.ReLU(name="sep_relu")(h)
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    two = keras.Model(inp, out)
    layer = sep.get_layer("sep")
    two.get_layer("c1").set_weights(sep.get_layer("c1").get_weights())
    two.get_layer("dw").set_weights([layer.depthwise_kernel.numpy()])
    two.get_layer("pw").set_weights([layer.pointwise_kernel.numpy(), layer.bias.numpy()])
    two.get_layer("sep_bn").set_weights(sep.get_layer("sep_bn").get_weights())
    two.get_layer("head").set_weights(sep.get_layer("head").get_weights())
    return sep, two


@pytest.mark.parametrize(
    "method, options",
    [("lrp", {}), ("lrp", {"rule": "alpha2beta1"}), ("lrp", {"rule": "epsilon"}), ("guided_backprop", {}),
     ("deconvnet", {})],
)  # fmt: skip
def test_separable_convolution_is_its_depthwise_then_its_pointwise_convolution(method, options):
    sep, two = separable_pair()
    x = images(3, SIZE)
    np.testing.assert_allclose(sep.predict(x, verbose=0), two.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    a = ce.explain(sep, x, method, target=1, **options).attributions
    b = ce.explain(two, x, method, target=1, **options).attributions
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(b).max())
    assert np.abs(b).max() > 0


def test_separable_convolution_in_the_fast_gradient_plan_equals_the_models_own_gradient():
    sep, _ = separable_pair()
    x = images(2, SIZE)
    t = np.array([0, 2], np.int32)
    own = Engine(sep).input_gradients(x, t)[1]
    fast = Engine(sep, rules=RuleSet("gradient")).relevance(x, t).relevance
    np.testing.assert_allclose(fast, own, rtol=1e-4, atol=1e-6 * np.abs(own).max())


def se_model():
    """A squeeze-and-excitation block as MobileNetV3 and EfficientNet build it, bias-free."""
    keras.utils.set_random_seed(12)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", use_bias=False, name="c1")(inp)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name="squeeze")(h)
    s = keras.layers.Conv2D(4, 1, activation="relu", use_bias=False, name="reduce")(s)
    s = keras.layers.Conv2D(8, 1, activation="hard_sigmoid", use_bias=False, name="expand")(s)
    h = keras.layers.Multiply(name="excite")([h, s])
    h = keras.layers.Activation("swish", name="swish")(h)
    return keras.Model(inp, keras.layers.Dense(3, use_bias=False, name="head")(keras.layers.Flatten()(h)))


def test_squeeze_and_excitation_gates_pass_relevance_to_the_signal_only():
    model = se_model()
    x = images(3, SIZE)
    conserved(model, x, target=0)  # all of it reaches the image through the signal
    rules = RuleSet("lrp", "epsilon", 1e-9)
    s, r = Engine(model, "excite", rules=rules).layer_relevance(x, np.zeros(3, np.int32))
    np.testing.assert_allclose(r.reshape(3, -1).sum(1), s, rtol=1e-3)
    # The gate branch gets none: the relevance at the gate's producer is 0.
    _, r_gate = Engine(model, "expand", rules=rules).layer_relevance(x, np.zeros(3, np.int32))
    assert np.abs(r_gate).max() == 0
    # A gate can also be a full-size sigmoid map (an attention mask).
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="c1")(inp)
    g = keras.layers.Conv2D(4, 1, activation="sigmoid", use_bias=False, name="mask")(h)
    h = keras.layers.Multiply(name="attend")([g, h])
    conserved(keras.Model(inp, keras.layers.Dense(2, use_bias=False)(keras.layers.Flatten()(h))), x)


def test_models_that_scale_and_normalise_their_own_input():
    keras.utils.set_random_seed(13)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inp)
    norm = keras.layers.Normalization(mean=[0.4, 0.5, 0.6], variance=[0.04, 0.09, 0.0625], name="norm")
    h = norm(h)
    h = keras.layers.Conv2D(6, 3, activation="gelu", use_bias=False, name="c1")(h)
    h = keras.layers.LayerNormalization(center=False, name="ln")(h)
    out = keras.layers.Dense(3, use_bias=False, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    model.get_layer("ln").set_weights([np.random.default_rng(0).uniform(0.5, 1.5, 6)])
    raw = images(3, SIZE) * 255.0
    conserved(model, raw)
    # z^B first with bounds in model-input units (0..255) equals z^B on the normalised input's own units.
    inner_in = keras.Input((SIZE, SIZE, 3))
    inner = keras.Model(inner_in, model.get_layer("head")(
        keras.layers.GlobalAveragePooling2D()(model.get_layer("ln")(model.get_layer("c1")(inner_in)))
    ))  # fmt: skip
    mean, std = np.array([0.4, 0.5, 0.6]), np.sqrt([0.04, 0.09, 0.0625])
    normalised = (raw / 255.0 - mean) / std
    composite = {"first": "zb", "conv": "zplus", "dense": "epsilon"}
    ours = ce.explain(model, raw, "lrp", rule=composite, bounds=(0.0, 255.0), target=1).attributions
    ref = ce.explain(inner, normalised.astype("float32"), "lrp", rule=composite, bounds=((0 - mean) / std,
                     (1 - mean) / std), target=1).attributions  # fmt: skip
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-5 * np.abs(ref).max())


def test_layer_norm_rule_is_the_layer_with_its_scale_held_constant():
    from cnn_exposed.rules.lrp import layer_norm_rule

    layer = keras.layers.LayerNormalization(epsilon=1e-3)
    x = keras.ops.convert_to_tensor(np.random.default_rng(1).normal(size=(2, 5, 5, 6)).astype("float32"))
    layer.build(x.shape)
    rng = np.random.default_rng(2)
    layer.set_weights([rng.uniform(0.5, 1.5, 6), np.zeros(6)])
    np.testing.assert_allclose(np.asarray(layer_norm_rule(layer, 1e-9)(x)), np.asarray(layer(x)), rtol=1e-6)


AUGMENTATION = [
    keras.layers.RandomFlip(), keras.layers.RandomRotation(0.2), keras.layers.RandomZoom(0.2),
    keras.layers.RandomContrast(0.3), keras.layers.RandomTranslation(0.1, 0.1), keras.layers.RandomBrightness(0.2),
]  # fmt: skip


def test_augmentation_layers_are_the_identity_at_inference():
    keras.utils.set_random_seed(14)
    conv = keras.layers.Conv2D(4, 3, activation="relu", use_bias=False, name="c1")
    head = keras.layers.Dense(2, use_bias=False, name="head")
    inp = keras.Input((SIZE, SIZE, 3))
    h = inp
    for layer in AUGMENTATION:
        h = layer(h)
    tutorial = keras.Model(inp, head(keras.layers.Flatten()(keras.layers.Dropout(0.5)(conv(h)))))
    inp = keras.Input((SIZE, SIZE, 3))
    plain = keras.Model(inp, head(keras.layers.Flatten()(conv(inp))))
    x = images(2, SIZE) * 255.0
    for method in ("lrp", "guided_backprop", "saliency", "integrated_gradients"):  # augmentation off for all
        np.testing.assert_allclose(
            ce.explain(tutorial, x, method).attributions, ce.explain(plain, x, method).attributions, rtol=1e-5
        )
    conserved(tutorial, x)


def test_model_unchanged_after_rules():
    model = relu_cnn()
    x = images(2, SIZE)
    before = model.predict(x, verbose=0)
    weights = [w.copy() for w in model.get_weights()]
    for method in ("lrp", "guided_backprop", "deconvnet", "guided_gradcam"):
        ce.explain(model, x, method)
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    assert model.get_layer("c1").activation is keras.activations.relu


def _stab(z, eps):
    return z + eps * np.sign(z)


@pytest.mark.parametrize("rule", ["zplus", "alpha2beta1", "zb", "epsilon"])
def test_first_layer_rules_on_signed_inputs_match_their_definitions(rule):
    """A 1x1 convolution on inputs of both signs, then GAP and a dense head, against the rules written
    out per contribution in NumPy."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((4, 4, 3))
    c = keras.layers.Conv2D(5, 1, name="c")(inp)
    out = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(c))
    model = keras.Model(inp, out)
    model.get_layer("c").set_weights([w + 0.1 for w in model.get_layer("c").get_weights()])  # nonzero bias
    x = np.random.default_rng(1).uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
    eps = 0.05
    exp = ce.explain(model, x, "lrp", rule={"first": rule, "dense": "epsilon"}, epsilon=eps, bounds=(-1, 1), target=1)

    wc, bc = (v.astype(np.float64) for v in model.get_layer("c").get_weights())
    wh, bh = (v.astype(np.float64) for v in model.get_layer("head").get_weights())
    xs = x.reshape(2, 16, 3).astype(np.float64)
    zc = xs @ wc[0, 0] + bc  # (N, P, K)
    pooled = zc.mean(1)
    logit = pooled @ wh[:, 1] + bh[1]
    np.testing.assert_allclose(exp.scores, logit, rtol=1e-5)
    r_pooled = pooled * wh[:, 1] * (logit / _stab(logit, eps))[:, None]  # ε-rule, dense head
    r_c = (zc / 16) * (r_pooled / _stab(pooled, eps))[:, None, :]  # ε-rule, average pooling
    contrib = xs[..., :, None] * wc[0, 0]  # (N, P, Cin, K): x_i w_ik
    if rule == "epsilon":
        r_in = (contrib * (r_c / _stab(zc, eps))[:, :, None, :]).sum(-1)
    elif rule == "zb":
        lo, hi = -np.ones_like(xs), np.ones_like(xs)
        parts = contrib - lo[..., None] * np.maximum(wc[0, 0], 0) - hi[..., None] * np.minimum(wc[0, 0], 0)
        r_in = (parts * (r_c / parts.sum(2))[:, :, None, :]).sum(-1)
    else:
        alpha, beta = (1.0, 0.0) if rule == "zplus" else (2.0, 1.0)
        pos, neg = np.maximum(contrib, 0), np.minimum(contrib, 0)

        def ratio(part):  # a neuron with no positive (negative) contribution passes no relevance that way
            den = np.broadcast_to(part.sum(2, keepdims=True), part.shape)
            return np.divide(part, den, out=np.zeros_like(part), where=den != 0)

        share = alpha * ratio(pos) - beta * ratio(neg)
        r_in = (share * r_c[:, :, None, :]).sum(-1)
    np.testing.assert_allclose(exp.attributions.reshape(2, 16, 3), r_in, rtol=1e-4, atol=1e-6 * np.abs(r_in).max())


@pytest.mark.parametrize("rule", ["zplus", "alpha2beta1"])
def test_non_negative_input_shortcut_equals_the_general_rule(rule):
    """Layers fed by a ReLU take a one-convolution path for z⁺ / αβ; it must equal the general formula."""
    from cnn_exposed.rules.kinds import input_non_negative

    model = relu_cnn(bias=True)
    shortcut = {name: input_non_negative(model.get_layer(name)) for name in ("c1", "c2", "d1", "head")}
    assert shortcut == {"c1": False, "c2": True, "d1": True, "head": True}
    x = images(3, SIZE) - 0.5
    t = np.ones(3, np.int32)
    fast = Engine(model, rules=RuleSet("lrp", rule)).relevance(x, t).relevance
    general = Engine(model, rules=RuleSet("lrp", rule, shortcuts=False)).relevance(x, t).relevance
    np.testing.assert_allclose(fast, general, rtol=1e-4, atol=1e-6 * np.abs(general).max())


@pytest.mark.parametrize(
    "layer, shape, fast",
    [
        (keras.layers.Conv2D(5, 1, padding="valid"), (9, 9, 4), True),
        (keras.layers.Conv2D(5, 3, padding="same"), (9, 9, 4), True),
        (keras.layers.Conv2D(5, (5, 3), padding="same"), (9, 8, 4), True),
        (keras.layers.Conv1D(5, 3, padding="same"), (11, 4), True),
        (keras.layers.Conv3D(2, 3, padding="same"), (5, 6, 4, 3), True),
        (keras.layers.Conv2D(5, 3, padding="valid"), (9, 9, 4), False),
        (keras.layers.Conv2D(5, 2, padding="same"), (9, 9, 4), False),
        (keras.layers.Conv2D(5, 3, strides=2, padding="same"), (9, 9, 4), False),
        (keras.layers.Conv2D(5, 3, dilation_rate=2, padding="same"), (9, 9, 4), False),
        (keras.layers.Conv1D(5, 3, padding="causal"), (11, 4), False),
    ],
)
def test_convolution_backward_as_a_transposed_forward_convolution(layer, shape, fast):
    """The rule-based passes differentiate convolutions through a flipped, transposed forward convolution
    where that is exact; the input gradient equals TensorFlow's own, and other convolutions keep it."""
    import tensorflow as tf

    from cnn_exposed.rules.rewrite import linear_map, transposed_conv

    keras.utils.set_random_seed(3)
    x = tf.constant(np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32))
    layer.build((None, *shape))
    layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
    kernel = keras.ops.convert_to_tensor(layer.kernel)
    assert (transposed_conv(layer, kernel) is not None) == fast
    w = tf.constant(np.random.default_rng(1).normal(size=layer(x).shape).astype(np.float32))
    grads = []
    for fn in (linear_map(layer, kernel, None), layer):  # the bias is 0, and linear_map gets none
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.reduce_sum(fn(x) * w)
        grads.append(tape.gradient(out, x).numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-4 * np.abs(grads[1]).max())


@pytest.mark.parametrize(
    "layer, fast",
    [
        (keras.layers.DepthwiseConv2D(3, padding="same"), True),
        (keras.layers.DepthwiseConv2D((5, 3), padding="same"), True),
        (keras.layers.DepthwiseConv2D(3, padding="valid"), False),
        (keras.layers.DepthwiseConv2D(2, padding="same"), False),
        (keras.layers.DepthwiseConv2D(3, strides=2, padding="same"), False),
        (keras.layers.DepthwiseConv2D(3, dilation_rate=2, padding="same"), False),
        (keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), False),
    ],
)
def test_depthwise_backward_as_a_flipped_forward_depthwise_convolution(layer, fast):
    """Stride-1 "same" depthwise convolutions with odd kernels are differentiated by the forward depthwise
    convolution with the kernel flipped; the input gradient equals TensorFlow's own, and others keep it."""
    import tensorflow as tf

    from cnn_exposed.rules.rewrite import linear_map, transposed_depthwise

    keras.utils.set_random_seed(3)
    shape = (9, 8, 4)
    x = tf.constant(np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32))
    layer.build((None, *shape))
    layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
    kernel = keras.ops.convert_to_tensor(layer.kernel)
    assert (transposed_depthwise(layer, kernel, layer.padding) is not None) == fast
    w = tf.constant(np.random.default_rng(1).normal(size=layer(x).shape).astype(np.float32))

    @tf.function
    def gradient(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.reduce_sum(fn(x) * w)
        return tape.gradient(out, x)

    ours, own = gradient(linear_map(layer, kernel, None)).numpy(), gradient(layer).numpy()
    np.testing.assert_allclose(ours, own, rtol=1e-4, atol=1e-5 * np.abs(own).max())


def padded_cnn(size: int = SIZE):
    """Zero padding before a strided depthwise convolution as MobileNetV2 pads (the same as "same" padding at
    an even size, not at an odd one), before a depthwise one it is not the same for, and before a plain
    convolution; every convolution with a bias and a ReLU."""
    keras.utils.set_random_seed(8)
    inp = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c1")(inp)
    h = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="pad1")(h)
    h = keras.layers.DepthwiseConv2D(3, strides=2, activation="relu", name="dw")(h)
    h = keras.layers.ZeroPadding2D(((2, 0), (0, 2)), name="pad3")(h)
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="dw2")(h)
    h = keras.layers.ZeroPadding2D(((1, 2), (2, 0)), name="pad2")(h)
    h = keras.layers.Conv2D(4, 3, activation="relu", name="c2")(h)
    h = keras.layers.Flatten(name="flat")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(h))


@pytest.mark.parametrize(
    "mode, rule", [("lrp", "composite"), ("lrp", "epsilon"), ("lrp", "alpha2beta1"), ("guided", "composite")]
)
def test_zero_padding_inside_the_convolution_changes_nothing(mode, rule):
    """A ZeroPadding2D before a "valid" convolution is done inside the convolution."""
    from cnn_exposed.rules.rewrite import pad_pairs

    model = padded_cnn()
    assert sorted(p.name for p in pad_pairs(model).values()) == ["pad1", "pad2", "pad3"]
    x, t = images(3, SIZE), np.array([0, 1, 2], np.int32)
    fused = Engine(model, rules=RuleSet(mode, rule)).relevance(x, t).relevance
    padded = Engine(model, rules=RuleSet(mode, rule, shortcuts=False)).relevance(x, t).relevance
    np.testing.assert_allclose(fused, padded, rtol=1e-4, atol=1e-5 * np.abs(padded).max())
    assert np.abs(padded).max() > 0


@pytest.mark.parametrize("size", [SIZE, SIZE + 1])
def test_padded_depthwise_convolution_with_a_bias_in_the_fast_plan_equals_the_models_own_layers(size):
    """The pattern that aborted TensorFlow 2.19-2.21 when the padding was explicit in the depthwise
    convolution (grappler fused it with the bias add, then failed a check): compiled, with the fast plan's
    padding inside the depthwise convolution where it is "same" padding (even size) and a padded copy where
    it is not (odd size, and the second depthwise convolution at both), equal to the model's own pass."""
    model = padded_cnn(size)
    x, t = images(2, size), np.array([0, 2], np.int32)
    own = Engine(model).input_gradients(x, t)
    fast = Engine(model, rules=RuleSet("gradient")).relevance(x, t)
    np.testing.assert_allclose(fast.scores, own.scores, rtol=1e-5, atol=1e-6 * np.abs(own.scores).max())
    np.testing.assert_allclose(fast.relevance, own.gradients, rtol=1e-4, atol=1e-6 * np.abs(own.gradients).max())
    assert np.abs(own.gradients).max() > 0


def test_padding_counts_as_same_padding_exactly_when_it_computes_the_same():
    """``pads_as_same`` against TensorFlow: zero padding then a "valid" depthwise convolution equals the
    "same" one (shape and values) exactly when it says so, over sizes, kernels, strides and paddings."""
    import tensorflow as tf

    from cnn_exposed.rules.rewrite import pads_as_same

    rng = np.random.default_rng(0)
    agreed = 0
    for size in (5, 6, 7):
        x = tf.constant(rng.normal(size=(1, size, 1, 1)).astype(np.float32))
        for k in (1, 2, 3, 5):
            kernel = tf.constant(rng.uniform(0.5, 1.5, (k, 1, 1, 1)).astype(np.float32))
            for s in (1, 2, 3):
                same = tf.nn.depthwise_conv2d(x, kernel, [1, s, s, 1], "SAME").numpy()
                for before in range(4):
                    for after in range(4):
                        padded = tf.pad(x, [[0, 0], [before, after], [0, 0], [0, 0]])
                        if size + before + after < k:
                            continue
                        valid = tf.nn.depthwise_conv2d(padded, kernel, [1, s, s, 1], "VALID").numpy()
                        equal = valid.shape == same.shape and np.allclose(valid, same, rtol=1e-6, atol=1e-6)
                        says = pads_as_same(((before, after), (0, 0)), (size, 1), (k, 1), (s, 1))
                        assert says == equal, (size, k, s, before, after)
                        agreed += says
    assert agreed > 20
    assert not pads_as_same(((0, 1), (0, 1)), (None, 8), (3, 3), (2, 2))  # an unknown size: never


# ------------------------------------------------------------------ keras.ops operations between the layers
def ops_and_layers():
    """The same functional network twice: with keras.ops between its layers, and with a layer for each."""
    keras.utils.set_random_seed(27)

    def build(with_ops: bool) -> keras.Model:
        conv = [keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name=f"c{i}") for i in (1, 2)]
        head = keras.layers.Dense(3, use_bias=False, name="head")
        inp = keras.Input((SIZE, SIZE, 3))
        if with_ops:
            h = keras.ops.relu(conv[0](inp * 2.0))
            h = keras.ops.relu(h + conv[1](h))
            return keras.Model(inp, head(keras.ops.mean(h, axis=(1, 2))))
        h = keras.layers.ReLU()(conv[0](keras.layers.Rescaling(2.0)(inp)))
        h = keras.layers.ReLU()(keras.layers.Add()([h, conv[1](h)]))
        return keras.Model(inp, head(keras.layers.GlobalAveragePooling2D()(h)))

    with_ops, with_layers = build(True), build(False)
    for name in ("c1", "c2", "head"):
        with_layers.get_layer(name).set_weights(with_ops.get_layer(name).get_weights())
    return with_ops, with_layers


@pytest.mark.parametrize("method, options", [("lrp", {"rule": "epsilon", "epsilon": 1e-9}), ("lrp", {}),
                                             ("guided_backprop", {}), ("deconvnet", {})])  # fmt: skip
def test_keras_ops_between_layers_get_the_rules_of_the_layers_that_do_the_same(method, options):
    with_ops, with_layers = ops_and_layers()
    x = images(3, SIZE)
    ours = ce.explain(with_ops, x, method, target=1, **options)
    ref = ce.explain(with_layers, x, method, target=1, **options)
    np.testing.assert_allclose(
        ours.attributions, ref.attributions, rtol=1e-4, atol=1e-6 * np.abs(ref.attributions).max()
    )
    if options.get("rule") == "epsilon":
        conserved(with_ops, x, target=1)  # the residual sum splits it, the scaling and ReLUs pass it on


def test_an_operation_without_a_rule_is_named():
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(4, 3, name="c1")(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(keras.ops.exp(h))))
    with pytest.raises(ce.CnnExposedError, match="keras.ops operation 'exp' \\(Exp\\).*gradient method"):
        ce.explain(model, images(1, SIZE), "lrp")
    assert np.isfinite(ce.explain(model, images(1, SIZE), "guided_backprop").maps).all()
