"""Shared fixtures: tiny models built in the test, so the suite runs in seconds on a CPU."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import matplotlib  # noqa: E402

matplotlib.use("Agg")  # not via MPLBACKEND: the notebooks' kernels inherit the environment and need inline

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


def conv_block(size: int = 16, name: str = "base", filters=(6, 5)) -> keras.Model:
    """A small convolutional base model (what transfer learning puts inside a head)."""
    inp = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(filters[0], 3, activation="relu", bias_initializer="random_normal", name="c1")(inp)
    h = keras.layers.Conv2D(filters[1], 3, activation="relu", bias_initializer="random_normal", name="c2")(h)
    return keras.Model(inp, h, name=name)


def nested_and_flat(size: int = 16, classes: int = 3, activation: str = "softmax"):
    """The same network twice: a base model nested in a Sequential head, and built flat."""
    base = conv_block(size)
    nested = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            base,
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(classes, activation=activation, name="head"),
        ],
        name="nested",
    )
    inp = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(5, 3, activation="relu", name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    out = keras.layers.Dense(classes, activation=activation, name="head")(h)
    flat = keras.Model(inp, out, name="flat")
    for name in ("c1", "c2"):
        flat.get_layer(name).set_weights(base.get_layer(name).get_weights())
    flat.get_layer("head").set_weights(nested.get_layer("head").get_weights())
    return nested, flat


def small_cnn(size: int = 16, classes: int = 3, activation: str | None = "softmax") -> keras.Model:
    """A flat functional ReLU CNN with non-zero biases."""
    inp = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(6, 3, activation="relu", bias_initializer="random_normal", name="c1")(inp)
    h = keras.layers.Conv2D(5, 3, activation="relu", bias_initializer="random_normal", name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    out = keras.layers.Dense(classes, activation=activation, bias_initializer="random_normal", name="head")(h)
    return keras.Model(inp, out, name="small_cnn")


def images(n: int = 4, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


@pytest.fixture
def cnn():
    return small_cnn()


@pytest.fixture
def x():
    return images()
