"""Models with several inputs or outputs: which input is explained, which output, and the other inputs' values.

A model with an image and metadata (a price, a star rating) or with two images (a siamese pair) is explained one
image input at a time: ``input=`` names it (a name or an index into ``model.inputs``; by default the only 4-D
input). The other inputs, the *side inputs*, are held at the values the caller gives with the images, as a dict
keyed by input name or a list in ``model.inputs`` order. Baselines, noise, masks and occlusion touch only the
explained input: every copy a method makes of an image (a noisy copy, a path point, a masked or occluded copy)
runs with that image's own side inputs.

How the pairing is done, in one place: the side inputs of the images being explained are held in a context
(:func:`held_inputs`), aligned with the rows of the explained array; a method that makes copies says which image
each copy comes from with :func:`rows` (``with rows(owner): engine.scores(copies, ...)``), which narrows the held
side inputs to the copies' owners; :meth:`Engine.map_batches <cnn_exposed.engine.Engine.map_batches>` does so per
batch. The Engine reads the held side inputs, aligned with the batch it runs, and feeds them to the model. A
single-input model holds nothing and runs exactly as before.

``output=`` picks one output of a model with several (a name or an index into ``model.outputs``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping

import numpy as np

from .compat import functional_graph, graph_operations, inbound_nodes, node_inputs, node_outputs, producer
from .errors import ModelIOError

_HELD: contextvars.ContextVar = contextvars.ContextVar("cnn_exposed_side_inputs", default=None)


def model_inputs(model) -> list:
    """The model's symbolic inputs in ``model.inputs`` order (empty for a subclassed model)."""
    return list(getattr(model, "inputs", None) or [])


def _describe(names: list, tensors: list) -> str:
    return ", ".join(f"{i}: {n!r} {tuple(t.shape)}" for i, (n, t) in enumerate(zip(names, tensors)))


def input_names(model) -> list[str]:
    """The names of the model's inputs, in ``model.inputs`` order."""
    return [t.name for t in model_inputs(model)]


def output_names(model) -> list[str]:
    """The names of the model's outputs, in ``model.outputs`` order (the layers that produce them)."""
    outputs = list(getattr(model, "outputs", None) or [])
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(outputs):
        names = [getattr(producer(t), "name", t.name) for t in outputs]
    return names


def _pick(choice, names: list, tensors: list, what: str, model, default: int | None) -> int:
    listed = _describe(names, tensors)
    if choice is None:
        if default is not None:
            return default
        raise ModelIOError(
            f"Model {model.name!r} has {len(tensors)} {what}s; say which to explain with {what}=<name or index>. "
            f"Its {what}s: {listed}."
        )
    if isinstance(choice, (int, np.integer)) and not isinstance(choice, bool):
        if -len(tensors) <= int(choice) < len(tensors):
            return int(choice) % len(tensors)
    elif isinstance(choice, str) and choice in names:
        return names.index(choice)
    raise ModelIOError(f"{what}={choice!r} is not one of model {model.name!r}'s {what}s: {listed}.")


def input_index(model, input=None) -> int:
    """The index into ``model.inputs`` of the explained input: ``input`` (a name or an index) or, by default,
    the only image-shaped (4-D) input. Raises :class:`ModelIOError` listing the inputs when there is no such
    input, or ``input`` is not one of them."""
    tensors = model_inputs(model)
    if len(tensors) <= 1:
        if input is None or input in (0, -1) or (tensors and input == tensors[0].name):
            return 0
        return _pick(input, input_names(model), tensors, "input", model, None) if tensors else 0
    images = [i for i, t in enumerate(tensors) if len(t.shape) == 4]
    return _pick(input, input_names(model), tensors, "input", model, images[0] if len(images) == 1 else None)


def output_index(model, output=None) -> int:
    """The index into ``model.outputs`` of the explained output: ``output`` (a name or an index); a model with
    several outputs needs one (:class:`ModelIOError` lists them)."""
    outputs = list(getattr(model, "outputs", None) or [])
    if len(outputs) <= 1:
        if output is None or output in (0, -1):
            return 0
        return _pick(output, output_names(model), outputs, "output", model, None) if outputs else 0
    return _pick(output, output_names(model), outputs, "output", model, None)


def split_inputs(model, images, index: int):
    """``(explained images, side inputs)`` from what the caller passed: for a single-input model ``(images,
    None)``; for a model with several inputs, ``images`` is a dict keyed by input name or a list/tuple in
    ``model.inputs`` order, and the side inputs come back as float32-or-own-dtype arrays in ``model.inputs`` order
    without the explained one (a single example gets its batch axis). The caller's arrays are never written to."""
    tensors = model_inputs(model)
    if len(tensors) <= 1:
        if isinstance(images, Mapping):
            if len(images) != 1:
                raise ModelIOError(f"Model {model.name!r} has one input; got a dict of {len(images)} inputs.")
            images = next(iter(images.values()))
        return images, None
    names = input_names(model)
    how = (
        f"Model {model.name!r} has {len(tensors)} inputs ({_describe(names, tensors)}); pass the images with the "
        f"other inputs' values as a dict keyed by input name, e.g. {{{', '.join(repr(n) + ': ...' for n in names)}}}, "
        "or as a list in that order."
    )
    if isinstance(images, Mapping):
        missing = [n for n in names if n not in images]
        extra = [k for k in images if k not in names]
        if missing or extra:
            raise ModelIOError(f"{how} Missing: {missing}; unknown: {extra}.")
        values = [images[n] for n in names]
    elif isinstance(images, (list, tuple)) and len(images) == len(tensors):
        values = list(images)
    else:
        raise ModelIOError(how)
    explained = np.asarray(values[index])
    single = explained.ndim == len(tensors[index].shape) - 1
    sides = []
    for i, (value, tensor) in enumerate(zip(values, tensors)):
        if i == index:
            continue
        dtype = np.float32 if "float" in str(tensor.dtype) else np.dtype(str(tensor.dtype))
        side = np.array(value, dtype=dtype)  # a copy: nothing we do reaches the caller's array
        want = tuple(tensor.shape[1:])
        if single and side.ndim == len(want):
            side = side[None]
        if side.shape[1:] != want and not all(w is None or w == g for w, g in zip(want, side.shape[1:])):
            raise ModelIOError(f"Input {names[i]!r} has shape {side.shape}; the model takes {(None, *want)}. {how}")
        sides.append(side)
    n = 1 if single else len(explained)
    bad = [names[i] for i, s in zip([j for j in range(len(tensors)) if j != index], sides) if len(s) != n]
    if bad:
        raise ModelIOError(f"Inputs {bad} do not have one row per image ({n}). {how}")
    return values[index], sides


def fixed_inputs(model, index: int, fixed=None) -> list:
    """The side inputs held fixed while an image input is optimised (feature visualisation): one example each,
    ``(1, ...)``, in ``model.inputs`` order without input ``index``; from ``fixed`` (a dict keyed by input name, one
    example each, with or without its batch axis) or zeros for the inputs it leaves out."""
    tensors = model_inputs(model)
    names = input_names(model)
    fixed = dict(fixed or {})
    unknown = [k for k in fixed if k not in names or names.index(k) == index]
    if unknown:
        raise ModelIOError(
            f"fixed= names {unknown}, which are not side inputs of model {model.name!r}: {_describe(names, tensors)}."
        )
    out = []
    for i, (name, tensor) in enumerate(zip(names, tensors)):
        if i == index:
            continue
        want = tuple(tensor.shape[1:])
        dtype = np.float32 if "float" in str(tensor.dtype) else np.dtype(str(tensor.dtype))
        if name in fixed:
            value = np.array(fixed[name], dtype=dtype)
            value = value[None] if value.ndim == len(want) else value
        elif None in want:
            raise ModelIOError(
                f"Input {name!r} has shape {(None, *want)}: give its value with fixed={{{name!r}: ...}}."
            )
        else:
            value = np.zeros((1, *want), dtype)
        if value.shape[0] != 1 or not all(w is None or w == g for w, g in zip(want, value.shape[1:])):
            raise ModelIOError(f"fixed[{name!r}] has shape {value.shape}; give one example of shape {want}.")
        out.append(value)
    return out


@contextlib.contextmanager
def held_inputs(sides) -> Iterator[None]:
    """Hold ``sides`` (a list of side-input arrays aligned with the rows of the explained images, or None) for the
    Engine's passes run inside the block."""
    token = _HELD.set(None if sides is None else tuple(sides))
    try:
        yield
    finally:
        _HELD.reset(token)


@contextlib.contextmanager
def rows(owners) -> Iterator[None]:
    """Narrow the held side inputs to ``owners`` (a slice or an index array: which held row each row of the next
    passes' input comes from), for the block. Nothing is held for a single-input model: then it does nothing."""
    sides = _HELD.get()
    if sides is None:
        yield
        return
    token = _HELD.set(tuple(s[owners] for s in sides))
    try:
        yield
    finally:
        _HELD.reset(token)


def current_sides() -> tuple | None:
    """The side inputs held now (aligned with the next pass's rows), or None."""
    return _HELD.get()


def branch_operations(model, index: int) -> set[int] | None:
    """``id`` of every top-level operation of a functional ``model`` that the input ``index`` reaches (a nested
    model called on it counts as a whole); None for a single-input model (everything is on the branch)."""
    tensors = model_inputs(model)
    graph = functional_graph(model)
    if len(tensors) <= 1 or graph is None:
        return None
    reached = {id(tensors[index])}
    found: set[int] = set()
    for op in graph_operations(graph):
        for node in inbound_nodes(op):
            if any(id(t) in reached for t in node_inputs(node)):
                found.add(id(op))
                reached.update(id(t) for t in node_outputs(node))
    return found


def on_branch(ref, branch: set[int] | None) -> bool:
    """Whether a :class:`~cnn_exposed.layers.LayerRef` is on the branch :func:`branch_operations` found."""
    if branch is None:
        return True
    top = ref.models[1] if len(ref.models) > 1 else ref.layer
    return id(top) in branch
