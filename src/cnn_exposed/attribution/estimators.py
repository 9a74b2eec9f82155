"""The estimators of the mask-sampler family: what turns the scores of masked copies into attributions.

Each is a small NumPy function (or accumulator) of the masks' design and their scores, with no model in
sight, so each is tested alone on a case with a known answer:

- :class:`MaskMean` — the score-weighted mean of the masks, per pixel (occlusion, RISE);
- :func:`jansen_total_indices` — total-order Sobol indices from an A, B, C design (Sobol attribution);
- :func:`shapley_coalitions` and :func:`shapley_regression` — KernelSHAP's coalition design and its
  Shapley-kernel weighted regression with the efficiency constraints enforced exactly;
- :func:`lime_weights` and :func:`weighted_ridge` — LIME's proximity kernel and its ridge surrogate.
"""

from __future__ import annotations

import itertools
from math import comb

import numpy as np


class MaskMean:
    """Per-pixel weighted mean of masks, ``Σ_k w_k m_k / Σ_k m_k``, accumulated batch by batch.

    Masks arrive with the batch that scored them and are dropped after it, so memory holds ``(N, H, W)``
    sums, never the masks. Occlusion adds each patch's *hidden* mask weighted by the score drop (the mean
    drop over the patches covering a pixel); RISE adds each *kept* mask weighted by the score (the mean score
    when the pixel is visible, :class:`~cnn_exposed.attribution.random_masks.RISE`).

    Parameters
    ----------
    n : int
        Images.
    shape : (H, W)
    """

    def __init__(self, n: int, shape: tuple[int, int]) -> None:
        self.total = np.zeros((n, *shape), dtype=np.float64)
        self.mass = np.zeros((n, *shape), dtype=np.float64)

    def add(self, image: np.ndarray, weights: np.ndarray, masks: np.ndarray) -> None:
        """Add masks ``(k, H, W)`` of images ``image`` ``(k,)`` with weights ``(k,)``."""
        weights = np.asarray(weights, dtype=np.float64)
        for i in np.unique(image):
            rows = image == i
            self.total[i] += np.tensordot(weights[rows], masks[rows], axes=1)
            self.mass[i] += masks[rows].sum(axis=0, dtype=np.float64)

    def mean(self) -> np.ndarray:
        """``(N, H, W)`` float64: the weighted mean; 0 where no mask covered a pixel."""
        return np.divide(self.total, self.mass, out=np.zeros_like(self.total), where=self.mass > 0)


def jansen_total_indices(scores: np.ndarray, designs: int, dims: int) -> np.ndarray:
    """Total-order Sobol indices by Jansen's estimator (Jansen 1999), as Fel et al. (2021) use them.

    ``scores`` ``(N (d + 2),)`` are the model's outputs on the rows of A, B, then C_1 … C_d (C_i = A with
    column i taken from B), ``N = designs``, ``d = dims``. ``ST_i = Σ_j (f(A)_j − f(C_i)_j)² / (2N · Var f(A))``
    with the unbiased (ddof=1) variance of f(A), floored at 1e-12 (as xplique). Returns ``(d,)`` float64.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (designs * (dims + 2),):
        raise ValueError(f"Expected {designs * (dims + 2)} scores for N={designs}, d={dims}; got {scores.shape}.")
    f_a = scores[:designs]
    f_c = scores[2 * designs :].reshape(dims, designs)
    var = max(float(np.var(f_a, ddof=1)), 1e-12) if designs > 1 else 1e-12
    return ((f_a[None, :] - f_c) ** 2).sum(axis=1) / (2 * designs) / var


def sobol_design(designs: int, dims: int, seed: int) -> np.ndarray:
    """The A, B, C_1 … C_d rows of a Sobol/Saltelli design in [0, 1]: ``(N (d + 2), d)`` float32.

    A and B are the two halves of a scrambled Sobol sequence of dimension 2d (scipy.stats.qmc, seeded);
    ``N = designs`` must be a power of two (the sequence's balance properties hold for those)."""
    from scipy.stats import qmc

    if designs < 2 or designs & (designs - 1):
        raise ValueError(f"The Sobol design needs a power of two of at least 2 points (e.g. 32), got {designs}.")
    points = qmc.Sobol(d=2 * dims, scramble=True, seed=seed).random(designs)
    a, b = points[:, :dims], points[:, dims:]
    c = np.repeat(a[None], dims, axis=0)
    c[np.arange(dims), :, np.arange(dims)] = b.T
    return np.concatenate([a, b, c.reshape(dims * designs, dims)]).astype(np.float32)


def shapley_coalitions(features: int, samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """KernelSHAP's coalitions and their regression weights, drawn as shap's KernelExplainer draws them.

    Coalition sizes s and M − s are taken in pairs; from small s up, a pair of sizes is enumerated in full
    while the budget covers its share of the kernel mass, and the remaining sizes are sampled (size ∝ the
    kernel mass, members uniform) with each draw's complement added; a repeated draw adds weight instead of a
    row. With ``2^M − 2 ≤ samples`` every coalition is enumerated and the regression gives the exact Shapley
    values. The empty and the full coalition are never drawn: :func:`shapley_regression` enforces them.

    Returns ``(Z, w)``: ``Z`` ``(rows, M)`` float64 of 0/1 (1 = the feature is present), ``w`` ``(rows,)``
    weights summing to 1.
    """
    m = features
    if m < 2:
        return np.zeros((0, m)), np.zeros(0)
    samples = min(int(samples), 2**m - 2 if m <= 30 else int(samples))
    sizes = int(np.ceil((m - 1) / 2))  # s = 1 .. sizes; s and m - s are paired unless s = m / 2
    paired = int(np.floor((m - 1) / 2))
    mass = np.array([(m - 1) / (s * (m - s)) for s in range(1, sizes + 1)])
    mass[:paired] *= 2
    mass /= mass.sum()
    rows: list[np.ndarray] = []
    weights: list[float] = []
    left = samples
    remaining = mass.copy()
    full = 0
    for s in range(1, sizes + 1):
        count = comb(m, s) * (2 if s <= paired else 1)
        if left * remaining[s - 1] / count < 1.0 - 1e-8:
            break
        full += 1
        left -= count
        if remaining[s - 1] < 1.0:
            remaining /= 1 - remaining[s - 1]
        w = mass[s - 1] / comb(m, s) / (2 if s <= paired else 1)
        for members in itertools.combinations(range(m), s):
            z = np.zeros(m)
            z[list(members)] = 1.0
            rows.append(z)
            weights.append(w)
            if s <= paired:
                rows.append(1.0 - z)
                weights.append(w)
    fixed = len(rows)
    if full < sizes and left > 0:
        p = mass.copy()
        p[:paired] /= 2  # each draw below brings its complement along
        p = p[full:] / p[full:].sum()
        seen: dict[bytes, tuple[int, int]] = {}  # a drawn coalition -> (its row, rows stored with it)
        draws = rng.choice(len(p), 4 * left, p=p)
        for d in draws:
            if left <= 0:
                break
            s = int(d) + full + 1
            z = np.zeros(m)
            z[rng.permutation(m)[:s]] = 1.0
            pair = [z] + ([1.0 - z] if s <= paired else [])
            key = z.tobytes()
            if key in seen:  # drawn again: more weight, no new row
                first, stored = seen[key]
                for k in range(stored):
                    weights[first + k] += 1.0
                continue
            pair = pair[: min(len(pair), left)]
            seen[key] = (len(rows), len(pair))
            rows.extend(pair)
            weights.extend([1.0] * len(pair))
            left -= len(pair)
        sampled = np.asarray(weights[fixed:])
        weights[fixed:] = list(sampled * mass[full:].sum() / sampled.sum())
    return np.asarray(rows).reshape(-1, m), np.asarray(weights, dtype=np.float64)


def shapley_regression(
    coalitions: np.ndarray, scores: np.ndarray, weights: np.ndarray, empty: float, full: float
) -> np.ndarray:
    """Shapley values by the Shapley-kernel weighted linear regression of KernelSHAP (Lundberg & Lee 2017).

    The two constraints of infinite weight hold exactly: the intercept is ``empty`` = f(∅) (so φ₀ = f(∅)),
    and ``Σφ = full − empty`` = f(x) − f(∅), enforced by eliminating the last feature (φ_M = Σ-constraint −
    the rest), as shap does; the rest is weighted least squares (pseudo-inverse when singular).

    ``coalitions`` ``(rows, M)`` 0/1, ``scores`` ``(rows,)`` f(z), ``weights`` ``(rows,)``. Returns φ ``(M,)``.
    """
    z = np.asarray(coalitions, dtype=np.float64)
    m = z.shape[1]
    total = float(full) - float(empty)
    if m == 1 or len(z) == 0:
        return np.full(m, total / max(m, 1))
    y = np.asarray(scores, dtype=np.float64) - float(empty) - z[:, -1] * total
    x = z[:, :-1] - z[:, -1:]
    xw = x * np.asarray(weights, dtype=np.float64)[:, None]
    gram = xw.T @ x
    try:
        beta = np.linalg.solve(gram, xw.T @ y)
    except np.linalg.LinAlgError:
        beta = np.linalg.pinv(gram) @ (xw.T @ y)
    return np.append(beta, total - beta.sum())


def lime_weights(coalitions: np.ndarray, kernel_width: float = 0.25) -> np.ndarray:
    """LIME's proximity weights: sqrt(exp(−d² / w²)) with d the cosine distance of each coalition to the
    all-ones one (interpretable space; an empty coalition is at distance 1, as scikit-learn computes it)."""
    z = np.asarray(coalitions, dtype=np.float64)
    norms = np.linalg.norm(z, axis=1) * np.sqrt(z.shape[1])
    cosine = np.divide(z.sum(axis=1), norms, out=np.zeros(len(z)), where=norms > 0)
    d = 1.0 - cosine
    return np.sqrt(np.exp(-(d**2) / kernel_width**2))


def weighted_ridge(x: np.ndarray, y: np.ndarray, weights: np.ndarray, alpha: float = 1.0) -> tuple[np.ndarray, float]:
    """Ridge regression with an intercept and sample weights, as scikit-learn's ``Ridge(alpha, fit_intercept=True)
    .fit(x, y, sample_weight=weights)``: centre by the weighted means, solve ``(XᵀWX + αI) β = XᵀWy``, intercept
    ``ȳ − x̄·β``. Returns ``(β (p,), intercept)``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    x_mean = w @ x / w.sum()
    y_mean = float(w @ y / w.sum())
    xc, yc = x - x_mean, y - y_mean
    xw = xc * w[:, None]
    beta = np.linalg.solve(xw.T @ xc + alpha * np.eye(x.shape[1]), xw.T @ yc)
    return beta, y_mean - float(x_mean @ beta)
