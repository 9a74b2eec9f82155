"""XRAI (Kapishnikov et al. 2019): integrated gradients summed over image regions grown greedily.

XRAI turns a pixel attribution into a ranking of regions: it over-segments the image at several scales
(Felzenszwalb), then repeatedly adds the segment whose not-yet-covered pixels have the highest mean attribution.
Each pixel gets the gain of the region that covered it, so the map shows the most attributed regions first.
Everything follows PAIR's ``saliency.core.XRAI`` ("full" algorithm) and its defaults; the attribution is this
package's :class:`~cnn_exposed.attribution.IntegratedGradients`, its path points batched with every other image's.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..model_io import rows
from .base import AttributionMethod, Result
from .integrated_gradients import IntegratedGradients, completeness_errors

SCALES = (50, 100, 150, 250, 500, 1200)  # Felzenszwalb scales (PAIR)
SEGMENT_SIGMA = 0.8
MIN_SEGMENT_SIZE = 150
SEGMENT_SIZE = (224, 224)  # the image is segmented at this size, so that the scales mean the same at any size
DILATION = 5  # every segment is dilated by a disk of this radius, to take in its edges


def dilated_label_masks(labels: np.ndarray, radius: int) -> np.ndarray:
    """One boolean mask ``(H, W)`` per label ``labels.min() … labels.max()`` of a label image, each dilated by a disk
    of ``radius`` (``skimage.morphology.disk``; pixels outside the image count as outside every mask): pixel p is in
    label l's mask when a pixel of label l lies in the disk around p. All labels at once: each pixel's own label, then
    one pass per offset of the disk that marks only the pixels whose neighbour there has another label (inside a
    segment, nothing is written), instead of one dilation per mask."""
    from skimage.morphology import disk

    lab = np.asarray(labels) - np.min(labels)
    h, w = lab.shape
    own = lab.ravel()
    masks = np.zeros((int(lab.max()) + 1, h * w), bool)
    masks[own, np.arange(h * w)] = True
    padded = np.pad(lab, radius, constant_values=-1)
    for dy, dx in np.argwhere(disk(radius)) - radius:
        there = padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w].ravel()
        other = np.flatnonzero((there != own) & (there >= 0))
        masks[there[other], other] = True
    return masks.reshape(-1, h, w)


def felzenszwalb_labels(image: np.ndarray) -> list[np.ndarray]:
    """PAIR's XRAI segmentations of one image ``(H, W, C)``, one label image ``(H, W)`` (int16) per scale of
    :data:`SCALES`: the image min-max rescaled to [−1, 1] and resized to 224 × 224 (cubic, anti-aliased),
    Felzenszwalb segments (σ 0.8, min size 150), their labels resized back (nearest). A constant image is one
    segment per scale. scikit-image's Felzenszwalb releases the GIL, so this runs beside TensorFlow in a thread."""
    from skimage.segmentation import felzenszwalb
    from skimage.transform import resize

    im = np.asarray(image, dtype=np.float64)
    span = im.max() - im.min()
    im = (im - im.min()) / (span if span > 0 else 1.0) * 2.0 - 1.0
    im = resize(im, SEGMENT_SIZE, order=3, mode="constant", preserve_range=True, anti_aliasing=True)
    out = []
    for scale in SCALES:
        seg = felzenszwalb(im, scale=scale, sigma=SEGMENT_SIGMA, min_size=MIN_SEGMENT_SIZE)
        seg = resize(seg, image.shape[:2], order=0, preserve_range=True, mode="constant", anti_aliasing=False)
        out.append(seg.astype(np.int16 if seg.max() < 2**15 else np.int32))  # as much memory as the attribution
    return out


def felzenszwalb_segments(image: np.ndarray, dilation: int = DILATION) -> list[np.ndarray]:
    """PAIR's XRAI segments of one image ``(H, W, C)``: one boolean mask ``(H, W)`` per label of each of
    :func:`felzenszwalb_labels`' segmentations, dilated by a disk of radius ``dilation``
    (:func:`dilated_label_masks`: the masks PAIR's per-mask ``skimage.morphology.dilation`` gives)."""
    return label_masks(felzenszwalb_labels(image), dilation)


def label_masks(segmentations: list[np.ndarray], dilation: int = DILATION) -> list[np.ndarray]:
    """The dilated masks of every label of every segmentation, in order."""
    masks: list[np.ndarray] = []
    for seg in segmentations:
        masks.extend(dilated_label_masks(seg, dilation))
    return masks


def grow_regions(
    attribution: np.ndarray, masks, area_threshold: float = 1.0, min_pixel_diff: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """XRAI's greedy region growing on a pixel attribution ``(H, W)`` and candidate masks ``(H, W)`` bool.

    Until the covered area exceeds ``area_threshold``: drop the candidates that would add fewer than
    ``min_pixel_diff`` new pixels, add the one whose new pixels have the highest mean attribution (the first on a
    tie), and give its new pixels that mean (its gain). Pixels never covered get their own mean. Returns the
    region-valued map ``(H, W)`` float64 and the regions' ranks ``(H, W)`` int (1 = highest gain; the uncovered
    rest last). The same results as PAIR's ``XRAI._xrai``; each candidate's count and sum over uncovered pixels
    are kept up to date as regions are added (each pixel is subtracted once), instead of recomputed.
    """
    if int(min_pixel_diff) < 1:
        raise ValueError(f"min_pixel_diff must be at least 1, got {min_pixel_diff}.")
    a = np.asarray(attribution, dtype=np.float64).ravel()
    cand = np.stack([np.asarray(m, bool).ravel() for m in masks]) if len(masks) else np.zeros((0, a.size), bool)
    count = cand.sum(axis=1)
    total = np.array([a[m].sum() for m in cand])
    alive = np.ones(len(cand), bool)
    covered = np.zeros(a.size, bool)
    out = np.full(a.size, -np.inf)
    trace = []  # (new pixels, gain) per added region
    while covered.mean() <= area_threshold:
        alive &= count >= min_pixel_diff
        if not alive.any():
            break
        with np.errstate(invalid="ignore", divide="ignore"):
            gain = np.where(alive, total / np.maximum(count, 1), -np.inf)
        best = int(np.argmax(gain))
        new = np.flatnonzero(cand[best] & ~covered)
        out[new] = gain[best]
        covered[new] = True
        trace.append((new, gain[best]))
        part = cand[:, new]
        count = count - part.sum(axis=1)
        total = total - part @ a[new]
        alive[best] = False
    rest = out == -np.inf
    if rest.any():
        out[rest] = a[rest].mean()
    ranks = np.zeros(a.size, int)
    for rank, (pixels, _) in enumerate(sorted(trace, key=lambda t: -t[1]), start=1):
        ranks[pixels] = rank
    ranks[rest] = len(trace) + 1
    return out.reshape(np.shape(attribution)), ranks.reshape(np.shape(attribution))


class XRAI(AttributionMethod):
    """XRAI (Kapishnikov et al. 2019): regions ranked by their integrated gradients, PAIR's algorithm and defaults.

    1. Integrated gradients from a black and a white baseline (each image's own minimum and maximum value, over all
       pixels and channels, as PAIR's defaults), averaged; the channels aggregated by their maximum (signed).
       The two paths of every image are packed into the same batches (:meth:`IntegratedGradients.integrate`).
    2. Segments: :func:`felzenszwalb_segments` (6 scales, dilated), segmented in threads beside step 1's passes.
    3. Regions: :func:`grow_regions`; each pixel's value is the gain (mean attribution of its region's new pixels)
       at the region's insertion.

    ``maps`` / ``raw_maps`` hold the region-valued map; ``extras["integrated_gradients"]`` the averaged IG
    attribution ``(N, H, W, C)``, ``extras["region_ranks"]`` each pixel's region rank (1 = first added);
    ``completeness_error`` is the IG part's, against ``f(x) − (f(black) + f(white)) / 2``.

    Parameters
    ----------
    steps : int
        Integrated-gradients intervals per baseline (default 100, PAIR's XRAI default; here the trapezoid rule on
        100 intervals, 101 gradients, where PAIR averages 100 points spaced evenly from 0 to 1).
    area_threshold : float
        Grow regions until this fraction of the image is covered (default 1.0: all).
    min_pixel_diff : int
        Candidates adding fewer new pixels are dropped (PAIR: 50).
    """

    name = "xrai"

    def __init__(self, model, *, steps: int = 100, area_threshold: float = 1.0, min_pixel_diff: int = 50,
                 **common) -> None:  # fmt: skip
        super().__init__(model, **common)
        self.ig = IntegratedGradients(
            model, steps=steps, score=self.score, batch_size=self.batch_size, progress=self.progress,
            input=self.input, output=self.output,
        )  # fmt: skip
        if not 0 < area_threshold <= 1:
            raise ValueError(f"area_threshold must be in (0, 1], got {area_threshold}.")
        if int(min_pixel_diff) < 1:
            raise ValueError(f"min_pixel_diff must be at least 1, got {min_pixel_diff}.")
        self.steps, self.area_threshold, self.min_pixel_diff = int(steps), float(area_threshold), int(min_pixel_diff)

    def options(self):
        return {"steps": self.steps, "area_threshold": self.area_threshold, "min_pixel_diff": self.min_pixel_diff}

    def baselines(self, x: np.ndarray) -> np.ndarray:
        """``(2, M, H, W, C)``: each image's black (its minimum) and white (its maximum) baseline."""
        lo = x.reshape(len(x), -1).min(axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
        hi = x.reshape(len(x), -1).max(axis=1).reshape(lo.shape)
        return np.stack([np.broadcast_to(lo, x.shape), np.broadcast_to(hi, x.shape)]).astype(np.float32)

    def integrated_gradients(self, x: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The averaged attribution ``(M, H, W, C)`` and the baselines' mean score ``(M,)``."""
        b = self.baselines(x)
        both = np.concatenate([x, x])
        owners = np.concatenate([np.arange(len(x))] * 2)  # each path with its image's side inputs
        with rows(owners):
            attr = self.ig.integrate(both, np.concatenate(list(b)), targets[owners])
            start = self.engine.scores_all(np.concatenate(list(b)), targets[owners], self.batch_size)
        n = len(x)
        return (attr[:n] + attr[n:]) / 2, (start[:n] + start[n:]) / 2

    def compute(self, x, targets, images) -> Result:
        targets, scores, probs = self.resolve(x, targets)
        # The segmentations are CPU work independent of the gradients: they run in threads while the
        # integrated-gradients passes run (all but one core; the label images are kept, their masks made later).
        workers = max(1, min(len(x), (os.cpu_count() or 2) - 1))
        pool = ThreadPoolExecutor(workers)
        try:
            labels = [pool.submit(felzenszwalb_labels, image) for image in x]
            attr, start = self.integrated_gradients(x, targets)
            maps = np.empty(x.shape[:3], np.float32)
            ranks = np.empty(x.shape[:3], np.int64)
            for i, job in enumerate(labels):
                segments = label_masks(job.result())
                maps[i], ranks[i] = grow_regions(attr[i].max(axis=-1), segments, self.area_threshold,
                                                 self.min_pixel_diff)  # fmt: skip
        finally:  # on an error or an interrupt, the segmentations not started are dropped
            pool.shutdown(cancel_futures=True)
        error, total = completeness_errors(attr, scores - start)
        extras = {"integrated_gradients": attr, "region_ranks": ranks, "baseline_scores": start,
                  "attribution_sums": total}  # fmt: skip
        return Result(maps, targets, scores, probs, completeness_error=error.astype(np.float32), extras=extras)
