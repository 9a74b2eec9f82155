"""What is installed with the package: the demo model, its images and masks, and a few photos.

The files live in the repository's top-level ``data/`` folder, which is installed as the package
``cnn_exposed.data`` (``pyproject.toml`` maps one onto the other), so they are found through
``importlib.resources`` however the package was installed: from a clone, editable, from a git URL or a wheel.

The demo model is shipped as its architecture, built here in code from public ``keras.layers``, plus its
weights as plain NumPy arrays keyed by layer path. Unlike a ``.keras`` file, which records each layer's
constructor arguments as the saving Keras version spelled them (and which an older Keras refuses), this
loads on every Keras 3 the project supports, and on later ones as long as the public layer API holds.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import keras
import numpy as np

from .errors import ModelError
from .layers import is_nested_model, iter_layers

DEMO_WEIGHTS = "demo_weights.npz"
DEMO_METADATA = "demo_model.json"
DEMO_FAIR_WEIGHTS = "demo_fair_weights.npz"  # the negative control: rails in every class (train_demo.py --fair)
DEMO_FAIR_METADATA = "demo_fair.json"


def data_dir() -> Path:
    """The folder of bundled files: the installed ``cnn_exposed.data`` package (a copy of the repository's
    ``data/``), or the folder named by the ``CNN_EXPOSED_DATA`` environment variable."""
    override = os.environ.get("CNN_EXPOSED_DATA")
    if override:
        return Path(override)
    root = resources.files("cnn_exposed.data")
    if not isinstance(root, Path):  # e.g. imported from a zip file: pip never installs it so
        raise ModelError(
            f"cnn-exposed's bundled files are not on the file system ({root!r}). Install the package with "
            "pip (pip install cnn-exposed, or from the repository) rather than importing it from an archive."
        )
    return root


def build_demo_model(input_size: tuple[int, int] = (96, 96), num_classes: int = 3) -> keras.Model:
    """The demo classifier's architecture, as ``scripts/train_demo.py`` trains it.

    A small convolutional base (``"base"``, a Sequential whose ``last_conv`` outputs 24 x 24 x 64 for a
    96 x 96 input) nested in a Sequential with global average pooling and a softmax ``Dense`` head: the
    transfer-learning shape users build around ``keras.applications`` bases.
    """
    shape = (*input_size, 3)

    def block(filters: int, name: str, strides: int = 1) -> list:
        return [
            keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=name),
            keras.layers.BatchNormalization(name=f"{name}_bn"),
            keras.layers.ReLU(name=f"{name}_relu"),
        ]

    base = keras.Sequential(
        [
            keras.Input(shape),
            *block(16, "conv1", strides=2),
            *block(32, "conv2"),
            keras.layers.MaxPooling2D(name="pool2"),
            *block(64, "conv3"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="last_conv"),
        ],
        name="base",
    )
    return keras.Sequential(
        [
            keras.Input(shape),
            base,
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(num_classes, activation="softmax", name="predictions"),
        ],
        name="hotel_classifier",
    )


def weight_arrays(model: keras.Model) -> dict[str, np.ndarray]:
    """Every weight of ``model`` as ``{"<layer path>/<index>": array}``, indices in ``get_weights()`` order.

    Nested models are entered, so each array belongs to exactly one (innermost) layer.
    """
    arrays = {}
    for ref in iter_layers(model):
        if is_nested_model(ref.layer):
            continue
        for index, value in enumerate(ref.layer.get_weights()):
            arrays[f"{ref.path}/{index}"] = value
    return arrays


def save_weights(model: keras.Model, path: str | Path) -> None:
    """Write :func:`weight_arrays` of ``model`` to a compressed ``.npz`` file."""
    np.savez_compressed(path, **weight_arrays(model))  # type: ignore[arg-type]  # arrays by name


def load_weights(model: keras.Model, path: str | Path) -> None:
    """Set ``model``'s weights from a file written by :func:`save_weights`.

    Raises :class:`ModelError` naming the layers whose weights are missing, left over or of another shape,
    so a file and an architecture that disagree never load half-way.
    """
    expected = {key: value.shape for key, value in weight_arrays(model).items()}
    with np.load(path, allow_pickle=False) as stored:
        found = {key: stored[key] for key in stored.files}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if found[k].shape != expected[k])
    if missing or extra or wrong:
        raise ModelError(
            f"The weights in {path} do not fit model {model.name!r}: "
            + "; ".join(
                f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for label, keys in (("missing", missing), ("not in the model", extra), ("other shape", wrong))
                if keys
            )
            + ". Rebuild the bundle with 'python scripts/train_demo.py'."
        )
    for ref in iter_layers(model):
        if is_nested_model(ref.layer):
            continue
        count = len(ref.layer.weights)
        if count:
            ref.layer.set_weights([found[f"{ref.path}/{i}"] for i in range(count)])


def demo_metadata(fair: bool = False) -> dict:
    """What ``scripts/train_demo.py`` measured and recorded about the demo model (accuracy, seed, ...), or
    with ``fair=True`` about its negative control."""
    path = data_dir() / "demo" / (DEMO_FAIR_METADATA if fair else DEMO_METADATA)
    if not path.is_file():
        raise ModelError(
            f"The bundled demo files are missing ({path}). Reinstall cnn-exposed (pip install "
            "'cnn-exposed @ git+https://...') or, from a clone, run 'python scripts/train_demo.py"
            + (" --fair'." if fair else "'.")
        )
    return json.loads(path.read_text(encoding="utf-8"))


def demo_model(fair: bool = False) -> keras.Model:
    """The trained demo classifier: :func:`build_demo_model` with the bundled weights; with ``fair=True``
    the negative control, trained where rails appear in every class equally often."""
    meta = demo_metadata(fair)
    model = build_demo_model(tuple(meta["input_size"]), len(meta["class_names"]))
    load_weights(model, data_dir() / "demo" / (DEMO_FAIR_WEIGHTS if fair else DEMO_WEIGHTS))
    return model
