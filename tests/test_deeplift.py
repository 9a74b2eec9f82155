"""DeepLIFT (Rescale rule) and DeepSHAP: summation to delta, the known equalities, hand-written NumPy references."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

import cnn_exposed as ce

SIZE = 12


def randomise_batch_norm(model, seed: int = 0) -> None:
    """Batch normalisation that does something (inference: its moving statistics), to fold or to run."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.2, shape), rng.normal(0, 0.2, shape),
                               rng.uniform(0.5, 1.5, shape)])  # fmt: skip


def residual_cnn() -> keras.Model:
    """ReLU CNN with batch norm (folded, and standalone after an Add), a skip connection, max and average
    pooling, padding; the softmax a layer of its own so that the logits can be read by Keras itself."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((SIZE, SIZE, 3))
    h = layers.ZeroPadding2D(1)(inp)
    h = layers.Conv2D(8, 3, name="c1")(h)
    h = layers.BatchNormalization()(h)
    h = layers.ReLU()(h)
    skip = layers.Conv2D(8, 3, padding="same", activation="relu", bias_initializer="random_normal")(h)
    h = layers.Add()([h, skip])
    h = layers.BatchNormalization()(h)
    h = layers.MaxPooling2D()(h)
    h = layers.Conv2D(8, 3, activation="relu", bias_initializer="random_normal")(h)
    h = layers.AveragePooling2D(2)(h)
    h = layers.Flatten()(h)
    h = layers.Dense(8, activation="relu", bias_initializer="random_normal")(h)
    h = layers.Dense(3, bias_initializer="random_normal", name="logits")(h)
    model = keras.Model(inp, layers.Activation("softmax")(h))
    randomise_batch_norm(model)
    return model


def images(n: int = 3, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def logits_of(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.Model(model.inputs, model.get_layer("logits").output)([x]), np.float64)


@pytest.mark.parametrize("baseline", ["black", "blur", "noise", "array"])
def test_attributions_sum_to_the_difference_of_the_logits(baseline):
    model = residual_cnn()
    x = images(3)
    reference = np.random.default_rng(9).random(x.shape[1:], dtype=np.float32) if baseline == "array" else baseline
    exp = ce.explain(model, x, "deeplift", baseline=reference, target=[0, 1, 2], progress=False)
    b = {"black": np.zeros_like(x), "array": np.broadcast_to(reference, x.shape)}.get(baseline)
    if b is None:  # integrated gradients' baselines, which DeepLIFT shares
        b = ce.IntegratedGradients(model, baseline=baseline).baselines(x)
    rows = np.arange(3)
    delta = logits_of(model, x)[rows, exp.targets] - logits_of(model, b)[rows, exp.targets]
    total = exp.attributions.reshape(3, -1).astype(np.float64).sum(axis=1)
    scale = np.abs(logits_of(model, x)).max()  # rounding is relative to the logits, not to their difference
    np.testing.assert_allclose(total, delta, rtol=1e-4, atol=1e-5 * scale)
    assert exp.completeness_error.max() < 1e-3
    np.testing.assert_allclose(exp.extras["baseline_scores"], logits_of(model, b)[rows, exp.targets], atol=1e-5)


def test_zero_baseline_on_a_bias_free_relu_network_is_gradient_times_input():
    """Ancona et al. 2018: with a zero reference every reference activation is 0, so Rescale's Δy/Δx is the
    ReLU's gradient (and max pooling's split routes like its gradient)."""
    keras.utils.set_random_seed(5)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        layers.Conv2D(8, 3, activation="relu", use_bias=False),
        layers.MaxPooling2D(),
        layers.Conv2D(8, 3, padding="same", use_bias=False),
        layers.ReLU(),
        layers.GlobalAveragePooling2D(),
        layers.Dense(6, activation="relu", use_bias=False),
        layers.Dense(3, activation="softmax", use_bias=False),
    ])  # fmt: skip
    x = images(3) - 0.3
    ours = ce.explain(model, x, "deeplift", baseline=0.0, target=1, progress=False).attributions
    want = ce.explain(model, x, "gradient_x_input", target=1, progress=False).attributions
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    # from another reference they differ: the reference's activations really enter
    other = ce.explain(model, x, "deeplift", baseline=0.2, target=1, progress=False).attributions
    assert np.abs(other - want).max() > 0.05 * np.abs(want).max()


def test_one_hidden_sigmoid_layer_equals_the_formula():
    """attr = (W1 · (W2[:, t] ⊙ (σ(z) − σ(z′)) / (z − z′))) ⊙ (x − x′), the network written out in NumPy."""
    keras.utils.set_random_seed(6)
    model = keras.Sequential([
        keras.Input((4, 4, 2)), layers.Flatten(),
        layers.Dense(6, activation="sigmoid", bias_initializer="random_normal"),
        layers.Dense(3, bias_initializer="random_normal"),
    ])  # fmt: skip
    (w1, b1), (w2, _) = (model.layers[i].get_weights() for i in (1, 2))
    rng = np.random.default_rng(1)
    x, ref = rng.normal(size=(2, 4, 4, 2)).astype(np.float32), rng.normal(size=(4, 4, 2)).astype(np.float32)
    exp = ce.explain(model, x, "deeplift", baseline=ref, target=2, progress=False)
    flat, flat_ref = x.reshape(2, -1).astype(np.float64), ref.reshape(-1).astype(np.float64)
    z, z_ref = flat @ w1 + b1, flat_ref @ w1 + b1
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    m = w2[:, 2] * (sigmoid(z) - sigmoid(z_ref)) / (z - z_ref)
    want = (m @ w1.T) * (flat - flat_ref)
    np.testing.assert_allclose(exp.attributions.reshape(2, -1), want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def numpy_deeplift(weights, x, ref, target):
    """DeepLIFT (Rescale, captum's max-pooling split) of Conv2D(3x3 valid, ReLU) -> MaxPool(2) -> Flatten ->
    Dense(ReLU) -> Dense, by hand."""
    (k1, c1), (w2, b2), (w3, _) = weights
    relu = lambda v: np.maximum(v, 0)  # noqa: E731

    def conv(v):  # (H, W, C) -> (H-2, W-2, F)
        h, w = v.shape[0] - 2, v.shape[1] - 2
        return sum(np.einsum("hwc,cf->hwf", v[i : i + h, j : j + w], k1[i, j]) for i in range(3) for j in range(3)) + c1

    def forward(v):
        z1 = conv(v)
        a1 = relu(z1)
        h, w, f = a1.shape
        windows = a1[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, f).transpose(0, 2, 4, 1, 3)
        windows = windows.reshape(h // 2, w // 2, f, 4)
        z2 = windows.max(-1).reshape(-1) @ w2 + b2
        return z1, a1, windows, z2

    def rescale(z, z_ref, fn, grad):
        dz = z - z_ref
        small = np.abs(dz) < 1e-10
        return np.where(small, grad, (fn(z) - fn(z_ref)) / np.where(small, 1, dz))

    (z1, a1, win, z2), (z1r, _, winr, z2r) = forward(x), forward(ref)
    m_z2 = w3[:, target] * rescale(z2, z2r, relu, z2 > 0)
    m_pool = (w2 @ m_z2).reshape(win.shape[:3])
    y, yr = win.max(-1), winr.max(-1)
    top = np.maximum(y, yr)
    contrib, grad = np.zeros(win.shape), np.zeros(win.shape)
    ia, ib = win.argmax(-1)[..., None], winr.argmax(-1)[..., None]
    np.put_along_axis(grad, ia, m_pool[..., None], -1)
    contrib += grad * (top - yr)[..., None]
    ib_part = np.zeros(win.shape)
    np.put_along_axis(ib_part, ib, (m_pool * (y - top))[..., None], -1)
    contrib += ib_part
    dwin = win - winr
    small = np.abs(dwin) < 1e-10
    m_win = np.where(small, grad, contrib / np.where(small, 1, dwin))
    h, w, f = a1.shape
    m_a1 = np.zeros(a1.shape)
    m_a1[: h // 2 * 2, : w // 2 * 2] = (
        m_win.reshape(h // 2, w // 2, f, 2, 2).transpose(0, 3, 1, 4, 2).reshape(h // 2 * 2, w // 2 * 2, f)
    )
    m_z1 = m_a1 * rescale(z1, z1r, relu, z1 > 0)
    m_x = np.zeros(x.shape)
    for i in range(3):
        for j in range(3):
            m_x[i : i + h, j : j + w] += np.einsum("hwf,cf->hwc", m_z1, k1[i, j])
    return m_x * (x - ref), (relu(z2) - relu(z2r)) @ w3[:, target]


def test_a_conv_relu_maxpool_dense_network_equals_numpy_deeplift():
    keras.utils.set_random_seed(8)
    model = keras.Sequential([
        keras.Input((9, 9, 2)),
        layers.Conv2D(4, 3, activation="relu", bias_initializer="random_normal"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(5, activation="relu", bias_initializer="random_normal"),
        layers.Dense(3, use_bias=False),
    ])  # fmt: skip
    weights = [model.layers[i].get_weights() for i in (0, 3)] + [model.layers[4].get_weights() + [None]]
    rng = np.random.default_rng(2)
    x, ref = rng.normal(size=(3, 9, 9, 2)).astype(np.float32), rng.normal(size=(9, 9, 2)).astype(np.float32)
    exp = ce.explain(model, x, "deeplift", baseline=ref, target=[0, 1, 2], progress=False)
    for i in range(3):
        want, delta = numpy_deeplift(weights, x[i].astype(np.float64), ref.astype(np.float64), i)
        np.testing.assert_allclose(exp.attributions[i], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
        np.testing.assert_allclose(want.sum(), delta, rtol=1e-9)  # the reference itself sums to delta


def modern_cnn(middle_softmax: bool = False) -> keras.Model:
    """The nonlinearities of MobileNetV3, EfficientNet and ConvNeXt: swish, hard-swish, GELU, a
    squeeze-and-excitation gate, layer normalisation, global max pooling, tanh, keras.ops in between."""
    keras.utils.set_random_seed(11)
    inp = keras.Input((SIZE, SIZE, 3))
    h = layers.Conv2D(8, 3, strides=2, activation="swish", bias_initializer="random_normal")(inp)
    gate = layers.GlobalAveragePooling2D(keepdims=True)(h)
    gate = layers.Conv2D(4, 1, activation="relu")(gate)
    gate = layers.Conv2D(8, 1, activation="hard_sigmoid", bias_initializer="random_normal")(gate)
    h = layers.Multiply()([h, gate])
    h = layers.DepthwiseConv2D(3, padding="same", bias_initializer="random_normal")(h)
    h = layers.LayerNormalization(epsilon=1e-6, beta_initializer="random_normal", gamma_initializer="random_normal")(h)
    h = layers.Activation("softmax" if middle_softmax else "gelu")(h)
    h = layers.Activation("hard_swish")(h * 2.0 + keras.ops.sigmoid(h))
    h = layers.GlobalMaxPooling2D()(h)
    h = layers.Dense(6, activation="tanh", bias_initializer="random_normal")(h)
    return keras.Model(inp, layers.Dense(3, bias_initializer="random_normal", name="logits")(h))


def test_swish_gates_layer_norm_and_gelu_keep_summation_to_delta():
    model = modern_cnn()
    x = images(3)
    exp = ce.explain(model, x, "deeplift", baseline="blur", target=[0, 1, 2], progress=False)
    assert exp.completeness_error.max() < 1e-4, exp.completeness_error
    b = ce.IntegratedGradients(model, baseline="blur").baselines(x)
    rows = np.arange(3)
    delta = logits_of(model, x)[rows, exp.targets] - logits_of(model, b)[rows, exp.targets]
    np.testing.assert_allclose(exp.attributions.reshape(3, -1).sum(1), delta, rtol=1e-4, atol=1e-5)
    # a softmax inside the network takes its gradient: summation to delta is then visibly lost (so the check
    # above can fail)
    inexact = ce.explain(modern_cnn(True), x, "deeplift", baseline="blur", target=[0, 1, 2], progress=False)
    assert inexact.completeness_error.max() > 1e-3


def test_deepshap_is_the_mean_of_deeplift_over_its_background():
    model = residual_cnn()
    x = images(2) * 255.0
    background = images(3, seed=4) * 255.0  # raw pixels, as the images: preprocess applies to both

    def preprocess(v):
        return np.asarray(v, np.float32) / 127.5 - 1.0

    shap = ce.explain(model, x, "deepshap", background=background, preprocess=preprocess, target=[2, 0],
                      batch_size=4, progress=False)  # fmt: skip
    single = [
        ce.explain(model, x, "deeplift", baseline=preprocess(b), preprocess=preprocess, target=[2, 0], progress=False)
        for b in background
    ]
    want = np.mean([e.attributions for e in single], axis=0)
    np.testing.assert_allclose(shap.attributions, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    reference_mean = np.mean([e.extras["baseline_scores"] for e in single], axis=0)
    np.testing.assert_allclose(shap.extras["baseline_scores"], reference_mean, rtol=1e-5)
    assert shap.completeness_error.max() < 1e-4  # against f(x) − mean f(background)
    # integrated gradients' baselines, each image's own
    default = ce.explain(model, x, "deepshap", background=("black", "blur"), preprocess=preprocess, target=[2, 0],
                         progress=False)  # fmt: skip
    pair = [ce.explain(model, x, "deeplift", baseline=b, preprocess=preprocess, target=[2, 0], progress=False)
            for b in ("black", "blur")]  # fmt: skip
    want = (pair[0].attributions + pair[1].attributions) / 2
    np.testing.assert_allclose(default.attributions, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_results_do_not_depend_on_batch_size():
    model = modern_cnn()
    x, background = images(3), images(4, seed=5)
    runs = [ce.explain(model, x, "deepshap", background=background, batch_size=n, progress=False) for n in (1, 5, 64)]
    for other in runs[1:]:
        np.testing.assert_array_equal(other.targets, runs[0].targets)
        # float rounding only: the convolutions' kernels differ with the batch (on this host 1.6e-7 where the
        # largest attribution is ~1e-3); a batch that leaked into another image would differ by its whole size
        np.testing.assert_allclose(
            other.attributions, runs[0].attributions, atol=1e-3 * np.abs(runs[0].attributions).max()
        )
        np.testing.assert_allclose(other.completeness_error, runs[0].completeness_error, atol=1e-5)


def test_bad_baselines_and_backgrounds_are_refused_clearly():
    model = residual_cnn()
    with pytest.raises(ValueError, match="baseline must be one of"):
        ce.explain(model, images(1), "deeplift", baseline="white")
    with pytest.raises(ValueError, match="background must be images or baselines"):
        ce.explain(model, images(1), "deepshap", background=["black", "grey"])
    with pytest.raises(ce.InputError):
        ce.explain(model, images(1), "deepshap", background=images(2, size=SIZE + 2))
