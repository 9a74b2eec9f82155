"""TensorFlow SavedModel directories as Keras models: what can be explained without the model's layers.

A SavedModel (written by Keras 3's ``model.export(dir)``, by ``tf.saved_model.save(module, dir, signatures=...)``
in TensorFlow code, or by tf-keras 2.x's ``model.save(dir)``) keeps the model's computation as a graph, not its
layers. :func:`load_saved_model` wraps one endpoint of it in a ``keras.Model``: a ``keras.Input`` of the
endpoint's input shape and dtype, a ``keras.layers.TFSMLayer`` calling the endpoint (whatever its input is
called), the one output picked from a dict of outputs. Methods that only run the model forward and backward
(:data:`LAYER_FREE_METHODS`) explain it as they explain any model; methods that need a layer's output or its
backward rule (the CAM family, LRP, guided backpropagation, deconvnet, guided Grad-CAM; TCAV, feature
visualisation and the audit's features) need the model as a ``.keras`` or ``.h5`` file, and say so.

Whether the output is probabilities or logits cannot be read off the layers either: ``head="auto"`` runs the
model once on a probe batch and calls the output softmax probabilities when every row lies in [0, 1] and sums
to 1 (a single output unit: sigmoid when every value lies in [0, 1]), and logits otherwise. On probabilities the
logits are out of reach, so score ``"logit"`` explains the probability (as for any model whose softmax cannot be
undone, with a warning); ``score="log_probability"`` explains its logarithm.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .compat import call_endpoint, endpoint_signature, saved_model_layer
from .errors import CnnExposedError, LayerAccessError, ModelError

LAYER_FREE_METHODS: tuple[str, ...] = (
    "saliency",
    "gradient_x_input",
    "smoothgrad",
    "integrated_gradients",
    "blur_ig",
    "guided_ig",
    "gradient_shap",
    "xrai",
    "occlusion",
    "rise",
    "sobol",
    "kernel_shap",
    "lime",
)
"""The attribution methods that need no access to the model's layers: they work on SavedModels."""

HEADS: tuple[str, ...] = ("auto", "softmax", "sigmoid", "logits")
"""What a SavedModel's output can be declared as (see :func:`load_saved_model`)."""


def is_saved_model(path) -> bool:
    """Whether ``path`` is a SavedModel directory (it holds ``saved_model.pb`` or ``saved_model.pbtxt``)."""
    path = Path(path)
    return path.is_dir() and any((path / f).is_file() for f in ("saved_model.pb", "saved_model.pbtxt"))


class SavedModelLayer(keras.layers.TFSMLayer):
    """A ``TFSMLayer`` that calls its endpoint the way the endpoint takes its input (by keyword for a signature,
    whatever the input's name) and returns the one output it was told to pick from a dict or list of them."""

    input_name: str | None = None
    output_key: str | int | None = None

    def call(self, inputs, training=False):
        out = call_endpoint(self, inputs, self.input_name)
        return out if self.output_key is None else out[self.output_key]


class SavedModelHead(keras.layers.Layer):
    """The identity, marking that the SavedModel's output already went through ``activation`` (``"softmax"``
    or ``"sigmoid"``): the engine then treats the output as probabilities and does not squash it again."""

    def __init__(self, activation: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def _endpoints(path: Path) -> list[str]:
    """The endpoints a SavedModel offers: its signatures, then its restored ``tf.function`` attributes."""
    obj = tf.saved_model.load(str(path))
    names = list(obj.signatures)
    for attr in dir(obj):
        if not attr.startswith("_") and attr not in names and hasattr(getattr(obj, attr, None), "concrete_functions"):
            names.append(attr)
    return names


def _single_input(path: Path, endpoint: str, inputs: dict, input_size) -> tuple[str | None, tuple, tf.DType]:
    """The endpoint's one input: its keyword name (None: positional), the image shape ``(H, W, C)`` it takes
    (its open sides from ``input_size``) and its dtype."""
    if len(inputs) != 1 or not isinstance(next(iter(inputs.values())), tf.TensorSpec):
        names = ", ".join(repr(n) for n in inputs if n is not None) or "several positional inputs"
        raise ModelError(
            f"SavedModel {path} endpoint {endpoint!r} takes {len(inputs)} inputs ({names}); cnn-exposed explains "
            "single-input image classifiers. Pick an endpoint with one image input (endpoint=...)."
        )
    name, spec = next(iter(inputs.items()))
    shape = tuple(spec.shape)
    if len(shape) == 4 and input_size is not None:
        given = tuple(int(v) for v in input_size)
        if len(given) != 2 or any(have not in (None, want) for have, want in zip(shape[1:3], given)):
            raise ModelError(
                f"input_size={input_size!r} does not fit SavedModel {path} endpoint {endpoint!r}, whose input "
                f"{name or 'inputs'!r} has shape {shape}: give (height, width) where the signature leaves them open."
            )
        shape = (shape[0], *given, shape[3])
    if len(shape) != 4 or None in shape[1:]:
        raise ModelError(
            f"SavedModel {path} endpoint {endpoint!r} takes input {name or 'inputs'!r} of shape {shape}; "
            "cnn-exposed needs a batch of images, (None, height, width, channels), of known channels and size: "
            "give the size with input_size=(height, width) (on the command line: --input-size HxW)."
        )
    return name, shape[1:], spec.dtype


def _pick_output(path: Path, endpoint: str, outputs, output: str | int | None) -> tuple[str | int | None, tuple]:
    """The key (or index) of the output to explain, None for a lone tensor, and that output's shape."""
    if isinstance(outputs, tf.TensorSpec):
        if output not in (None, 0):
            raise ModelError(f"SavedModel {path} endpoint {endpoint!r} has a single output: drop output={output!r}.")
        return None, tuple(outputs.shape)
    keys = sorted(outputs) if isinstance(outputs, dict) else list(range(len(outputs)))
    if output is None and len(keys) == 1:
        output = keys[0]
    if output not in keys:
        which = f"has {len(keys)} outputs" if output is None else f"has no output {output!r}; its outputs are"
        raise ModelError(
            f"SavedModel {path} endpoint {endpoint!r} {which}: {', '.join(map(repr, keys))}. Pick the one to "
            "explain with output=... (on the command line: --model-output)."
        )
    return output, tuple(outputs[output].shape)


def _probe_head(model: keras.Model, image_shape: tuple, dtype: tf.DType) -> str:
    """``"softmax"``, ``"sigmoid"`` or ``"logits"``: what the model's output looks like on a probe batch (zeros
    and seeded uniform noise in [0, 1])."""
    probe = np.random.default_rng(0).uniform(0.0, 1.0, (4, *image_shape))
    probe[0] = 0.0
    if dtype.is_integer:
        probe = np.round(probe * 255)
    out = np.asarray(model(probe.astype(dtype.as_numpy_dtype), training=False), dtype=np.float64)
    in_unit = bool(np.isfinite(out).all() and out.min() >= -1e-6 and out.max() <= 1 + 1e-6)
    if in_unit and out.shape[-1] == 1:
        return "sigmoid"
    if in_unit and np.allclose(out.sum(axis=-1), 1.0, atol=1e-3):
        return "softmax"
    return "logits"


def load_saved_model(
    path,
    *,
    endpoint: str = "serving_default",
    output: str | int | None = None,
    head: str = "auto",
    input_size: tuple[int, int] | None = None,
) -> tuple[keras.Model, dict]:
    """Wrap the SavedModel directory ``path`` in a ``keras.Model`` (see the module's notes).

    Parameters
    ----------
    path : str or Path
        The directory holding ``saved_model.pb``.
    endpoint : str
        The signature (``"serving_default"``, the default) or saved function (``"serve"`` for Keras'
        ``model.export``) to call; a wrong name lists those the SavedModel offers.
    output : str, int or None
        Which output to explain when the endpoint returns several (a dict key or list index); None takes the
        only one, and asks (listing the keys) when there are several.
    head : {"auto", "softmax", "sigmoid", "logits"}
        What the output is: softmax probabilities, sigmoid probabilities (one unit, or several independent
        labels) or logits; ``"auto"`` decides on a probe batch (rows in [0, 1] summing to 1: softmax; one unit
        in [0, 1]: sigmoid; otherwise logits). Multi-label sigmoid outputs must be declared ``"sigmoid"``.
    input_size : (int, int) or None
        ``(height, width)`` of the images, for a signature that leaves them open (``(None, None, None, 3)``).

    Returns
    -------
    (keras.Model, dict)
        The model and what was read: ``endpoint``, ``input`` (the endpoint's input name), ``output`` and
        ``head``.
    """
    path = Path(path)
    if head not in HEADS:
        raise CnnExposedError(f"head must be one of {HEADS}, got {head!r}.")
    try:
        layer = saved_model_layer(SavedModelLayer, path, endpoint, name="saved_model")
    except ValueError:
        raise ModelError(
            f"SavedModel {path} has no endpoint {endpoint!r}. It offers: {', '.join(map(repr, _endpoints(path)))}; "
            "pick one with endpoint=... (on the command line: --endpoint)."
        ) from None
    signature = endpoint_signature(layer)
    layer.input_name, image_shape, dtype = _single_input(path, endpoint, signature.inputs, input_size)
    layer.output_key, shape = _pick_output(path, endpoint, signature.outputs, output)
    if len(shape) != 2 or shape[-1] is None:
        raise ModelError(
            f"SavedModel {path} output {layer.output_key!r} has shape {shape}; cnn-exposed explains classifiers "
            "whose output is (N, classes). Pick another output with output=... or endpoint=...."
        )
    inp = keras.Input(image_shape, dtype=dtype.name, name="image")
    name = re.sub(r"[^\w.-]", "_", path.resolve().name) or "saved_model"
    model = keras.Model(inp, layer(inp), name=name)
    if head == "auto":
        head = _probe_head(model, image_shape, dtype)
    if head != "logits":
        model = keras.Model(inp, SavedModelHead(head, name="probabilities")(model.outputs[0]), name=name)
    info = {"endpoint": endpoint, "input": layer.input_name, "output": layer.output_key, "head": head}
    return model, info


def saved_model_layers(model) -> list:
    """The ``TFSMLayer``s inside ``model`` (nested models included): the parts whose layers cannot be reached."""
    found, stack = [], [model]
    while stack:
        for layer in getattr(stack.pop(), "layers", None) or []:
            if isinstance(layer, keras.layers.TFSMLayer):
                found.append(layer)
            elif isinstance(layer, keras.Model):
                stack.append(layer)
    return found


def require_layer_access(model, what: str) -> None:
    """Raise :class:`LayerAccessError` when ``model`` wraps a SavedModel: ``what`` (a method's name, or a
    description) needs its layers. The message names the methods that work on it."""
    opaque = saved_model_layers(model)
    if not opaque:
        return
    raise LayerAccessError(
        f"{what} needs the layers of model {model.name!r}, but it runs a SavedModel (layer {opaque[0].name!r}), "
        "whose layers cannot be reached. On a SavedModel use "
        + ", ".join(LAYER_FREE_METHODS)
        + "; every other method (the CAM family, lrp, deeplift, deepshap, guided_backprop, deconvnet, "
        "guided_gradcam), TCAV, feature visualisation and the audit need the model as a .keras or .h5 file "
        "(model.save('model.keras') where it was built)."
    )
