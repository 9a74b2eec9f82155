"""Path methods: integrated gradients (Sundararajan et al. 2017) and its family, with their completeness check.

A path method sums gradients along a path from a starting point x′ to the input x, each weighted by how far its
step moves: ``a = Σ_k m_k ⊙ ∇f(p_k)``, so that ``Σ a ≈ f(x) − f(x′)`` (the gradient theorem). Members differ only
in the path and the starting point:

- integrated gradients: the straight path from a baseline (:class:`IntegratedGradients`);
- Blur IG: a path of ever stronger Gaussian blur (:class:`BlurIG`);
- Guided IG: a path that moves the features of smallest gradient first (:class:`GuidedIG`);
- GradientSHAP / expected gradients: one random point on the straight path from a random background image per
  sample (:class:`GradientSHAP`).

What they share lives in :class:`PathMethod`: the baselines, the packing of every image's path points into the same
batches (:meth:`PathMethod.path_sums`), and the completeness check (:func:`completeness_errors`).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from ..backend import blur_images, blur_path_points, stateless_noise
from ..engine import batch_slices
from ..errors import InputError
from ..inputs import BLUR_SIGMA, fill_images
from ..model_io import rows
from .base import GradientMethod, Result, gradient_result

QUADRATURES = ("trapezoid", "riemann", "riemann_left", "riemann_right", "gausslegendre")
AUTO_START = 16  # steps="auto": intervals of the first pass, doubled per image until the tolerance is met
AUTO_CAP = 1024  # ... up to this many (the default max_steps)
RULES = QUADRATURES  # the old name
BASELINES = ("black", "blur", "noise")


def path_nodes(steps: int, quadrature: str) -> tuple[np.ndarray, np.ndarray]:
    """Points ``alpha`` in [0, 1] on the straight path and their quadrature weights (summing to 1).

    ``trapezoid`` evaluates ``steps + 1`` points (both ends); ``riemann`` (the midpoint rule),
    ``riemann_left``, ``riemann_right`` and ``gausslegendre`` evaluate ``steps`` points.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    rule = quadrature
    if rule == "trapezoid":
        alphas = np.linspace(0.0, 1.0, steps + 1)
        weights = np.full(steps + 1, 1.0 / steps)
        weights[[0, -1]] /= 2
    elif rule == "riemann":
        alphas = (np.arange(steps) + 0.5) / steps
        weights = np.full(steps, 1.0 / steps)
    elif rule == "riemann_left":
        alphas = np.arange(steps) / steps
        weights = np.full(steps, 1.0 / steps)
    elif rule == "riemann_right":
        alphas = (np.arange(steps) + 1.0) / steps
        weights = np.full(steps, 1.0 / steps)
    elif rule == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(steps)
        alphas, weights = (nodes + 1.0) / 2.0, w / 2.0
    else:
        raise ValueError(f"quadrature must be one of {QUADRATURES}, got {rule!r}.")
    return alphas.astype(np.float32), weights.astype(np.float32)


def make_baselines(x: np.ndarray, baseline, preprocess=None, blur_sigma: float = BLUR_SIGMA, seed=0) -> np.ndarray:
    """The baseline ``x′`` for each input, ``(M, H, W, C)`` float32 in model-input space.

    ``"black"``: a black image (``preprocess`` of zeros when given, else zeros); ``"blur"``: the image blurred with
    a Gaussian of σ = ``blur_sigma`` × its size; ``"noise"``: uniform noise over each image's value range (seeded
    by ``seed``); an array: model-input values broadcastable to the images.
    """
    if not isinstance(baseline, str):
        b = np.asarray(baseline, dtype=np.float32)
        try:
            return np.broadcast_to(b, x.shape).astype(np.float32)
        except ValueError:
            raise InputError(
                f"baseline of shape {b.shape} does not broadcast to the images' shape {x.shape}."
            ) from None
    if baseline == "black":
        if preprocess is None:
            return np.zeros_like(x)
        black = np.zeros(x.shape, dtype=np.uint8)
        return np.asarray(preprocess(black), dtype=np.float32).reshape(x.shape)
    if baseline == "blur":
        return fill_images(x, "blur", blur_sigma)
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    u = rng.random(x.shape, dtype=np.float32)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (lo.reshape(shape) + u * (hi - lo).reshape(shape)).astype(np.float32)


def check_baseline(baseline) -> None:
    """A baseline option must be one of :data:`BASELINES` or an array."""
    if isinstance(baseline, str) and baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES} or an array, got {baseline!r}.")


def completeness_errors(attributions: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(|Σ a − Δ| / |Δ|, Σ a)`` per image: how far the attributions' sum is from ``Δ = f(x) − f(x′)``, the
    score change along the path (relative; ``|Δ|`` floored at 1e-12)."""
    total = attributions.reshape(len(attributions), -1).sum(axis=1)
    return np.abs(total - delta) / np.maximum(np.abs(delta), 1e-12), total


class PathMethod(GradientMethod):
    """Base of the path methods: attributions ``Σ_k m_k ⊙ ∇f(p_k)`` over the points ``p_k`` of a path from a
    starting point ``x′`` to ``x``, whose sum approximates ``f(x) − f(x′)``.

    A member implements :meth:`attribute` (usually with :meth:`path_sums`, which packs the path points of all
    images into the same batches) and :meth:`start_scores` (the explained score at each path's start). The result's
    ``completeness_error`` is ``|Σ attributions − (f(x) − f(x′))| / |f(x) − f(x′)|``, and its ``extras`` hold
    ``baseline_scores`` (f(x′)) and ``attribution_sums``.
    """

    signed = True

    def start_scores(self, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The explained score ``f(x′)`` at the start of each image's path, ``(M,)``."""
        raise NotImplementedError

    def path_sums(self, x: np.ndarray, n_points: int, point_fn, targets: np.ndarray) -> np.ndarray:
        """``Σ_k m_k ⊙ ∇f(p_k)`` for every image, ``(M, H, W, C)`` float32: ``n_points`` points per image, the
        points of all images packed into batches of ``batch_size``. ``point_fn(image, step)`` gets the image and
        step index of each point of a batch and returns ``(points, multipliers)``; the multipliers broadcast to the
        points (a weight per point, or an array per point)."""
        total = np.zeros(x.shape, dtype=np.float32)
        for s in batch_slices(len(x) * n_points, self.batch_size, progress=self.progress, desc=self.name):
            idx = np.arange(s.start, s.stop)
            img, step = idx // n_points, idx % n_points
            points, multipliers = point_fn(img, step)
            with rows(img):  # each path point with its image's side inputs
                g = self.engine.input_gradients(points, targets[img]).gradients
            g = g * multipliers
            # idx is sorted, so each image's steps form one run.
            for i in np.unique(img):
                total[i] += g[img == i].sum(axis=0)
        return total

    def path_result(self, attributions, targets, scores, probs, start, **extras) -> Result:
        """The :class:`Result` with the completeness error against ``scores − start``."""
        attributions = np.asarray(attributions, dtype=np.float32)
        error, total = completeness_errors(attributions, scores - start)
        return gradient_result(
            attributions, targets, scores, probs, completeness_error=error.astype(np.float32),
            extras={"baseline_scores": start, "attribution_sums": total, **extras},
        )  # fmt: skip

    def compute(self, x, targets, images) -> Result:
        targets, scores, probs = self.resolve(x, targets)
        attributions = self.attribute(x, targets)
        return self.path_result(attributions, targets, scores, probs, self.start_scores(x, targets))


class IntegratedGradients(PathMethod):
    """Integrated gradients: ``(x − x′) ⊙ ∫₀¹ ∇f(x′ + α(x − x′)) dα``.

    Path points of all images are packed into the same batches. The result's ``completeness_error`` is
    ``|Σ attributions − (f(x) − f(x′))| / |f(x) − f(x′)|``; above a few percent, raise ``steps``.

    Parameters
    ----------
    steps : int or "auto"
        Intervals of the path (the trapezoid rule evaluates ``steps + 1`` points). Paper: 20–300.
        ``"auto"``: each image's own, the fewest that meet ``tolerance`` (below).
    tolerance : float
        With ``steps="auto"``: the completeness error to reach (default 1 %). Every image starts with
        :data:`AUTO_START` trapezoid intervals; those above the tolerance are refined by halving every
        interval, which keeps every point already computed (the trapezoid rule on 2n intervals is the one on
        n plus the n midpoints), until the tolerance or ``max_steps`` is reached. Images that reach the cap are
        named in a warning. ``Explanation.params["steps"]`` then lists the steps each image used.
    max_steps : int
        With ``steps="auto"``: the cap (default :data:`AUTO_CAP`).
    baseline : "black", "blur", "noise" or array
        ``"black"``: a black image (through ``preprocess`` when given, else zeros); ``"blur"``: the
        image blurred with a Gaussian of σ = ``blur_sigma`` × its size; ``"noise"``: uniform noise over
        the image's value range (seeded); an array: model-input values broadcastable to the images.
    quadrature : {"trapezoid", "riemann", "riemann_left", "riemann_right", "gausslegendre"}
        How the path integral is summed (:func:`path_nodes`). ``rule=`` is its old name (deprecated: in LRP,
        ``rule`` is the propagation rule).
    blur_sigma : float
        Blur σ as a fraction of max(height, width) (default 1/16, the package's one blur:
        :func:`cnn_exposed.inputs.fill_images`).
    seed : int
        Seeds the noise baseline.
    """

    name = "integrated_gradients"

    def __init__(
        self,
        model,
        *,
        steps: int | str = 50,
        tolerance: float = 0.01,
        max_steps: int = AUTO_CAP,
        baseline="black",
        quadrature: str = "trapezoid",
        rule: str | None = None,
        blur_sigma: float = BLUR_SIGMA,
        seed: int = 0,
        score=None,
        preprocess=None,
        batch_size=None,
        progress: bool = True,
        input=None,
        output=None,
    ) -> None:
        super().__init__(
            model, score=score, preprocess=preprocess, batch_size=batch_size, progress=progress, input=input,
            output=output,
        )  # fmt: skip
        if rule is not None:
            warnings.warn(
                "integrated_gradients(rule=...) is deprecated: the quadrature is now quadrature=... ('rule' is "
                "LRP's propagation rule).",
                DeprecationWarning,
                stacklevel=3,
            )
            quadrature = rule
        self.auto = steps == "auto"
        if self.auto:
            if quadrature != "trapezoid":
                raise ValueError(
                    f"steps='auto' refines the trapezoid rule (its points nest when intervals are halved); got "
                    f"quadrature={quadrature!r}. Use quadrature='trapezoid' or a fixed number of steps."
                )
            if not tolerance > 0:
                raise ValueError(f"tolerance must be positive, got {tolerance}.")
            if int(max_steps) < AUTO_START:
                raise ValueError(f"max_steps must be at least {AUTO_START}, got {max_steps}.")
            steps = AUTO_START
        elif isinstance(steps, str):
            raise ValueError(f"steps must be a positive integer or 'auto', got {steps!r}.")
        self.alphas, self.weights = path_nodes(int(steps), quadrature)
        check_baseline(baseline)
        self.steps, self.quadrature, self.baseline = int(steps), quadrature, baseline
        self.tolerance, self.max_steps = float(tolerance), int(max_steps)
        self.blur_sigma, self.seed = float(blur_sigma), seed

    def options(self):
        base = self.baseline if isinstance(self.baseline, str) else "array"
        opts = {"steps": "auto" if self.auto else self.steps, "baseline": base, "quadrature": self.quadrature}
        if self.auto:
            opts.update(tolerance=self.tolerance, max_steps=self.max_steps)
        return {**opts, "seed": self.seed}

    def baselines(self, x: np.ndarray) -> np.ndarray:
        """The baseline ``x′`` for each input, ``(M, H, W, C)`` float32 in model-input space."""
        return make_baselines(x, self.baseline, self.preprocess, self.blur_sigma, self.seed)

    def start_scores(self, x, targets):
        return self.engine.scores_all(self.baselines(x), targets, self.batch_size)

    def _gradient_sums(self, x, baselines, targets, alphas, weights) -> np.ndarray:
        """``Σ_k w_k ∇f(x′ + α_k (x − x′))`` for every image ``(M, H, W, C)``."""
        shape = (-1,) + (1,) * (x.ndim - 1)

        def points(img, step):
            a = alphas[step].reshape(shape)
            return baselines[img] + a * (x[img] - baselines[img]), weights[step].reshape(shape)

        return self.path_sums(x, len(alphas), points, targets)

    def integrate(self, x: np.ndarray, baselines: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Integrated gradients of inputs ``x`` from the given ``baselines`` (both ``(M, H, W, C)``, model-input
        values) for resolved ``targets``, with this object's steps and quadrature: ``(M, H, W, C)`` float32."""
        return ((x - baselines) * self._integrate(x, baselines, targets)).astype(np.float32)

    def _integrate(self, x, baselines, targets) -> np.ndarray:
        """Weighted sum of gradients along each path, ``(M, H, W, C)``."""
        return self._gradient_sums(x, baselines, targets, self.alphas, self.weights)

    def attribute(self, x, targets):
        b = self.baselines(x)
        if self.auto:
            targets, scores, _ = self.resolve(x, targets)
            return self._auto(x, b, targets, scores)[0]
        return self.integrate(x, b, targets)

    def _auto(self, x, b, targets, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """steps="auto": (attributions, steps per image, completeness errors, baseline scores)."""
        base_scores = self.engine.scores_all(b, targets, self.batch_size)
        delta = scores - base_scores
        n = AUTO_START
        # Σ of the trapezoid's weighted points, times n: the ends count half, every other point once
        alphas = np.concatenate([[0.0, 1.0], np.arange(1, n) / n]).astype(np.float32)
        weights = np.concatenate([[0.5, 0.5], np.ones(n - 1)]).astype(np.float32)
        sums = self._gradient_sums(x, b, targets, alphas, weights)
        steps = np.full(len(x), n, dtype=np.int64)

        def result(i):
            return (x[i] - b[i]) * sums[i] / steps[i].reshape((-1,) + (1,) * (x.ndim - 1))

        def errors(i):
            total = result(i).reshape(len(i), -1).sum(axis=1)
            return np.abs(total - delta[i]) / np.maximum(np.abs(delta[i]), 1e-12)

        everyone = np.arange(len(x))
        error = errors(everyone)
        while True:
            todo = everyone[(error > self.tolerance) & (steps < self.max_steps)]
            if not len(todo):
                break
            for n in np.unique(steps[todo]):  # images at the same refinement level share their midpoints
                group = todo[steps[todo] == n]
                midpoints = (2 * np.arange(n, dtype=np.float32) + 1) / (2 * n)
                ones = np.ones(n, np.float32)
                with rows(group):
                    sums[group] += self._gradient_sums(x[group], b[group], targets[group], midpoints, ones)
                steps[group] = 2 * n
                error[group] = errors(group)
        attributions = result(everyone).astype(np.float32)
        capped = everyone[error > self.tolerance]
        if len(capped):
            listed = ", ".join(f"{int(i)} ({error[i]:.1%})" for i in capped[:10])
            warnings.warn(
                f"integrated gradients: {len(capped)} image(s) did not reach a completeness error of "
                f"{self.tolerance:.1%} in {self.max_steps} steps: {listed}{' ...' if len(capped) > 10 else ''}. "
                "Raise max_steps; a map that never converges can also mean a saturated or discontinuous model.",
                UserWarning,
                stacklevel=4,
            )
        return attributions, steps, error, base_scores

    def compute(self, x, targets, images) -> Result:
        targets, scores, probs = self.resolve(x, targets)
        b = self.baselines(x)
        if self.auto:
            attributions, steps, error, base_scores = self._auto(x, b, targets, scores)
            result = self.path_result(attributions, targets, scores, probs, base_scores)
            result.completeness_error = error.astype(np.float32)  # as the refinement measured it
            result.params = {"steps": steps.tolist(), "passes": int((steps + 1).sum())}
            return result
        attributions = self.integrate(x, b, targets)
        start = self.engine.scores_all(b, targets, self.batch_size)
        return self.path_result(attributions, targets, scores, probs, start)


def gaussian_blur(x: np.ndarray, sigmas) -> np.ndarray:
    """Each image of ``x`` (N, H, W, C) blurred by its own σ over height and width, as
    ``scipy.ndimage.gaussian_filter(image, [σ, σ, 0], mode="constant")`` blurs it (float32; compiled:
    :data:`~cnn_exposed.backend.blur_images`)."""
    sig = np.broadcast_to(np.asarray(sigmas, np.float64), (len(x),))
    return blur_images(np.asarray(x, np.float32), sig).numpy()


class BlurIG(PathMethod):
    """Blur integrated gradients (Xu et al. 2020): the path runs from ``x`` through ever stronger Gaussian blur,
    ``x_σ = G_σ * x``, σ from 0 to ``max_sigma``; ``a = −Σ_i Δσ_i (∂x_σ/∂σ)(σ_i) ⊙ ∇f(x_{σ_i})``, so
    ``Σ a ≈ f(x) − f(x_{max_sigma})``.

    As PAIR's ``saliency.core.BlurIG``: σ_i = i · max_sigma / steps (i = 0 … steps − 1, a left Riemann sum),
    ``∂x_σ/∂σ`` by the forward difference ``(x_{σ+grad_step} − x_σ) / grad_step``, the blur of
    ``scipy.ndimage.gaussian_filter`` with σ over height and width only, truncated at 4 σ, zero padding (which darkens
    the borders as σ grows). The blurs are batched matrix products; the difference is formed from the two blurs'
    matrices' difference, in float64, so it keeps its digits in float32. The path points of all images are packed
    into the same batches, their blurs made in one compiled call per batch
    (:func:`~cnn_exposed.backend.blur_path_points`); the completeness error is against ``f(x) − f(x_{max_sigma})``.

    Parameters
    ----------
    max_sigma : float
        The largest blur σ in pixels (PAIR: 50).
    steps : int
        Points on the path (PAIR: 100).
    grad_step : float
        The σ step of the forward difference (PAIR: 0.01).
    sqrt : bool
        PAIR's alternative spacing σ_i = sqrt(i · max_sigma / steps).
    """

    name = "blur_ig"

    def __init__(self, model, *, max_sigma: float = 50.0, steps: int = 100, grad_step: float = 0.01,
                 sqrt: bool = False, **common) -> None:  # fmt: skip
        super().__init__(model, **common)
        if not max_sigma > 0:
            raise ValueError(f"max_sigma must be positive (a blur σ in pixels), got {max_sigma}.")
        if int(steps) < 1:
            raise ValueError(f"steps must be at least 1, got {steps}.")
        if not grad_step > 0:
            raise ValueError(f"grad_step must be positive, got {grad_step}.")
        self.max_sigma, self.steps, self.grad_step, self.sqrt = float(max_sigma), int(steps), float(grad_step), sqrt

    def options(self):
        return {"max_sigma": self.max_sigma, "steps": self.steps, "grad_step": self.grad_step, "sqrt": self.sqrt}

    def sigmas(self) -> np.ndarray:
        """σ_0 … σ_steps (float64), the path's blur levels."""
        levels = np.arange(self.steps + 1) * self.max_sigma / self.steps
        return np.sqrt(levels) if self.sqrt else levels

    def attribute(self, x, targets):
        sigmas = self.sigmas()
        step_sizes = np.diff(sigmas).astype(np.float32)

        def points(img, step):
            blurred, derivative = blur_path_points(x[img], sigmas[step], self.grad_step)
            return blurred.numpy(), -step_sizes[step].reshape(-1, 1, 1, 1) * derivative.numpy()

        return self.path_sums(x, self.steps, points, targets)

    def start_scores(self, x, targets):
        return self.engine.scores_all(gaussian_blur(x, self.sigmas()[-1]), targets, self.batch_size)


def _lower_quantile_index(n: int, q: float) -> int:
    """The index of NumPy's ``np.quantile(a, q, method="lower")`` in ``a`` sorted (size ``n``): the floor of its
    virtual index ``n·q + (1 − q) − 1``, computed as NumPy computes it."""
    return int(np.floor(n * q + (1 + q * (1 - 1 - 1)) - 1))


class StraightPath(NamedTuple):
    """What a Guided IG step needs of one image's straight path, flattened: ``diff = x − x′``, ``|diff|``, the
    features with no path (``diff == 0``) and the L1 length ``Σ |diff|``."""

    diff: np.ndarray
    dist: np.ndarray
    frozen: np.ndarray
    l1_total: float

    @classmethod
    def of(cls, diff: np.ndarray) -> StraightPath:
        dist = np.abs(diff)
        return cls(diff, dist, np.flatnonzero(diff == 0), float(dist.sum()))


def guided_ig_step(a, attr, path: StraightPath, grad, step, steps, fraction, max_dist) -> None:
    """One step of Guided IG for one image (PAIR's algorithm, float64, in place). The image's state is ``a``: each
    feature's position α on the straight ``path``, ``x = x′ + α · diff`` (the paper's and PAIR's ``x``, kept as α so
    that the band tests and the L1 distances are single array operations).

    Features left behind the band ``α ± max_dist`` catch up first; then, while the L1 distance to the input is
    above ``l1_total · (1 − (step + 1) / steps)``, the ``fraction`` of features with the smallest |gradient| that
    are not at the band's far edge move to it, the last group only as far as the target distance needs. Adds the
    step's attribution ``Δx ⊙ grad`` (the gradient at the step's start) to ``attr``.

    PAIR recomputes the selection from the moved state at every pass; the same selection costs less here. A group
    moved to the edge is exactly the smallest |gradient|s still free, so the next group's threshold is a later
    order statistic of the same |gradient|s (``np.partition`` at ``k`` plus the count moved so far), the distance
    left drops by the group's gain, and the moves are applied once, arithmetically (exact: a moved feature lands
    on the edge itself)."""
    alpha = (step + 1.0) / steps
    lo, hi = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
    l1_target = path.l1_total * (1 - alpha)
    start = a.copy()
    np.maximum(a, lo, out=a)
    g = np.abs(grad).astype(np.float32)  # exact: the gradients are float32; halves the selection's traffic
    g[path.frozen] = np.inf  # a feature with no path never moves
    if hi >= 1.0 or hi <= lo:  # only then can a feature start the step at the band's far edge
        g[a == hi] = np.inf
    k = _lower_quantile_index(g.size, fraction)
    gain = path.dist * (hi - a)  # each feature's L1 gain if moved to the edge
    l1_current = (path.dist * (1.0 - a)).sum()
    below, moved, gamma, chosen = -np.inf, 0, 1.0, None  # the groups with |gradient| <= below are at the edge
    while not math.isclose(l1_target, l1_current, rel_tol=1e-9, abs_tol=1e-9):
        threshold = np.partition(g, k + moved)[k + moved] if k + moved < g.size else np.inf
        chosen = (g > below) & ((g <= threshold) if threshold < np.inf else (g < np.inf))
        l1_chosen = (gain * chosen).sum()
        if l1_chosen <= 0:  # nothing left that may move (only rounding keeps the target out of reach)
            chosen = None
            break
        gamma = (l1_current - l1_target) / l1_chosen
        if gamma <= 1.0:
            break
        below, moved, l1_current, chosen = (
            threshold,
            moved + int(np.count_nonzero(chosen)),
            l1_current - l1_chosen,
            None,
        )
    if moved:
        at_edge = g <= below
        a[:] = a * ~at_edge + hi * at_edge  # exactly hi where moved (a · 0 + hi), a elsewhere (a + 0)
    if chosen is not None:
        a += (hi - a) * chosen * gamma
    attr += (a - start) * path.diff * grad


class GuidedIG(PathMethod):
    """Guided integrated gradients (Kapishnikov et al. 2021): an adaptive path from the baseline that, at each of
    ``steps`` steps, moves the ``fraction`` of features with the smallest |gradient| toward the input (those the
    score is least sensitive to), each feature kept within ``max_dist`` (in units of α) of the straight path;
    ``a = Σ Δx ⊙ ∇f`` with the gradient at each step's start, so ``Σ a ≈ f(x) − f(x′)``.

    PAIR's algorithm (``saliency.core.GuidedIG``) in float64 per image (:func:`guided_ig_step`); the path is
    sequential in its steps, but each step takes the gradients of every image of a batch in one call (images
    ``batch_size`` at a time). An image equal to its baseline gets zeros.

    Parameters
    ----------
    steps : int
        Steps of the path (PAIR's ``x_steps``: 200).
    fraction : float
        The fraction of features moved at each pass of a step (PAIR: 0.25).
    max_dist : float
        How far (in α) a feature may stray from the straight path (PAIR: 0.02); 0 is integrated gradients with a
        left Riemann sum, 1 the unbounded Guided IG.
    baseline, blur_sigma, seed
        The starting point, as integrated gradients takes it (:func:`make_baselines`; default black, PAIR's 0).
    """

    name = "guided_ig"

    def __init__(self, model, *, steps: int = 200, fraction: float = 0.25, max_dist: float = 0.02,
                 baseline="black", blur_sigma: float = BLUR_SIGMA, seed: int = 0, **common) -> None:  # fmt: skip
        super().__init__(model, **common)
        if int(steps) < 1:
            raise ValueError(f"steps must be at least 1, got {steps}.")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
        if not 0 <= max_dist <= 1:
            raise ValueError(f"max_dist must be in [0, 1], got {max_dist}.")
        check_baseline(baseline)
        self.steps, self.fraction, self.max_dist = int(steps), float(fraction), float(max_dist)
        self.baseline, self.blur_sigma, self.seed = baseline, float(blur_sigma), seed

    def options(self):
        base = self.baseline if isinstance(self.baseline, str) else "array"
        return {"steps": self.steps, "fraction": self.fraction, "max_dist": self.max_dist, "baseline": base,
                "seed": self.seed}  # fmt: skip

    def baselines(self, x: np.ndarray) -> np.ndarray:
        """The starting point ``x′`` for each input (:func:`make_baselines`)."""
        return make_baselines(x, self.baseline, self.preprocess, self.blur_sigma, self.seed)

    def attribute(self, x, targets):
        b = self.baselines(x).astype(np.float64)
        out = np.zeros(x.shape, np.float32)
        for s in batch_slices(len(x), self.batch_size, progress=False):
            group = np.arange(s.start, s.stop)
            with rows(group):
                out[group] = self._paths(x[group].astype(np.float64), b[group], targets[group])
        return out

    def _paths(self, x_in: np.ndarray, x_base: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The Guided IG paths of a batch of images, side by side: one gradient call per step for all of them, then
        each image's step (:func:`guided_ig_step`)."""
        n = len(x_in)
        diff = (x_in - x_base).reshape(n, -1)
        paths = [StraightPath.of(d) for d in diff]
        alphas = np.zeros_like(diff)
        attr = np.zeros_like(diff)
        moving = [i for i in range(n) if paths[i].l1_total > 0]  # an image equal to its baseline: nothing to do
        steps = range(self.steps)
        for step in tqdm(steps, desc=self.name, disable=not self.progress, leave=False) if moving else ():
            points = (x_base + (alphas * diff).reshape(x_in.shape)).astype(np.float32)
            grads = self.engine.input_gradients(points, targets).gradients.reshape(n, -1).astype(np.float64)
            for i in moving:
                guided_ig_step(alphas[i], attr[i], paths[i], grads[i], step, self.steps, self.fraction, self.max_dist)
        return attr.reshape(x_in.shape)

    def start_scores(self, x, targets):
        return self.engine.scores_all(self.baselines(x), targets, self.batch_size)


class GradientSHAP(PathMethod):
    """GradientSHAP / expected gradients (Lundberg & Lee 2017; Erion et al. 2021):
    ``φ = E_{x′~background, α~U(0,1)}[(x − x′) ⊙ ∇f(x′ + α(x − x′))]``, estimated with ``samples`` draws per image,
    each one background image (drawn with replacement) and one α (captum's ``GradientShap`` convention). It is
    integrated gradients averaged over the background, with the path integral itself sampled; ``Σ φ = f(x) −
    E f(x′)`` holds in expectation only, so the reported ``completeness_error`` (against ``f(x) − mean f(background)``)
    shrinks like 1/sqrt(samples) rather than vanishing.

    With ``noise > 0``, each sample's input is ``x + ε``, ε ~ N(0, σ²), σ = noise × (max(x) − min(x)), and the
    multiplier is ``x + ε − x′`` (captum's ``stdevs``, shap's ``local_smoothing``): the sum then targets
    ``f(x + ε)`` on average, not ``f(x)``.

    Randomness: image ``i``'s draws are positions ``i·samples …`` of streams seeded by ``seed`` (baseline indices,
    α) and its noise is :func:`~cnn_exposed.backend.stateless_noise` of ``(seed, i·samples + j)``; samples of all
    images are packed into batches of ``batch_size``, so memory does not grow with ``samples`` and results do not
    depend on ``batch_size``.

    Parameters
    ----------
    samples : int
        Draws per image (default 50: the gradient passes of integrated gradients' default 50 steps; captum's 5 is
        too few for a stable map, shap's GradientExplainer uses 200).
    background : "black" or array
        The baseline distribution: ``"black"`` (one black image, through ``preprocess`` when given, as integrated
        gradients' black baseline), or images ``(K, H, W, C)`` (or one ``(H, W, C)``) — model-input values, or raw
        images when ``preprocess`` is given (they are preprocessed like the explained images). Erion et al. draw
        the background from the training data; shap recommends about 100 images.
    noise : float
        σ of the input noise as a fraction of each image's value range (default 0).
    seed : int
    """

    name = "gradient_shap"

    def __init__(self, model, *, samples: int = 50, background="black", noise: float = 0.0, seed: int = 0,
                 **common) -> None:  # fmt: skip
        super().__init__(model, **common)
        if int(samples) < 1:
            raise ValueError(f"samples must be at least 1, got {samples}.")
        if not noise >= 0:
            raise ValueError(f"noise must be a non-negative fraction of the input range, got {noise}.")
        if isinstance(background, str) and background != "black":
            raise ValueError(f"background must be 'black' or an array of images, got {background!r}.")
        self.samples, self.background, self.noise, self.seed = int(samples), background, float(noise), seed

    def options(self):
        background = self.background if isinstance(self.background, str) else f"{len(self._raw_background())} images"
        return {"samples": self.samples, "background": background, "noise": self.noise, "seed": self.seed}

    def _raw_background(self) -> np.ndarray:
        b = np.asarray(self.background)
        return b[None] if b.ndim == 3 else b

    def background_images(self, x: np.ndarray) -> np.ndarray:
        """The background ``(K, H, W, C)`` float32 in model-input values, checked against the images ``x``."""
        if isinstance(self.background, str):
            return make_baselines(x[:1], "black", self.preprocess)
        b = self._raw_background()
        if b.ndim != 4 or b.shape[1:] != x.shape[1:] or not len(b):
            raise InputError(
                f"background of shape {np.shape(self.background)} does not match the images {x.shape[1:]}: give "
                f"images (K, {', '.join(map(str, x.shape[1:]))}) or one image of that shape."
            )
        if self.preprocess is not None:
            return np.asarray(self.preprocess(b), dtype=np.float32).reshape(b.shape)
        return b.astype(np.float32)

    def draws(self, n_images: int, n_background: int) -> tuple[np.ndarray, np.ndarray]:
        """Each sample's background index and α, both ``(n_images, samples)``; image ``i``'s rows do not depend on
        how many images there are."""
        shape = (n_images, self.samples)
        index = np.random.default_rng([self.seed, 0]).integers(0, n_background, shape)
        alpha = np.random.default_rng([self.seed, 1]).random(shape, dtype=np.float32)
        return index, alpha

    def attribute(self, x, targets):
        bg = self.background_images(x)
        index, alpha = self.draws(len(x), len(bg))
        span = x.reshape(len(x), -1)
        sigma = (self.noise * (span.max(axis=1) - span.min(axis=1))).astype(np.float32)
        shape = (-1,) + (1,) * (x.ndim - 1)

        def points(img, j):
            inputs = x[img]
            if self.noise > 0:
                seeds = np.stack([np.full(len(img), self.seed), img * self.samples + j], axis=1).astype(np.int32)
                inputs = inputs + np.asarray(stateless_noise(x.shape[1:], seeds)) * sigma[img].reshape(shape)
            base = bg[index[img, j]]
            a = alpha[img, j].reshape(shape)
            return base + a * (inputs - base), (inputs - base) / self.samples

        return self.path_sums(x, self.samples, points, targets)

    def start_scores(self, x, targets):
        """The mean explained score over the background, per image."""
        bg = self.background_images(x)
        if not self.engine.multi_input:  # one pass over the background gives every class's score
            outputs = self.engine.predict_all(bg, self.batch_size).scores
            return outputs[:, targets].mean(axis=0).astype(np.float32)
        pairs = np.arange(len(x) * len(bg))  # side inputs: each image's own, with every background image
        img, k = pairs // len(bg), pairs % len(bg)
        with rows(img):
            scores = self.engine.scores_all(bg[k], targets[img], self.batch_size)
        return scores.reshape(len(x), len(bg)).mean(axis=1).astype(np.float32)
