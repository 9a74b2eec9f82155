"""Feature visualisation: objectives rise, the Fourier image is smoother, runs are reproducible, errors clear."""

from __future__ import annotations

import importlib

import keras
import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed.visualisation import (
    affine_colour_map,
    channel,
    class_logit,
    diversity,
    evaluate_objective,
    layer_objective,
    neuron,
    render,
    visualise_classes,
    visualise_filters,
)

FAST = dict(steps=60, size=32, progress=False, learning_rate=0.1)


# Leaky ReLUs: a random network's plain ReLU units are often dead on a grey start image (zero gradient),
# which would test the random initialisation rather than the optimiser.
ACT = "leaky_relu"


def conv_model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation=ACT, name="c1")(inp)
    h = keras.layers.Conv2D(8, 3, padding="same", activation=ACT, name="c2")(h)
    out = keras.layers.Dense(3, activation="softmax", name="head")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inp, out)


def nested_model():
    keras.utils.set_random_seed(4)
    base = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(8, 3, activation=ACT, name="c1"),
            keras.layers.Conv2D(8, 3, activation=ACT, name="c2"),
        ],
        name="base",
    )
    head = [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")]
    return keras.Sequential([keras.Input((32, 32, 3)), base, *head])


@pytest.mark.parametrize("build, layer", [(conv_model, "c2"), (nested_model, "base/c2")])
def test_objectives_rise_well_above_the_random_start(build, layer):
    model = build()
    objectives = {
        "channel": (channel(layer, [0, 1]), 2),
        "neuron": (neuron(layer, [2, 3]), 2),
        "class": (class_logit([0, 2]), 2),
        "layer": (layer_objective(layer), 1),
    }
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    for name, (objective, n) in objectives.items():
        vis = render(model, objective, n, **FAST)
        # "much higher": above the best of 32 random-noise images, and above the start by more than half
        # the spread the objective shows over those images
        for i in range(n):
            item = objective_for_item(objective, name, layer, i)
            on_noise = evaluate_objective(model, item, noise)
            spread = on_noise.max() - on_noise.min()
            gain = vis.objective[i] - vis.start_objective[i]
            assert gain > 0.5 * spread, (name, i, vis.start_objective, vis.objective)
            assert vis.objective[i] > on_noise.max(), (name, i, on_noise.max(), vis.objective[i])


def objective_for_item(objective, name, layer, i):
    """The same objective for one image of the batch (indices taken per image)."""
    if name == "channel":
        return channel(layer, objective.channel_index[i])
    if name == "neuron":
        return neuron(layer, objective.channel_index[i])
    if name == "class":
        return class_logit(objective.class_index[i])
    return objective


def high_frequency_share(images: np.ndarray, cutoff: float = 0.25) -> float:
    """Share of the (mean-removed, grayscale) power at spatial frequencies above ``cutoff`` cycles/pixel."""
    gray = images.astype(np.float64).mean(-1)
    gray -= gray.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(gray)) ** 2
    f = np.fft.fftfreq(images.shape[1])
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    return float(power[:, radius > cutoff].sum() / power.sum())


def pattern_model(size=32):
    """Zero-mean kernels, like trained edge and texture detectors: flat colour does not excite them."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(8, 5, padding="same", activation=ACT, name="c1")(inp)
    h = keras.layers.Conv2D(8, 5, padding="same", activation=ACT, name="c2")(h)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))
    for name in ("c1", "c2"):
        kernel, bias = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights([kernel - kernel.mean(axis=(0, 1, 2), keepdims=True), bias * 0])
    return model


def test_fourier_images_have_less_high_frequency_power_than_pixels():
    model = pattern_model()
    kw = dict(steps=60, size=32, progress=False, seed=1)
    fourier = visualise_filters(model, "c2", 4, parameterisation="fourier", **kw)
    pixels = visualise_filters(model, "c2", 4, parameterisation="pixels", **kw)
    hf_fourier, hf_pixels = high_frequency_share(fourier.images), high_frequency_share(pixels.images)
    # measured: about 0.18 against 0.42 of the power above 0.25 cycles/pixel
    assert hf_fourier < 0.6 * hf_pixels, (hf_fourier, hf_pixels)
    assert np.all(fourier.objective > fourier.start_objective)


def test_reproducible_distinct_and_valid():
    model = conv_model()
    a = visualise_filters(model, "c1", [0, 1, 2], seed=5, **FAST)
    b = visualise_filters(model, "c1", [0, 1, 2], seed=5, **FAST)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.objective, b.objective)
    c = visualise_filters(model, "c1", [0, 1, 2], seed=6, **FAST)
    assert not np.array_equal(a.images, c.images)
    assert a.images.dtype == np.uint8 and a.images.shape == (3, 32, 32, 3)
    assert a.images.min() >= 0 and a.images.max() <= 255 and a.images.std() > 5
    assert pairwise_difference(a.images) > 5
    assert a.labels == ["filter 0", "filter 1", "filter 2"] and a.layer == "c1"


def test_objective_is_the_mean_activation_on_the_final_image_through_preprocess():
    model = conv_model()
    prep = lambda im: im.astype(np.float32) / 127.5 - 1.0  # noqa: E731
    vis = visualise_filters(model, "c2", [1, 4], preprocess=prep, **FAST)
    acts = keras.Model(model.inputs[0], model.get_layer("c2").output)(prep(vis.images)).numpy()
    np.testing.assert_allclose(vis.objective, [acts[0, ..., 1].mean(), acts[1, ..., 4].mean()], rtol=1e-4)


def test_batches_and_steps():
    model = conv_model()
    vis = visualise_filters(model, "c2", 5, batch_size=2, **FAST)
    assert vis.images.shape[0] == 5 and vis.history.shape == (FAST["steps"], 5) and vis.params["steps"] == FAST["steps"]


def test_objective_algebra_and_diversity():
    model = conv_model()
    base = channel("c2", 0)
    combo = 2.0 * base - base + 0.0
    a = render(model, base, 1, steps=1, size=32, progress=False, seed=0)
    b = render(model, combo, 1, steps=1, size=32, progress=False, seed=0)
    np.testing.assert_allclose(a.start_objective, b.start_objective, rtol=1e-5)
    plain = render(model, channel("c2", [0, 0, 0]), 3, **FAST)
    diverse = render(model, channel("c2", [0, 0, 0]) + 5.0 * diversity("c2"), 3, **FAST)
    assert pairwise_difference(diverse.images) > pairwise_difference(plain.images)


def pairwise_difference(images):
    pairs = ((0, 1), (0, 2), (1, 2))
    return np.mean([np.abs(images[i].astype(int) - images[j]).mean() for i, j in pairs])


def test_class_visualisation_titles():
    model = conv_model()
    vis = visualise_classes(model, [2, 0], ["pool", "bathroom", "bedroom"], **FAST)
    assert vis.labels == ["bedroom", "pool"]
    assert np.all(vis.objective > vis.start_objective)


def head_model(units: int, activation: str):
    keras.utils.set_random_seed(5)
    inp = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation=ACT, name="c1")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(units, activation=activation, name="head")(h))


def test_class_visualisation_of_a_binary_sigmoid_model_maximises_each_class_logit():
    # One sigmoid unit z: class 1's logit is z, class 0's is -z (as in attribution).
    model = head_model(1, "sigmoid")
    vis = visualise_classes(model, [0, 1], ["cat", "dog"], **FAST)
    assert vis.labels == ["cat", "dog"]
    z = keras.Model(model.inputs, model.get_layer("head").output)  # probabilities; their logit is z
    p = z.predict(vis.images.astype("float32") / 255.0, verbose=0)[:, 0]
    assert p[0] < p[1], p  # class 0's image pushed z down, class 1's pushed it up
    assert np.all(vis.objective > vis.start_objective)
    np.testing.assert_allclose(vis.objective, [-np.log(p[0] / (1 - p[0])), np.log(p[1] / (1 - p[1]))], rtol=1e-3)
    with pytest.raises(ce.ModelError, match="the model has 2 classes"):
        visualise_classes(model, [2], **FAST)


def test_class_visualisation_of_a_multi_label_model_maximises_that_units_logit():
    model = head_model(4, "sigmoid")
    vis = visualise_classes(model, [3], **FAST)
    p = model.predict(vis.images.astype("float32") / 255.0, verbose=0)[0]
    np.testing.assert_allclose(vis.objective[0], np.log(p[3] / (1 - p[3])), rtol=1e-3)
    assert vis.objective[0] > vis.start_objective[0]


@pytest.mark.parametrize("size", [33, 35])
@pytest.mark.parametrize("parameterisation", ["fourier", "pixels"])
def test_odd_image_sizes(size, parameterisation):
    # 299 x 299 (InceptionV3, Xception) and other odd sizes: the half spectrum of an odd width is as wide as
    # that of the even width below it, so the inverse FFT must be told the size.
    vis = visualise_filters(conv_model(), "c2", [0, 1], size=size, parameterisation=parameterisation, **{
        k: v for k, v in FAST.items() if k != "size"
    })  # fmt: skip
    assert vis.images.shape == (2, size, size, 3)
    assert np.all(vis.objective > vis.start_objective)


def gray_model():
    """A grayscale classifier with separable convolutions (like a small face-expression model)."""
    keras.utils.set_random_seed(6)
    inp = keras.Input((24, 24, 1))
    h = keras.layers.Conv2D(6, 3, padding="same", activation=ACT, name="c1")(inp)
    h = keras.layers.SeparableConv2D(6, 3, padding="same", activation=ACT, name="s1")(h)
    out = keras.layers.Dense(7, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inp, out)


@pytest.mark.parametrize("parameterisation", ["fourier", "pixels"])
def test_grayscale_models_get_one_channel_images(parameterisation, tmp_path):
    model = gray_model()
    vis = visualise_filters(model, "s1", [0, 1, 2], parameterisation=parameterisation, **FAST)
    assert vis.images.shape == (3, 32, 32, 1) and vis.images.dtype == np.uint8
    assert np.all(vis.objective > vis.start_objective)
    # The objective is the model's own on the final image (a gray image, scaled as preprocess would).
    x = vis.images.astype("float32") / 255.0
    np.testing.assert_allclose(
        evaluate_objective(model, channel("s1", [0, 1, 2]), vis.images), vis.objective, rtol=1e-4, atol=1e-6
    )
    assert x.std() > 0.01  # not flat grey
    vis.save_grid(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 1000
    cls = visualise_classes(model, [4], **FAST)
    assert cls.images.shape == (1, 32, 32, 1) and cls.objective[0] > cls.start_objective[0]


def test_affine_colour_map_of_a_grayscale_preprocessing():
    m, b = affine_colour_map(lambda im: im.astype(np.float32) / 127.5 - 1.0, channels=1)
    np.testing.assert_allclose(m, [[1 / 127.5]], rtol=1e-6)
    np.testing.assert_allclose(b, [-1.0], atol=1e-6)


def test_affine_colour_maps_of_common_preprocessings():
    m, b = affine_colour_map(keras.applications.mobilenet_v2.preprocess_input)
    np.testing.assert_allclose(m, np.eye(3) / 127.5, atol=1e-6)
    np.testing.assert_allclose(b, -1.0, atol=1e-6)
    m, b = affine_colour_map(keras.applications.vgg16.preprocess_input)  # Caffe: RGB->BGR, minus the mean
    np.testing.assert_allclose(m, np.eye(3)[::-1], atol=1e-6)
    np.testing.assert_allclose(b, [-103.939, -116.779, -123.68], atol=1e-3)
    with pytest.raises(ce.CnnExposedError, match="not a per-pixel affine"):
        affine_colour_map(lambda im: np.sqrt(im.astype(np.float32)))


def test_bad_input():
    model = conv_model()
    with pytest.raises(ce.LayerNotFoundError, match="'c2'"):
        visualise_filters(model, "c3", 2, **FAST)
    with pytest.raises(ce.CnnExposedError, match="Filter index 8 is out of range.*8 filters"):
        visualise_filters(model, "c2", [0, 8], **FAST)
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(2, 3, name="conv")(inp)
    flat_mean = keras.layers.Lambda(lambda t: keras.ops.mean(t, axis=(1, 2, 3)), name="scalar")(h)
    out = keras.layers.Dense(2)(keras.layers.Reshape((1,))(flat_mean))
    odd = keras.Model(inp, out)
    with pytest.raises(ce.CnnExposedError, match="no channels axis"):
        visualise_filters(odd, "scalar", 1, **FAST)
    with pytest.raises(ce.CnnExposedError, match="parameterisation must be one of"):
        visualise_filters(model, "c2", 1, parameterisation="wavelet", **FAST)


def test_one_resampling_equals_pad_transform_crop():
    """The step resamples the unpadded image; it must equal Lucid's pad (grey), transform, crop."""
    from keras import ops

    from cnn_exposed.visualisation import Transforms

    size, t = 24, Transforms(pad=5, jitter=3, jitter2=2)
    images = np.random.default_rng(0).random((6, size, size, 3), dtype=np.float32)
    matrices = t.sample(6, size, np.random.default_rng(1))
    ours = np.asarray(t.apply(images, matrices, size))
    # the same transforms, written for the padded image: undo the offset that folds the padding in
    padded_matrices = matrices.copy()
    for m in padded_matrices:
        a = np.array([[m[0], m[1]], [m[3], m[4]]])
        m[[2, 5]] -= (a - np.eye(2)) @ np.array([t.pad, t.pad])
    padded = ops.pad(images, ((0, 0), (t.pad,) * 2, (t.pad,) * 2, (0, 0)), constant_values=0.5)
    moved = ops.image.affine_transform(padded, padded_matrices, "bilinear", "constant", fill_value=0.5)
    reference = np.asarray(moved)[:, t.pad : t.pad + size, t.pad : t.pad + size]
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert np.abs(ours - images).max() > 0.1  # the transforms really move the image


def dead_relu_model():
    """Plain ReLUs whose biases keep every unit silent on a grey image: the plain gradient there is 0."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    kernel, _ = model.get_layer("c1").get_weights()
    grey, most = 0.5 * kernel.sum(axis=(0, 1, 2)), np.maximum(kernel, 0).sum(axis=(0, 1, 2))
    model.get_layer("c1").set_weights([kernel, -grey - 0.2 * (most - grey)])  # z < 0 near grey, not everywhere
    return model


def test_redirected_relu_revives_silent_filters_in_its_first_steps():
    model = dead_relu_model()
    kw = dict(steps=30, size=32, progress=False, learning_rate=0.1)
    plain = visualise_filters(model, "c1", 4, redirect_steps=0, **kw)
    np.testing.assert_array_equal(plain.objective, 0.0)  # no gradient: nothing moves a silent filter
    revived = visualise_filters(model, "c1", 4, **kw)  # redirected for the first 16 steps
    assert np.all(revived.objective > 0), revived.objective


def test_a_repeated_call_reuses_the_compiled_step():
    render_module = importlib.import_module("cnn_exposed.visualisation.render")  # the package exports render()

    model = conv_model()
    first = visualise_filters(model, "c2", [0, 1], seed=2, **FAST)
    built = render_module.cache_info()["built"]
    again = visualise_filters(model, "c2", [0, 1], seed=2, **FAST)
    assert render_module.cache_info()["built"] == built  # served from the cache
    np.testing.assert_array_equal(again.images, first.images)  # a reset program starts afresh
    other = visualise_filters(model, "c2", [2, 3], seed=2, **FAST)
    assert render_module.cache_info()["built"] == built + 1 and not np.array_equal(other.images, first.images)


_MIX = np.array([[0.5, 0.3, 0.0], [0.0, 1.0, 0.2], [0.1, 0.0, 0.7]], dtype=np.float32)  # not symmetric


@pytest.mark.parametrize(
    "prep",
    [
        keras.applications.mobilenet_v2.preprocess_input,
        keras.applications.vgg16.preprocess_input,
        lambda im: im.astype(np.float32) @ _MIX.T / 255.0 + np.float32(0.25),
    ],
    ids=["per-channel scaling", "caffe BGR (channel swap)", "colour mixing"],
)
def test_optimised_images_reach_the_model_as_preprocess_would_map_them(prep):
    """The step maps [0, 1] images to model input without calling preprocess: by an element-wise scaling
    when the colour map is diagonal, by a matrix product otherwise. Both must equal preprocess itself."""
    runner_module = importlib.import_module("cnn_exposed.visualisation.render")
    runner = runner_module.ObjectiveRunner(conv_model(), channel("c1", 0), prep, 32)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    ours = np.asarray(runner.to_model_input(images.astype(np.float32) / 255.0))
    np.testing.assert_allclose(ours, prep(images.astype(np.float32)), rtol=1e-5, atol=1e-3)


def bn_model():
    """Convolutions (3x3, 1x1, strided, depthwise), most followed by batch normalisation with non-trivial
    statistics, two after zero padding, nested in a Sequential: what the optimisation steps fold, pad and
    differentiate their own way."""
    keras.utils.set_random_seed(6)
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="c1")(inp)
    h = keras.layers.ReLU(6.0, name="r1")(keras.layers.BatchNormalization(name="bn1")(h))
    h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(h)
    h = keras.layers.ReLU(6.0, name="r2")(keras.layers.BatchNormalization(name="bn2")(h))
    h = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="pad1")(h)  # MobileNetV2's stride-2 pattern
    h = keras.layers.DepthwiseConv2D(3, strides=2, use_bias=False, name="dw2")(h)
    h = keras.layers.Conv2D(6, 1, name="pw")(h)
    h = keras.layers.BatchNormalization(name="bn3")(h)
    h = keras.layers.ZeroPadding2D(((1, 2), (2, 1)), name="pad2")(h)
    h = keras.layers.Conv2D(5, 3, activation="relu", name="c3")(h)
    base = keras.Model(inp, h, name="base")
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            rng = np.random.default_rng(n)
            layer.set_weights(
                [rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n), rng.uniform(0.2, 3, n)]
            )
    head = [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax", name="head")]
    return keras.Sequential([keras.Input((16, 16, 3)), base, *head])


@pytest.mark.parametrize(
    "objective",
    [
        channel("base/r2", [0, 1, 2]),
        channel("base/pw", [0, 3, 5]),
        channel("base/c3", [1, 2, 4]),
        class_logit([0, 1, 2]),
    ],
    ids=["relu after folded BN", "conv read before its BN", "padded 3x3 conv after folded BN", "class logit"],
)
def test_optimisation_steps_compute_the_models_own_objective_and_gradient(objective):
    """The steps run the model faster than its own layers (batch normalisation folded into the convolution
    before it, zero padding done inside the convolution after it, stride-1 convolutions differentiated by a
    transposed forward convolution): the objective and its gradient must be the model's own. A layer that
    is read keeps its own output (no BN folded into it)."""
    import tensorflow as tf

    runner_module = importlib.import_module("cnn_exposed.visualisation.render")
    runner = runner_module.ObjectiveRunner(bn_model(), objective, None, 16)
    x = tf.constant(np.random.default_rng(0).uniform(0, 1, (3, 16, 16, 3)).astype(np.float32))
    results = []
    for kw in ({"exact": True}, {}, {"redirect": True}):
        with tf.GradientTape() as tape:
            tape.watch(x)
            values = runner.values(x, **kw)
            total = tf.reduce_sum(values)
        results.append((values.numpy(), tape.gradient(total, x).numpy()))
    (exact, grad), (fast, fast_grad), (redirected, _) = results
    assert np.abs(exact).max() > 1e-3 and np.abs(grad).max() > 1e-3  # a live objective and gradient
    np.testing.assert_allclose(fast, exact, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(redirected, exact, rtol=1e-5, atol=1e-6)  # same forward pass
    np.testing.assert_allclose(fast_grad, grad, rtol=1e-4, atol=1e-5 * np.abs(grad).max())


def test_non_square_models_everywhere():
    keras.utils.set_random_seed(7)
    inp = keras.Input((24, 40, 3))
    h = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation=ACT, name="c1")(inp)
    h = keras.layers.Conv2D(6, 3, padding="same", activation=ACT, name="c2")(h)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h)))
    x = np.random.default_rng(0).uniform(0, 1, (2, 24, 40, 3)).astype("float32")
    for method in ("gradcam", "integrated_gradients", "lrp", "occlusion"):
        exp = ce.explain(model, x, method)
        assert exp.maps.shape == (2, 24, 40), method
        assert ce.draw_map(exp, 0).shape == (24, 40, 3)
    # Feature visualisation renders square images and resizes them to the model's input on the way in.
    vis = visualise_filters(model, "c2", [0, 1], **FAST)
    assert vis.images.shape == (2, 32, 32, 3) and np.all(vis.objective > vis.start_objective)
