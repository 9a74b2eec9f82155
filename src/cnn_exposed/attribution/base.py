"""What every attribution method shares: input checks, targets, batching settings, the result object."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import keras
import numpy as np

from .. import sources
from ..engine import DEFAULT_BATCH_SIZE, engine_for
from ..errors import TargetError
from ..explanation import Explanation, channel_max_abs, concatenate, normalize_maps
from ..inputs import prepare_images
from ..layers import find_last_spatial_layer
from ..model_io import held_inputs, input_names, output_names, split_inputs
from ..models import unwrap_loaded
from ..rules import GRADIENT_RULES
from ..savedmodel import LAYER_FREE_METHODS, require_layer_access
from ..targets import resolve_predicted, resolve_targets


@dataclass
class Result:
    """What a method computes for ``M`` (image, target) pairs; see :class:`Explanation`."""

    raw_maps: np.ndarray
    targets: np.ndarray
    scores: np.ndarray
    probabilities: np.ndarray
    attributions: np.ndarray | None = None
    layer_maps: np.ndarray | None = None
    completeness_error: np.ndarray | None = None
    extras: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # settings only known once computed (IG's steps per image)


class AttributionMethod:
    """Base class: build once for a model, then call :meth:`explain` on many batches.

    Parameters
    ----------
    model : keras.Model
        Sequential, functional or nested classifier.
    layer : str, layer object or None
        Only for methods that use a layer (the CAM family); None picks the last spatial layer.
    score : {"logit", "probability"} or None
        What is explained; None uses the method's default (the logit, except Score-CAM).
    preprocess : callable or None
        Raw images -> model input. With it, ``explain`` takes raw images and the result keeps them for
        drawing.
    batch_size : int or None
        Most images (or noisy samples, path points, masked or occluded copies) per compiled call.
    progress : bool
        Show a progress bar when work spans several batches.
    input, output : str, int or None
        A model with several inputs: the explained image input (a name or an index into ``model.inputs``; default
        the only 4-D input); ``explain`` then takes a dict keyed by input name (or a list in ``model.inputs``
        order) and holds the other inputs at their given values. A model with several outputs: the explained one.
    """

    name = ""
    signed = False  # whether the attributions' sign means "for" / "against" (drawn with a diverging colormap)
    uses_layer = False
    default_score = "logit"

    def __init__(
        self,
        model: keras.Model,
        *,
        layer=None,
        score: str | None = None,
        preprocess: Callable | None = None,
        batch_size: int | None = None,
        progress: bool = True,
        input: int | str | None = None,
        output: int | str | None = None,
    ) -> None:
        model, preprocess = unwrap_loaded(model, preprocess)
        if self.name not in LAYER_FREE_METHODS:  # a SavedModel's layers cannot be reached: say what works
            require_layer_access(model, f"Method {self.name!r}")
        self.input, self.output = input, output
        if self.uses_layer:
            layer = find_last_spatial_layer(model, input) if layer is None else layer
        elif layer is not None:
            raise ValueError(
                f"Method {self.name!r} works on the input and does not use a layer; drop layer=... "
                "(only the CAM methods take one)."
            )
        self.model = model
        self.score = score or self.default_score
        # The fast layer plan: the same gradient, with batch norm folded, padding inside the convolution and
        # stride-1 convolutions differentiated by a transposed convolution (layers it does not know, and
        # subclassed models, run as they are). Rule-based methods replace the engine with their own rules.
        self.engine = engine_for(model, layer, self.score, GRADIENT_RULES, input, output)
        if self.uses_layer and (self.engine.layer is None or len(self.engine.layer.output_shape or ()) != 4):
            assert self.engine.layer is not None  # a CAM method's engine always has its layer
            from ..errors import NoSpatialLayerError

            raise NoSpatialLayerError(
                f"Layer {self.engine.layer.path!r} has output shape {self.engine.layer.output_shape}; "
                f"{self.name} needs a 4-D (N, H, W, C) feature map. Candidates: "
                + ", ".join(repr(p) for p in _spatial_tail(model))
            )
        self.preprocess = preprocess
        self.batch_size = int(batch_size or DEFAULT_BATCH_SIZE)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        self.progress = progress

    @property
    def layer_ref(self):
        """The layer the method uses (CAM methods), or None."""
        return self.engine.layer

    # Subclasses implement these two.
    def compute(self, x: np.ndarray, targets: np.ndarray, images) -> Result:
        """The method proper, on model inputs ``x`` (M, H, W, C) with one target each.

        A target of -1 (:data:`~cnn_exposed.targets.PREDICTED`) stands for the image's top class; the
        result holds the resolved targets.
        """
        raise NotImplementedError

    def options(self) -> dict:
        """The method's own settings, for :attr:`Explanation.params`."""
        return {}

    def resolve(self, x: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One forward pass: resolved targets, their scores and the probabilities, for methods that need
        the target before they can start (their own passes are not on ``x`` itself)."""
        outputs, probs = self.engine.predict_all(x, self.batch_size)
        resolved = resolve_predicted(targets, outputs)
        return resolved, outputs[np.arange(len(x)), resolved], probs

    def explain(self, images, target="predicted") -> Explanation:
        """Explain ``images`` for ``target`` (see :func:`cnn_exposed.explain`): an array ``(N, H, W, C)`` or
        ``(H, W, C)``, or anything :mod:`cnn_exposed.sources` reads (a ``tf.data.Dataset``, a ``PyDataset``,
        an iterable of batches, image files; for a model with several inputs, dicts ``{input name: values}``),
        whose batches are explained in turn and joined into one :class:`Explanation`. To keep memory bounded by a
        batch, use :meth:`explain_batches` instead."""
        if sources.is_array(images):
            if isinstance(target, str) and target == "true":
                raise TargetError(sources.NO_LABELS)
            return self._explain_array(images, target)
        return concatenate(list(self.explain_batches(images, target)))

    def explain_batches(self, images, target="predicted") -> Iterator[Explanation]:
        """Explain any source of images (see :mod:`cnn_exposed.sources`) a batch at a time: an iterator of
        one :class:`Explanation` per batch, each computed when the iterator is advanced, so memory holds one
        batch and its maps however many images there are. A generator is consumed exactly once.

        Batched datasets, PyDatasets and iterables keep their own batches; arrays, files and unbatched
        datasets are cut into batches of ``batch_size``. Each explanation's ``image_index`` gives its images'
        positions in the whole source, and ``labels`` the labels that came with them. ``target="true"``
        explains each image's label; a per-image target sequence is indexed by those positions."""
        for batch in self.batches(images):
            yield self.explain_batch(batch, target)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) that image files are resized to: the model's, or None when it takes any size."""
        shape = self.engine.input_shape
        return tuple(shape[:2]) if len(shape) == 3 and None not in shape[:2] else None

    def batches(self, images) -> Iterator[sources.Batch]:
        """The batches of any source of images as this method explains them (:func:`sources.iter_batches`)."""
        return sources.iter_batches(
            images, batch_size=self.batch_size, size=self.image_size, names=input_names(self.model)
        )

    def explain_batch(self, batch: sources.Batch, target="predicted", per_row=None) -> Explanation:
        """One :class:`~cnn_exposed.sources.Batch` explained; ``image_index``, ``labels``, ``files`` and
        ``skipped`` are the batch's. ``per_row``: the target already resolved for the batch's rows
        (:func:`~cnn_exposed.sources.batch_target`), when it has been."""
        per_row = sources.batch_target(target, batch) if per_row is None else per_row
        exp = self._explain_array(batch.images, per_row)
        local = exp.image_index
        exp.image_index = batch.index[local]
        exp.labels = None if batch.labels is None else batch.labels[local]
        exp.files = None if batch.files is None else [batch.files[i] for i in local]
        exp.skipped = list(batch.skipped)
        exp.params["target"] = target if isinstance(target, (str, int)) else "per-image"
        return exp

    def _explain_array(self, images, target) -> Explanation:
        """Explain an array ``(N, H, W, C)`` or ``(H, W, C)``; for a model with several inputs, a dict
        ``{input name: values}`` or a list in ``model.inputs`` order."""
        images, sides = split_inputs(self.model, images, self.engine.input_index)
        display, x = prepare_images(images, self.engine.input_shape, self.preprocess)
        with held_inputs(sides):
            targets, index = resolve_targets(
                target, self.engine.num_classes, len(x), lambda: self.engine.predict_all(x, self.batch_size)[0]
            )
        if len(index) != len(x) or (index != np.arange(len(x))).any():
            x, display = x[index], display[index]
            sides = None if sides is None else [s[index] for s in sides]
        with held_inputs(sides):
            result = self.compute(x, targets, display)
        params = {
            "score": self.score,
            "batch_size": self.batch_size,
            "target": target if isinstance(target, (str, int)) else "per-image",
            **self.options(),
            **result.params,
        }
        layer = self.layer_ref
        if layer is not None:
            params["layer"] = layer.path
        if self.engine.multi_input:
            params["input"] = input_names(self.model)[self.engine.input_index]
        if self.engine.multi_output:
            params["output"] = output_names(self.model)[self.engine.output_index]
        return Explanation(
            maps=normalize_maps(np.maximum(result.raw_maps, 0.0)),
            attributions=result.attributions,
            targets=result.targets.astype(np.int64),
            scores=result.scores.astype(np.float32),
            method=self.name,
            params=params,
            images=display,
            image_index=index,
            probabilities=result.probabilities.astype(np.float32),
            raw_maps=result.raw_maps.astype(np.float32),
            layer=layer.path if layer is not None else None,
            layer_maps=result.layer_maps,
            completeness_error=result.completeness_error,
            extras=result.extras,
            signed=self.signed and result.attributions is not None,
        )

    __call__ = explain

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({self.model.name!r}{', ' + opts if opts else ''})"


class GradientMethod(AttributionMethod):
    """A method whose result is a signed attribution in input space, drawn as max over channels of |a|."""

    def attribute(self, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Signed attributions ``(M, H, W, C)`` float32 for inputs ``x`` and resolved targets, batched."""
        raise NotImplementedError

    def compute(self, x, targets, images) -> Result:
        targets, scores, probs = self.resolve(x, targets)
        return gradient_result(self.attribute(x, targets), targets, scores, probs)


def gradient_result(attributions, targets, scores, probs, **extra) -> Result:
    """A :class:`Result` of signed input-space attributions, drawn as max over channels of |a|."""
    attributions = np.asarray(attributions, dtype=np.float32)
    return Result(channel_max_abs(attributions), targets, scores, probs, attributions=attributions, **extra)


def _spatial_tail(model) -> list:
    from ..layers import list_layers

    return list(reversed(list_layers(model, spatial_only=True)[-8:]))
