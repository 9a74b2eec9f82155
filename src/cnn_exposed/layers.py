"""Finding layers in Sequential, functional and nested Keras models.

A layer is addressed by a *path*: the names of the nested models that lead to it, then its own name,
joined by ``/`` (``"mobilenetv2_1.00_224/Conv_1"``). The root model's name is not part of the path
(it is accepted and ignored when given). A bare name is found at any depth when it is unique.
"""

from __future__ import annotations

import difflib
import inspect
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import numpy as np

from .compat import built_input_shape, functional_graph, inbound_nodes, node_outputs, patched_calls, unpatched_call
from .errors import LayerNotFoundError, NoSpatialLayerError
from .model_io import branch_operations, input_index, on_branch
from .savedmodel import require_layer_access


@dataclass(frozen=True, eq=False)
class LayerRef:
    """A layer located inside a model.

    Attributes
    ----------
    models : tuple of keras.Model
        The chain of models from the root model down to the model that directly holds ``layer``.
    layer : keras.layers.Layer
        The layer itself.
    path : str
        Its path from the root, e.g. ``"base/Conv_1"``.
    """

    models: tuple
    layer: keras.layers.Layer
    path: str

    @property
    def output_shape(self) -> tuple | None:
        return layer_output_shape(self.layer)


def is_nested_model(layer: keras.layers.Layer) -> bool:
    """Whether a layer is a model whose own layers we can look into (Sequential or functional)."""
    return isinstance(layer, keras.Model) and len(getattr(layer, "layers", [])) > 0


def is_subclassed(model) -> bool:
    """Whether ``model`` is a subclassed Keras model (its own ``call``, no graph of layers to walk)."""
    if not isinstance(model, keras.Model) or isinstance(model, keras.Sequential):
        return False
    return functional_graph(model) is None


# id(layer) -> (weak reference, output shape seen when its subclassed model was probed)
_PROBED: dict[int, tuple] = {}
# id(subclassed model) -> (weak reference, its functional twin): see trace_subclassed
_TWINS: dict[int, tuple] = {}


def _remember(table: dict, obj, value) -> None:
    """``table[id(obj)] = (weakref(obj), value)``, first dropping the entries whose object is gone."""
    for key in [k for k, (ref, _) in table.items() if ref() is None]:
        del table[key]
    table[id(obj)] = (weakref.ref(obj), value)


def _recalled(table: dict, obj):
    entry = table.get(id(obj))
    return entry[1] if entry is not None and entry[0]() is obj else None


def _built_shape(model) -> tuple:
    shape = built_input_shape(model)
    if shape is None or any(d is None for d in shape[1:]):
        from .errors import ModelError

        raise ModelError(
            f"Subclassed model {model.name!r} has not been built with a known input shape. Call it once on a "
            "batch of images (model(images)) or build it (model.build((None, height, width, channels)))."
        )
    return shape


def probe_subclassed(model: keras.Model) -> tuple[list, tuple]:
    """Run a built subclassed ``model`` once on zeros and see what it calls.

    Returns the ``(layer, output shape)`` of every call of its layers (at any depth) in call order, and the
    model's output shape; the layers' shapes are kept, so that :func:`layer_output_shape` knows them (a layer
    of a subclassed model has no symbolic output to read them from).
    """
    shape = _built_shape(model)
    calls: list = []

    def watch(layer):
        own = unpatched_call(layer)

        def call(*args, **kwargs):
            out = own(*args, **kwargs)
            calls.append((layer, tuple(getattr(out, "shape", ()))))
            return out

        return call

    layers = [ref.layer for ref in iter_layers(model)]
    with patched_calls([(layer, watch(layer)) for layer in layers]):
        out = model(np.zeros((1, *shape[1:]), np.float32), training=False)
    for layer, out_shape in calls:
        _remember(_PROBED, layer, (None, *out_shape[1:]))
    return calls, (None, *tuple(out.shape)[1:])


def trace_subclassed(model: keras.Model) -> keras.Model:
    """The functional twin of a built subclassed ``model``: its ``call`` run once on a symbolic
    ``keras.Input``, which records every layer it calls and every ``keras.ops`` operation it applies (``h +
    self.conv(h)``, ``ops.relu``) as a graph node, like a model written with the functional API. The twin
    shares the model's layers and weights; rule-based methods walk it (:func:`cnn_exposed.graph.run_model`).

    Its outputs are checked against the model's own on random inputs. The twin, or the reason there is
    none, is kept for the model's lifetime.

    Side effect: the model's layers get the twin's graph nodes (``layer.input``, ``layer.output``), as if
    they had been called once in a functional model (a call() that fails half-way leaves the nodes of the
    layers it reached).

    Raises
    ------
    ModelError
        When ``call`` cannot run on symbolic inputs (TensorFlow functions such as ``tf.nn.relu``, Python
        decisions on tensor values) or computes something its twin does not (state kept between calls).
    """
    twin = _recalled(_TWINS, model)
    if isinstance(twin, Exception):  # refused before: the same answer, without tracing again
        raise twin
    if twin is not None:
        return twin
    from .errors import ModelError

    try:
        twin = _trace(model)
    except ModelError as err:
        _remember(_TWINS, model, err)
        raise
    _remember(_TWINS, model, twin)
    return twin


def _trace(model: keras.Model) -> keras.Model:
    from .errors import ModelError

    shape = _built_shape(model)
    how = (
        "Rebuild it from the same layers as a functional model (keras.Model(inputs, outputs)) or a Sequential, "
        "write call() with keras.layers and keras.ops only (no tf.* functions, no Python branches on tensor "
        "values), or use a gradient method (saliency, integrated_gradients) or a CAM, which run the model as it is."
    )
    try:
        takes_training = "training" in inspect.signature(model.call).parameters
    except (TypeError, ValueError):
        takes_training = False
    shared = [layer.name for layer in model.layers if inbound_nodes(layer)]
    if shared:  # their graph position (layer.input, layer.output) would be the other model's
        raise ModelError(
            f"Subclassed model {model.name!r}: rule-based methods (LRP, guided backprop, deconvnet) trace its "
            f"call() into a graph of its layers, but layers {shared[:5]} are already called in another "
            "functional model. Explain that functional model, or give the subclassed model layers of its own."
        )
    try:
        inp = keras.Input(shape[1:], name=f"{model.name}_input")
        out = model.call(inp, training=False) if takes_training else model.call(inp)
        twin = keras.Model(inp, out, name=f"{model.name}_traced")
    except Exception as err:  # whatever the user's call() raises on symbolic tensors
        raise ModelError(
            f"Subclassed model {model.name!r}: rule-based methods (LRP, guided backprop, deconvnet) need its "
            f"layers as a graph, and its call() could not be traced on a symbolic keras.Input "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}). {how}"
        ) from err
    if len(twin.outputs) != 1:
        raise ModelError(f"Subclassed model {model.name!r} has {len(twin.outputs)} outputs; {how}")
    x = np.random.default_rng(0).uniform(0.0, 1.0, (2, *shape[1:])).astype(np.float32)
    ours, theirs = np.asarray(twin(x, training=False)), np.asarray(model(x, training=False))
    gap = float(np.abs(ours - theirs).max()) if ours.shape == theirs.shape else float("inf")
    if not gap <= 1e-4 * max(1.0, float(np.abs(theirs).max())):
        raise ModelError(
            f"Subclassed model {model.name!r}: its call() traced on a symbolic keras.Input computes something "
            f"else than the model itself (largest difference {gap:.3g}), e.g. it keeps state between calls or "
            f"branches on values. {how}"
        )
    return twin


def traced(model) -> keras.Model | None:
    """The functional twin :func:`trace_subclassed` made of ``model``, or None (not traced, not traceable, or
    not subclassed)."""
    twin = _recalled(_TWINS, model)
    return None if isinstance(twin, Exception) else twin


def probe_if_needed(model) -> None:
    """Probe a subclassed model (:func:`probe_subclassed`) unless every layer's output shape is already known."""
    if is_subclassed(model) and any(layer_output_shape(ref.layer) is None for ref in iter_layers(model)):
        probe_subclassed(model)


def layer_output_shape(layer: keras.layers.Layer) -> tuple | None:
    """The symbolic output shape of a layer, or None when it is unknown (never called, or several outputs).

    A layer that was called more than once reports the shape of its last call.
    """
    probed = _recalled(_PROBED, layer)
    if probed is not None:
        return probed
    try:
        out = layer.output
    except (AttributeError, ValueError, RuntimeError):
        nodes = inbound_nodes(layer)
        if not nodes:
            return None
        outs = node_outputs(nodes[-1])
        if not outs:
            return None
        out = outs[0]
    if isinstance(out, (list, tuple)):
        if len(out) != 1:
            return None
        out = out[0]
    shape = getattr(out, "shape", None)
    return tuple(shape) if shape is not None else None


def is_spatial(layer: keras.layers.Layer) -> bool:
    """Whether the layer's output is 4-D, ``(N, H, W, C)``: a feature map a CAM can be computed on."""
    shape = layer_output_shape(layer)
    return shape is not None and len(shape) == 4 and not isinstance(layer, keras.layers.InputLayer)


def iter_layers(model: keras.Model, graph_order: bool = False) -> Iterator[LayerRef]:
    """Every layer of ``model`` depth first in graph order, entering nested models.

    A nested model is yielded before its own layers. A subclassed model's layers come in the order its
    constructor created them; with ``graph_order``, once it is traced (:func:`trace_subclassed`), in the
    order its ``call`` uses them.
    """

    def ordered(holder) -> list:
        twin = traced(holder) if graph_order else None
        if twin is None:
            return list(holder.layers)
        place = {id(layer): i for i, layer in enumerate(twin.layers)}
        return sorted(holder.layers, key=lambda layer: place.get(id(layer), len(place)))

    def walk(chain: tuple, prefix: str) -> Iterator[LayerRef]:
        for layer in ordered(chain[-1]):
            if isinstance(layer, keras.layers.InputLayer):
                continue
            path = prefix + layer.name
            yield LayerRef(chain, layer, path)
            if is_nested_model(layer):
                yield from walk(chain + (layer,), path + "/")

    yield from walk((model,), "")


def list_layers(model: keras.Model, spatial_only: bool = False) -> list[str]:
    """Paths of the model's layers (``spatial_only``: only those with a 4-D output), in graph order (for a
    subclassed model: the order its constructor created them)."""
    if spatial_only:
        probe_if_needed(model)
    return [ref.path for ref in iter_layers(model) if not spatial_only or is_spatial(ref.layer)]


def find_last_spatial_layer(model: keras.Model, input: int | str | None = None) -> LayerRef:
    """The last layer with a 4-D output, searching inside nested models (the default CAM layer).

    In a model with several inputs, only the layers the explained input reaches count (``input``: a name or an
    index; by default the only image input): for a two-image model, the default layer is on that image's branch,
    or on the trunk both share.

    Raises
    ------
    NoSpatialLayerError
        When no layer of the model (nested ones included) has a 4-D output.
    """
    probe_if_needed(model)
    branch = branch_operations(model, input_index(model, input))
    spatial = [ref for ref in iter_layers(model) if is_spatial(ref.layer) and on_branch(ref, branch)]
    # A nested model whose output is spatial comes before its own layers; its last inner layer is the
    # same tensor or closer to it, and naming it is more useful, so prefer non-model layers.
    plain = [ref for ref in spatial if not is_nested_model(ref.layer)]
    if plain:
        # "Last" in graph order: the last plain spatial layer that is not followed by a later spatial
        # layer in an outer model. iter_layers is depth first, so the deepest-last is the last item.
        return plain[-1]
    if spatial:
        return spatial[-1]
    require_layer_access(model, "Finding a feature map (for a CAM method, the audit, TCAV or visualisation)")
    raise NoSpatialLayerError(
        f"Model {model.name!r} has no layer with a 4-D (N, H, W, C) output, so a CAM method has no "
        "feature map to weight. Use a gradient method (saliency, integrated_gradients, ...) or "
        "occlusion instead, or pass a model that contains convolutional layers."
    )


def _describe_candidates(model: keras.Model, wanted: str) -> str:
    all_paths = list_layers(model)
    spatial = list_layers(model, spatial_only=True)
    names = {p.rsplit("/", 1)[-1]: p for p in all_paths}
    close = difflib.get_close_matches(wanted, all_paths, n=3, cutoff=0.5)
    close += [
        names[n]
        for n in difflib.get_close_matches(wanted.rsplit("/", 1)[-1], list(names), n=3, cutoff=0.5)
        if names[n] not in close
    ]
    parts = []
    if close:
        parts.append("Did you mean: " + ", ".join(repr(c) for c in close[:3]) + "?")
    if spatial:
        shown = spatial[-12:]
        more = len(spatial) - len(shown)
        parts.append(
            "Layers with a spatial (4-D) output, last ones first: "
            + ", ".join(repr(p) for p in reversed(shown))
            + (f" (and {more} earlier; see cnn_exposed.list_layers(model))" if more else "")
        )
    else:
        parts.append("The model has no layer with a spatial (4-D) output.")
    return " ".join(parts)


def resolve_layer(model: keras.Model, layer: str | keras.layers.Layer | LayerRef) -> LayerRef:
    """Locate ``layer`` (a name, an ``"outer/inner"`` path, a layer object or a LayerRef) in ``model``.

    Raises
    ------
    LayerNotFoundError
        With the closest names and the spatial layers listed.
    """
    if isinstance(layer, LayerRef):
        return layer
    probe_if_needed(model)  # a subclassed model's layers: their output shapes
    refs = list(iter_layers(model))
    if isinstance(layer, keras.layers.Layer):
        for ref in refs:
            if ref.layer is layer:
                return ref
        raise LayerNotFoundError(
            f"Layer object {layer.name!r} is not part of model {model.name!r}. "
            + _describe_candidates(model, layer.name)
        )
    if not isinstance(layer, str):
        raise LayerNotFoundError(
            f"layer must be a name, an 'outer/inner' path or a layer object, got {type(layer).__name__}."
        )
    wanted = layer.strip("/")
    if wanted.startswith(model.name + "/"):
        wanted = wanted[len(model.name) + 1 :]
    if "/" in wanted:
        matches = [ref for ref in refs if ref.path == wanted]
    else:
        matches = [ref for ref in refs if ref.layer.name == wanted]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise LayerNotFoundError(
            f"Layer name {layer!r} occurs {len(matches)} times in model {model.name!r} (inside "
            "different nested models). Give its full path, one of: " + ", ".join(repr(ref.path) for ref in matches)
        )
    raise LayerNotFoundError(f"No layer {layer!r} in model {model.name!r}. " + _describe_candidates(model, wanted))
