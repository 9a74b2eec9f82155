"""The mask-sampler family's one mechanism: hide parts of the image behind masks, score the masked copies in
batches, hand the scores to an estimator.

Occlusion, RISE, Sobol attribution, KernelSHAP and LIME differ only in their masks (a sliding patch, random
grids, a quasi-Monte-Carlo design, coalitions of superpixels) and their estimator
(:mod:`~cnn_exposed.attribution.estimators`). What they share lives here: the fill (what a hidden pixel
shows), and :meth:`MaskMethod.score_masks`, which packs the masked copies of all images into batches of
``batch_size`` — a copy is ``x · m + fill · (1 − m)`` for a mask ``m`` in [0, 1] (1 keeps the pixel) — and
renders each batch's masks when it is scored, so memory is bounded by the batch whatever the number of masks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..engine import batch_slices
from ..inputs import fill_images
from ..model_io import rows
from ..segmentation import segment_means
from .base import AttributionMethod

FILLS = ("mean", "blur", "zeros")


def check_fill(fill, segments: bool = False):
    """``fill`` if valid: a number, "mean", "blur", "zeros" (and "segment_mean" where there are segments)."""
    names = FILLS + (("segment_mean",) if segments else ())
    if isinstance(fill, str):
        if fill not in names:
            raise ValueError(f"fill must be a number, {', '.join(repr(n) for n in names)}; got {fill!r}.")
        return fill
    try:
        return float(fill)
    except (TypeError, ValueError):
        raise ValueError(f"fill must be a number or one of {', '.join(names)}; got {fill!r}.") from None


def mask_fills(x: np.ndarray, fill, segments: np.ndarray | None = None) -> np.ndarray | None:
    """What the hidden pixels of each image show, ``(N, H, W, C)`` float32; None for zeros (nothing to add).
    Every fill is :func:`cnn_exposed.inputs.fill_images`' except LIME's ``"segment_mean"`` (each superpixel's
    own mean colour, :func:`cnn_exposed.segmentation.segment_means`)."""
    if isinstance(fill, str) and fill == "segment_mean":
        assert segments is not None
        return segment_means(x, segments)
    if (isinstance(fill, str) and fill == "zeros") or (not isinstance(fill, str) and float(fill) == 0.0):
        return None
    return fill_images(x, fill)


def masked_copies(x: np.ndarray, fills: np.ndarray | None, image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``x[image] · keep + fills[image] · (1 − keep)`` for keep masks ``(k, H, W)``; exact where a mask is 0 or 1."""
    keep = keep[..., None]
    copies = x[image]  # a fresh copy (fancy indexing): scaled in place
    copies *= keep
    if fills is not None:
        copies += fills[image] * (1.0 - keep)
    return copies


class MaskMethod(AttributionMethod):
    """Base of the mask-sampler family: a subclass draws its masks and applies its estimator in ``compute``,
    and scores the masked copies with :meth:`score_masks`."""

    def score_masks(
        self,
        x: np.ndarray,
        targets: np.ndarray,
        fills: np.ndarray | None,
        counts,
        render: Callable[[np.ndarray, np.ndarray], np.ndarray],
        visit: Callable | None = None,
    ) -> list[np.ndarray]:
        """Score ``counts[i]`` masked copies of each image ``i``, all images' copies packed into batches.

        ``render(image, mask)`` gives the keep masks ``(k, H, W)`` float32 in [0, 1] of the rows of one batch
        (image index and mask index per row); ``visit(image, mask, keep, scores)`` sees each batch after it is
        scored (for estimators that accumulate over masks, which are then dropped). Returns each image's scores,
        ``(counts[i],)`` float64, in mask order. Results do not depend on ``batch_size``.
        """
        counts = np.broadcast_to(np.asarray(counts, dtype=np.int64), (len(x),))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        flat = np.empty(int(offsets[-1]), dtype=np.float64)
        for s in batch_slices(int(offsets[-1]), self.batch_size, progress=self.progress, desc=self.name):
            idx = np.arange(s.start, s.stop)
            image = np.searchsorted(offsets, idx, side="right") - 1
            mask = idx - offsets[image]
            keep = render(image, mask)
            with rows(image):  # each masked copy with its image's side inputs
                scores = np.asarray(self.engine.scores(masked_copies(x, fills, image, keep), targets[image]))
            flat[idx] = scores
            if visit is not None:
                visit(image, mask, keep, scores.astype(np.float64))
        return [flat[offsets[i] : offsets[i + 1]] for i in range(len(x))]


def shared_masks(render_one: Callable[[int], np.ndarray]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A batch renderer for masks shared by all images: each distinct mask of the batch rendered once."""

    def render(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        distinct, where = np.unique(mask, return_inverse=True)
        return np.stack([render_one(int(j)) for j in distinct])[where.ravel()]

    return render
