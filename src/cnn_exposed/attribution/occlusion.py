"""Occlusion sensitivity (Zeiler & Fergus 2014)."""

from __future__ import annotations

import numpy as np

from .base import Result
from .estimators import MaskMean
from .masking import MaskMethod, check_fill, mask_fills


def _pair(value, name: str) -> tuple[int, int]:
    v = (value, value) if np.isscalar(value) else tuple(value)
    if len(v) != 2 or any(int(i) < 1 for i in v):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair, got {value!r}.")
    return int(v[0]), int(v[1])


def patch_positions(size: int, patch: int, stride: int) -> np.ndarray:
    """Top-left offsets of patches along one axis; the last patch always touches the border."""
    if patch > size:
        raise ValueError(f"The occlusion patch ({patch} px) is larger than the image ({size} px).")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return np.asarray(starts)


class Occlusion(MaskMethod):
    """Slide a patch over the image and record how much the target's score drops.

    ``raw_maps`` hold, per pixel, the score drop averaged over the patches that cover it (signed: a
    negative value means hiding that region raised the score); ``maps`` show the positive part. All
    occluded copies of all images are evaluated in batches. A member of the mask-sampler family
    (:mod:`~cnn_exposed.attribution.masking`): its masks hide one patch each, its estimator is the
    drop-weighted mean of the hidden masks (:class:`~cnn_exposed.attribution.estimators.MaskMean`).

    Parameters
    ----------
    patch : int or (int, int)
        Patch size in pixels; default: an eighth of the image's shorter side.
    stride : int or (int, int)
        Step between patches; default: half the patch.
    fill : float, "mean", "blur" or "zeros"
        What the patch shows, in model-input values: a constant, each image's per-channel mean
        (default), the image blurred (σ = 1/16 of its longer side) or zeros
        (:func:`cnn_exposed.inputs.fill_images`).
    """

    name = "occlusion"

    def __init__(self, model, *, patch=None, stride=None, fill="mean", **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.patch = None if patch is None else _pair(patch, "patch")
        self.stride = None if stride is None else _pair(stride, "stride")
        self.fill = check_fill(fill)

    def _geometry(self, height: int, width: int):
        patch = self.patch or (max(1, min(height, width) // 8),) * 2
        stride = self.stride or (max(1, patch[0] // 2), max(1, patch[1] // 2))
        return patch, stride

    def options(self):
        return {"patch": self.patch, "stride": self.stride, "fill": self.fill}

    def compute(self, x, targets, images) -> Result:
        targets, scores, probs = self.resolve(x, targets)
        n, height, width = x.shape[:3]
        (ph, pw), (sy, sx) = self._geometry(height, width)
        ys, xs = patch_positions(height, ph, sy), patch_positions(width, pw, sx)
        grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)

        def render(image, mask):
            keep = np.ones((len(mask), height, width), dtype=np.float32)
            for k, (y0, x0) in enumerate(grid[mask]):
                keep[k, y0 : y0 + ph, x0 : x0 + pw] = 0.0
            return keep

        drops = MaskMean(n, (height, width))
        self.score_masks(
            x, targets, mask_fills(x, self.fill), len(grid), render,
            visit=lambda image, mask, keep, s: drops.add(image, scores[image] - s, 1.0 - keep),
        )  # fmt: skip
        raw = drops.mean().astype(np.float32)
        return Result(raw, targets, scores, probs, extras={"patch": (ph, pw), "stride": (sy, sx)})
