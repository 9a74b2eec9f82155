"""The computational core: run the model, record a layer, take gradients, chunk a batch.

Every attribution method is a thin layer on :class:`Engine`. The backend-specific calls live here (the
Engine's tapes and ``tf.function``) and in :mod:`cnn_exposed.backend` (the helpers rules and feature
visualisation use), and nowhere else, so a JAX or PyTorch engine for Keras 3 can be added in these two
modules without touching the methods.

Compiled functions are traced once per input shape: their signature leaves the batch dimension free, so
a smaller last batch does not retrace, and calling a method in a loop reuses the same graphs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from tqdm.auto import tqdm

from .backend import compiled, depends_on, scaled_backward, stateless_noise
from .compat import built_input_shape
from .errors import ModelError, ModelIOError
from .graph import Plan, classifier_head, run_model
from .layers import LayerRef, iter_layers, list_layers, resolve_layer
from .model_io import (
    branch_operations,
    current_sides,
    input_index,
    input_names,
    model_inputs,
    on_branch,
    output_index,
    rows,
)
from .precision import SCALING, low_precision, needs_scaling, seed_scale, to_float32
from .targets import class_count

DEFAULT_BATCH_SIZE = 32
SCORES = ("logit", "probability", "log_probability")


# What the Engine's passes return, one batch (or, from map_batches, many) at a time. Scores are in the
# engine's score space (logits by default); targets are the classes explained, -1 resolved to the top class.
class Outputs(NamedTuple):
    scores: np.ndarray  # (N, K) every class's score
    probabilities: np.ndarray  # (N, K)


class InputGradients(NamedTuple):
    scores: np.ndarray  # (N,) the explained score
    gradients: np.ndarray  # (N, H, W, C) its gradient with respect to the model input
    targets: np.ndarray  # (N,)
    probabilities: np.ndarray  # (N, K)


class LayerGradients(NamedTuple):
    scores: np.ndarray  # (N,)
    activations: np.ndarray  # (N, h, w, k) the recorded layer's output A
    gradients: np.ndarray  # (N, h, w, k) d score / d A
    targets: np.ndarray  # (N,)
    probabilities: np.ndarray  # (N, K)


class Relevance(NamedTuple):
    scores: np.ndarray  # (N,)
    relevance: np.ndarray  # (N, H, W, C) LRP relevance, or the modified gradient of guided backprop / deconvnet
    targets: np.ndarray  # (N,)
    probabilities: np.ndarray  # (N, K)


class Multipliers(NamedTuple):
    scores: np.ndarray  # (N,) the explained score at the inputs
    reference_scores: np.ndarray  # (N,) the same class's score at their references
    multipliers: np.ndarray  # (N, H, W, C) DeepLIFT's multipliers of the inputs (the rule set's)
    targets: np.ndarray  # (N,)
    probabilities: np.ndarray  # (N, K) at the inputs


class LayerRelevance(NamedTuple):
    scores: np.ndarray  # (N,)
    relevance: np.ndarray  # the LRP relevance at the recorded layer's output


class Activations(NamedTuple):
    activations: np.ndarray  # the recorded layer's output
    outputs: np.ndarray  # (N, K) every class's score
    probabilities: np.ndarray  # (N, K)


def batch_slices(n: int, batch_size: int, *, progress: bool = True, desc: str | None = None) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``batch_size`` items, with a progress bar when there are several."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    starts = range(0, n, batch_size)
    bar = progress and len(starts) > 1
    for start in tqdm(starts, desc=desc, unit="batch", disable=not bar, leave=False):
        yield slice(start, min(start + batch_size, n))


class Engine:
    """Forward and backward passes of one model, for one recorded layer and one kind of score.

    Parameters
    ----------
    model : keras.Model
        A built Sequential, functional or nested classifier with output ``(N, classes)`` or ``(N, 1)``.
    layer : str, keras.layers.Layer, LayerRef or None
        The layer whose output :meth:`layer_gradients` and :meth:`activations` return.
    score : {"logit", "probability", "log_probability"}
        What is explained: the pre-softmax/sigmoid score (default), the probability or its logarithm
        (which, unlike the logit, does not rise when every class's logit rises together).
    input, output : str, int or None
        A model with several inputs: the explained one (a name or an index into ``model.inputs``; default the only
        4-D input); the others are *side inputs*, read from :func:`cnn_exposed.model_io.held_inputs` aligned with
        each pass's rows. A model with several outputs: the explained one (a name or an index).

    Notes
    -----
    A binary model with one sigmoid unit is treated as two classes: class 1 has logit ``z`` and class
    0 has logit ``-z`` (so its probability is ``1 - sigmoid(z)``).
    """

    def __init__(
        self,
        model: keras.Model,
        layer: str | keras.layers.Layer | LayerRef | None = None,
        score: str = "logit",
        rules=None,
        input: int | str | None = None,
        output: int | str | None = None,
    ) -> None:
        if not isinstance(model, keras.Model):
            raise ModelError(
                f"Expected a keras.Model, got {type(model).__name__}. Load it with "
                "keras.models.load_model(path) or cnn_exposed.load_model(...)."
            )
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}.")
        self.model = model
        self.score = score
        self.input_index = input_index(model, input)
        self.output_index = output_index(model, output)
        self.multi_input = len(model_inputs(model)) > 1
        self.multi_output = len(getattr(model, "outputs", None) or []) > 1
        self.head = classifier_head(model, self.output_index)
        self.layer = resolve_layer(model, layer) if layer is not None else None
        if self.multi_input and self.layer is not None:
            self._check_branch()
        self.binary = self.head.units == 1
        self.num_classes = class_count(self.head.units)
        self.rules = rules
        self.precision = low_precision(r.layer for r in iter_layers(model))  # None: a float32 model
        keep = [self.layer] if self.layer else ()
        replace = rules.replacements(model, self.head, keep, self.input_index) if rules else {}
        self._plan = Plan(record=self.layer, logits=self.head, replace=replace)
        self._compiled: dict = {}
        self._read_call: int | None = None  # which call of the recorded layer the passes read (set when traced)

    def _check_branch(self) -> None:
        """A recorded layer of a model with several inputs must be one the explained input reaches."""
        assert self.layer is not None
        branch = branch_operations(self.model, self.input_index)
        if not on_branch(self.layer, branch):
            names = input_names(self.model)
            spatial = list_layers(self.model, spatial_only=True)
            reached = [p for p in spatial if on_branch(resolve_layer(self.model, p), branch)]
            raise ModelIOError(
                f"Layer {self.layer.path!r} is not on the path of input {names[self.input_index]!r}, so it says "
                f"nothing about that input. Pick a layer it reaches (spatial ones: {reached[-8:]}) or explain "
                f"another input (input=..., one of {names})."
            )

    # ------------------------------------------------------------------ shapes
    @property
    def input_shape(self) -> tuple:
        """The explained input's shape without the batch axis, ``(H, W, C)`` (entries may be None)."""
        if self.multi_input:
            return tuple(self.model.inputs[self.input_index].shape[1:])
        shape = built_input_shape(self.model)  # a subclassed model: the shape it was built with
        if shape is None:
            raise ModelError(f"Model {self.model.name!r} is not built: call it on data once first.")
        return tuple(shape[1:])

    # ------------------------------------------------------------ in-graph parts
    def _forward(self, x, record: bool = False, sides=(), plan: Plan | None = None):
        """(score-space outputs (N, K) and probabilities (N, K), float32; the recorded layer's output in its own
        dtype, or None); ``sides``: the side inputs of a model with several, aligned with ``x``; ``plan``: another
        plan than the engine's own (the ablation pass's)."""
        out, layer_out = self._outputs(x, record, sides, plan)
        return (*self._to_scores(out), layer_out)

    def _to_scores(self, out):
        """Score-space outputs (N, K) and probabilities (N, K) of the explained output ``out`` (float32, as the
        model gives it: (N, units)): in a graph, or eagerly on the arrays a forward pass returned."""
        squashing = self.head.activation in ("softmax", "sigmoid")
        if squashing and self.head.pre_activation is None:
            logits, probs = None, out
        else:
            logits = out
            if self.binary or self.head.activation == "sigmoid":  # one unit, or K independent labels
                probs = ops.sigmoid(out)
            else:
                probs = ops.softmax(out, axis=-1)
        if self.binary:
            probs = ops.concatenate([1.0 - probs, probs], axis=-1)
            if logits is not None:
                logits = ops.concatenate([-logits, logits], axis=-1)
        if self.score == "log_probability":
            # From the logits when there are any: exact where a probability has rounded to 1 (or 0).
            sigmoid = self.binary or self.head.activation == "sigmoid"
            if logits is None:
                scores = ops.log(ops.maximum(probs, 1e-30))
            else:
                scores = ops.log_sigmoid(logits) if sigmoid else ops.log_softmax(logits, axis=-1)
        else:
            scores = probs if (self.score == "probability" or logits is None) else logits
        return scores, probs

    def _outputs(self, x, record: bool = False, sides=(), plan: Plan | None = None):
        """The explained output in float32, as the model gives it, and the recorded layer's output (``record``;
        else None): :meth:`_forward` before the scores."""
        recorded: dict = {}
        inputs = x
        if self.multi_input:
            inputs = list(sides)
            inputs.insert(self.input_index, x)
        out = run_model(self.model, inputs, plan or self._plan, recorded)
        out = to_float32(out[self.output_index] if self.multi_output else out)
        layer_out = None
        if record:
            assert self.layer is not None  # _require_layer() ran
            if not recorded:
                raise ModelError(
                    f"Layer {self.layer.path!r} did not run when the model was called: it is inside a "
                    "subclassed model (whose graph cannot be walked) or not on the path to the output. "
                    "Pick a layer of a Sequential or functional model."
                )
            # A layer called several times: the last call is the one nearest the output; in a model with several
            # inputs (a trunk shared by two images), the last call on the explained input's path. In its own
            # dtype (float16 in a mixed model): the gradient at it is taken there, then cast.
            calls = recorded[self.layer.path]
            if self.multi_input and len(calls) > 1:
                calls = [a for a in calls if depends_on(a, x)] or calls
            layer_out = calls[-1]
            self._read_call = next(i for i, a in enumerate(recorded[self.layer.path]) if a is layer_out)
        return out, layer_out

    @staticmethod
    def _select(scores, targets, paired: bool = False):
        """Resolve ``-1`` targets to the top class, then pick each row's score: ``(s, targets)``. ``paired``: the
        rows are inputs stacked on their references (twice as many as ``targets``), each pair's class resolved
        on its input."""
        top = ops.cast(ops.argmax(scores[: ops.shape(targets)[0]] if paired else scores, axis=-1), "int32")
        targets = ops.where(targets < 0, top, targets)
        rows = ops.concatenate([targets, targets], axis=0) if paired else targets
        return ops.take_along_axis(scores, ops.expand_dims(rows, 1), axis=1)[:, 0], targets

    def _fn_outputs(self, x, *sides):
        return self._outputs(x, sides=sides)[0]

    def _backward(self, x, targets, record: bool = False, seed_with_score: bool = False, sides=(), paired=False):
        """One forward pass and the backward pass from the explained score: ``(s, t, probs, a, g)``, with ``a``
        the recorded layer's output (with ``record``; else None) and ``g`` the gradient at ``a`` (with ``record``)
        or at ``x``, both float32. ``seed_with_score``: the backward pass starts from the score itself (LRP's
        relevance) instead of 1. ``sides``: the side inputs, as :meth:`_forward` takes them. ``paired``: ``x`` is
        inputs stacked on their references (:meth:`multipliers`); only the inputs' scores are seeded.

        A float16 model's backward pass is seeded with a power of two per image, about 2**12 times the seed, and
        unscaled in float32, so gradients far below float16's smallest normal number (6e-5) keep their digits; a
        row that overflows runs again with a smaller scale, one whose gradients stay below 2**-6 with a larger one
        (:func:`~cnn_exposed.backend.scaled_backward`). A
        float32 (or bfloat16) model's pass is the plain one: what to run is decided here, at trace time.
        """

        def attempt(exponent=None):
            with tf.GradientTape() as tape:
                tape.watch(x)
                scores, probs, a = self._forward(x, record=record, sides=sides)
                s, t = self._select(scores, targets, paired)
            seed = s if seed_with_score else None
            if exponent is not None:
                scale = seed_scale(ops.ones_like(s) if seed is None else s, exponent)
                seed = scale if seed is None else seed * scale
            if paired:  # the inputs' rows only: the references' carry zeros
                inputs = ops.cast(ops.arange(ops.shape(s)[0]) < ops.shape(t)[0], s.dtype)
                seed = inputs if seed is None else seed * inputs
            source, zero = (a, {"unconnected_gradients": tf.UnconnectedGradients.ZERO}) if record else (x, {})
            g = to_float32(tape.gradient(s, source, output_gradients=seed, **zero))
            out = (s, t, probs, to_float32(a), g) if record else (s, t, probs, g)
            if exponent is None:
                return out
            peaks = ops.max(ops.abs(ops.reshape(g, (ops.shape(g)[0], -1))), axis=1)
            return (*out[:-1], g / ops.reshape(scale, (-1,) + (1,) * (len(g.shape) - 1)), peaks)

        if needs_scaling(self.precision):
            out = scaled_backward(attempt, tf.shape(x)[0], SCALING)
        else:
            out = attempt()
        return out if record else (*out[:3], None, out[3])

    def _fn_input_gradients(self, x, targets, *sides):
        s, t, probs, _, g = self._backward(x, targets, sides=sides)
        return s, g, t, probs

    def _fn_layer_gradients(self, x, targets, *sides):
        s, t, probs, a, g = self._backward(x, targets, record=True, sides=sides)
        return s, a, g, t, probs

    def _fn_relevance(self, x, targets, *sides):
        """Rule-based backward pass: (scores, relevance or modified gradient, targets, probabilities).

        LRP rules carry relevance backward, so the explained score is seeded with its own value and what
        reaches the input is the relevance itself; other rules (guided backprop) carry a gradient.
        """
        s, t, probs, _, g = self._backward(x, targets, seed_with_score=self.rules.output == "relevance", sides=sides)
        return s, g, t, probs

    def _fn_multipliers(self, x, targets, *sides):
        s, t, probs, _, g = self._backward(x, targets, sides=sides, paired=True)
        n = ops.shape(t)[0]
        return s[:n], s[n:], g[:n], t, probs[:n]

    def multipliers(self, x: np.ndarray, references: np.ndarray, targets: np.ndarray) -> Multipliers:
        """DeepLIFT's pass for one batch: inputs ``x`` and their ``references`` (both ``(N, H, W, C)``) run as one
        batch ``[x; references]`` through the rule set (``RuleSet("deeplift")``), whose rules read each layer's
        differences from its two halves; the backward pass is seeded on the inputs' rows. Returns the scores at
        the inputs and at the references (the class resolved on the input), the input multipliers, the targets
        and the probabilities. A model with several inputs: each reference gets its input's held side inputs."""
        if self.rules is None:
            raise ValueError("This engine has no backward rules; build it with rules=RuleSet('deeplift').")
        n = len(x)
        both = np.concatenate([np.asarray(x, np.float32), np.asarray(references, np.float32)], axis=0)
        with rows(np.concatenate([np.arange(n), np.arange(n)])):
            return Multipliers(*self._call(self._fn_multipliers, both, targets))

    def _fn_layer_relevance(self, x, targets, *sides):
        s, _, _, _, g = self._backward(x, targets, record=True, seed_with_score=True, sides=sides)
        return s, g

    def layer_relevance(self, x: np.ndarray, targets: np.ndarray) -> LayerRelevance:
        """Scores and the LRP relevance at the recorded layer's output, for one batch."""
        self._require_layer()
        return LayerRelevance(*self._call(self._fn_layer_relevance, x, targets))

    def relevance(self, x: np.ndarray, targets: np.ndarray) -> Relevance:
        """Scores, the rule-based relevance (or modified gradient) ``(N, H, W, C)``, targets, probabilities."""
        if self.rules is None:
            raise ValueError("This engine has no backward rules; build it with rules=...")
        return Relevance(*self._call(self._fn_relevance, x, targets))

    def _fn_activations(self, x, *sides):
        out, a = self._outputs(x, record=True, sides=sides)
        return to_float32(a), out

    def _twin(self, layer: LayerRef | None = None) -> Engine:
        """The engine whose compiled forward passes this one runs: the same model, rules and ports, ``layer``
        (None: the layer-free one) and the logit score; outputs become this engine's scores outside the graph.
        So the engines of one model share their forward passes whatever their score and layer: RISE
        (probabilities), the baselines of integrated gradients and Score-CAM run one traced forward pass, and
        Score-CAM, Grad-CAM and Eigen-CAM one traced activations pass of a layer."""
        if self.score == "logit" and layer is self.layer:
            return self
        return engine_for(self.model, layer, "logit", self.rules, self.input_index, self.output_index)

    def _scored(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This engine's scores and the probabilities of the outputs a twin's pass returned, as arrays."""
        scores, probs = self._to_scores(out)
        return np.asarray(scores), np.asarray(probs)

    def _fn_ablated_scores(self, images, activations, segments, targets, keep, *sides):
        """The explained score of each row ``i`` (image ``segments[i]``) with the recorded layer's output (the call
        the other passes read) replaced by the image's ``activations`` times ``keep[i]`` (k,) channel by channel."""
        assert self.layer is not None and self._read_call is not None  # ablated_scores() made sure
        dtype = getattr(self.layer.layer, "compute_dtype", None) or "float32"
        shape = (-1,) + (1,) * (len(activations.shape) - 2) + (activations.shape[-1],)
        fed = ops.cast(tf.gather(activations, segments) * ops.reshape(keep, shape), dtype)
        x = tf.gather(images, segments)  # for the layers a branch runs past the recorded one; else pruned
        sides = [tf.gather(s, segments) for s in sides]
        path, read = self.layer.path, self._read_call
        plan = Plan(
            record=self.layer,
            logits=self.head,
            replace=self._plan.replace,
            substitute=lambda p, call: fed if (p, call) == (path, read) else None,
        )
        scores, _, _ = self._forward(x, sides=sides, plan=plan)
        return self._select(scores, targets)[0]

    def _compiled_fn(self, graph_fn: Callable, x: np.ndarray, with_targets: bool, sides=(), extra=()) -> Any:
        """``graph_fn`` (one of the ``_fn_`` methods) compiled for inputs of ``x``'s shape, traced once; ``extra``:
        further arrays it takes after the targets (any number of rows, their own dtype)."""
        key: tuple = (graph_fn.__name__.removeprefix("_fn_"), tuple(x.shape[1:]))
        if sides or extra:
            key += tuple((s.shape[1:], s.dtype.str) for s in (*extra, *sides))
        fn = self._compiled.get(key)
        if fn is None:
            sig = [tf.TensorSpec((None,) + tuple(x.shape[1:]), tf.float32)]
            if with_targets:
                sig.append(tf.TensorSpec((None,), tf.int32))
            sig += [tf.TensorSpec((None,) + e.shape[1:], e.dtype) for e in extra]
            sig += [tf.TensorSpec((None,) + s.shape[1:], s.dtype) for s in sides]
            fn = compiled(graph_fn, input_signature=sig)
            self._compiled[key] = fn
        return fn

    def tracing_counts(self) -> dict:
        """``(pass, input shape) -> how many times it was traced``: 1 each, unless something retraces. The passes
        this engine compiled itself: an engine of another score than the logit runs its forward passes in its
        logit twin's (:meth:`_twin`), which lists them."""
        return {key: fn.experimental_get_tracing_count() for key, fn in self._compiled.items()}

    def side_inputs(self, count: int) -> tuple:
        """The held side inputs (:func:`cnn_exposed.model_io.held_inputs`) for a pass on ``count`` rows: ``()`` for
        a single-input model; a :class:`ModelIOError` when a model with several inputs has none or the wrong
        number of rows held."""
        if not self.multi_input:
            return ()
        sides = current_sides()
        names = input_names(self.model)
        if sides is None or any(len(s) != count for s in sides):
            raise ModelIOError(
                f"Model {self.model.name!r} has inputs {names}: a pass on its input {names[self.input_index]!r} "
                f"needs the other inputs' values for each of its {count} rows; hold them around the call with "
                "cnn_exposed.model_io.held_inputs([...]) (explain() does so from a dict of inputs)."
            )
        return sides

    def _call(self, graph_fn: Callable, x: np.ndarray, targets: np.ndarray | None = None, *extra: np.ndarray):
        x = np.asarray(x, dtype=np.float32)
        extra = tuple(np.asarray(e) for e in extra)
        sides = self.side_inputs(len(x))
        fn = self._compiled_fn(graph_fn, x, targets is not None, sides, extra)
        args = (x,) if targets is None else (x, np.asarray(targets, dtype=np.int32))
        out = fn(*args, *extra, *sides)
        if isinstance(out, (tuple, list)):
            return tuple(np.asarray(o) for o in out)
        return np.asarray(out)

    # --------------------------------------------------------------- one batch
    # Each of these runs a single compiled call on a batch the caller has sized. A target of -1 means
    # "the top class", resolved inside the same pass (so explaining the prediction costs no extra pass).
    def predict(self, x: np.ndarray) -> Outputs:
        """Score-space outputs ``(N, K)`` and probabilities ``(N, K)`` for one batch."""
        twin = self._twin()
        return Outputs(*self._scored(twin._call(twin._fn_outputs, x)))

    def scores(self, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The explained score of ``targets`` for one batch, ``(N,)`` (``-1``: the top class's)."""
        scores = self.predict(x).scores
        return np.asarray(self._select(scores, np.asarray(targets, np.int32))[0])

    def input_gradients(self, x: np.ndarray, targets: np.ndarray) -> InputGradients:
        """Scores ``(N,)``, their gradients w.r.t. the input ``(N, H, W, C)``, the resolved targets
        ``(N,)`` and the probabilities ``(N, K)``."""
        return InputGradients(*self._call(self._fn_input_gradients, x, targets))

    def layer_gradients(self, x: np.ndarray, targets: np.ndarray) -> LayerGradients:
        """Scores ``(N,)``, the layer's output ``A`` and ``dscore/dA`` (both ``(N, h, w, k)``), the
        resolved targets and the probabilities."""
        self._require_layer()
        return LayerGradients(*self._call(self._fn_layer_gradients, x, targets))

    def activations(self, x: np.ndarray) -> Activations:
        """The recorded layer's output, the score-space outputs and the probabilities for one batch."""
        self._require_layer()
        twin = self._twin(self.layer)
        a, out = twin._call(twin._fn_activations, x)
        return Activations(a, *self._scored(out))

    def ablated_scores(self, images, activations, segments, targets, keep) -> np.ndarray:
        """Ablation-CAM's scores for one batch of rows: row ``i`` is image ``segments[i]`` of ``images`` (b, H, W, C)
        with the recorded layer's output replaced by the image's ``activations`` (b, h, w, k; its output from
        :meth:`activations`) with channel ``j`` multiplied by ``keep[i, j]`` (0: zeroed); the explained score
        ``(N,)`` of ``targets`` (resolved classes, not -1). Side inputs are held aligned with ``images``. The
        layers that only feed the recorded one do not run; layers a branch runs past it (a residual connection)
        run from the images."""
        self._require_layer()
        images = np.asarray(images, np.float32)
        if self._read_call is None:  # which call of the layer is read: known once the activations pass is traced
            twin = self._twin(self.layer)
            if twin._read_call is None:
                twin._compiled_fn(
                    twin._fn_activations, images, False, self.side_inputs(len(images))
                ).get_concrete_function()
            self._read_call = twin._read_call
        rows_in = (np.asarray(segments, np.int32), np.asarray(targets, np.int32), np.asarray(keep, np.float32))
        return self._call(self._fn_ablated_scores, images, None, np.asarray(activations, np.float32), *rows_in)

    def noisy_moments(self, images, targets, sigma, seeds, segments, times_input: bool = False):
        """SmoothGrad's inner pass, all in one compiled call: for each copy ``k``, noise drawn from
        ``seeds[k]`` (:func:`~cnn_exposed.backend.stateless_noise`) scaled by ``sigma`` is added to image
        ``images[segments[k]]``, and the gradient of ``targets[k]`` at that noisy input (times the input with
        ``times_input``) is summed per image, as are its squares. Returns ``(sums, squares)``, both
        ``(len(images), H, W, C)``: only per-image sums leave the graph, not every copy's gradient."""
        images = np.asarray(images, np.float32)
        shape = tuple(images.shape[1:])
        sides = self.side_inputs(len(images))  # aligned with images; each copy gets its image's, in the graph
        key = ("noisy_moments", times_input, shape) + tuple((s.shape[1:], s.dtype.str) for s in sides)
        fn = self._compiled.get(key)
        if fn is None:

            def graph(images, targets, sigma, seeds, segments, *sides):
                noise = stateless_noise(shape, seeds)
                scale = tf.reshape(tf.gather(sigma, segments), (-1,) + (1,) * len(shape))
                noisy = tf.gather(images, segments) + scale * noise
                copies = [tf.gather(s, segments) for s in sides]
                a = self._backward(noisy, targets, sides=copies)[-1]
                a = a * noisy if times_input else a
                count = tf.shape(images)[0]
                return tf.math.unsorted_segment_sum(a, segments, count), tf.math.unsorted_segment_sum(
                    a * a, segments, count
                )

            vector = tf.TensorSpec((None,), tf.int32)
            sig = [
                tf.TensorSpec((None,) + shape, tf.float32), vector, tf.TensorSpec((None,), tf.float32),
                tf.TensorSpec((None, 2), tf.int32), vector,
            ] + [tf.TensorSpec((None,) + s.shape[1:], s.dtype) for s in sides]  # fmt: skip
            fn = compiled(graph, input_signature=sig)
            self._compiled[key] = fn
        args = (images, np.asarray(targets, np.int32), np.asarray(sigma, np.float32), np.asarray(seeds, np.int32),
                np.asarray(segments, np.int32))  # fmt: skip
        sums, squares = fn(*args, *sides)
        return np.asarray(sums), np.asarray(squares)

    def _require_layer(self) -> None:
        if self.layer is None:
            raise ValueError("This engine was built without a layer; pass layer=... to Engine().")

    # -------------------------------------------------------------- many batches
    def predict_all(self, x: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> Outputs:
        """:meth:`predict` over any number of images, in batches."""
        return self.map_batches(self.predict, (x,), batch_size, progress)

    @staticmethod
    def map_batches(fn: Callable, arrays: tuple, batch_size: int, progress: bool = False, desc=None):
        """Apply a one-batch function over aligned arrays in batches; concatenate each of its outputs (a named
        result stays named: ``map_batches(engine.input_gradients, ...)`` is an :class:`InputGradients`)."""
        parts = []
        for s in batch_slices(len(arrays[0]), batch_size, progress=progress, desc=desc):
            with rows(s):  # a model with several inputs: the batch's own side inputs
                parts.append(fn(*(a[s] for a in arrays)))
        if isinstance(parts[0], tuple):
            joined = [np.concatenate(p, axis=0) for p in zip(*parts)]
            return type(parts[0])(*joined) if hasattr(parts[0], "_fields") else tuple(joined)
        return np.concatenate(parts, axis=0)

    def scores_all(
        self,
        x: np.ndarray,
        targets: np.ndarray,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = False,
    ) -> np.ndarray:
        """:meth:`scores` over any number of images, in batches."""
        return self.map_batches(self.scores, (x, targets), batch_size, progress)


_ENGINES: OrderedDict = OrderedDict()
_ENGINE_CACHE_SIZE = 12  # about the engines one model's methods use, their twins included


def engine_for(
    model: keras.Model,
    layer: str | keras.layers.Layer | LayerRef | None = None,
    score: str = "logit",
    rules=None,
    input: int | str | None = None,
    output: int | str | None = None,
) -> Engine:
    """A cached :class:`Engine`, so that calling ``explain`` in a loop reuses the compiled graphs.

    The cache holds the last few (model, layer, score) combinations; it keeps a reference to each model
    so that an ``id`` is never reused while its entry is alive.
    """
    layer_key = resolve_layer(model, layer).path if layer is not None else None
    ports = (input_index(model, input), output_index(model, output))
    key = (id(model), layer_key, score, None if rules is None else rules.key, ports)
    entry = _ENGINES.get(key)
    if entry is not None and entry.model is model:
        _ENGINES.move_to_end(key)
        return entry
    engine = Engine(model, layer, score, rules, input, output)
    _ENGINES[key] = engine
    while len(_ENGINES) > _ENGINE_CACHE_SIZE:
        _ENGINES.popitem(last=False)
    return engine
