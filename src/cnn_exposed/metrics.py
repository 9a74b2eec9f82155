"""Can I trust this heatmap? Faithfulness metrics and sanity checks.

- :func:`pointing_game`, :func:`mass_in_mask`, :func:`relevance_rank_accuracy` and
  :func:`relevance_mass_accuracy`: against ground-truth masks.
- :func:`sparseness` (Gini) and :func:`complexity` (entropy): how concentrated an attribution is.
- Faithfulness (:mod:`cnn_exposed.faithfulness`, re-exported here): :func:`deletion_curve` /
  :func:`insertion_curve` (Petsiuk et al. 2018), :func:`faithfulness_correlation` and :func:`mu_fidelity`
  (Bhatt et al. 2020), :func:`road` (Rong et al. 2022), :func:`irof` (Rieger & Hansen 2020),
  :func:`average_drop` and :func:`increase_in_confidence` (Chattopadhay et al. 2018).
- :func:`randomisation_check` (Adebayo et al. 2018): re-initialise the weights from the top layer down and
  see whether the maps change; a method whose maps stay the same does not explain the model.
- :func:`random_target_check` and :func:`random_logit` (Sixt et al. 2020): the map for a random other class
  should differ from the predicted class's.
- Robustness (:mod:`cnn_exposed.robustness`, re-exported here): :func:`max_sensitivity` and
  :func:`average_sensitivity` (Yeh et al. 2019).
- :func:`compare_methods`: every chosen method's numbers in one table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from . import sources
from .engine import DEFAULT_BATCH_SIZE, engine_for
from .explanation import Explanation
from .faithfulness import (
    Curves,
    average_drop,
    average_ranks,
    deletion_curve,
    faithfulness_correlation,
    image_rng,
    increase_in_confidence,
    insertion_curve,
    irof,
    metric_batches,
    mu_fidelity,
    road,
)
from .inputs import prepare_images
from .model_io import held_inputs, model_inputs, split_inputs
from .models import unwrap_loaded
from .robustness import average_sensitivity, max_sensitivity
from .targets import one_per_image

__all__ = [
    "Curves",
    "SanityResult",
    "average_drop",
    "average_ranks",
    "average_sensitivity",
    "compare_methods",
    "complexity",
    "deletion_curve",
    "efficient_mprt",
    "entropy_rise",
    "faithfulness_correlation",
    "format_table",
    "increase_in_confidence",
    "insertion_curve",
    "irof",
    "mass_in_mask",
    "max_sensitivity",
    "mu_fidelity",
    "pointing_game",
    "random_logit",
    "random_target_check",
    "randomisation_check",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "road",
    "sparseness",
    "spearman",
    "ssim",
]  # fmt: skip


def pointing_game(maps: np.ndarray, masks: np.ndarray, tolerance: float = 0.07) -> np.ndarray:
    """Hits of the pointing game (Zhang et al. 2016): does each map's maximum fall on its mask?

    Parameters
    ----------
    maps : (N, H, W) float
        Heatmaps (any scale); the maximum is taken per map (the first one on ties).
    masks : (N, H, W) bool
        Ground-truth object masks, at the maps' resolution.
    tolerance : float
        The mask is grown by this fraction of the image's longer side before the test (the paper's 15
        pixels at 224 is about 7 %).

    Returns
    -------
    (N,) bool
    """
    maps, masks = np.asarray(maps), np.asarray(masks, dtype=bool)
    _shapes_agree(maps, masks)
    radius = int(round(tolerance * max(maps.shape[1:3]))) if maps.ndim == 3 else 0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    hits = np.zeros(len(maps), dtype=bool)
    for i, (heat, mask) in enumerate(zip(maps, masks)):
        grown = cv2.dilate(mask.astype(np.uint8), kernel) > 0 if radius else mask
        row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
        hits[i] = grown[row, col]
    return hits


def _shapes_agree(maps: np.ndarray, masks: np.ndarray) -> None:
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must have the same shape.")


def _mass_share(maps: np.ndarray, masks: np.ndarray, no_mass: float) -> np.ndarray:
    """``Σ_mask a / Σ a`` per map, ``no_mass`` where ``Σ a`` is 0."""
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks, dtype=bool)
    _shapes_agree(maps, masks)
    total = maps.reshape(len(maps), -1).sum(1)
    inside = (maps * masks).reshape(len(maps), -1).sum(1)
    return np.where(total != 0, inside / np.where(total != 0, total, 1.0), no_mass)


def mass_in_mask(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each (non-negative) map's total mass that lies inside its mask, ``(N,)`` in [0, 1] (0 for a map
    with no mass). Negative values are clipped first; :func:`relevance_mass_accuracy` keeps them."""
    return _mass_share(np.maximum(np.asarray(maps, dtype=np.float64), 0.0), masks, 0.0)


def relevance_mass_accuracy(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Relevance mass accuracy (Arras et al. 2022, CLEVR-XAI): ``Σ_mask a / Σ a`` per map, ``(N,)``, signed as
    given (Quantus' convention: negative relevance can take it outside [0, 1]); NaN for a map summing to 0 or an
    empty mask. On non-negative maps it is :func:`mass_in_mask`."""
    masks = np.asarray(masks, dtype=bool)
    out = _mass_share(maps, masks, np.nan)
    return np.where(masks.reshape(len(masks), -1).any(1), out, np.nan)


def relevance_rank_accuracy(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Relevance rank accuracy (Arras et al. 2022, CLEVR-XAI): with ``K`` the size of each mask, the share of the
    map's ``K`` highest values that lie inside it, ``(N,)`` in [0, 1]; 1 when the mask holds exactly the map's top
    ``K`` pixels. Ties are taken in raster order; an empty mask gives NaN."""
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks, dtype=bool)
    _shapes_agree(maps, masks)
    out = np.full(len(maps), np.nan)
    for i, (heat, mask) in enumerate(zip(maps.reshape(len(maps), -1), masks.reshape(len(masks), -1))):
        k = int(mask.sum())
        if k:
            out[i] = mask[np.argsort(-heat, kind="stable")[:k]].mean()
    return out


def _magnitudes(attributions) -> tuple[np.ndarray, np.ndarray]:
    """``|a|`` per image, flattened ``(N, D)`` float64, and each image's total. An :class:`Explanation` gives its
    ``attributions`` where the method has them (the gradient and path methods, per channel), else its
    ``raw_maps`` (the CAMs, occlusion and the other map-only methods)."""
    if isinstance(attributions, Explanation):
        exp = attributions
        attributions = exp.attributions if exp.attributions is not None else exp.raw_maps
    a = np.abs(np.asarray(attributions, dtype=np.float64))
    if a.ndim < 2:
        raise ValueError(
            f"attributions must be an array (N, ...) with one row per image, or an Explanation; got shape {a.shape} "
            "(an Explanation's .attributions is None for the CAMs: pass the Explanation itself, or its .raw_maps)."
        )
    a = a.reshape(len(a), -1)
    return a, a.sum(1)


def sparseness(attributions) -> np.ndarray:
    """Sparseness (Chalasani et al. 2020): the Gini index of each attribution's magnitudes, ``(N,)``
    (``attributions``: an array ``(N, …)`` or an :class:`Explanation`). With
    ``|a|`` sorted ascending, ``Σ_i (2i − n − 1) |a|_(i) / (n Σ |a|)``, i = 1 … n: 0 when every value is the same,
    ``(n − 1) / n`` when one value holds all of it; higher is more concentrated. Any shape ``(N, …)``: every value
    of an image counts (pixels, and channels where there are), as Quantus counts them; scale does not matter. NaN
    for an image with no attribution (Quantus adds 1e-7 to every value and reports 0 there)."""
    a, total = _magnitudes(attributions)
    a = np.sort(a, axis=1)
    n = a.shape[1]
    weights = 2.0 * np.arange(1, n + 1) - n - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (a * weights).sum(1) / (n * total), np.nan)


def complexity(attributions) -> np.ndarray:
    """Complexity (Bhatt et al. 2020; ``attributions`` as :func:`sparseness` takes them): the entropy (natural
    log) of each attribution's share of magnitude,
    ``p = |a| / Σ |a|``, ``−Σ p ln p``, ``(N,)``: 0 when one value holds all of it, ``ln n`` when all are equal;
    lower is simpler. Any shape ``(N, …)``, every value counted; scale does not matter. NaN for an image with no
    attribution."""
    a, total = _magnitudes(attributions)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = a / total[:, None]
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.where(total > 0, -terms.sum(1), np.nan)


# ------------------------------------------------------------------------------------------ similarity
def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps, ``(N,)``, ties ranked by their average rank (the
    Pearson correlation of :func:`average_ranks`, as ``scipy.stats.spearmanr``); 0 where a map is constant."""
    a, b = np.asarray(a), np.asarray(b)
    ra, rb = average_ranks(a.reshape(len(a), -1)), average_ranks(b.reshape(len(b), -1))
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1.0), 0.0)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Structural similarity of each pair of maps ``(N, H, W)`` with values in ``[0, data_range]``, ``(N,)``.

    Wang et al. (2004) as they published it and as ``tf.image.ssim`` computes it: an 11 x 11 Gaussian window of
    σ = 1.5 (smaller for maps under 11 px), constants K1 = 0.01 and K2 = 0.03, local statistics where the
    window fits inside the map, averaged.
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    size = min(11, *a.shape[1:3])
    size -= 1 - size % 2  # odd, so the window has a centre
    g, r = cv2.getGaussianKernel(size, 1.5), size // 2

    def local_mean(v):  # the window's weighted mean where it fits inside the map ("valid")
        full = cv2.sepFilter2D(v, cv2.CV_64F, g, g, borderType=cv2.BORDER_CONSTANT)
        return full[r : v.shape[0] - r, r : v.shape[1] - r]

    out = []
    for x, y in zip(a, b):
        mx, my = local_mean(x), local_mean(y)
        sx, sy, sxy = local_mean(x * x) - mx**2, local_mean(y * y) - my**2, local_mean(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sx + sy + c2))
        out.append(s.mean())
    return np.asarray(out)


@dataclass
class SanityResult:
    """Model-parameter randomisation check.

    Attributes
    ----------
    layers : list of str
        Randomised layers, in the order they were randomised (top of the network first).
    spearman, spearman_abs, ssim : (L, N) float
        Similarity of the maps after each randomisation step to the original maps (``spearman_abs`` ranks
        the absolute values, as Adebayo et al. also report).
    maps : (L + 1, N, H, W)
        The original maps, then the maps after each step.
    passed : bool
        True when the maps after the last step no longer resemble the original: mean ``spearman_abs`` below
        ``threshold``.
    """

    method: str
    layers: list
    spearman: np.ndarray
    spearman_abs: np.ndarray
    ssim: np.ndarray
    maps: np.ndarray
    threshold: float
    passed: bool

    def plot(self, image_index: int = 0, images=None):
        """The classic figure: the map as the weights are randomised layer by layer, and the similarity."""
        import matplotlib.pyplot as plt

        cols = len(self.layers) + 1
        fig, axes = plt.subplots(2, cols, figsize=(1.7 * cols, 3.8), gridspec_kw={"height_ratios": [1, 0.9]})
        for c in range(cols):
            axes[0, c].imshow(self.maps[c, image_index], cmap="jet", vmin=0, vmax=1)
            axes[0, c].set_title("original" if c == 0 else self.layers[c - 1].rsplit("/", 1)[-1], fontsize=7)
            axes[0, c].axis("off")
        ax = fig.add_subplot(2, 1, 2)
        for a in axes[1]:
            a.remove()
        steps = np.arange(1, cols)
        ax.plot(steps, self.spearman_abs.mean(1), "o-", label="Spearman (abs)")
        ax.plot(steps, self.spearman.mean(1), "s-", label="Spearman")
        ax.plot(steps, self.ssim.mean(1), "^-", label="SSIM")
        ax.axhline(self.threshold, color="grey", ls=":", lw=1)
        ax.set_xticks(steps, [layer.rsplit("/", 1)[-1] for layer in self.layers], rotation=45, fontsize=7)
        ax.set_ylim(-0.2, 1.05)
        ax.set_ylabel("similarity to original")
        ax.legend(fontsize=7)
        fig.suptitle(f"{self.method}: cascading randomisation ({'passes' if self.passed else 'FAILS'})", fontsize=9)
        fig.tight_layout()
        return fig


def _weighted_layers(model) -> list:
    from .layers import is_nested_model, iter_layers

    return [r for r in iter_layers(model) if not is_nested_model(r.layer) and r.layer.weights]


# Batch normalisation's moving statistics and a Normalization layer's are not learned weights, and a random
# (negative) variance makes every output NaN: the randomisation check leaves them as they are.
STATISTICS = frozenset({"moving_mean", "moving_variance", "mean", "variance", "count"})


def randomisation_check(
    model, images, explain_fn: str | Callable, *, cascading: bool = True, layers: Sequence[str] | None = None,
    seed: int = 0, threshold: float = 0.5, preprocess: Callable | None = None, target="predicted",
    final_only: bool = False, smooth: int = 0, smooth_noise: float = 0.1, **method_options,
) -> SanityResult:  # fmt: skip
    """Re-initialise layers from the top down (``cascading``) or one at a time, and compare the maps.

    The user's model is not touched: a clone carries the randomised weights (each weight array redrawn from a normal
    distribution of its own standard deviation; moving statistics, :data:`STATISTICS`, are kept). ``explain_fn`` is
    a method name (with ``method_options``) or a callable ``(model, images) -> (N, H, W) maps``. ``images``: an
    array or any source :mod:`cnn_exposed.sources` reads (read into memory: the maps of every step are kept). The
    target is fixed to the original model's prediction, so only the weights change. A model with several inputs
    takes the images as :func:`explain` does (a dict keyed by input name), with ``input``/``output`` in
    ``method_options``.
    ``final_only`` (with ``cascading``): explain only once every layer is randomised, the last step's maps and
    verdict for one explanation instead of one per layer (the draws are the same, so the result equals the
    full check's last step). ``smooth``: smooth MPRT (Hedström et al. 2023; Quantus' ``SmoothMPRT`` uses 50): each
    explanation is the mean of the maps of ``smooth`` copies of the images with Gaussian noise of standard deviation
    ``smooth_noise`` × each image's value range, the last copy noise-free; the same noise for every model, so only
    the weights differ between steps (Quantus draws it afresh each time).
    """
    import keras

    model, preprocess = unwrap_loaded(model, preprocess)
    ports = {k: method_options[k] for k in ("input", "output") if k in method_options}
    x, labels = sources.collect(images)  # every image is explained again after each step: held at once
    if isinstance(target, str) and target == "true":
        target = sources.batch_target(
            target, sources.Batch(None, labels, np.arange(0 if labels is None else len(labels)))
        )
    x = x if len(model_inputs(model)) > 1 else np.asarray(x)
    name, run = _map_function(explain_fn, x, preprocess, method_options, smooth, smooth_noise, seed)
    engine = engine_for(model, **ports)
    explained, sides = split_inputs(model, x, engine.input_index)
    _, model_input = prepare_images(explained, engine.input_shape, preprocess)
    with held_inputs(sides):
        outputs, _ = engine.predict_all(model_input)
    targets = one_per_image(target, outputs)
    original = run(model, targets)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    refs = _weighted_layers(clone)
    if layers is not None:
        wanted = set(layers)
        refs = [r for r in refs if r.path in wanted or r.layer.name in wanted]
    refs = list(reversed(refs))  # top (output) first
    rng = np.random.default_rng(seed)
    all_maps, names = [original], []
    pristine = [w.copy() for w in clone.get_weights()]
    for r in refs:
        if not cascading:
            clone.set_weights(pristine)
        for v in r.layer.weights:
            w = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
            if v.name.split("/")[-1] in STATISTICS:
                continue
            std = float(w.std()) or 0.05
            v.assign(rng.normal(0.0, std, w.shape).astype(w.dtype))
        if final_only and cascading and r is not refs[-1]:
            continue
        all_maps.append(run(clone, targets))
        names.append(r.path)
    maps = np.stack(all_maps)
    sp = np.stack([spearman(original, m) for m in maps[1:]])
    sp_abs = np.stack([spearman(np.abs(original), np.abs(m)) for m in maps[1:]])
    ss = np.stack([ssim(original, m) for m in maps[1:]])
    passed = bool(sp_abs[-1].mean() < threshold) if len(sp_abs) else False
    return SanityResult(name, names, sp, sp_abs, ss, maps, threshold, passed)


def _map_function(explain_fn, x, preprocess, method_options, smooth: int, noise: float, seed: int):
    """``(name, run)``: ``run(model, targets)`` gives the maps of ``x`` that the randomisation check compares,
    averaged over ``smooth`` noisy copies when asked (smooth MPRT)."""
    from .attribution import AttributionMethod, explain

    is_class = isinstance(explain_fn, type) and issubclass(explain_fn, AttributionMethod)
    if not (isinstance(explain_fn, str) or is_class):
        return getattr(explain_fn, "__name__", "custom"), lambda m, t: np.asarray(explain_fn(m, x))
    name = explain_fn if isinstance(explain_fn, str) else explain_fn.name

    def once(m, t, images):
        return explain(m, images, explain_fn, target=t, preprocess=preprocess, progress=False, **method_options).maps

    if smooth <= 1:
        return name, lambda m, t: once(m, t, x)
    if isinstance(x, dict):
        raise ValueError("smooth MPRT adds noise to one image input: give the images as an array.")
    flat = np.asarray(x, np.float32).reshape(len(x), -1)
    spread = (noise * (flat.max(1) - flat.min(1))).reshape((-1,) + (1,) * (np.ndim(x) - 1))

    def run(m, t):
        rng = np.random.default_rng(seed)  # the same noise for every model
        total = once(m, t, x).astype(np.float64)  # the noise-free copy
        for _ in range(smooth - 1):
            total += once(m, t, (x + rng.normal(0.0, 1.0, np.shape(x)) * spread).astype(np.float32))
        return (total / smooth).astype(np.float32)

    return name, run


def efficient_mprt(model, images, method, *, bins: int = 100, seed: int = 0, preprocess=None,
                   **method_options) -> np.ndarray:  # fmt: skip
    """Efficient MPRT (Hedström et al. 2023, "Sanity checks revisited"; Quantus' ``EfficientMPRT``): how much more
    disordered each image's map becomes once every weighted layer is randomised, ``(H(ê) − H(e)) / H(e)``, with
    ``H`` the entropy of a ``bins``-bin histogram of the map's values (spanning its own range), ``(N,)``; higher is
    better (a map that keeps its structure on a random model explains the input, not the model). The maps are
    the drawn ones (:attr:`Explanation.maps`, magnitudes; Quantus takes the attributions as given, signed), the
    randomisation that of :func:`randomisation_check`'s last step. NaN for a constant original map."""
    check = randomisation_check(model, images, method, seed=seed, preprocess=preprocess, final_only=True,
                                **method_options)  # fmt: skip
    return entropy_rise(check.maps[0], check.maps[-1], bins)


def entropy_rise(original: np.ndarray, randomised: np.ndarray, bins: int = 100) -> np.ndarray:
    """``(H(randomised) − H(original)) / H(original)`` per map, ``H`` the entropy (natural log) of a ``bins``-bin
    histogram over the map's own range: :func:`efficient_mprt`'s score; NaN where the original is constant."""
    before, after = _histogram_entropy(original, bins), _histogram_entropy(randomised, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(before > 0, (after - before) / before, np.nan)


def _histogram_entropy(maps: np.ndarray, bins: int) -> np.ndarray:
    out = []
    for m in np.asarray(maps, np.float64).reshape(len(maps), -1):
        counts = np.histogram(m, bins=bins)[0].astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        out.append(float(-(p * np.log(p)).sum()))
    return np.asarray(out)


def random_target_check(model, images, method: str, *, seed: int = 0, preprocess=None, **method_options) -> np.ndarray:
    """Spearman correlation ``(N,)`` between each image's map for its predicted class and for a random other
    class. High values mean the method hardly depends on the class it is asked to explain.

    ``images``: an array or any source :mod:`cnn_exposed.sources` reads, explained a batch at a time (the
    random class of each image is drawn from ``seed`` and its position, so the result does not depend on the
    batching)."""
    return _other_class_similarity(model, images, method, spearman, seed, preprocess, method_options)


def random_logit(model, images, method: str, *, similarity: str = "ssim", seed: int = 0, preprocess=None,
                 **method_options) -> np.ndarray:  # fmt: skip
    """Random logit (Sixt et al. 2020, ICML): similarity ``(N,)`` between each image's map for its predicted class
    and for a random other class; lower is better (a map that looks the same whatever class it is asked about
    explains the image, not the decision). ``similarity``: "ssim" (:func:`ssim` on the maps, min-max normalised
    to [0, 1], Wang et al.'s 11 × 11 Gaussian window) or "spearman" (:func:`random_target_check`). Quantus'
    ``RandomLogit`` computes scikit-image's SSIM on the maps flattened to one dimension (a 7-value window along
    the raster order), its maps normalised by their largest magnitude; its numbers differ from these. Options as
    :func:`random_target_check`."""
    measures = {"ssim": ssim, "spearman": spearman}
    if similarity not in measures:
        raise ValueError(f"similarity must be one of {sorted(measures)}, got {similarity!r}.")
    return _other_class_similarity(model, images, method, measures[similarity], seed, preprocess, method_options)


def other_class_maps(explainer, images, explained: Explanation, positions, seed: int) -> np.ndarray:
    """Maps of ``images`` for a random class other than each one's ``explained.targets``, drawn per image from
    ``seed`` and its ``positions`` in the source (so they do not depend on the batching)."""
    k = explained.probabilities.shape[1]
    other = [(t + image_rng(seed, p).integers(1, k)) % k for t, p in zip(explained.targets, positions)]
    return explainer.explain(images, target=np.asarray(other)).maps


def _other_class_similarity(model, images, method, measure, seed, preprocess, method_options) -> np.ndarray:
    from .attribution import make_method

    explainer = make_method(model, method, preprocess=preprocess, progress=False, **method_options)
    out = []
    for batch in metric_batches(images, explainer.engine, explainer.batch_size):
        pred = explainer.explain(batch.images)
        out.append(measure(pred.maps, other_class_maps(explainer, batch.images, pred, batch.index, seed)))
    return np.concatenate(out)


def compare_methods(
    model, images, methods: Sequence[str], *, masks: np.ndarray | None = None, preprocess=None,
    sanity: bool = False, options: dict | None = None, curve_options: dict | None = None,
) -> list[dict]:  # fmt: skip
    """One row per method: pointing-game rate and mass in mask (when ``masks`` are given), deletion and
    insertion AUC (mean over images), and optionally whether it passes the randomisation check.

    ``images``: an array or any source :mod:`cnn_exposed.sources` reads. It is read once, a batch at a time,
    every method explaining and scoring each batch before the next is read (``masks``: one per image, in
    order); the randomisation check (``sanity``) needs all the images at once and reads a one-pass source
    (a generator) into memory first."""
    from .attribution import make_method

    options, curve_options = options or {}, curve_options or {}
    if sanity and not sources.reiterable(images):
        images = sources.collect(images)[0]
    explainers = {
        m: make_method(model, m, preprocess=preprocess, progress=False, **options.get(m, {})) for m in methods
    }
    # a model with several inputs or outputs: each method's curves score the input and output it explains
    ports = {m: {k: options.get(m, {})[k] for k in ("input", "output") if k in options.get(m, {})} for m in methods}
    values: dict = {m: {} for m in methods}
    done = 0
    for batch in metric_batches(images, next(iter(explainers.values())).engine, DEFAULT_BATCH_SIZE):
        for m, explainer in explainers.items():
            exp = explainer.explain(batch.images)
            found = values[m]
            if masks is not None:
                part = np.asarray(masks)[done : done + len(exp)]
                found.setdefault("pointing_game", []).append(pointing_game(exp.maps, part))
                found.setdefault("mass_in_mask", []).append(mass_in_mask(exp.maps, part))
            for key, curve in (("deletion_auc", deletion_curve), ("insertion_auc", insertion_curve)):
                auc = curve(
                    model,
                    batch.images,
                    exp.maps,
                    target=exp.targets,
                    preprocess=preprocess,
                    **ports[m],
                    **curve_options,
                )
                found.setdefault(key, []).append(auc.auc)
        done += len(batch)
    rows = []
    for m in methods:
        row: dict[str, object] = {"method": m}
        row.update({key: float(np.concatenate(parts).mean()) for key, parts in values[m].items()})
        if sanity:
            passed = randomisation_check(model, images, m, preprocess=preprocess, **options.get(m, {})).passed
            row["randomisation_check"] = "passes" if passed else "FAILS"
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`compare_methods` rows."""
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
