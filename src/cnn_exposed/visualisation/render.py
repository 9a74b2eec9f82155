"""The optimisation loop: render images that maximise an objective, a whole batch in one compiled step."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, field

import keras
import numpy as np
from keras import ops
from tqdm.auto import tqdm

from ..backend import compiled, depends_on
from ..errors import CnnExposedError, ModelError, StopForward
from ..graph import Plan, classifier_head, run_model
from ..layers import LayerRef, iter_layers, layer_output_shape, resolve_layer
from ..model_io import fixed_inputs, input_index, model_inputs, output_index
from ..models import LoadedModel, unwrap_loaded
from ..precision import low_precision, needs_scaling
from ..targets import class_count
from .grid import plot_grid
from .objectives import Objective, channel, class_logit
from .optimiser import GradientAscent
from .param import make_parameterisation
from .transforms import REGULARISERS, Transforms

REDIRECT_STEPS = 16


@dataclass
class Visualisation:
    """Rendered images and what they achieve.

    Attributes
    ----------
    images : (N, size, size, C) uint8
        C is the model's channel count: 3 (RGB) or 1 (grayscale), or any other.
    objective : (N,) float32
        Each image's objective on its final uint8 image passed through ``preprocess`` (no transforms).
    start_objective : (N,) float32
        The same on the random starting image.
    labels : list of str
        One title per image (e.g. ``"filter 3"``, a class name).
    history : (steps, N) float32
        The objective during optimisation (on transformed images).
    params : dict
    layer : str or None
    """

    images: np.ndarray
    objective: np.ndarray
    start_objective: np.ndarray
    labels: list
    history: np.ndarray
    params: dict = field(default_factory=dict)
    layer: str | None = None

    def __len__(self) -> int:
        return len(self.images)

    def plot(self, ncols: int | None = None, title: str | None = None, cell_size: float = 1.8):
        """A labelled grid figure (matplotlib); see :func:`~cnn_exposed.visualisation.plot_grid`."""
        return plot_grid(self, ncols=ncols, title=title, cell_size=cell_size)

    def save_grid(self, path, ncols: int | None = None, title: str | None = None) -> None:
        """Save the labelled grid as a PNG file."""
        import matplotlib.pyplot as plt

        fig = self.plot(ncols=ncols, title=title)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)


def affine_colour_map(preprocess: Callable | None, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``preprocess`` (uint8 images of ``channels`` channels -> model input) as ``x @ M.T + b`` on pixel values
    in [0, 255].

    The optimisation must differentiate through the preprocessing; common ones (scaling, mean/std, Caffe's
    BGR mean subtraction) are affine per pixel, so we measure ``M`` and ``b`` with probe images and check
    the fit on a random image.
    """
    if preprocess is None:
        return np.eye(channels, dtype=np.float32) / 255.0, np.zeros(channels, dtype=np.float32)
    probes = np.zeros((channels + 2, 4, 4, channels), dtype=np.uint8)
    for c in range(channels):
        probes[1 + c, ..., c] = 255
    probes[-1] = np.random.default_rng(0).integers(0, 256, (4, 4, channels))
    out = np.asarray(preprocess(probes.copy()), dtype=np.float64)
    if out.shape != probes.shape:
        raise CnnExposedError(
            f"preprocess changed the image shape {probes.shape} -> {out.shape}; feature visualisation needs a "
            "per-pixel colour mapping (resize the model input instead)."
        )
    b = out[0, 0, 0]
    m = np.stack([(out[1 + c, 0, 0] - b) / 255.0 for c in range(channels)], axis=1)
    predicted = probes[-1].astype(np.float64) @ m.T + b
    span = max(np.abs(out).max(), 1e-6)
    if not np.allclose(predicted, out[-1], atol=1e-3 * span):
        raise CnnExposedError(
            "preprocess is not a per-pixel affine colour map (like x/255, x/127.5-1, mean/std or Caffe's BGR "
            "mean subtraction), so it cannot be differentiated through; pass one that is."
        )
    return m.astype(np.float32), b.astype(np.float32)


def _input_size(model, index: int = 0) -> tuple:
    return tuple(model.inputs[index].shape[1:3]) if getattr(model, "inputs", None) else (None, None)


def input_channels(model, index: int = 0) -> int:
    """How many channels the model's images (its input ``index``) have (3 when the model does not say)."""
    shape = tuple(model.inputs[index].shape) if getattr(model, "inputs", None) else ()
    return int(shape[-1]) if len(shape) == 4 and shape[-1] is not None else 3


def _default_size(model, size: int | None, index: int = 0) -> int:
    if size is not None:
        return int(size)
    h, w = _input_size(model, index)
    return int(h) if h is not None and h == w else 128


class ObjectiveRunner:
    """Evaluates an objective on images: records the layers it reads, stops the model there when it can.

    A model with several inputs: ``ports`` is ``(input, output, fixed)``, the optimised image input, the output
    whose logits class objectives read, and the other inputs' values (:func:`~cnn_exposed.model_io.fixed_inputs`).
    """

    def __init__(
        self,
        model,
        objective: Objective,
        preprocess: Callable | None,
        size: int,
        redirect_relu: bool = True,
        colour: tuple | None = None,
        ports: tuple = (None, None, None),
    ) -> None:
        from ..rules import GRADIENT_RULES, RuleSet

        self.model, self.objective, self.preprocess = model, objective, preprocess
        self.input, self.output = input_index(model, ports[0]), output_index(model, ports[1])
        self.sides = fixed_inputs(model, self.input, ports[2]) if len(model_inputs(model)) > 1 else []
        self.channels = input_channels(model, self.input)
        self.refs = {spec: resolve_layer(model, spec) for spec in objective.layers}
        head = classifier_head(model, self.output) if objective.uses_logits else None
        record = tuple(self.refs.values()) or None
        stop = head is None and not self.sides  # a trunk shared by two inputs runs once per input
        # scores: the model's own layers, exactly as a user would run them
        self.exact_plan = Plan(record=record, logits=head, stop_when_recorded=stop)
        # optimisation steps: the same function, faster (batch normalisation folded into the layer before
        # it, zero padding done inside the convolution after it, stride-1 convolutions differentiated by a
        # transposed forward convolution; see RuleSet.replacements)...
        keep = tuple(self.refs.values())
        fast = GRADIENT_RULES.replacements(model, head, keep, self.input)
        self.plan = Plan(record=record, logits=head, replace=fast, stop_when_recorded=stop)
        # ... and for the first steps, ReLUs with Lucid's redirected gradient (same forward pass)
        replace = RuleSet("redirect").replacements(model, head, keep, self.input) if redirect_relu else fast
        self.redirected_plan = Plan(record=record, logits=head, replace=replace, stop_when_recorded=stop)
        self.colour_m, self.colour_b = colour if colour is not None else affine_colour_map(preprocess, self.channels)
        in_shape = _input_size(model, self.input)
        self.resize_to = None if None in in_shape or in_shape == (size, size) else in_shape
        self._compiled = compiled(functools.partial(self.values, exact=True))

    def values(self, x, redirect: bool = False, exact: bool = False):
        """The objective ``(B,)`` for model input ``x`` (keras ops; differentiable)."""
        recorded: dict = {}
        logits = None
        inputs = x
        if self.sides:  # the other inputs, fixed, one example repeated for every image
            count = ops.shape(x)[0]
            inputs = [ops.broadcast_to(ops.convert_to_tensor(s), (count, *s.shape[1:])) for s in self.sides]
            inputs.insert(self.input, x)
        try:
            plan = self.exact_plan if exact else self.redirected_plan if redirect else self.plan
            out = run_model(self.model, inputs, plan, recorded)
            multi_output = len(getattr(self.model, "outputs", None) or []) > 1
            logits = ops.cast(out[self.output] if multi_output else out, "float32")
        except StopForward:  # the layers after the last recorded one are not needed
            pass
        acts = {spec: ops.cast(self._on_input(recorded[ref.path], x), "float32") for spec, ref in self.refs.items()}
        return self.objective(acts, logits)

    def _on_input(self, calls: list, x):
        """The last call of a recorded layer (for a trunk shared by several inputs, the last on the optimised
        input's path)."""
        if self.sides and len(calls) > 1:
            calls = [a for a in calls if depends_on(a, x)] or calls
        return calls[-1]

    def to_model_input(self, images01):
        """[0, 1] images -> model input, through the preprocessing's affine colour map."""
        m = self.colour_m * 255.0
        if np.array_equal(m, np.diag(np.diag(m))):  # per-channel scaling (most preprocessings): no matmul
            x = images01 * np.diag(m) + self.colour_b
        else:
            x = ops.matmul(images01, ops.convert_to_tensor(m.T)) + self.colour_b
        return ops.image.resize(x, self.resize_to) if self.resize_to else x

    def score(self, images_uint8: np.ndarray) -> np.ndarray:
        """The objective on uint8 images passed through the real ``preprocess`` (no transforms)."""
        if self.preprocess is None:
            x = images_uint8.astype(np.float32) / 255.0
        else:
            x = np.asarray(self.preprocess(images_uint8.copy()), dtype=np.float32)
        if self.resize_to:
            x = np.asarray(ops.image.resize(x, self.resize_to))
        return np.asarray(self._compiled(x), dtype=np.float32)


def evaluate_objective(
    model: keras.Model, objective: Objective, images: np.ndarray, preprocess: Callable | None = None
) -> np.ndarray:
    """The objective's value ``(N,)`` on uint8 ``images`` ``(N, H, W, C)`` passed through ``preprocess``."""
    images = np.asarray(images)
    return ObjectiveRunner(model, objective, preprocess, images.shape[1]).score(images)


_PROGRAMS: OrderedDict = OrderedDict()
_PROGRAM_CACHE_SIZE = 4
_BUILT = {"programs": 0}


def cache_info() -> dict:
    """``{"built": set-ups compiled so far, "cached": set-ups kept for reuse}``: a repeated call with the same
    model, objective, batch, size and options builds nothing (it reuses the traced steps)."""
    return {"built": _BUILT["programs"], "cached": len(_PROGRAMS)}


class Program:
    """What one set-up compiles (objective runner, parameterisation, Adam steps), kept for later calls.

    A repeated call (the same model, objective, batch, size and options, e.g. re-running a notebook cell
    or rendering with another seed) reuses the traced steps instead of spending seconds tracing again.
    """

    def __init__(
        self, model, objective, preprocess, size, parameterisation, transforms, regs, redirect_relu, colour, ports
    ):
        _BUILT["programs"] += 1
        self.runner = ObjectiveRunner(model, objective, preprocess, size, redirect_relu, colour, ports)
        self.param = make_parameterisation(parameterisation, size, self.runner.channels)
        self.transforms, self.size = transforms, size
        self.regs = [(REGULARISERS[name], weight) for name, weight in regs]
        self._ascent = None

    def loss(self, params, matrices, redirect: bool = False):
        images = self.param.to_image(params)
        seen = self.transforms.apply(images, matrices, self.size)
        values = self.runner.values(self.runner.to_model_input(seen), redirect=redirect)
        loss = -ops.sum(values)
        for reg, weight in self.regs:
            loss = loss + weight * ops.sum(reg(images))
        return loss, values

    def ascent(self, init: np.ndarray, learning_rate: float) -> GradientAscent:
        if self._ascent is None:
            scaled = needs_scaling(low_precision(r.layer for r in iter_layers(self.runner.model)))
            self._ascent = GradientAscent(init, self.loss, learning_rate, scaled)
        else:
            self._ascent.reset(init)
        return self._ascent


def render(
    model: keras.Model,
    objective: Objective,
    n: int = 1,
    *,
    steps: int = 256,
    size: int | None = None,
    seed: int = 0,
    parameterisation: str = "fourier",
    preprocess: Callable | None = None,
    transforms: Transforms | str | None = "standard",
    regularisers: dict | None = None,
    learning_rate: float = 0.05,
    labels: Sequence[str] | None = None,
    progress: bool = True,
    redirect_relu: bool = True,
    redirect_steps: int = REDIRECT_STEPS,
    input: int | str | None = None,
    output: int | str | None = None,
    fixed: dict | None = None,
) -> Visualisation:
    """Optimise ``n`` images together to maximise ``objective`` (one value per image).

    Parameters
    ----------
    model : keras.Model
        Any Sequential, functional or nested model; layers are found by name or ``"outer/inner"`` path.
    objective : Objective
        E.g. ``channel("conv2", [0, 1, 2])``, ``class_logit(3) + 0.5 * diversity("conv2")``.
    steps : int
        Adam steps.
    size : int
        Side of the square images; default: the model's input size, else 128.
    seed : int
        Seeds the initial image and every step's transformations: same seed, same images.
    parameterisation : "fourier" or "pixels"
    preprocess : callable or None
        uint8 images (RGB, or the model's channel count) -> model input, a per-pixel affine map (None: x / 255).
    transforms : "standard", None or Transforms
    regularisers : dict
        Name -> weight, names from ``tv``, ``l1``, ``l2``, ``blur``.
    learning_rate : float
    redirect_relu : bool
        Lucid's redirected ReLU gradient: filters that are silent on the random start still get a
        gradient (the forward pass, and so every reported value, is unchanged).
    redirect_steps : int
        For how many of the first steps the redirected gradient is used (16, as torchbearer's port of
        Lucid's). It differs from the plain gradient only while a layer is silent for an image, which is
        mostly at the start, and costs about half a forward-backward pass more per step. On the demo model
        (48 filters, 100 steps) 8, 16 and all 100 redirected steps gave identical final objectives, and with
        none 8 of the 48 filters never rose above their random start.
    input, output, fixed
        A model with several inputs: the image input optimised (a name or an index; default the only 4-D one) and
        the other inputs' values, held fixed: ``fixed={name: one example}``, zeros for those it leaves out. A model
        with several outputs: the one whose logits class objectives read. A layer on a trunk shared by two inputs
        is read on the optimised input's call.
    """
    steps = int(steps)
    index = input_index(model, input)
    size = _default_size(model, size, index)
    rng = np.random.default_rng(seed)
    if transforms == "standard":
        transforms = Transforms.standard(size)
    elif transforms is None:
        transforms = Transforms.none()
    elif not isinstance(transforms, Transforms):
        raise CnnExposedError(f"transforms must be 'standard', None or a Transforms, got {transforms!r}.")
    for name in regularisers or {}:
        if name not in REGULARISERS:
            raise CnnExposedError(f"Unknown regulariser {name!r}; choose from {sorted(REGULARISERS)}.")
    regs = tuple((name, float(weight)) for name, weight in (regularisers or {}).items())
    colour = affine_colour_map(preprocess, input_channels(model, index))
    kind = parameterisation if isinstance(parameterisation, str) else id(parameterisation)
    setup: tuple = (id(model), objective.key, n, size, kind, astuple(transforms), regs, float(learning_rate))
    ports = (index, output_index(model, output), fixed)
    if len(model_inputs(model)) > 1:
        setup += (*ports[:2], tuple(v.tobytes() for v in fixed_inputs(model, index, fixed)))
    key: tuple | None = (*setup, bool(redirect_relu), colour[0].tobytes(), colour[1].tobytes())
    try:
        program = _PROGRAMS.get(key)
    except TypeError:  # an objective whose key cannot be hashed: compile afresh
        key, program = None, None
    if program is None:
        program = Program(
            model, objective, preprocess, size, parameterisation, transforms, regs, redirect_relu, colour, ports
        )
        if key is not None:
            _PROGRAMS[key] = program
            while len(_PROGRAMS) > _PROGRAM_CACHE_SIZE:
                _PROGRAMS.popitem(last=False)
    else:
        _PROGRAMS.move_to_end(key)
    runner, param = program.runner, program.param
    runner.preprocess = preprocess

    def as_uint8(params):
        return np.clip(np.rint(np.asarray(param.to_image(params)) * 255.0), 0, 255).astype(np.uint8)

    init = param.init(n, rng)
    start = runner.score(as_uint8(ops.convert_to_tensor(init)))
    ascent = program.ascent(init, learning_rate)
    history = np.zeros((steps, n), dtype=np.float32)
    warm = min(steps, int(redirect_steps)) if redirect_relu else 0
    for i in tqdm(range(steps), desc="rendering", disable=not progress or steps < 2, leave=False):
        history[i] = ascent.step(transforms.sample(n, size, rng), redirect=i < warm)
    images = as_uint8(ops.convert_to_tensor(ascent.value()))
    layer = next(iter(runner.refs.values())).path if len(runner.refs) == 1 else None
    return Visualisation(
        images=images,
        objective=runner.score(images),
        start_objective=start,
        labels=list(labels) if labels is not None else [objective.description] * n,
        history=history,
        params={
            "steps": steps,
            "size": size,
            "seed": seed,
            "parameterisation": getattr(param, "name", str(parameterisation)),
            "learning_rate": learning_rate,
            "regularisers": dict(regularisers or {}),
            "transforms": "none" if transforms.pad == 0 and transforms.jitter == 0 else "standard",
            "objective": objective.description,
        },
        layer=layer,
    )


def _channel_count(ref: LayerRef) -> int:
    shape = layer_output_shape(ref.layer)
    if shape is None or len(shape) < 2 or shape[-1] is None:
        raise CnnExposedError(
            f"Layer {ref.path!r} has output shape {shape}: it has no channels axis to pick filters from. "
            "Choose a convolutional or dense layer (see cnn_exposed.list_layers(model))."
        )
    return int(shape[-1])


def _batched(
    model, objective_for: Callable, items: list, labels: list, batch_size: int | None, seed: int, **kwargs
) -> Visualisation:
    """Render ``items`` in batches of ``batch_size`` (default: all at once) and join the results."""
    batch = int(batch_size or len(items))
    parts = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        parts.append(
            render(
                model,
                objective_for(chunk),
                len(chunk),
                seed=seed + start,
                labels=labels[start : start + batch],
                **kwargs,
            )
        )
    first = parts[0]
    return Visualisation(
        images=np.concatenate([p.images for p in parts]),
        objective=np.concatenate([p.objective for p in parts]),
        start_objective=np.concatenate([p.start_objective for p in parts]),
        labels=[label for p in parts for label in p.labels],
        history=np.concatenate([p.history for p in parts], axis=1),
        params={**first.params, "batch_size": batch},
        layer=first.layer,
    )


def visualise_filters(
    model: keras.Model,
    layer,
    filters: int | Sequence[int] | None = None,
    *,
    steps: int = 256,
    size: int | None = None,
    seed: int = 0,
    parameterisation: str = "fourier",
    preprocess: Callable | None = None,
    batch_size: int | None = None,
    **render_options,
) -> Visualisation:
    """Render what each of ``filters`` of ``layer`` responds to, all filters of a batch optimised together.

    Parameters
    ----------
    layer : str or layer
        A name or ``"outer/inner"`` path through nested models.
    filters : int, sequence of int or None
        Channel indices (an int n means the first n; None: the first 16).
    batch_size : int or None
        Filters per optimisation batch (default: all of them in one batch).

    Returns
    -------
    Visualisation
        ``.images`` ``(N, size, size, 3)`` uint8 and ``.objective`` ``(N,)``, each filter's mean activation on
        its final image passed through ``preprocess``.
    """
    model, _ = unwrap_loaded(model)
    ref = resolve_layer(model, layer)
    count = _channel_count(ref)
    if filters is None:
        filters = list(range(min(16, count)))
    elif isinstance(filters, (int, np.integer)):
        filters = list(range(min(int(filters), count)))
    filters = [int(f) for f in filters]
    if not filters:
        raise CnnExposedError("filters is empty: give at least one filter index.")
    bad = [f for f in filters if not 0 <= f < count]
    if bad:
        raise CnnExposedError(
            f"Filter index {bad[0]} is out of range: layer {ref.path!r} has {count} filters (0 to {count - 1})."
        )
    return _batched(
        model,
        lambda chunk: channel(ref.path, chunk),
        filters,
        [f"filter {f}" for f in filters],
        batch_size,
        seed,
        steps=steps,
        size=size,
        parameterisation=parameterisation,
        preprocess=preprocess,
        **render_options,
    )


def visualise_classes(
    model: keras.Model,
    classes: Sequence[int],
    class_names: Sequence[str] | None = None,
    *,
    steps: int = 256,
    size: int | None = None,
    seed: int = 0,
    parameterisation: str = "fourier",
    preprocess: Callable | None = None,
    batch_size: int | None = None,
    **render_options,
) -> Visualisation:
    """Render an image per class that maximises its pre-softmax score; titles are the class names."""
    if class_names is None and isinstance(model, LoadedModel):
        class_names = model.class_names
    model, _ = unwrap_loaded(model)
    classes = [int(c) for c in classes]
    head = classifier_head(model, render_options.get("output"))
    count = class_count(head.units)
    bad = [c for c in classes if not 0 <= c < count]
    if bad:
        raise ModelError(f"Class {bad[0]} is out of range: the model has {count} classes.")
    names = [class_names[c] if class_names is not None else f"class {c}" for c in classes]
    return _batched(
        model,
        class_logit,
        classes,
        names,
        batch_size,
        seed,
        steps=steps,
        size=size,
        parameterisation=parameterisation,
        preprocess=preprocess,
        **render_options,
    )
