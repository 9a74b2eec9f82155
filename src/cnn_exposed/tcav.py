"""Testing with concept activation vectors (TCAV; Kim et al. 2018, ICML, arXiv 1711.11279).

Does a human concept ("metal rails", given as a few example images) drive a class's prediction? At one layer,
a *concept activation vector* (CAV) is the normal of a linear classifier that separates the concept images'
activations from random images'. The TCAV score is the share of the target class's images whose class score
rises when their activations move along the CAV. A score means nothing alone (a CAV of random images also gets
one), so, as Kim et al. require, the test is repeated against ``runs`` random sets, and the concept's mean score
is compared with what *random* "concepts" score measured the same way: ``runs`` random sets, each against new
random sets in ``runs`` runs. The p-value is two-sided: how unusual the concept's mean score would be as one
more of those (Student's t prediction interval).

Why not Kim et al.'s t-test of the per-run scores against random-vs-random scores: the concept is one fixed set,
while each random-vs-random CAV is a new one, so the concept's scores vary less, and *any* fixed set, a random
one included, tends to come out significant (measured on the demo model: a concept of random crops, p = 0.01).
Each null value here is itself one fixed random set averaged over runs, like the concept, so a concept drawn
from the random pool is exchangeable with them and the test holds its level. Its statistic is the mean
directional derivative (each target image's unit gradient along the CAV, which :func:`_cav` leaves as long as
the concept is distinct), not the share of positive ones: when the target images' gradients agree, that share
is 0 or 1 for *every* direction, random ones included, and cannot tell a concept from chance (the
"all-or-nothing" pitfall below). The reported ``score`` is still Kim et al.'s share.

Three pitfalls of the plain recipe, each seen on this project's demo model, and what this module does:

* **Magnitude.** A concept whose images simply excite the layer more (crops blown up to the input size, bright
  textures) gives a CAV close to "more of everything", and most classes rise along it. Activations are pooled
  over space and standardised per channel before the classifier is fitted, and each target image's
  directional derivative is taken along the CAV with the direction of that image's own activation removed, so
  "scale this image's activations up" is never what is measured.
* **Logits rising together.** Along many directions every logit rises; the raw logit of the target then rises
  for every concept. The score is the class's log-probability (the logit minus the log-sum-exp of all), which
  only rises when the target gains on the others.
* **All-or-nothing scores.** With one run, or with too few target images, scores are 0 or 1 and a t-test on
  them is meaningless. The layer: by default not the last spatial layer (behind it the derivative is the same
  for every image, :func:`concept_layer`); 20 runs; a warning with fewer than 10 target images; and a constant
  null gives p = 1 when the concept equals it (0 if not) rather than a division by zero.

A concept drawn from the same pool as the random sets must come out not significant; the tests check that.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import keras
import numpy as np

from . import sources
from .engine import DEFAULT_BATCH_SIZE, engine_for
from .errors import InputError
from .images import resize_image
from .inputs import as_batch, prepare_images
from .layers import LayerRef, find_last_spatial_layer, is_nested_model, is_spatial, iter_layers, resolve_layer
from .model_io import input_names
from .models import unwrap_loaded
from .rules import GRADIENT_RULES
from .targets import class_count

MAX_SET = 50  # images per concept or random set in one run (Kim et al. use 50)
MIN_SET = 5  # fewer concept or random images than this cannot give a CAV worth testing


@dataclass
class TCAVResult:
    """The outcome of :func:`tcav`.

    Attributes
    ----------
    score : float
        Mean TCAV score of the concept over the runs: the share of target images whose target score rises
        along the concept's CAV.
    scores : (runs,) float
        The concept's score in each run (one random set each).
    random_scores : (runs,) float
        What concepts that mean nothing score: each a random set's mean score against new random sets.
    p_value : float
        Two-sided: the concept's ``derivative`` as one more draw from the distribution of the random
        concepts' ``random_derivatives``.
    derivative, random_derivatives
        The mean directional derivative (each target image's unit gradient along the CAV) of the concept and
        of each random concept: the continuous statistic the test uses (see the module notes).
    significant : bool
        ``p_value < alpha``.
    """

    score: float
    scores: np.ndarray
    random_scores: np.ndarray
    p_value: float
    significant: bool
    layer: str
    target_class: int
    derivative: float = 0.0
    random_derivatives: np.ndarray = field(default_factory=lambda: np.zeros(0))
    params: dict = field(default_factory=dict)

    def __str__(self) -> str:
        verdict = "significant" if self.significant else "not significant"
        return (
            f"TCAV score {self.score:.2f} (random concepts {self.random_scores.mean():.2f} ± "
            f"{self.random_scores.std():.2f}), p = {self.p_value:.2g}: {verdict} at {self.params.get('alpha')}"
        )


def outlier_p_value(value: float, null: np.ndarray) -> float:
    """Two-sided p-value of ``value`` as one more draw from the normal distribution the ``null`` sample comes
    from (a prediction interval: Student's t with ``len(null) - 1`` degrees of freedom). No SciPy needed.

    A constant null: 1.0 when ``value`` equals it, 0.0 when not.
    """
    null = np.asarray(null, np.float64)
    m = len(null)
    if m < 2:
        raise ValueError("The null sample needs at least two values.")
    spread = float(null.std(ddof=1)) * math.sqrt(1.0 + 1.0 / m)
    diff = float(value - null.mean())
    if spread == 0:
        return 1.0 if diff == 0 else 0.0
    t = diff / spread
    df = m - 1
    return float(_incomplete_beta(df / 2, 0.5, df / (df + t * t)))


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below this point
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return front * f / a


def concept_layer(model) -> LayerRef:
    """The layer :func:`tcav` uses by default: the spatial layer just before the model's last convolution.

    Not the last spatial layer: behind it there is usually only pooling and the dense head, so the derivative
    of a class score along any direction is the same for every image (the head's weights), and every TCAV
    score is 0 or 1. One convolution further from the head, it depends on the image again.
    """
    find_last_spatial_layer(model)  # probes a subclassed model; a clear error for a model without one
    spatial = [ref for ref in iter_layers(model) if is_spatial(ref.layer) and not is_nested_model(ref.layer)]
    convs = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    last = max((i for i, ref in enumerate(spatial) if isinstance(ref.layer, convs)), default=None)
    if not last:  # no convolution, or only the first layer: the last spatial layer is all there is
        return find_last_spatial_layer(model)
    return spatial[last - 1]


def _cav(concept: np.ndarray, random: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The CAV in activation space: the normal of a ridge classifier (+1 concept, -1 random) fitted on
    standardised pooled activations, mapped back through the standardisation.

    It is left unnormalised: its length grows with how far the concept's activations sit from the random
    set's, so the directional derivative along it measures the class's sensitivity to the concept *as strong
    as the examples show it*. A random set's CAV is short and noisy; normalising it would make it count as
    much as a real concept's (measured on the demo model: rails -> bathroom p = 0.05-0.18 normalised,
    0.008-0.03 not, with the random-pool concepts not significant either way).
    """
    z = (np.concatenate([concept, random]) - mean) / scale
    y = np.concatenate([np.ones(len(concept)), -np.ones(len(random))])
    z = z - z.mean(axis=0)
    y = y - y.mean()
    gram = z @ z.T
    ridge = float(np.trace(gram)) / len(z)  # the size of one sample's squared norm: mild shrinkage
    w = z.T @ np.linalg.solve(gram + ridge * np.eye(len(z)), y)  # the dual form: n images << channels
    return w / scale


def _score(cav: np.ndarray, gradients: np.ndarray, own: np.ndarray) -> tuple[float, float]:
    """(TCAV score, mean directional derivative) of ``cav`` over the target images: the share whose score
    rises along it, and the mean derivative of their unit-length gradients along it, with each image's own
    activation direction (``own``, unit rows) projected out of the CAV first."""
    along = cav[None, :] - (own @ cav)[:, None] * own
    slopes = (gradients * along).sum(axis=1)
    return float((slopes > 0).mean()), float(slopes.mean())


def _pooled(engine, x: np.ndarray, batch_size: int) -> np.ndarray:
    acts = engine.map_batches(engine.activations, (x,), batch_size).activations
    return acts.reshape(len(x), -1, acts.shape[-1]).mean(axis=1).astype(np.float64)


def _to_input(images, size: tuple, preprocess, input_shape) -> np.ndarray:
    """Images of any size resized to the model's input, then preprocessed."""
    batch = as_batch(images)
    if batch.shape[1:3] != tuple(size):
        batch = np.stack([resize_image(np.asarray(img), size).reshape(*size, -1) for img in batch])
    return prepare_images(batch, input_shape, preprocess)[1]


def _image_sets(model, shape: tuple, *sets) -> tuple:
    """The image sets as arrays, whatever holds them (:mod:`cnn_exposed.sources`), and the size they are
    resized to: the model's input size, or the target images' size for a model of any size."""
    fixed = tuple(shape[:2]) if None not in shape[:2] else None
    names = input_names(model)
    arrays = [None if images is None else sources.collect(images, size=fixed, names=names)[0] for images in sets]
    return (*arrays, fixed or as_batch(arrays[1]).shape[1:3])


def random_crops(images, count: int, seed: int = 0, share: tuple[float, float] = (0.25, 0.5)) -> np.ndarray:
    """``count`` square crops of random images, sides a random ``share`` of the shorter side, at the images'
    size: a random pool for concepts that are crops (the audit's attended regions)."""
    batch = as_batch(images)
    rng = np.random.default_rng(seed)
    h, w = batch.shape[1:3]
    out = []
    for _ in range(count):
        img = batch[int(rng.integers(len(batch)))]
        side = max(2, int(round(rng.uniform(*share) * min(h, w))))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out.append(resize_image(np.asarray(img[y : y + side, x : x + side]), (h, w)).reshape(h, w, -1))
    return np.stack(out)


def tcav(
    model,
    layer,
    concept_images,
    target_images,
    target_class: int,
    *,
    random_images=None,
    runs: int = 20,
    preprocess=None,
    seed: int = 0,
    batch_size: int | None = None,
    alpha: float = 0.05,
) -> TCAVResult:
    """Test whether a concept drives the prediction of ``target_class`` (TCAV with a significance test).

    Parameters
    ----------
    model : keras.Model
    layer : str, layer or None
        Where the CAVs live; None: :func:`concept_layer`, the spatial layer before the last convolution.
    concept_images : (K, h, w, C) array, or any source of images (see below)
        Examples of the concept, any size (resized to the model's input): e.g. an audit candidate's ``crops``.
    target_images : (N, H, W, C) array, or any source of images
        Images of the target class whose sensitivity is measured.

    Each image set can be an array or anything :mod:`cnn_exposed.sources` reads (a ``tf.data.Dataset`` — its
    labels are ignored —, a PyDataset, an iterable of batches, image files or a folder); the sets are held in
    memory while the CAVs are fitted (Kim et al.'s sets are 50 images).
    target_class : int
    random_images : array, optional
        The pool random sets are drawn from. Default: random crops of ``target_images``
        (:func:`random_crops`), so that a concept of crops is compared with crops.
    runs : int
        Random sets, and random-vs-random CAVs, to test against (Kim et al.: many; 20 by default).
    preprocess : callable, optional
        Applied to every image set, as in :func:`cnn_exposed.explain`.
    alpha : float
        Significance level of the two-sided test.
    """
    model, preprocess = unwrap_loaded(model, preprocess)
    if runs < 2:
        raise InputError(f"runs must be at least 2 for a significance test, got {runs}.")
    batch_size = int(batch_size or DEFAULT_BATCH_SIZE)
    ref = concept_layer(model) if layer is None else resolve_layer(model, layer)
    engine = engine_for(model, ref, "log_probability", GRADIENT_RULES)
    classes = class_count(engine.head.units)
    if not 0 <= int(target_class) < classes:
        raise InputError(f"target_class {target_class} is not a class of this {classes}-class model.")
    shape = engine.input_shape
    concept_images, target_images, random_images, size = _image_sets(
        model, shape, concept_images, target_images, random_images
    )
    x_target = _to_input(target_images, size, preprocess, shape)
    x_concept = _to_input(concept_images, size, preprocess, shape)
    rng = np.random.default_rng(seed)
    if random_images is None:
        pool_raw = random_crops(target_images, max(2 * MAX_SET, 2 * len(x_concept)), seed=seed + 1)
    else:
        pool_raw = random_images
    x_pool = _to_input(pool_raw, size, preprocess, shape)
    set_size = min(len(x_concept), MAX_SET, len(x_pool) // 2)
    if set_size < MIN_SET:
        raise InputError(
            f"TCAV needs at least {MIN_SET} concept images and {2 * MIN_SET} random images; got "
            f"{len(x_concept)} and {len(x_pool)}. Give more examples of the concept, or a larger random_images."
        )
    if len(x_target) < 10:
        warnings.warn(
            f"Only {len(x_target)} target images: each TCAV score is a share of them, so scores are coarse "
            "(all-or-nothing with very few). Give 10 or more.",
            UserWarning,
            stacklevel=2,
        )

    concept = _pooled(engine, x_concept, batch_size)
    pool = _pooled(engine, x_pool, batch_size)
    targets = np.full(len(x_target), int(target_class), dtype=np.int32)
    grads = engine.map_batches(engine.layer_gradients, (x_target, targets), batch_size)
    k = grads.activations.shape[-1]
    gradients = grads.gradients.reshape(len(x_target), -1, k).sum(axis=1).astype(np.float64)
    gradients = gradients / np.maximum(np.linalg.norm(gradients, axis=1, keepdims=True), 1e-30)  # images count alike
    own = grads.activations.reshape(len(x_target), -1, k).mean(axis=1).astype(np.float64)
    own = own / np.maximum(np.linalg.norm(own, axis=1, keepdims=True), 1e-12)
    everything = np.concatenate([concept, pool])
    mean, scale = everything.mean(axis=0), everything.std(axis=0)
    scale = np.where(scale > 1e-6 * max(float(scale.max()), 1e-30), scale, np.inf)  # dead channels: ignored

    def random_set(exclude=None) -> np.ndarray:
        allowed = np.arange(len(pool)) if exclude is None else np.setdiff1d(np.arange(len(pool)), exclude)
        return rng.choice(allowed, set_size, replace=False)

    def runs_of(examples: np.ndarray, exclude=None) -> np.ndarray:
        """(runs, 2): the TCAV score and mean derivative of a subset of ``examples`` against a new random
        set in each run."""
        out = []
        for _ in range(runs):
            chosen = examples[rng.choice(len(examples), set_size, replace=False)]
            out.append(_score(_cav(chosen, pool[random_set(exclude)], mean, scale), gradients, own))
        return np.array(out)

    concept_runs = runs_of(concept)
    # What concepts that mean nothing get, measured the same way: a fixed random set as the "concept",
    # against new random sets each run; one such null concept per run.
    null = []
    for _ in range(runs):
        fake = random_set()
        null.append(runs_of(pool[fake], exclude=fake).mean(axis=0))
    null_runs = np.array(null)
    p = outlier_p_value(float(concept_runs[:, 1].mean()), null_runs[:, 1])
    s, r = concept_runs[:, 0], null_runs[:, 0]
    params = {
        "runs": runs, "set_size": set_size, "alpha": alpha, "score": "log_probability",
        "target_images": len(x_target), "random_pool": len(x_pool), "seed": seed,
        "random": "random crops of the target images" if random_images is None else "given",
    }  # fmt: skip
    return TCAVResult(
        float(s.mean()), s, r, p, bool(p < alpha), ref.path, int(target_class),
        float(concept_runs[:, 1].mean()), null_runs[:, 1], params,
    )  # fmt: skip
