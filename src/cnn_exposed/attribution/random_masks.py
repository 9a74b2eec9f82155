"""Random-mask members of the mask-sampler family: RISE (random binary grids) and Sobol attribution (a
quasi-Monte-Carlo design of continuous grids). Both upsample a coarse grid to the image, score the masked copies
(:mod:`~cnn_exposed.attribution.masking`) and reduce the scores with their estimator."""

from __future__ import annotations

import math

import numpy as np

from ..explanation import upsample_maps
from .base import Result
from .estimators import MaskMean, jansen_total_indices, sobol_design
from .masking import MaskMethod, check_fill, mask_fills, shared_masks


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


class RISE(MaskMethod):
    """RISE (Petsiuk et al. 2018): the mean score of the image seen through random masks, per pixel.

    Each mask is an ``s × s`` grid of Bernoulli(``keep_probability``) cells, upsampled bilinearly to
    ``(s + 1)·⌈H/s⌉ × (s + 1)·⌈W/s⌉`` and cropped to the image at a random shift in ``[0, ⌈H/s⌉) × [0, ⌈W/s⌉)``
    of its own (the paper's per-mask shift; xplique shares one shift per batch of masks). The hidden part
    shows ``fill``. ``raw_maps[λ] = Σ_i f(x ⊙ M_i) M_i(λ) / Σ_i M_i(λ)``: the score's mean when pixel λ is seen.

    Normalisation: the paper divides by ``N · p1`` (the masks' expected per-pixel sum); this divides by the
    masks' actual per-pixel sum, as xplique does. The two differ by the coverage ratio ``Σ_i M_i(λ) / (N p1)``,
    which is sampling noise around 1 (±1.6 % per pixel at N = 4000, p1 = 0.5) multiplying the *mean* score, the
    larger part of every pixel's value; dividing by the actual sum removes that noise (a ratio estimator) and
    keeps the map in score units. The masks are the same for every image, drawn from ``seed`` and rendered a
    batch at a time: results do not depend on ``batch_size`` and memory holds one batch of masks.

    Parameters
    ----------
    samples : int
        N, the number of masks (default 4000, the paper's and xplique's).
    grid : int
        s, cells per side (default 7).
    keep_probability : float
        p1, the probability a cell is kept (default 0.5).
    fill : float, "zeros", "mean" or "blur"
        What the hidden part shows (default "zeros": the paper's ``x ⊙ M``).
    seed : int
        Seed of the masks.

    The score is the probability by default, as in the paper (``score="logit"`` for the logit).
    """

    name = "rise"
    default_score = "probability"

    def __init__(self, model, *, samples=4000, grid=7, keep_probability=0.5, fill="zeros", seed=0, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.samples = _positive_int(samples, "samples")
        self.grid = _positive_int(grid, "grid")
        if not 0.0 < float(keep_probability) <= 1.0:
            raise ValueError(f"keep_probability must be in (0, 1], got {keep_probability!r}.")
        self.keep_probability = float(keep_probability)
        self.fill = check_fill(fill)
        self.seed = int(seed)

    def options(self):
        return {
            "samples": self.samples,
            "grid": self.grid,
            "keep_probability": self.keep_probability,
            "fill": self.fill,
            "seed": self.seed,
        }

    def mask_renderer(self, height: int, width: int):
        """Mask ``j`` ``(H, W)`` float32 in [0, 1] (for all images), drawn from the seed once, rendered on demand."""
        import cv2

        s = self.grid
        rng = np.random.default_rng(self.seed)
        cells = rng.random((self.samples, s, s)) < self.keep_probability
        ch, cw = math.ceil(height / s), math.ceil(width / s)
        shifts = np.stack([rng.integers(0, ch, self.samples), rng.integers(0, cw, self.samples)], axis=1)

        def render_one(j: int) -> np.ndarray:
            up = cv2.resize(cells[j].astype(np.float32), ((s + 1) * cw, (s + 1) * ch), interpolation=cv2.INTER_LINEAR)
            dy, dx = shifts[j]
            return up[dy : dy + height, dx : dx + width]

        return render_one

    def compute(self, x, targets, images) -> Result:
        targets, scores, probs = self.resolve(x, targets)
        n, height, width = x.shape[:3]
        seen = MaskMean(n, (height, width))
        self.score_masks(
            x, targets, mask_fills(x, self.fill), self.samples, shared_masks(self.mask_renderer(height, width)),
            visit=lambda image, mask, keep, s: seen.add(image, s, keep),
        )  # fmt: skip
        return Result(seen.mean().astype(np.float32), targets, scores, probs)


class SobolAttribution(MaskMethod):
    """Sobol attribution (Fel et al. 2021): each grid cell's total-order Sobol index of the score.

    ``ST_i = E[Var(f | all cells but i)] / Var(f)``: the share of the score's variance that involves cell i,
    alone or with others, when the cells' masks vary uniformly in [0, 1]. The design is Saltelli's: matrices A
    and B of ``designs`` rows (the halves of a scrambled Sobol sequence, scipy.stats.qmc, seeded) and
    ``C_i`` = A with column i from B, so ``designs · (grid² + 2)`` forward passes per image (2112 by default).
    Masks are upsampled nearest (each cell a block of pixels); a masked copy is ``x · M + fill · (1 − M)``, so
    the default ``fill="zeros"`` is xplique's "inpainting" ``x · M`` and ``fill="blur"`` its "blurring" (with
    the package's Gaussian blur instead of a 10×10 box). Indices by Jansen's estimator
    (:func:`~cnn_exposed.attribution.estimators.jansen_total_indices`); ``extras["indices"]`` holds them per
    cell ``(N, grid, grid)``, ``raw_maps`` them resized bilinearly to the image (xplique resizes bicubic, which
    can go below zero).

    Parameters
    ----------
    grid : int
        Cells per side (default 8, xplique's; its docs recommend 7–11).
    designs : int
        N, the rows of A and B, a power of two (default 32, xplique's ``nb_design``; 16–64 recommended).
    fill : float, "zeros", "mean" or "blur"
    seed : int
        Seed of the design's scrambling.
    """

    name = "sobol"

    def __init__(self, model, *, grid=8, designs=32, fill="zeros", seed=0, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.grid = _positive_int(grid, "grid")
        self.designs = _positive_int(designs, "designs")
        sobol_design(self.designs, 1, 0)  # a bad count fails here, before any pass
        self.fill = check_fill(fill)
        self.seed = int(seed)

    def options(self):
        return {"grid": self.grid, "designs": self.designs, "fill": self.fill, "seed": self.seed}

    def compute(self, x, targets, images) -> Result:
        targets, scores, probs = self.resolve(x, targets)
        n, height, width = x.shape[:3]
        g, dims = self.grid, self.grid * self.grid
        design = sobol_design(self.designs, dims, self.seed)
        cy = np.minimum(((np.arange(height) + 0.5) * g / height).astype(int), g - 1)
        cx = np.minimum(((np.arange(width) + 0.5) * g / width).astype(int), g - 1)
        cells = cy[:, None] * g + cx[None, :]  # (H, W): the grid cell of each pixel (nearest, half-pixel centres)
        per_image = self.score_masks(
            x, targets, mask_fills(x, self.fill), len(design), lambda image, mask: design[mask][:, cells]
        )
        indices = np.stack([jansen_total_indices(s, self.designs, dims) for s in per_image]).reshape(n, g, g)
        raw = upsample_maps(indices.astype(np.float32), (height, width))
        return Result(raw, targets, scores, probs, extras={"indices": indices.astype(np.float32)})
