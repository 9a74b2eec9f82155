"""Integrated gradients (Sundararajan et al. 2017) with its completeness check."""

from __future__ import annotations

import warnings

import numpy as np

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


def baseline_images(x: np.ndarray, baseline, preprocess=None, blur_sigma: float = BLUR_SIGMA, seed: int = 0):
    """The baseline ``x′`` for each input ``x`` ``(M, H, W, C)``, float32 in model-input space: ``baseline`` is
    ``"black"``, ``"blur"``, ``"noise"`` or an array (see :class:`IntegratedGradients`; DeepLIFT takes the same)."""
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


def completeness_error(attributions: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``|Σ attributions − delta| / |delta|`` per image (``delta = f(x) − f(x′)``), float32."""
    total = attributions.reshape(len(attributions), -1).sum(axis=1)
    return (np.abs(total - delta) / np.maximum(np.abs(delta), 1e-12)).astype(np.float32)


class IntegratedGradients(GradientMethod):
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
    signed = True

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
        if isinstance(baseline, str) and baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES} or an array, got {baseline!r}.")
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
        return baseline_images(x, self.baseline, self.preprocess, self.blur_sigma, self.seed)

    def _gradient_sums(self, x, baselines, targets, alphas, weights) -> np.ndarray:
        """``Σ_k w_k ∇f(x′ + α_k (x − x′))`` for every image ``(M, H, W, C)``: the path points of all
        images packed into the same batches."""
        n_steps = len(alphas)
        total = np.zeros(x.shape, dtype=np.float32)
        pairs = len(x) * n_steps
        for s in batch_slices(pairs, self.batch_size, progress=self.progress, desc=self.name):
            idx = np.arange(s.start, s.stop)
            img, step = idx // n_steps, idx % n_steps
            a = alphas[step].reshape((-1,) + (1,) * (x.ndim - 1))
            points = baselines[img] + a * (x[img] - baselines[img])
            with rows(img):  # each path point with its image's side inputs
                g = self.engine.input_gradients(points, targets[img]).gradients
            g = g * weights[step].reshape(a.shape)
            # idx is sorted, so each image's steps form one run.
            for i in np.unique(img):
                total[i] += g[img == i].sum(axis=0)
        return total

    def _integrate(self, x, baselines, targets) -> np.ndarray:
        """Weighted sum of gradients along each path, ``(M, H, W, C)``."""
        return self._gradient_sums(x, baselines, targets, self.alphas, self.weights)

    def attribute(self, x, targets):
        b = self.baselines(x)
        if self.auto:
            targets, scores, _ = self.resolve(x, targets)
            return self._auto(x, b, targets, scores)[0]
        return (x - b) * self._integrate(x, b, targets)

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
            total = attributions.reshape(len(x), -1).sum(axis=1)
            return gradient_result(
                attributions, targets, scores, probs, completeness_error=error.astype(np.float32),
                extras={"baseline_scores": base_scores, "attribution_sums": total},
                params={"steps": steps.tolist(), "passes": int((steps + 1).sum())},
            )  # fmt: skip
        attributions = ((x - b) * self._integrate(x, b, targets)).astype(np.float32)
        base_scores = self.engine.scores_all(b, targets, self.batch_size)
        delta = scores - base_scores
        total = attributions.reshape(len(x), -1).sum(axis=1)
        error = np.abs(total - delta) / np.maximum(np.abs(delta), 1e-12)
        return gradient_result(
            attributions,
            targets,
            scores,
            probs,
            completeness_error=error.astype(np.float32),
            extras={"baseline_scores": base_scores, "attribution_sums": total},
        )
