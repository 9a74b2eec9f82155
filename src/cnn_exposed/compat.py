"""Every Keras or TensorFlow call whose spelling or behaviour differs between the versions we support.

The rest of the package calls these functions instead of private attributes (``_keras_history``,
``_inbound_nodes``, ``Sequential._functional``, ``Function._run_through_graph``), raw TensorFlow kernels or
operations whose behaviour changed between releases. Each entry has its own test in
``tests/test_compat.py``, so a Keras release that changes one of them breaks one named test, not forty.

Supported: Keras 3.10 to 3.15 on TensorFlow 2.19 to 2.21 (the stacks CI tests; see README.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

_MISSING = object()


def built_input_shape(model) -> tuple | None:
    """The input shape, batch axis first, that ``model`` takes: ``model.inputs`` for functional and Sequential
    models; for a subclassed model, the shape it was built or first called with (``get_build_config()``, public
    since Keras 3.0, the record Keras saves with the model); None when unknown."""
    inputs = getattr(model, "inputs", None)
    if inputs:
        return tuple(inputs[0].shape)
    try:
        shape = (model.get_build_config() or {}).get("input_shape")
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return None
    if isinstance(shape, dict) and len(shape) == 1:  # a shapes dict: {"<argument>_shape": shape}
        shape = next(iter(shape.values()))
    if isinstance(shape, (list, tuple)) and all(d is None or isinstance(d, int) for d in shape):
        return tuple(shape)
    return None


@contextlib.contextmanager
def patched_calls(calls: Sequence[tuple]) -> Iterator[None]:
    """Run with each ``layer.call`` replaced by ``fn``, for the ``(layer, fn)`` pairs given, and restored after.

    How cnn-exposed records or changes a layer inside a subclassed model, whose ``call`` is opaque Python:
    ``Layer.__call__`` runs ``self.call``, so an instance attribute takes the method's place (as xplique
    records layers). ``fn`` gets the arguments the original ``call`` would get.
    """
    saved = []
    try:
        for layer, fn in calls:
            saved.append((layer, layer.__dict__.get("call", _MISSING)))
            object.__setattr__(layer, "call", fn)  # past Keras' attribute tracking
        yield
    finally:
        for layer, old in reversed(saved):
            if old is _MISSING:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", old)


def unpatched_call(layer) -> Callable:
    """``layer``'s own ``call`` method (its class's), whatever :func:`patched_calls` put in its place."""
    return type(layer).call.__get__(layer)


def functional_graph(model):
    """The functional graph that implements ``model``: itself for a functional model; for a Sequential that
    knows its input shape, the functional model Keras builds behind it (``Sequential._functional``, private
    since Keras 3.0); None for a Sequential without an input shape or a subclassed model."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if hasattr(model, "_run_through_graph") and hasattr(model, "_nodes_by_depth"):
        return model
    return None


def run_through_graph(graph, x, operation_fn: Callable):
    """Run a functional ``graph`` on ``x``, calling ``operation_fn(op)`` for each operation to get the
    callable to run in its place. This is ``Function._run_through_graph``, the routine Keras itself uses to
    call a functional model (private, with this signature since Keras 3.0)."""
    return graph._run_through_graph(x, operation_fn=operation_fn)


def producer(tensor):
    """The layer (or operation) whose output a symbolic Keras tensor is (``tensor._keras_history[0]``).

    Raises AttributeError for a tensor that no layer produced (a model input has its InputLayer)."""
    return tensor._keras_history[0]


def inbound_nodes(layer) -> list:
    """The nodes at which ``layer`` is called in the graphs it belongs to (``layer._inbound_nodes``)."""
    return list(getattr(layer, "_inbound_nodes", None) or [])


def node_outputs(node) -> list:
    """A graph node's output tensors (``Node.output_tensors`` in Keras 3; ``outputs`` in some releases)."""
    outs = getattr(node, "output_tensors", None) or getattr(node, "outputs", None) or []
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


def node_inputs(node) -> list:
    """A graph node's input tensors, flattened (``Node.input_tensors`` in Keras 3; ``inputs`` in some releases)."""
    ins = getattr(node, "input_tensors", None) or getattr(node, "inputs", None) or []
    flat, todo = [], [ins]
    while todo:
        item = todo.pop()
        if isinstance(item, (list, tuple)):
            todo.extend(reversed(item))
        elif isinstance(item, dict):
            todo.extend(reversed(list(item.values())))
        else:
            flat.append(item)
    return flat


def flip(x, axes: tuple[int, ...]):
    """``x`` reversed along each of ``axes``.

    ``keras.ops.flip`` with a tuple of axes fails on Keras 3.13's TensorFlow backend ("Shape must be rank 1
    but is rank 2 ... ReverseV2"); one axis at a time works on every version.
    """
    for axis in axes:
        x = ops.flip(x, axis=axis)
    return x


def causal_padding(layer) -> list[list[int]]:
    """The zeros a ``"causal"`` ``Conv1D`` adds before convolving, as ``ops.pad`` widths: ``dilation × (kernel
    − 1)`` on the left of the time axis. Keras computes this in a private method (``_compute_causal_padding``);
    we compute it from the layer's public configuration."""
    left = int(layer.dilation_rate[0]) * (int(layer.kernel_size[0]) - 1)
    if layer.data_format == "channels_first":
        return [[0, 0], [0, 0], [left, 0]]
    return [[0, 0], [left, 0], [0, 0]]


def apply_adam(var, m, v, grad, *, step, learning_rate: float, beta1: float, beta2: float, epsilon: float):
    """One Adam update of the ``tf.Variable`` ``var`` with moments ``m`` and ``v``, in TensorFlow's fused
    kernel (``tf.raw_ops.ResourceApplyAdam``: one pass over the parameters instead of about ten).

    ``step`` is the 1-based step number (a tensor); the update is Kingma & Ba's with bias correction.
    """
    tf.raw_ops.ResourceApplyAdam(
        var=var.handle, m=m.handle, v=v.handle, beta1_power=beta1**step, beta2_power=beta2**step,
        lr=learning_rate, beta1=beta1, beta2=beta2, epsilon=epsilon, grad=grad,
    )  # fmt: skip


def graph_operations(graph) -> list:
    """Every operation of a functional ``graph`` in topological order: its layers and the ``keras.ops``
    operations applied between them (``x + y`` on symbolic tensors is an ``Add`` operation node), which
    ``graph.layers`` leaves out (``Function.operations``, since Keras 3.0)."""
    return list(graph.operations)


def trapezoid(y, x, axis: int = -1):
    """The trapezoid rule of ``y`` over ``x`` (``numpy.trapezoid`` since NumPy 2.0, ``numpy.trapz`` before:
    our floor, NumPy 1.26, has only the old name, and NumPy 2.4 dropped it)."""
    fn = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009 (absent from NumPy 2.4's stubs)
    return fn(y, x, axis=axis)


class EndpointSignature(NamedTuple):
    """What a SavedModel endpoint takes and gives: its inputs as ``{keyword name: TensorSpec}`` (positional
    inputs under ``None``) and its outputs (a TensorSpec, or a dict, list or tuple of them)."""

    inputs: dict
    outputs: Any


def saved_model_layer(cls: type, path, endpoint: str, name: str | None = None):
    """A ``keras.layers.TFSMLayer`` (or ``cls``, a subclass of it) around the SavedModel at ``path`` calling
    ``endpoint``: an attribute of the saved object (Keras' ``model.export`` writes ``"serve"``) or an entry of
    its ``signatures`` (``"serving_default"``). Keras 3.0 to 3.15 take ``call_endpoint=`` (3.15 also keeps
    ``filepath``, ``call_training_endpoint``, ``trainable``, ``name``, ``dtype``); a missing endpoint raises
    ValueError."""
    return cls(str(path), call_endpoint=endpoint, name=name)


def endpoint_signature(layer) -> EndpointSignature:
    """The inputs and outputs of the endpoint a ``TFSMLayer`` calls (``TFSMLayer.call_endpoint_fn``): a
    signature is a concrete function (``structured_input_signature``, ``structured_outputs``); a restored
    ``tf.function`` attribute reads them from its first concrete function."""
    fn = layer.call_endpoint_fn
    if not hasattr(fn, "structured_input_signature"):
        fn = fn.concrete_functions[0]
    args, kwargs = fn.structured_input_signature
    inputs = dict(kwargs)
    if args:
        inputs[None] = args[0] if len(args) == 1 else args
    return EndpointSignature(inputs, fn.structured_outputs)


def call_endpoint(layer, x, input_name: str | None):
    """Call a ``TFSMLayer``'s endpoint on ``x``: by keyword for a signature (whose arguments are keyword-only),
    positionally for a restored ``tf.function``."""
    fn = layer.call_endpoint_fn
    return fn(**{input_name: x}) if input_name is not None else fn(x)
