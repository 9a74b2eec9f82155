"""Models built under a mixed-precision policy ("mixed_float16", "mixed_bfloat16"): every method, feature
visualisation, TCAV, the metrics, the audit and the CLI run on them and agree with the model's float32 twin (the
same weights built under "float32") as closely as the precision allows.

Tolerances. float16 has a 10-bit mantissa (relative rounding ~5e-4), bfloat16 7 bits (~4e-3). The input, every
weight and every activation is rounded, and the errors add up through the layers; a gradient at the input also
flips the odd ReLU that sits near zero, which moves a few pixels a lot. So maps are compared as a whole: their
correlation with the float32 map and their relative L2 error ||a - b|| / ||a||. Measured on this model
(2 images): float16 correlation >= 0.9992, error <= 0.046 (occlusion; the gradient methods <= 0.015, CAMs and LRP
<= 0.001); bfloat16 correlation >= 0.993, error <= 0.124 (saliency, gradient x input), except occlusion
(0.937, 0.37): its map is the difference of two logits each rounded to 2**-8 of itself, and the drops are a
few per cent of the logit. The bounds below leave about 2x room; a map computed with a wrong kernel, a lost
scale or an unconnected layer correlates near 0 and fails them.

The global dtype policy leaks into every later test of the process: models are built inside ``policy()``,
which always restores "float32", once per module.
"""

from __future__ import annotations

import contextlib
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import cnn_exposed as ce
from cnn_exposed.cli import main
from cnn_exposed.engine import Engine

POLICIES = ("mixed_float16", "mixed_bfloat16")
# policy -> (least correlation, largest relative L2 error); see the module docstring
TOLERANCE = {"mixed_float16": (0.998, 0.1), "mixed_bfloat16": (0.98, 0.25)}
BFLOAT16_OCCLUSION = (0.8, 0.6)
# The other mask samplers share occlusion's cause (differences of scores rounded to 2**-8): measured under bfloat16
# RISE (0.95, 0.0001: a mean probability, nearly flat), Sobol (0.966, 0.20), KernelSHAP (0.917, 0.32), LIME
# (0.943, 0.33); under float16 all within TOLERANCE.
BFLOAT16_DROPS = ("occlusion", "rise", "sobol", "kernel_shap", "lime")
# the mask samplers at small settings (CI time); quickshift (LIME's default) finds one superpixel in 16 px noise
OPTIONS = {
    "rise": {"samples": 500},
    "sobol": {"grid": 4, "designs": 16},
    "kernel_shap": {"samples": 200},
    "lime": {"samples": 200, "segmentation": "slic"},
}
SIZE = 16


@contextlib.contextmanager
def policy(name: str):
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def build(name: str, head: str = "activation") -> keras.Model:
    """A conv base (batch norm after a conv and a depthwise conv, zero padding before a depthwise conv and a conv)
    nested in a Sequential, with its softmax in float32 as Keras' guide recommends: a float32 ``Activation`` after
    the logits (``head="activation"``) or a float32 ``Dense`` with the softmax (``head="dense"``)."""
    with policy(name):
        keras.utils.set_random_seed(0)
        inp = keras.Input((SIZE, SIZE, 3))
        h = keras.layers.Conv2D(6, 3, padding="same", name="c1")(inp)
        h = keras.layers.BatchNormalization(name="bn1")(h)
        h = keras.layers.ReLU(name="r1")(h)
        h = keras.layers.ZeroPadding2D(1, name="pad1")(h)
        h = keras.layers.DepthwiseConv2D(3, name="dw")(h)
        h = keras.layers.BatchNormalization(name="bn2")(h)
        h = keras.layers.ReLU(name="r2")(h)
        h = keras.layers.ZeroPadding2D(1, name="pad2")(h)
        h = keras.layers.Conv2D(8, 3, name="c2")(h)
        h = keras.layers.ReLU(name="r3")(h)
        base = keras.Model(inp, h, name="base")
        if head == "activation":
            tail = [keras.layers.Dense(3, name="logits"), keras.layers.Activation("softmax", dtype="float32")]
        else:
            tail = [keras.layers.Dense(3, activation="softmax", dtype="float32", name="logits")]
        layers = [keras.Input((SIZE, SIZE, 3)), base, keras.layers.GlobalAveragePooling2D(name="gap"), *tail]
        return keras.Sequential(layers, name="net")


def batch(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, SIZE, SIZE, 3), dtype=np.float32)


def agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(correlation, relative L2 error)."""
    a, b = np.ravel(reference).astype(np.float64), np.ravel(other).astype(np.float64)
    return float(np.corrcoef(a, b)[0, 1]), float(np.linalg.norm(a - b) / np.linalg.norm(a))


def once(reference, key: str, compute):
    """The float32 twin's result ``key``, computed by the first policy's test and reused by the second."""
    cache = reference[1]
    if key not in cache:
        cache[key] = compute(reference[0])
    return cache[key]


def close(reference, other, name: str) -> bool:
    least, most = TOLERANCE[name]
    corr, error = agreement(reference, other)
    return corr >= least and error <= most


@pytest.fixture(scope="module")
def reference():
    model = build("float32")
    rng = np.random.default_rng(0)
    for layer in (model.get_layer("base").get_layer("bn1"), model.get_layer("base").get_layer("bn2")):
        shape = layer.gamma.shape  # batch normalisation that does something, to fold
        layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.1, shape), rng.normal(0, 0.1, shape),
                           rng.uniform(0.5, 1.5, shape)])  # fmt: skip
    return model, {}  # the model and its explanations, by method, computed once


@pytest.fixture(scope="module", params=POLICIES)
def twin(request, reference):
    model = build(request.param)
    model.set_weights(reference[0].get_weights())
    return request.param, model


def test_the_model_computes_in_low_precision(twin, reference):
    name, model = twin
    low = name.removeprefix("mixed_")
    base = model.get_layer("base")
    assert {base.get_layer(n).compute_dtype for n in ("c1", "dw", "c2")} == {low}
    assert model.layers[-1].compute_dtype == "float32" and model.get_layer("logits").compute_dtype == low
    assert Engine(model).precision == low and Engine(reference[0]).precision is None
    want, got = np.asarray(reference[0](batch())), np.asarray(model(batch()), np.float32)
    np.testing.assert_allclose(got, want, atol=0.02)  # the twins' probabilities agree: same weights


@pytest.mark.parametrize("method", ce.METHODS)
def test_every_method_agrees_with_the_float32_twin(twin, reference, method):
    name, model = twin
    opts = OPTIONS.get(method, {})
    want = once(reference, method, lambda m: ce.explain(m, batch(), method, progress=False, **opts))
    got = ce.explain(model, batch(), method, progress=False, **opts)
    for field in ("maps", "raw_maps", "scores", "probabilities", "attributions", "layer_maps"):
        value = getattr(got, field)
        if value is not None:
            assert value.dtype == np.float32 and np.isfinite(value).all(), field
    np.testing.assert_array_equal(got.targets, want.targets)
    signed = got.attributions if got.attributions is not None else got.raw_maps
    assert np.abs(signed).max() > 0 and got.maps.max() > 0
    corr, error = agreement(want.attributions if want.attributions is not None else want.raw_maps, signed)
    least, most = BFLOAT16_OCCLUSION if name == "mixed_bfloat16" and method in BFLOAT16_DROPS else TOLERANCE[name]
    assert corr >= least and error <= most, (corr, error)


def test_integrated_gradients_reports_its_own_completeness(twin):
    """The reported error is |Σ attributions − (f(x) − f(baseline))| / |f(x) − f(baseline)| with the mixed
    model's own logits, computed here through its layers (not the fast plan)."""
    name, model = twin
    x = batch()
    got = ce.explain(model, x, "integrated_gradients", baseline=0.0, progress=False)
    logits = keras.Model(model.inputs, model.get_layer("logits").output)
    targets = got.targets
    f_x = np.asarray(logits([x]), np.float64)[np.arange(len(x)), targets]
    f_b = np.asarray(logits([np.zeros_like(x)]), np.float64)[np.arange(len(x)), targets]
    delta = f_x - f_b
    total = got.attributions.reshape(len(x), -1).sum(axis=1)
    recomputed = np.abs(total - delta) / np.abs(delta)
    # the logits differ from the engine's by float16 / bfloat16 rounding of the last layers: ~2**-8 of |f|
    slack = 2.0**-7 * (np.abs(f_x) + np.abs(f_b)) / np.abs(delta)
    np.testing.assert_array_less(np.abs(got.completeness_error - recomputed), slack + 1e-6)
    assert (got.completeness_error < 0.1).all()


def test_feature_visualisation_agrees_with_the_float32_twin(twin, reference):
    name, model = twin
    options = {"filters": [0, 1], "steps": 6, "size": SIZE, "progress": False}
    want = once(reference, "visualisation", lambda m: ce.visualise_filters(m, "base/c2", **options))
    got = ce.visualise_filters(model, "base/c2", **options)
    assert np.isfinite(got.objective).all() and np.abs(got.history).max() > 0
    assert close(want.history, got.history, name), agreement(want.history, got.history)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).mean() < 2.0  # of 255 levels


def test_tcav_agrees_with_the_float32_twin(twin, reference):
    name, model = twin
    rng = np.random.default_rng(3)
    concept, targets, pool = (rng.random((n, SIZE, SIZE, 3), dtype=np.float32) for n in (6, 10, 18))
    concept[:, 4:12, 4:12, 0] = 1.0  # a red square: a concept distinct from the random pool

    def run(m):
        return ce.tcav(m, "base/r2", concept, targets, 0, random_images=pool, runs=2)

    want, got = once(reference, "tcav", run), run(model)
    assert np.isfinite(got.derivative) and got.derivative != 0
    values = np.r_[want.derivative, want.random_derivatives]
    other = np.r_[got.derivative, got.random_derivatives]
    assert close(values, other, name), agreement(values, other)


def test_metrics_and_audit_run_as_on_the_float32_twin(twin, reference):
    name, model = twin
    x = batch(6, seed=1)
    maps = once(reference, "gradcam maps", lambda m: ce.explain(m, x, "gradcam", progress=False).maps)
    want = once(reference, "deletion", lambda m: ce.metrics.deletion_curve(m, x, maps, steps=4))
    got = ce.metrics.deletion_curve(model, x, maps, steps=4)
    assert np.isfinite(got.scores).all()
    np.testing.assert_allclose(got.scores, want.scores, atol=0.01)  # probabilities, from logits rounded to 2**-8
    check = ce.metrics.randomisation_check(model, x[:2], "gradcam", layers=["logits", "c2"])
    assert np.isfinite(check.maps).all() and check.maps.shape == (3, 2, SIZE, SIZE)
    np.testing.assert_allclose(check.maps[0], ce.explain(model, x[:2], "gradcam", progress=False).maps)
    labels = np.arange(len(x)) % 3
    found = ce.audit(model, x, labels, progress=False, min_group=1)
    expected = once(reference, "audit", lambda m: ce.audit(m, x, labels, progress=False, min_group=1))
    assert len(found.candidates) == len(expected.candidates)


@pytest.mark.parametrize("factor", [2.0**-24, 2.0**10], ids=["underflow", "overflow"])
def test_float16_gradients_that_would_underflow_or_overflow_are_right(factor):
    """A float32 head whose weights are scaled by ``factor``. 2**-24: the gradient reaching the float16 layers is
    ~1e-9, below float16's smallest subnormal (6e-8); the plain backward pass loses it (almost all zero), the
    scaled one is raised until it is representable. 2**10: the first seed (2**12) overflows float16's 65504 at
    once and is lowered. Both match the float32 twin."""
    twin32 = build("float32", head="dense")
    head32 = twin32.get_layer("logits")
    head32.set_weights([w * factor for w in head32.get_weights()])
    model = build("mixed_float16", head="dense")
    model.set_weights(twin32.get_weights())
    x = batch()
    want = ce.explain(twin32, x, "saliency", target=0, progress=False).attributions
    got = ce.explain(model, x, "saliency", target=0, progress=False).attributions
    features = keras.Sequential(model.layers[:-1])
    head = model.get_layer("logits")

    @tf.function
    def plain(x):  # the unscaled float16 gradient of logit 0
        with tf.GradientTape() as tape:
            tape.watch(x)
            logit = tf.matmul(tf.cast(features(x), tf.float32), head.kernel)[:, 0] + head.bias[0]
        return tape.gradient(logit, x)

    unscaled = np.asarray(plain(tf.constant(x)))
    if factor < 1:
        assert np.mean(unscaled == 0) > 0.9  # lost without the scale
    assert np.isfinite(got).all() and np.mean(got == 0) < 0.1 and np.mean(want == 0) < 0.1
    assert close(want, got, "mixed_float16"), agreement(want, got)


def test_the_cli_explains_a_mixed_model_saved_as_keras(tmp_path, capsys):
    """Loading restores each layer's policy (float16 convolutions, float32 softmax); the CLI explains it."""
    path = tmp_path / "mixed.keras"
    build("mixed_float16").save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("base").get_layer("c1").compute_dtype == "float16"
    assert loaded.layers[-1].compute_dtype == "float32"
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    out = tmp_path / "report"
    args = ["explain", path, tmp_path / "images", "--method", "gradcam,lrp", "--out", out]
    code = main(list(map(str, args)))
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "summary.json").read_text())["images"]
    assert len(rows) == 3 and all(0 <= r["gradcam_peak_row"] <= 1 and 0 <= r["lrp_peak_col"] <= 1 for r in rows)
