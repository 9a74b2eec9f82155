"""Faithfulness: hide what an attribution calls important and see whether the model's score follows.

Every metric here runs on one loop (:func:`_each_batch`): the images of any source are read a batch at a time,
prepared and predicted once, their targets resolved once, and every perturbed copy of an image is scored in
batches of copies, with its image's target and side inputs. Random draws are seeded by ``seed`` and each
image's position in the source, so results do not depend on the batch size.

- :func:`deletion_curve` / :func:`insertion_curve` (Petsiuk et al. 2018): remove or add patches in order of
  attribution; the area under the score's curve.
- :func:`faithfulness_correlation` (Bhatt et al. 2020, Quantus' settings) and :func:`mu_fidelity` (the same
  measure with xplique's settings): does the attribution inside a random subset predict the score's drop
  when the subset is hidden?
- :func:`road` (Rong et al. 2022): remove the most (MoRF) or least (LeRF) attributed pixels, fill them by noisy
  linear imputation (no sharp edges for the model to read), and follow the score and whether the class holds.
- :func:`irof` (Rieger & Hansen 2020): remove superpixels in order of their mean attribution; the area over the
  score's curve.
- :func:`average_drop` and :func:`increase_in_confidence` (Chattopadhay et al. 2018): show the model only the
  image weighted by the map.

Attributions are ``(N, H, W)`` maps or ``(N, H, W, C)`` per-channel attributions (or an
:class:`~cnn_exposed.explanation.Explanation`: its ``attributions`` where the method has them, else its
``raw_maps``), one per image in the source's order. Units: perturbations act on the model's input (after
``preprocess``), as Quantus and xplique apply them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import sources
from .compat import trapezoid
from .engine import DEFAULT_BATCH_SIZE, Engine, Outputs, engine_for
from .explanation import Explanation
from .inputs import fill_images, prepare_images
from .model_io import held_inputs, rows, split_inputs
from .models import unwrap_loaded
from .sources import image_rng
from .targets import one_per_image


@dataclass
class Curves:
    """Deletion, insertion, ROAD or IROF curves.

    Attributes
    ----------
    fractions : (S + 1,) float
        Share of the image removed (deletion, ROAD, IROF) or inserted (insertion) at each point.
    scores : (N, S + 1) float
        The target's score (probability by default) at each point.
    auc : (N,) float
        Area under each curve (trapezoid rule over ``fractions``).
    mode : str
    targets : (N,) int
    kept : (N, S + 1) bool or None
        Whether the target is still the predicted class at each point (ROAD's accuracy is its mean over images).
    """

    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray
    mode: str
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    kept: np.ndarray | None = None

    def plot(self, ax=None, label: str | None = None):
        """Mean curve with the per-image curves faint; returns the axes."""
        import matplotlib.pyplot as plt

        ax = ax or plt.gca()
        for s in self.scores:
            ax.plot(self.fractions, s, color="grey", alpha=0.15, lw=0.8)
        ax.plot(self.fractions, self.scores.mean(0), lw=2, label=f"{label or self.mode} (AUC {self.auc.mean():.3f})")
        ax.set_xlabel(f"fraction of the image {'inserted' if self.mode == 'insertion' else 'removed'}")
        ax.set_ylabel("score of the explained class")
        ax.legend(fontsize=8)
        return ax


@dataclass
class _Batch:
    """One batch as the metrics see it: model inputs ``x`` (n, H, W, C), the batch's ``attributions``, its
    ``targets``, its images' source ``positions``, the model's ``outputs`` (every class's score and
    probabilities at ``x``) and what scoring perturbed copies needs."""

    engine: Engine
    x: np.ndarray
    attributions: np.ndarray
    targets: np.ndarray
    positions: np.ndarray
    outputs: Outputs
    sides: object
    batch_size: int

    def base(self, probability: bool = False) -> np.ndarray:
        """The target's score (or probability) at the unperturbed images, ``(n,)``."""
        table = self.outputs.probabilities if probability else self.outputs.scores
        return table[np.arange(len(self.x)), self.targets]

    def score(self, make: Callable[[int], np.ndarray], full: bool = False) -> list:
        """Score each image's perturbed copies: ``make(i)`` gives image ``i``'s copies ``(k_i, H, W, C)``; they are
        scored in batches of about ``batch_size`` copies (so at most that many, or one image's, are held) with the
        image's target and side inputs. Returns one ``(k_i,)`` array of target scores per image, or with ``full``
        one :class:`~cnn_exposed.engine.Outputs` slice per image (every class: probabilities and argmax)."""
        out: list = []
        pending: list = []
        owners: list = []

        def flush():
            if not pending:
                return
            copies, who = np.concatenate(pending), np.concatenate(owners)
            with held_inputs(self.sides), rows(who):
                if full:
                    result = self.engine.predict_all(copies, self.batch_size)
                else:
                    result = self.engine.scores_all(copies, self.targets[who].astype(np.int32), self.batch_size)
            for i in np.unique(who):
                pick = who == i
                out.append(type(result)(*(r[pick] for r in result)) if full else result[pick])
            pending.clear()
            owners.clear()

        for i in range(len(self.x)):
            copies = np.asarray(make(i), np.float32)
            pending.append(copies)
            owners.append(np.full(len(copies), i))
            if sum(len(p) for p in pending) >= self.batch_size:
                flush()
        flush()
        return out


def as_attributions(attributions) -> np.ndarray:
    """An array ``(N, H, W)`` or ``(N, H, W, C)``: an :class:`Explanation` gives its ``attributions`` where the method
    has them (the gradient and path methods), else its ``raw_maps`` (the CAMs and other map-only methods)."""
    if isinstance(attributions, Explanation):
        exp = attributions
        attributions = exp.attributions if exp.attributions is not None else exp.raw_maps
    if attributions is None:
        raise ValueError("attributions is None: pass an Explanation itself, or its .maps / .raw_maps.")
    return np.asarray(attributions, dtype=np.float32)


def pixel_map(attributions: np.ndarray) -> np.ndarray:
    """``(N, H, W)``: per-channel attributions summed over their channels (signed, as relevance adds up); maps as
    they are."""
    return attributions.sum(-1) if attributions.ndim == 4 else attributions


def _each_batch(
    model, images, attributions, per_batch: Callable[[_Batch], object], *, target="predicted",
    preprocess: Callable | None = None, score: str = "probability", batch_size: int | None = None, input=None,
    output=None, first: int = 0,
) -> list:  # fmt: skip
    """``per_batch`` on every batch of ``images`` with its share of ``attributions`` (one per image, in order).
    ``first``: the position of the first image when ``images`` is one batch of a larger source (the draws of
    each image are seeded by its position there)."""
    model, preprocess = unwrap_loaded(model, preprocess)
    engine = engine_for(model, None, score, input=input, output=output)
    attributions = as_attributions(attributions)
    batch_size = int(batch_size or DEFAULT_BATCH_SIZE)
    results, done = [], 0
    for batch in metric_batches(images, engine, batch_size):
        explained, sides = split_inputs(model, batch.images, engine.input_index)
        _, x = prepare_images(explained, engine.input_shape, preprocess)
        part = attributions[done : done + len(x)]
        shape_ok = attributions.ndim == 3 or (attributions.ndim == 4 and attributions.shape[3] == x.shape[3])
        if part.shape[1:3] != x.shape[1:3] or not shape_ok:
            raise ValueError(
                f"attributions {attributions.shape} must be (N, H, W) maps or (N, H, W, C) attributions like the "
                f"images {x.shape} (one per image)."
            )
        if len(part) < len(x):
            raise ValueError(
                f"attributions {attributions.shape} must be one per image: got {len(attributions)} maps for more than "
                f"{len(attributions)} images."
            )
        positions = np.arange(done, done + len(x))
        with held_inputs(sides):
            outputs = engine.predict_all(x, batch_size)
        targets = one_per_image(sources.batch_target(target, batch, positions), outputs.scores)
        results.append(per_batch(_Batch(engine, x, part, targets, first + positions, outputs, sides, batch_size)))
        done += len(x)
    if done != len(attributions):
        raise ValueError(
            f"attributions {attributions.shape} must be one per image, in order: got {len(attributions)} maps for "
            f"{done} images."
        )
    return results


def metric_batches(images, engine, batch_size: int):
    """The images of any source (:mod:`cnn_exposed.sources`); an array in one piece, as the metrics always took
    it, anything else a batch at a time."""
    shape = engine.input_shape
    size = tuple(shape[:2]) if len(shape) == 3 and None not in shape[:2] else None
    return sources.iter_batches(images, batch_size=batch_size, size=size, whole_arrays=True)


# ------------------------------------------------------------------------------------ deletion / insertion
def _curves(model, images, maps, mode: str, *, steps: int = 16, patch: int = 4, fill="blur", **options) -> Curves:
    maps = as_attributions(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps {maps.shape} must be (N, H, W) like the images (one per image).")

    def per_batch(b: _Batch):
        return _patch_curves(b, mode, steps, patch, fill), b.targets

    parts = _each_batch(model, images, maps, per_batch, **options)
    fractions = parts[0][0][0]
    scores = np.concatenate([p[0][1] for p in parts])
    auc = trapezoid(scores, fractions, axis=1)
    return Curves(fractions, scores, auc, mode, np.concatenate([p[1] for p in parts]))


def _patch_curves(b: _Batch, mode, steps, patch, fill):
    """(fractions, scores (n, steps + 1)) of one batch's deletion or insertion curves."""
    n, h, w = b.attributions.shape
    # rank patches by their mean attribution (ties broken by position: reproducible)
    gh, gw = -(-h // patch), -(-w // patch)
    padded = np.zeros((n, gh * patch, gw * patch), np.float32)
    padded[:, :h, :w] = b.attributions
    cell = padded.reshape(n, gh, patch, gw, patch).mean(axis=(2, 4)).reshape(n, -1)
    order = np.argsort(-cell, axis=1, kind="stable")
    counts = np.round(np.linspace(0, gh * gw, steps + 1)).astype(int)
    fills = fill_images(b.x, fill)
    start, end = (b.x, fills) if mode == "deletion" else (fills, b.x)

    def copies(i):
        out = np.empty((steps + 1,) + b.x.shape[1:], np.float32)
        for k, c in enumerate(counts):
            chosen = np.zeros(gh * gw, bool)
            chosen[order[i, :c]] = True
            pixel_mask = np.kron(chosen.reshape(gh, gw), np.ones((patch, patch), bool))[:h, :w]
            out[k] = np.where(pixel_mask[..., None], end[i], start[i])
        return out

    return counts / (gh * gw), np.stack(b.score(copies))


def deletion_curve(model, images, maps, **options) -> Curves:
    """Remove the most attributed patches first (filling them with ``fill``) and follow the target's score.

    ``images``: an array, or any source :mod:`cnn_exposed.sources` reads (a ``tf.data.Dataset``, a PyDataset, an
    iterable of batches, files), processed a batch at a time; ``maps`` holds one map per image, in order (what
    :func:`cnn_exposed.explain` returns for the same images; a dataset that reshuffles on every pass, as
    ``image_dataset_from_directory`` does unless ``shuffle=False``, comes in another order each time).

    Options: ``target`` ("predicted", "true" for the labels that come with the images, or one index per map),
    ``preprocess``, ``steps`` (points after the start, 16),
    ``patch`` (pixels per side of the removed cells, 4), ``fill`` ("blur" default, "mean", "zeros" or a
    number, in model-input units), ``score`` ("probability" default, or "logit"), ``batch_size``, ``input`` and
    ``output`` (a model with several: ``images`` is then a dict keyed by input name, see :func:`explain`). All
    the modified images are evaluated in batches. A low area under the curve means a faithful map.
    """
    return _curves(model, images, maps, "deletion", **options)


def insertion_curve(model, images, maps, **options) -> Curves:
    """Start from the ``fill`` image (blurred by default) and put back the most attributed patches first;
    a high area under the curve means a faithful map. Options as :func:`deletion_curve`."""
    return _curves(model, images, maps, "insertion", **options)


# --------------------------------------------------------------------------- random subsets: Bhatt et al.
def baseline_images(x: np.ndarray, baseline) -> np.ndarray:
    """What hidden values become, ``(n, H, W, C)``: ``"black"`` each image's lowest value and ``"white"`` its highest
    (over all its channels and pixels: Quantus' convention, so on mean-subtracted inputs "black" is not 0), or
    what :func:`~cnn_exposed.inputs.fill_images` makes of ``"blur"``, ``"mean"``, ``"zeros"`` or a number."""
    if isinstance(baseline, str) and baseline in ("black", "white"):
        flat = x.reshape(len(x), -1)
        value = flat.min(1) if baseline == "black" else flat.max(1)
        return np.broadcast_to(value.reshape(-1, 1, 1, 1), x.shape).astype(np.float32)
    return fill_images(x, baseline)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks of each row of ``values`` ``(N, D)``, ties given the mean of the ranks they span (``scipy.stats.
    rankdata``'s "average"): ReLU'd maps share many zeros, and ranking those by position would make two maps
    look alike for nothing."""
    values = np.asarray(values)
    out = np.empty(values.shape, np.float64)
    for i, row in enumerate(values):
        order = np.argsort(row, kind="stable")
        sorted_row = row[order]
        starts = np.flatnonzero(np.r_[True, sorted_row[1:] != sorted_row[:-1]])
        ends = np.r_[starts[1:], len(row)]
        mean_rank = (starts + ends - 1) / 2.0  # 0-based ranks starts .. ends-1, averaged
        out[i, order] = np.repeat(mean_rank, ends - starts)
    return out


def _correlation(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    """Pearson or Spearman correlation of two vectors; 0 where either is constant (no relation can be measured:
    xplique's convention; Quantus reports NaN there)."""
    if kind == "spearman":
        a, b = average_ranks(a[None])[0], average_ranks(b[None])[0]
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _subset_correlations(b: _Batch, draw: Callable, runs: int, baseline, correlation: str, seed: int) -> np.ndarray:
    """Per image: ``runs`` random subsets (``draw(rng, attribution)`` -> (hidden mask like the attribution, the
    attribution's sum over it)), each hidden (set to ``baseline``); the correlation between those sums and the
    score's drop."""
    fills = baseline_images(b.x, baseline)
    sums = np.zeros((len(b.x), runs))

    def copies(i):
        rng = image_rng(seed, b.positions[i])
        out = np.empty((runs,) + b.x.shape[1:], np.float32)
        for r in range(runs):
            hidden, sums[i, r] = draw(rng, b.attributions[i])
            hidden = hidden if hidden.ndim == 3 else hidden[..., None]
            out[r] = np.where(hidden, fills[i], b.x[i])
        return out

    drops = b.base()[:, None] - np.stack(b.score(copies))
    return np.array([_correlation(sums[i], drops[i], correlation) for i in range(len(b.x))])


def faithfulness_correlation(
    model, images, attributions, *, subset_size: int = 224, runs: int = 100, baseline="black",
    correlation: str = "pearson", score: str = "logit", seed: int = 0, **options,
) -> np.ndarray:  # fmt: skip
    """Faithfulness correlation (Bhatt et al. 2020, IJCAI): for ``runs`` random subsets ``S`` of ``subset_size``
    features, the correlation between ``Σ_{i∈S} a_i`` and the drop of the target's score when ``S`` is set to
    ``baseline``, ``(N,)`` in [−1, 1]; higher is more faithful.

    Defaults are Quantus' (``FaithfulnessCorrelation``): 100 runs of 224 features, "black" baseline (each image's
    lowest value), Pearson, on logits. Features are the attribution's elements: per-channel attributions
    ``(N, H, W, C)`` hide single channel values (as Quantus broadcasts and flattens them), maps ``(N, H, W)`` hide
    whole pixels. Quantus normalises the attribution by its largest magnitude first, which no correlation sees.
    ``images``, ``target``, ``preprocess``, ``batch_size``, ``input``, ``output`` as :func:`deletion_curve` takes
    them; ``baseline`` as :func:`baseline_images`; ``correlation`` "pearson" or "spearman". 0 for an image whose
    subset sums or drops are constant."""
    _check_correlation(correlation)

    def draw(rng, a):
        hidden = np.zeros(a.size, bool)
        hidden[rng.choice(a.size, min(int(subset_size), a.size), replace=False)] = True
        return hidden.reshape(a.shape), float(a.reshape(-1)[hidden].sum())

    def per_batch(b: _Batch):
        return _subset_correlations(b, draw, int(runs), baseline, correlation, seed)

    return np.concatenate(_each_batch(model, images, attributions, per_batch, score=score, **options))


def mu_fidelity(
    model, images, attributions, *, grid: int = 9, subset: float = 0.2, samples: int = 200, baseline=0.0,
    correlation: str = "spearman", score: str = "logit", seed: int = 0, **options,
) -> np.ndarray:  # fmt: skip
    """μ-Fidelity: :func:`faithfulness_correlation` with xplique's settings (``MuFidelity``), ``(N,)``. The image is
    cut into a ``grid`` × ``grid`` grid of cells (nearest-neighbour upsampled, as ``tf.image.resize`` does); each of
    ``samples`` subsets hides every cell with probability ``subset`` (so a varying number of cells), filled with
    ``baseline`` (0.0, in model-input units); the Spearman correlation between the attribution summed over the
    hidden pixels (and channels) and the score's drop. xplique draws one set of masks for a batch and averages
    the correlations into one number; here each image has its own draws and its own value."""
    _check_correlation(correlation)

    def draw(rng, a):
        h, w = a.shape[:2]
        cells = rng.uniform(size=(grid, grid)) <= subset  # xplique keeps a cell where its draw is > subset
        hidden = cells[(np.arange(h) * grid) // h][:, (np.arange(w) * grid) // w]
        return hidden, float(pixel_map(a[None])[0][hidden].sum())

    def per_batch(b: _Batch):
        return _subset_correlations(b, draw, int(samples), baseline, correlation, seed)

    return np.concatenate(_each_batch(model, images, attributions, per_batch, score=score, **options))


def _check_correlation(kind: str) -> None:
    if kind not in ("pearson", "spearman"):
        raise ValueError(f"correlation must be 'pearson' or 'spearman', got {kind!r}.")


# ------------------------------------------------------------------------- Chattopadhay et al. (Grad-CAM++)
def _confidence_change(model, images, maps, **options) -> tuple[np.ndarray, np.ndarray]:
    """``(Y, O)``: the target's probability at each image and at the image weighted by its map (min-max
    normalised, broadcast over channels), in model-input units."""
    maps = pixel_map(np.abs(as_attributions(maps)))

    def per_batch(b: _Batch):
        flat = b.attributions.reshape(len(b.x), -1)
        lo, span = flat.min(1), flat.max(1) - flat.min(1)
        weights = (b.attributions - lo[:, None, None]) / np.where(span > 0, span, 1.0)[:, None, None]
        kept = np.stack(b.score(lambda i: (b.x[i] * weights[i][..., None])[None]))[:, 0]
        return b.base(probability=True), kept

    parts = _each_batch(model, images, maps, per_batch, score="probability", **options)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def average_drop(model, images, maps, **options) -> np.ndarray:
    """Average Drop (Chattopadhay et al. 2018, Grad-CAM++): per image, ``100 · max(0, Y − O) / Y``, ``(N,)``, with
    ``Y`` the target's probability and ``O`` its probability when the model sees only ``image × map`` (the map
    min-max normalised to [0, 1], multiplied into every channel of the model's input, as xplique does); the
    mean over images is the paper's number; lower is better. Attributions per channel are reduced to ``|a|``
    summed over channels first. Options as :func:`deletion_curve` (``score`` is the probability)."""
    y, o = _confidence_change(model, images, maps, **options)
    return 100.0 * np.maximum(0.0, y - o) / np.maximum(y, 1e-12)


def increase_in_confidence(model, images, maps, **options) -> np.ndarray:
    """Increase in Confidence (Chattopadhay et al. 2018): per image, 100 when the target's probability rises when
    the model sees only ``image × map`` (as :func:`average_drop` forms it), else 0, ``(N,)``; the mean over
    images is the paper's percentage; higher is better."""
    y, o = _confidence_change(model, images, maps, **options)
    return np.where(o > y, 100.0, 0.0)


# ------------------------------------------------------------------------------------- ROAD: Rong et al.
_NEIGHBOURS = [(dr, dc, 1 / 6 if dr == 0 or dc == 0 else 1 / 12) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
_NEIGHBOURS = [n for n in _NEIGHBOURS if n[:2] != (0, 0)]


def noisy_linear_imputation(image: np.ndarray, hidden: np.ndarray, noise: float, rng) -> np.ndarray:
    """ROAD's fill (Rong et al. 2022): each hidden pixel becomes the weighted mean of its eight neighbours (1/6
    each side, 1/12 each corner; those outside the image left out and the rest re-weighted), solved for all
    hidden pixels at once as one sparse linear system per image (so a hidden region is filled smoothly from its
    border), then Gaussian noise of standard deviation ``noise`` is added to the filled values."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    h, w = hidden.shape
    out = np.array(image, dtype=np.float64)
    rr, cc = np.nonzero(hidden)
    m = len(rr)
    if m == 0:
        return out.astype(np.float32)
    number = np.full((h, w), -1)
    number[rr, cc] = np.arange(m)
    diag = np.zeros(m)
    rhs = np.zeros((m, image.shape[2]))
    at_r, at_c, at_v = [], [], []
    for dr, dc, weight in _NEIGHBOURS:
        r, c = rr + dr, cc + dc
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        diag[inside] += weight
        rows_in, r, c = np.flatnonzero(inside), r[inside], c[inside]
        other = number[r, c]
        free = other >= 0
        at_r.append(rows_in[free])
        at_c.append(other[free])
        at_v.append(np.full(int(free.sum()), -weight))
        np.add.at(rhs, rows_in[~free], weight * out[r[~free], c[~free]])
    system = coo_matrix(
        (np.concatenate([diag, *at_v]), (np.concatenate([np.arange(m), *at_r]), np.concatenate([np.arange(m), *at_c]))),
        shape=(m, m),
    ).tocsc()
    solved = spsolve(system, rhs).reshape(m, -1)
    out[rr, cc] = solved + (rng.normal(0.0, noise, solved.shape) if noise else 0.0)
    return out.astype(np.float32)


def road(
    model, images, attributions, *, order: str = "morf", percentages=(10, 20, 30, 40, 50, 60, 70, 80, 90),
    noise: float = 0.01, seed: int = 0, **options,
) -> Curves:  # fmt: skip
    """ROAD, Remove And Debias (Rong et al. 2022, ICML): remove the ``percentages`` of pixels with the highest
    (``order="morf"``, most relevant first: a faithful map makes the score fall fast, a low area) or lowest
    (``"lerf"``: the score should hold, a high area) attribution, fill them by :func:`noisy_linear_imputation`, and
    follow the target's probability and whether it is still the predicted class (``Curves.kept``; its mean over
    images at each point is ROAD's accuracy). The curve starts at 0 % (the image itself).

    Defaults: the paper's 10 … 90 % (Quantus uses 1, 3, … 99) and noise 0.01, in model-input units (the paper's
    inputs are normalised to unit variance; scale it for 0–255 inputs). Per-channel attributions are summed
    over channels to rank pixels (Quantus ranks H·W·C values but removes H·W pixels). Options as
    :func:`deletion_curve`."""
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' (most relevant first) or 'lerf' (least relevant first), got {order!r}.")
    fractions = np.concatenate([[0.0], np.asarray(percentages, float) / 100.0])
    if np.any(np.diff(fractions) <= 0) or fractions[-1] > 1:
        raise ValueError(f"percentages must rise within (0, 100], got {list(percentages)}.")

    def per_batch(b: _Batch):
        maps = pixel_map(b.attributions)

        def copies(i):
            rng = image_rng(seed, b.positions[i])
            ranked = np.argsort(-maps[i].reshape(-1) if order == "morf" else maps[i].reshape(-1), kind="stable")
            out = np.empty((len(fractions),) + b.x.shape[1:], np.float32)
            for k, f in enumerate(fractions):
                hidden = np.zeros(ranked.size, bool)
                hidden[ranked[: int(round(f * ranked.size))]] = True
                out[k] = noisy_linear_imputation(b.x[i], hidden.reshape(maps.shape[1:]), noise, rng)
            return out

        outs = b.score(copies, full=True)
        probs = np.stack([o.probabilities[:, t] for o, t in zip(outs, b.targets)])
        kept = np.stack([o.scores.argmax(1) == t for o, t in zip(outs, b.targets)])
        return probs, kept, b.targets

    parts = _each_batch(model, images, attributions, per_batch, **{**options, "score": "probability"})
    scores = np.concatenate([p[0] for p in parts])
    auc = trapezoid(scores, fractions, axis=1)
    return Curves(fractions, scores, auc, f"road-{order}", np.concatenate([p[2] for p in parts]),
                  np.concatenate([p[1] for p in parts]))  # fmt: skip


# ---------------------------------------------------------------------------- IROF: Rieger & Hansen
def irof(
    model, images, attributions, *, segmentation="slic", segment_options: dict | None = None, baseline="mean",
    **options,
) -> np.ndarray:  # fmt: skip
    """IROF, Iterative Removal Of Features (Rieger & Hansen 2020): cut each image into superpixels, remove them
    (set to ``baseline``) one by one in order of their mean attribution, highest first, and follow the target's
    probability relative to the unperturbed image's, ``y_k / y_0``; the score is the area over that curve with
    the removed share (k / n_segments, from 0 to 1) as its axis, ``(N,)``: near 1 when the first segments
    removed take the score away, near 0 when the score holds; higher is more faithful.

    Quantus' ``IROF`` (defaults followed here: scikit-image's SLIC with its own defaults, about 100 segments;
    "mean" baseline, each image's mean colour here, its mean over all values there; probabilities) reports
    ``n − Σ trapz(y_k / y_0)`` over k = 1 … n with unit spacing: the same area, not divided by the number of
    segments and without the unperturbed point, so its scale grows with the segment count. ``segmentation``
    and ``segment_options`` as :func:`cnn_exposed.segmentation.segment_images` takes them (segmented in
    model-input units, each image scaled to [0, 1] first)."""
    from .segmentation import segment_images

    if segmentation == "slic" and segment_options is None:
        segment_options = {"n_segments": 100, "compactness": 10.0, "sigma": 0.0}  # scikit-image's own defaults

    def per_batch(b: _Batch):
        labels = segment_images(b.x, segmentation, segment_options=segment_options)
        maps = pixel_map(b.attributions)
        fills = baseline_images(b.x, baseline)

        def copies(i):
            count = int(labels[i].max()) + 1
            means = np.bincount(labels[i].ravel(), maps[i].ravel(), count) / np.bincount(labels[i].ravel(), None, count)
            order = np.argsort(-means, kind="stable")
            rank = np.empty(count, int)
            rank[order] = np.arange(count)
            removed_at = rank[labels[i]]  # the step at which each pixel goes
            return np.stack([np.where((removed_at < k)[..., None], fills[i], b.x[i]) for k in range(1, count + 1)])

        curves = b.score(copies)
        base = b.base(probability=True)
        out = []
        for i, curve in enumerate(curves):
            y = np.concatenate([[1.0], curve / max(base[i], 1e-12)])
            out.append(1.0 - trapezoid(y, np.linspace(0.0, 1.0, len(y))))
        return np.asarray(out)

    return np.concatenate(_each_batch(model, images, attributions, per_batch, **{**options, "score": "probability"}))
