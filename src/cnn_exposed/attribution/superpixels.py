"""Superpixel members of the mask-sampler family: KernelSHAP and LIME.

Both cut the image into superpixels (:mod:`cnn_exposed.segmentation`), switch them on and off in coalitions
``z ∈ {0, 1}^M`` (a hidden superpixel shows ``fill``), score the copies in batches
(:mod:`~cnn_exposed.attribution.masking`) and fit a linear model of the score on ``z``: KernelSHAP the
Shapley-kernel regression (its coefficients are Shapley values), LIME a ridge surrogate weighted by proximity.
The map paints each superpixel with its coefficient; the sign is kept (positive: the superpixel raises the
score), so they are drawn red/blue like the other signed methods.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..segmentation import as_segments, segment_images
from .base import Result
from .estimators import lime_weights, shapley_coalitions, shapley_regression, weighted_ridge
from .masking import MaskMethod, check_fill, mask_fills


class SuperpixelMethod(MaskMethod):
    """Shared by KernelSHAP and LIME: the superpixels, the coalitions' scoring and the painted map.

    A subclass gives :meth:`coalitions` (the design for M superpixels, first row included) and :meth:`fit`.

    ``attributions`` ``(N, H, W, C)`` hold each pixel's superpixel coefficient divided by C on every channel (so
    that summed over channels, as :attr:`Explanation.signed_maps` does, it is the coefficient); ``raw_maps`` the
    coefficient itself; ``extras["segments"]`` the labels ``(N, H, W)`` and ``extras["coefficients"]`` each
    image's coefficients ``(M_i,)`` (an object array: M_i differs between images).
    """

    signed = True
    intercept_name = "intercept"  # the extras key of the fitted intercept

    def __init__(
        self,
        model,
        *,
        samples,
        segmentation="quickshift",
        segments=None,
        segment_options=None,
        fill="mean",
        seed=0,
        **kwargs,
    ) -> None:
        super().__init__(model, **kwargs)
        auto = isinstance(samples, str) and samples == "auto" and self.name == "kernel_shap"
        if not auto and (isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1):
            raise ValueError(f"samples must be a positive integer, got {samples!r}.")
        self.samples = samples
        self.segmentation = segmentation
        self.segments = None if segments is None else np.asarray(segments)
        self.segment_options = dict(segment_options or {})
        self.fill = check_fill(fill, segments=True)
        self.seed = int(seed)

    def options(self):
        seg = "given" if self.segments is not None else getattr(self.segmentation, "__name__", self.segmentation)
        return {"samples": self.samples, "segmentation": seg, "segment_options": self.segment_options,
                "fill": self.fill, "seed": self.seed}  # fmt: skip

    def coalitions(self, features: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """``(Z (rows, M) 0/1, per-row weights or None)``: the coalitions scored for one image."""
        raise NotImplementedError

    def fit(self, z: np.ndarray, weights, scores: np.ndarray, full: float) -> tuple[np.ndarray, float]:
        """``(coefficients (M,), intercept)`` from the coalitions' scores; ``full`` = f(x)."""
        raise NotImplementedError

    def compute(self, x, targets, images) -> Result:
        targets, scores, probs = self.resolve(x, targets)
        n, height, width, channels = x.shape
        if self.segments is not None:
            seg = as_segments(self.segments, n, (height, width))
        else:
            pixels = images if np.shape(images)[:3] == x.shape[:3] else x
            seg = segment_images(pixels, self.segmentation, seed=self.seed, segment_options=self.segment_options)
        lonely = [i for i, s in enumerate(seg) if s.max() == 0]
        if lonely:
            warnings.warn(
                f"{self.name}: image(s) {lonely} are one single superpixel, so their maps are constant; cut them "
                "finer (segmentation='slic', segment_options=..., or your own segments=...).",
                stacklevel=4,
            )
        designs = [self.coalitions(int(s.max()) + 1, np.random.default_rng(self.seed)) for s in seg]

        def render(image, mask):
            keep = np.empty((len(mask), height, width), dtype=np.float32)
            for i in np.unique(image):
                rows = image == i
                keep[rows] = designs[i][0][mask[rows]][:, seg[i]]
            return keep

        fills = mask_fills(x, self.fill, seg)
        per_image = self.score_masks(x, targets, fills, [len(d[0]) for d in designs], render)
        fits = [self.fit(z, w, f, float(scores[i])) for i, ((z, w), f) in enumerate(zip(designs, per_image))]
        coefficients = np.empty(n, dtype=object)
        coefficients[:] = [c.astype(np.float32) for c, _ in fits]
        raw = np.stack([c[s] for (c, _), s in zip(fits, seg)]).astype(np.float32)
        attributions = np.repeat(raw[..., None] / channels, channels, axis=-1)
        extras = {"segments": seg, "coefficients": coefficients, self.intercept_name: np.array([b for _, b in fits])}
        return Result(raw, targets, scores, probs, attributions=attributions, extras=extras)


class KernelSHAP(SuperpixelMethod):
    """KernelSHAP over superpixels (Lundberg & Lee 2017): each superpixel's Shapley value of the score.

    The Shapley-kernel weighted linear regression of f(z) on the coalitions z, with the two constraints of
    infinite weight enforced exactly: φ₀ = f(∅) (everything hidden) and Σφ = f(x) − f(∅), as shap's
    KernelExplainer does (:func:`~cnn_exposed.attribution.estimators.shapley_regression`). Coalitions are drawn
    as shap draws them (:func:`~cnn_exposed.attribution.estimators.shapley_coalitions`): sizes paired with
    their complements, small sizes enumerated in full while the budget allows; with ``2^M − 2 ≤ samples`` all
    coalitions are enumerated and the values are the exact Shapley values. ``extras["base_value"]`` is f(∅).

    Parameters
    ----------
    samples : int or "auto"
        Coalitions per image (forward passes, plus one for f(∅)); "auto" (default) = 2M + 2048, shap's,
        capped at 2^M − 2.
    segmentation : "slic", "quickshift", "felzenszwalb" or callable
        How superpixels are cut (:mod:`cnn_exposed.segmentation`). Default SLIC with shap's image-example
        settings (``n_segments=50, compactness=30, sigma=3``): about 50 superpixels whatever the image size, so
        the cost (2M + 2048 coalitions) stays bounded; quickshift's count depends on the image.
    segments : array or None
        Your own label map, ``(H, W)`` for every image or ``(N, H, W)``; replaces ``segmentation``.
    segment_options : dict or None
        The algorithm's keyword arguments, replacing its defaults one by one.
    fill : float, "mean", "blur", "zeros" or "segment_mean"
        What a hidden superpixel shows (default "mean", each image's mean colour, as shap's image example).
    seed : int
        Seed of the coalitions (the same for every image) and of quickshift.

    The score is the logit by default (Shapley values of the logit add up on the log-odds scale);
    ``score="probability"`` explains the probability, as shap explains a softmax model's output.
    """

    name = "kernel_shap"
    intercept_name = "base_value"

    def __init__(self, model, *, samples="auto", segmentation="slic", fill="mean", **kwargs) -> None:
        super().__init__(model, samples=samples, segmentation=segmentation, fill=fill, **kwargs)

    def coalitions(self, features, rng):
        budget = 2 * features + 2048 if self.samples == "auto" else int(self.samples)
        z, w = shapley_coalitions(features, budget, rng)
        return np.concatenate([np.zeros((1, features)), z]), w  # row 0: the empty coalition, f(∅)

    def fit(self, z, weights, scores, full):
        return shapley_regression(z[1:], scores[1:], weights, scores[0], full), float(scores[0])


class LIME(SuperpixelMethod):
    """LIME over superpixels (Ribeiro et al. 2016), as the ``lime`` package's ``LimeImageExplainer``.

    Coalitions z ~ Bernoulli(0.5) per superpixel, the first all ones (the image itself); each weighted by
    sqrt(exp(−d²/w²)) with d the cosine distance of z to the all-ones coalition and w = ``kernel_width``
    (:func:`~cnn_exposed.attribution.estimators.lime_weights`); the surrogate is a ridge regression (α = 1,
    with intercept; :func:`~cnn_exposed.attribution.estimators.weighted_ridge`) of the score on z, all
    superpixels kept (lime's "auto" feature selection keeps all when more than 6 are asked for, as its image
    explainer does). ``extras["intercept"]`` is the surrogate's intercept.

    Parameters
    ----------
    samples : int
        Coalitions per image, the first all ones (default 1000, lime's ``num_samples``).
    kernel_width : float
        w (default 0.25, lime_image's).
    segmentation, segments, segment_options, seed
        As :class:`KernelSHAP`, but the default is lime's: quickshift ``kernel_size=4, max_dist=200, ratio=0.2``
        (tuned for 224 px photos; a small or flat image may come out as a few superpixels, or one, with a
        warning: use ``segmentation="slic"``).
    fill : "segment_mean", float, "mean", "blur" or "zeros"
        What a hidden superpixel shows (default "segment_mean": its own mean colour, lime's ``hide_color=None``).

    The score is the probability by default, as lime's ``classifier_fn`` returns probabilities.
    """

    name = "lime"
    default_score = "probability"
    intercept_name = "intercept"

    def __init__(self, model, *, samples=1000, kernel_width=0.25, fill="segment_mean", **kwargs) -> None:
        super().__init__(model, samples=samples, fill=fill, **kwargs)
        if not float(kernel_width) > 0:
            raise ValueError(f"kernel_width must be positive, got {kernel_width!r}.")
        self.kernel_width = float(kernel_width)

    def options(self):
        return {**super().options(), "kernel_width": self.kernel_width}

    def coalitions(self, features, rng):
        z = rng.integers(0, 2, (int(self.samples), features)).astype(np.float64)
        z[0] = 1.0
        return z, None

    def fit(self, z, weights, scores, full):
        return weighted_ridge(z, scores, lime_weights(z, self.kernel_width), alpha=1.0)
