"""Occlusion sensitivity (Zeiler & Fergus 2014)."""

from __future__ import annotations

import numpy as np

from ..engine import batch_slices
from ..inputs import fill_images
from ..model_io import rows
from .base import AttributionMethod, Result


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


class Occlusion(AttributionMethod):
    """Slide a patch over the image and record how much the target's score drops.

    ``raw_maps`` hold, per pixel, the score drop averaged over the patches that cover it (signed: a
    negative value means hiding that region raised the score); ``maps`` show the positive part. All
    occluded copies of all images are evaluated in batches.

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
        if isinstance(fill, str) and fill not in ("mean", "blur", "zeros"):
            raise ValueError(f"fill must be a number, 'mean', 'blur' or 'zeros'; got {fill!r}.")
        self.patch = None if patch is None else _pair(patch, "patch")
        self.stride = None if stride is None else _pair(stride, "stride")
        self.fill = fill

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
        fills = fill_images(x, self.fill)
        drops = np.zeros((n, height, width), dtype=np.float64)
        counts = np.zeros((height, width), dtype=np.float64)
        for y0, x0 in grid:
            counts[y0 : y0 + ph, x0 : x0 + pw] += 1
        per_image = len(grid)
        for s in batch_slices(n * per_image, self.batch_size, progress=self.progress, desc=self.name):
            idx = np.arange(s.start, s.stop)
            img, pos = idx // per_image, idx % per_image
            copies = x[img].copy()
            for j, (i, p) in enumerate(zip(img, pos)):
                y0, x0 = grid[p]
                copies[j, y0 : y0 + ph, x0 : x0 + pw] = fills[i, y0 : y0 + ph, x0 : x0 + pw]
            with rows(img):  # each occluded copy with its image's side inputs
                drop = scores[img] - self.engine.scores(copies, targets[img])
            for j, (i, p) in enumerate(zip(img, pos)):
                y0, x0 = grid[p]
                drops[i, y0 : y0 + ph, x0 : x0 + pw] += drop[j]
        raw = (drops / counts).astype(np.float32)
        return Result(raw, targets, scores, probs, extras={"patch": (ph, pw), "stride": (sy, sx)})
