"""Running a Keras model's graph ourselves, with some layers swapped or recorded.

This is how cnn-exposed works on nested models without building ``keras.Model(model.inputs,
inner_layer.output)`` across a nesting boundary (the construction that fails in other tools): we walk the
model's own graph, and when a node calls a nested model that we need to look into, we walk that model's
graph too. At the node of the layer of interest we record its output, at any depth, and at the model's
last layer we can compute the pre-activation score (the logit) without touching the user's model.

This module is Keras-specific but backend-agnostic. The private Keras calls it needs (the routine Keras
uses to call a functional model, ``Sequential``'s functional graph, a tensor's producing layer) go through
:mod:`cnn_exposed.compat`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
from keras import ops

from .compat import functional_graph, inbound_nodes, patched_calls, producer, run_through_graph, unpatched_call
from .errors import ModelError, StopForward
from .layers import (
    LayerRef,
    is_nested_model,
    is_subclassed,
    iter_layers,
    layer_output_shape,
    probe_subclassed,
    traced,
)
from .model_io import output_index
from .precision import to_compute

_SQUASHING = ("softmax", "sigmoid")


def output_operation(model: keras.Model, output: int | str | None = None):
    """The operation (layer or op) whose output is the model's output (``output``: which one, by name or index,
    of a model with several; :class:`~cnn_exposed.errors.ModelIOError` lists them when it is not said)."""
    if isinstance(model, keras.Sequential):
        return model.layers[-1]
    graph = functional_graph(model)
    if graph is None:
        return None
    return producer(graph.outputs[output_index(model, output)])


def _activation_name(op) -> str | None:
    """'softmax' / 'sigmoid' / other name of the activation an operation ends with, if any."""
    cls = type(op).__name__
    if cls in ("Softmax",):
        return "softmax"
    if cls in ("Sigmoid",):
        return "sigmoid"
    act = getattr(op, "activation", None)
    if act is None:
        return None
    return getattr(act, "__name__", None)


def _pre_activation(op) -> Callable | None:
    """A callable computing ``op``'s output before its final softmax/sigmoid, or None if we cannot.

    Activation, Softmax and ``keras.ops`` softmax/sigmoid operations become the identity; a Dense layer
    is recomputed from its own kernel and bias. Nothing on the user's model is changed.
    """
    if isinstance(op, (keras.layers.Activation, keras.layers.Softmax)) or type(op).__name__ in (
        "Softmax",
        "Sigmoid",
    ):
        return lambda x, *args, **kwargs: x
    if isinstance(op, keras.layers.Dense):

        def dense_logits(x, *args, **kwargs):  # in the layer's compute dtype, as its own call
            x, kernel, bias = to_compute(op, x, op.kernel, op.bias)
            z = ops.matmul(x, kernel)
            return z if bias is None else ops.add(z, bias)

        return dense_logits
    return None


@dataclass
class Head:
    """What a classifier ends with.

    Attributes
    ----------
    activation : str
        ``"softmax"``, ``"sigmoid"`` or ``"linear"`` (the model already outputs logits).
    chain : list of (keras.Model, operation)
        The models leading to the final operation and the final operation, outermost first.
    pre_activation : callable or None
        Replaces the final operation to give logits; None when the model already gives logits or when
        the final layer is of a kind whose pre-activation we cannot compute (we then explain the
        probability and warn).
    units : int
        Size of the output (1 for a binary sigmoid model).
    """

    activation: str
    chain: list = field(default_factory=list)
    pre_activation: Callable | None = None
    units: int = 0


def classifier_head(model: keras.Model, output: int | str | None = None) -> Head:
    """Inspect how ``model`` turns features into class scores (through nested models); ``output``: which output
    of a model with several (a name or an index).

    A subclassed model is run once on zeros to see which of its layers it calls last (:func:`probe_subclassed`).
    """
    if is_subclassed(model):
        return _subclassed_head(model)
    index = output_index(model, output)
    shape = tuple(model.outputs[index].shape) if getattr(model, "outputs", None) else None
    shape = _check_output(model, shape)
    chain = []
    current = model
    while True:
        op = output_operation(current, index if current is model else None)
        if op is None:
            break
        chain.append((current, op))
        if is_nested_model(op):
            current = op
            continue
        break
    return _head_of(model, chain, shape)


def _check_output(model, shape) -> tuple:
    if shape is None or len(shape) != 2 or shape[-1] is None:
        raise ModelError(
            f"Model {model.name!r} has output shape {shape}; cnn-exposed explains classifiers whose "
            "output is (N, classes) (or (N, 1) for a binary sigmoid model). Make sure the model is "
            "built (call it once, or give it an Input) and ends in a Dense layer."
        )
    return shape


def _subclassed_head(model) -> Head:
    calls, shape = probe_subclassed(model)
    shape = _check_output(model, shape)
    direct = [layer for layer, _ in calls if any(layer is own for own in model.layers)]
    # Its last call, when that produced the model's output (a call may also compute the output itself).
    last = direct[-1] if direct else None
    chain = [(model, last)] if last is not None and layer_output_shape(last) == shape else []
    return _head_of(model, chain, shape)


def _head_of(model, chain: list, shape: tuple) -> Head:
    act = _activation_name(chain[-1][1]) if chain else None
    if act not in _SQUASHING:
        return Head("linear", chain, None, shape[-1])
    pre = _pre_activation(chain[-1][1])
    if pre is None:
        warnings.warn(
            f"The last layer of {model.name!r} ({type(chain[-1][1]).__name__}) applies {act} in a way "
            "cnn-exposed cannot undo; explaining the probability instead of the logit.",
            stacklevel=3,
        )
    return Head(act, chain, pre, shape[-1])


def call_count(layer) -> int:
    """How many times a layer is called in the graphs it belongs to (1 for most layers)."""
    return max(1, len(inbound_nodes(layer)))


@dataclass
class Plan:
    """What to change while running a model.

    Attributes
    ----------
    record : LayerRef, sequence of LayerRef, or None
        The layers whose outputs to collect: ``recorded[path]`` lists every call's output in call order.
    logits : Head or None
        When given, the final operation is replaced by its pre-activation.
    replace : dict
        ``id(layer) -> factory(layer, final) -> callable``: layers whose forward (and backward) pass a
        method swaps; ``final`` says the layer is the classifier's last one, whose softmax/sigmoid the
        replacement must leave out (the logit is explained). Nested models are then always walked.
    stop_when_recorded : bool
        Raise :class:`StopForward` as soon as every recorded layer has produced all its calls' outputs.
    substitute : callable or None
        ``substitute(path, call) -> tensor or None`` for every call (0, 1, ...) of a recorded layer: a tensor to
        use as that call's output instead of running the layer (None: run it). The ablation pass feeds a layer's
        cached output with channels zeroed this way; the layers that only feed it then do not run (a compiled
        graph prunes what no output needs).
    """

    record: LayerRef | tuple | None = None
    logits: Head | None = None
    replace: dict = field(default_factory=dict)
    stop_when_recorded: bool = False
    substitute: Callable | None = None

    def __post_init__(self) -> None:
        self._enter: set[int] = set()
        self._final: int | None = None
        refs = () if self.record is None else (self.record,) if isinstance(self.record, LayerRef) else self.record
        self._records = {id(ref.layer): ref.path for ref in refs}
        self._needed = {ref.path: call_count(ref.layer) for ref in refs}
        for ref in refs:
            self._enter.update(id(m) for m in ref.models[1:])
        if self.logits is not None and self.logits.pre_activation is not None:
            self._enter.update(id(m) for m, _ in self.logits.chain[1:])
            self._final = id(self.logits.chain[-1][1])
        # A replaced layer inside a nested model needs that model walked; callers add it with enter().

    def _pre_activation(self) -> Callable:
        """The final operation's replacement (only asked for when ``_final`` is set, so it exists)."""
        assert self.logits is not None and self.logits.pre_activation is not None
        return self.logits.pre_activation

    def enter(self, model: keras.Model) -> None:
        self._enter.add(id(model))

    def callable_for(self, op, recorded: dict) -> Callable:
        if id(op) in self.replace:
            fn = self.replace[id(op)](op, id(op) == self._final)
        elif id(op) == self._final:
            fn = self._pre_activation()
        elif id(op) in self._enter or (self.replace and is_nested_model(op)):

            def fn(*args, _op=op, **kwargs):
                return run_model(_op, args[0], self, recorded)

        else:
            fn = _in_inference_mode(op)
        return self._recording(op, fn, recorded)

    def _recording(self, op, fn: Callable, recorded: dict) -> Callable:
        """``fn``, appending its output to ``recorded`` when ``op`` is a recorded layer."""
        if id(op) not in self._records:
            return fn
        path = self._records[id(op)]

        def recording(*args, **kwargs):
            calls = recorded.setdefault(path, [])
            out = None if self.substitute is None else self.substitute(path, len(calls))
            if out is None:
                out = fn(*args, **kwargs)
            calls.append(out)
            if self.stop_when_recorded and all(len(recorded.get(p, ())) >= k for p, k in self._needed.items()):
                raise StopForward
            return out

        return recording

    def patches_for(self, model: keras.Model, recorded: dict) -> list:
        """``(layer, call)`` pairs that record or change the layers of a subclassed ``model`` while it runs
        (:func:`~cnn_exposed.compat.patched_calls`): its ``call`` is Python we cannot walk, only watch."""
        patches = []
        for ref in iter_layers(model):
            layer = ref.layer
            if id(layer) == self._final:
                fn = self._pre_activation()
            elif id(layer) in self._records:
                fn = unpatched_call(layer)
            else:
                continue
            patches.append((layer, self._recording(layer, fn, recorded)))
        return patches


def _in_inference_mode(op):
    """``op`` called with ``training=False`` when its ``call`` takes that argument.

    The walk does not go through ``Model.__call__``, which would pass the model's mode down to its layers, and
    Keras' augmentation layers (``RandomFlip``, ``RandomRotation``, ...) default to ``training=True``: without
    this, every explanation of a model that augments its own input would see randomly flipped images.
    """
    if not isinstance(op, keras.layers.Layer):
        return op
    try:
        takes_training = "training" in inspect.signature(op.call).parameters
    except (TypeError, ValueError):
        return op
    if not takes_training:
        return op

    def fn(*args, **kwargs):
        return op(*args, **{**kwargs, "training": False})

    return fn


def run_model(model: keras.Model, x, plan: Plan, recorded: dict):
    """Run ``model`` on ``x`` in inference mode following ``plan``.

    Outputs of recorded layers are appended to ``recorded[path]``, one entry per call.
    """
    if isinstance(model, keras.Sequential) and functional_graph(model) is None:
        for layer in model.layers:
            x = plan.callable_for(layer, recorded)(x)
        return x
    graph = functional_graph(model)
    twin = traced(model) if graph is None and plan.replace else None
    if twin is not None:  # a subclassed model whose layers a method swaps: we walk its traced twin
        return run_model(twin, x, plan, recorded)
    if graph is None:
        # A subclassed model is Python we cannot walk: we call it, with its recorded layers watched.
        with patched_calls(plan.patches_for(model, recorded)):
            return model(x, training=False)
    outputs = run_through_graph(graph, x, lambda op: plan.callable_for(op, recorded))
    return outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs
