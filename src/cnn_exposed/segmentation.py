"""Superpixels: an image cut into regions of similar colour, the features KernelSHAP and LIME switch on and off.

:func:`segment_images` runs one of scikit-image's algorithms by name (or your own function) on each image;
:func:`as_segments` checks and numbers a label map you made yourself. Labels are ``(N, H, W)`` int32, each
image's segments numbered 0 … M_i − 1 (M_i may differ between images).

Defaults, by name (override any with ``segment_options``):

- ``"quickshift"``: ``kernel_size=4, max_dist=200, ratio=0.2`` — LIME's (lime_image); on 224 px photos
  about 50–150 segments.
- ``"slic"``: ``n_segments=50, compactness=30, sigma=3`` — shap's image example (KernelExplainer on
  superpixels).
- ``"felzenszwalb"``: ``scale=100, sigma=0.8, min_size=150`` — one of XRAI's scales with its sigma and
  minimum size.

Each image is min–max scaled to [0, 1] per image before it is segmented (scikit-image reads colour in
[0, 1]; model inputs may be in [−1, 1] or mean-subtracted); quickshift and SLIC segment three-channel images
in Lab (their ``convert2lab``), Felzenszwalb in the image's own channels.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np

SEGMENTATIONS: dict[str, dict] = {
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
    "slic": {"n_segments": 50, "compactness": 30, "sigma": 3},
    "felzenszwalb": {"scale": 100, "sigma": 0.8, "min_size": 150},
}


def _unit(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    lo, hi = image.min(), image.max()
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def _run(image: np.ndarray, method: str, options: dict, seed: int) -> np.ndarray:
    from skimage import segmentation as sk

    rgb = image.shape[-1] == 3
    plane = image if image.shape[-1] > 1 else image[..., 0]
    axis = -1 if image.shape[-1] > 1 else None
    if method == "quickshift":
        params = inspect.signature(sk.quickshift).parameters
        seeded = {"rng": seed} if "rng" in params else {"random_seed": seed}  # renamed in scikit-image 0.23
        if image.shape[-1] == 1:
            plane = np.repeat(image, 3, axis=-1)  # quickshift wants channels; without Lab a gray image is fine
        return sk.quickshift(plane, convert2lab=rgb, channel_axis=-1, **seeded, **options)
    if method == "slic":
        return sk.slic(plane, channel_axis=axis, start_label=0, **options)
    return sk.felzenszwalb(plane, channel_axis=axis, **options)


def segment_images(
    images: np.ndarray,
    method: str | Callable = "quickshift",
    *,
    seed: int = 0,
    segment_options: dict | None = None,
) -> np.ndarray:
    """Superpixels of each image: ``(N, H, W)`` int32 labels, 0 … M_i − 1 per image.

    Parameters
    ----------
    images : (N, H, W, C)
        Any value range (each image is scaled to [0, 1] first).
    method : "quickshift", "slic", "felzenszwalb" or callable
        A scikit-image algorithm with the defaults in :data:`SEGMENTATIONS`, or a function
        ``(H, W, C) image in [0, 1] -> (H, W) integer labels``.
    seed : int
        Quickshift's random seed (its tie-breaking noise).
    segment_options : dict or None
        Keyword arguments for the algorithm, replacing the defaults one by one.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"Expected images (N, H, W, C), got shape {images.shape}.")
    if not callable(method) and method not in SEGMENTATIONS:
        raise ValueError(
            f"Unknown segmentation {method!r}: use one of {', '.join(SEGMENTATIONS)}, a function image -> labels, "
            "or pass your own label map as segments=."
        )
    options = {} if callable(method) else {**SEGMENTATIONS[method], **(segment_options or {})}
    labels = []
    for image in images:
        unit = _unit(image)
        labels.append(method(unit) if callable(method) else _run(unit, method, options, seed))
    return as_segments(np.stack([np.asarray(lab) for lab in labels]), len(images), images.shape[1:3])


def as_segments(segments, n: int, shape: tuple[int, int]) -> np.ndarray:
    """A label map for ``n`` images of ``shape`` (H, W): ``segments`` ``(H, W)`` (the same for every image) or
    ``(n, H, W)`` integers, renumbered to 0 … M_i − 1 per image. Returns ``(n, H, W)`` int32."""
    seg = np.asarray(segments)
    if seg.ndim == 2:
        seg = np.broadcast_to(seg, (n, *seg.shape))
    if seg.shape != (n, *shape) or not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(
            f"segments must be integer labels of shape {tuple(shape)} or {(n, *shape)} (one map per image), "
            f"got {seg.dtype} of shape {np.shape(segments)}."
        )
    return np.stack([np.unique(s, return_inverse=True)[1].reshape(s.shape) for s in seg]).astype(np.int32)


def segment_means(x: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Each segment painted with its own mean colour: ``(N, H, W, C)`` float32, LIME's way of hiding a
    superpixel (``hide_color=None``)."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    for i, (image, seg) in enumerate(zip(x, segments)):
        m = int(seg.max()) + 1
        flat = seg.ravel()
        counts = np.bincount(flat, minlength=m).astype(np.float64)
        sums = np.stack([np.bincount(flat, image[..., c].ravel(), minlength=m) for c in range(x.shape[-1])], -1)
        out[i] = (sums / counts[:, None])[seg].astype(np.float32)
    return out
