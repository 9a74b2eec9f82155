"""The result object every attribution method returns, and map normalisation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Min–max normalise each map of ``(N, ...)`` to [0, 1]; a constant map becomes all zeros."""
    maps = np.asarray(maps, dtype=np.float32)
    flat = maps.reshape(len(maps), -1)
    lo = flat.min(axis=1)
    span = flat.max(axis=1) - lo
    shape = (len(maps),) + (1,) * (maps.ndim - 1)
    safe = np.where(span > 0, span, 1.0).reshape(shape)
    out = (maps - lo.reshape(shape)) / safe
    out[span <= 0] = 0.0
    return out.astype(np.float32)


def channel_max_abs(attributions: np.ndarray) -> np.ndarray:
    """``(N, H, W, C)`` signed attributions to ``(N, H, W)`` display magnitudes: max over channels of |a|."""
    return np.abs(attributions).max(axis=-1)


def signed_maps(attributions: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """``(N, H, W, C)`` signed attributions to ``(N, H, W)`` maps in [-1, 1] that keep the sign.

    Channels are summed (LRP's relevance and gradient × input add up over a pixel's channels), then each map
    is divided by its ``percentile``-th largest ``|value|`` and clipped: a sparse map, whose maximum is a few
    hot pixels, then still shows its weaker evidence (with the plain maximum, LRP maps look almost blank).
    0 stays 0, so a diverging colormap centred there reads as "for" (positive) and "against" (negative).
    """
    summed = np.asarray(attributions, dtype=np.float32).sum(axis=-1)
    flat = np.abs(summed.reshape(len(summed), -1))
    scale = np.percentile(flat, percentile, axis=1) if flat.shape[1] else np.zeros(len(summed))
    scale = np.where(scale > 0, scale, np.maximum(flat.max(axis=1, initial=0.0), 1e-30))
    return np.clip(summed / scale.reshape((-1,) + (1,) * (summed.ndim - 1)), -1.0, 1.0).astype(np.float32)


@dataclass
class Explanation:
    """What an attribution method found for a batch of images.

    Attributes
    ----------
    maps : (M, H, W) float32 in [0, 1]
        What is drawn: for gradient methods the max over channels of the absolute attribution, for CAMs
        the ReLU'd map upsampled to the input size, for occlusion the positive score drop; each min–max
        normalised per map.
    attributions : (M, H, W, C) float32 or None
        Signed, unnormalised attributions in the model's input space (None for CAMs and occlusion).
    targets : (M,) int
        The explained class of each map.
    scores : (M,) float32
        The explained score (logit by default, probability with ``score="probability"``) at the input.
    method : str
    params : dict
        Every setting used, defaults included.
    images : (M, H, W, C)
        The images the maps belong to, as given (raw pixels when a ``preprocess`` function was used),
        for drawing.
    image_index : (M,) int
        Which input image each map explains (``M > N`` only for ``target="top-k"``).
    probabilities : (M, K) float32
        The model's class probabilities for each image.
    raw_maps : (M, H, W) float32
        The maps before normalisation (for occlusion: the signed score drop).
    layer : str or None
        Path of the layer a CAM method used.
    layer_maps : (M, h, w) float32 or None
        CAM methods: the map at the layer's resolution before ReLU and upsampling.
    completeness_error : (M,) float32 or None
        Integrated gradients: ``|Σ attributions − (f(x) − f(x'))| / |f(x) − f(x')|``.
    signed : bool
        Whether the method's attributions carry a meaningful sign (LRP, gradient × input, integrated
        gradients): plots then draw :attr:`signed_maps` with a diverging colormap centred at zero.
    labels : (M,) int or None
        The true class of each map's image, when the images came with labels (a dataset of
        ``(images, labels)``, a folder of class sub-folders).
    files : list of Path or None
        Each map's image file, when files were explained.
    skipped : list of (file, reason)
        Files that could not be read and were left out.

    For a dataset, PyDataset, iterable or files, :attr:`image_index` counts positions in the whole source
    (for files: in the list, so skipped files leave gaps), also in the per-batch explanations of
    :func:`cnn_exposed.explain_batches`.
    """

    maps: np.ndarray
    attributions: np.ndarray | None
    targets: np.ndarray
    scores: np.ndarray
    method: str
    params: dict
    images: np.ndarray
    image_index: np.ndarray
    probabilities: np.ndarray
    raw_maps: np.ndarray
    layer: str | None = None
    layer_maps: np.ndarray | None = None
    completeness_error: np.ndarray | None = None
    extras: dict = field(default_factory=dict)
    signed: bool = False
    labels: np.ndarray | None = None
    files: list | None = None
    skipped: list = field(default_factory=list)

    @property
    def signed_maps(self) -> np.ndarray | None:
        """``(M, H, W)`` in [-1, 1]: the attributions summed over channels, sign kept (:func:`signed_maps`);
        None for methods without input-space attributions (CAMs, occlusion)."""
        return None if self.attributions is None else signed_maps(self.attributions)

    @property
    def predictions(self) -> np.ndarray:
        """The predicted class of each map's image, ``(M,)``."""
        return self.probabilities.argmax(axis=1)

    def __len__(self) -> int:
        return len(self.maps)

    def take(self, rows) -> Explanation:
        """The maps at ``rows`` (indices or a boolean mask), with everything that is per map."""
        rows = np.arange(len(self))[rows] if np.asarray(rows).dtype == bool else np.asarray(rows, np.int64)
        per_map: dict[str, Any] = {
            name: None if getattr(self, name) is None else getattr(self, name)[rows]
            for name in ("maps", "attributions", "targets", "scores", "images", "image_index", "probabilities",
                         "raw_maps", "layer_maps", "completeness_error", "labels")
        }  # fmt: skip
        extras = {k: v[rows] if isinstance(v, np.ndarray) and v.ndim and len(v) == len(self) else v
                  for k, v in self.extras.items()}  # fmt: skip
        files = None if self.files is None else [self.files[i] for i in rows]
        return dataclasses.replace(self, **per_map, extras=extras, files=files, params=dict(self.params),
                                   skipped=list(self.skipped))  # fmt: skip

    def __repr__(self) -> str:
        extra = f", layer={self.layer!r}" if self.layer else ""
        return (
            f"Explanation(method={self.method!r}, maps={self.maps.shape}, "
            f"targets={self.targets.tolist()[:8]}{'...' if len(self) > 8 else ''}{extra})"
        )


def upsample_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(N, h, w)`` maps to ``(N, H, W)`` with ``size = (H, W)`` (half-pixel centres,
    as ``tf.image.resize``)."""
    import cv2

    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape[1:] == tuple(size):
        return maps.copy()
    height, width = size
    return np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps])


def _joined(parts: list):
    """Per-map arrays of several batches joined (dicts of arrays key by key); None when any part has none."""
    if any(p is None for p in parts):
        return None
    if isinstance(parts[0], dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def _merged_params(explanations: list) -> dict:
    """Settings of several batches: equal values kept, per-image lists joined, counts (IG's passes) added."""
    params = dict(explanations[0].params)
    for key, value in params.items():
        values = [e.params.get(key) for e in explanations]
        if all(v == value for v in values):
            continue
        if all(isinstance(v, list) for v in values):
            params[key] = [item for v in values for item in v]
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            params[key] = sum(values)
    return params


def concatenate(explanations: list) -> Explanation:
    """One :class:`Explanation` of several (the batches of one source, in order)."""
    if not explanations:
        raise ValueError("Nothing to concatenate: no explanations.")
    if len(explanations) == 1:
        return explanations[0]
    first = explanations[0]

    def joined(name: str):
        return _joined([getattr(e, name) for e in explanations])

    extras = {}
    for key, value in first.extras.items():
        values = [e.extras.get(key) for e in explanations]
        per_map = all(isinstance(v, np.ndarray) and v.ndim and len(v) == len(e) for v, e in zip(values, explanations))
        extras[key] = np.concatenate(values) if per_map else value
    files = None if first.files is None else [f for e in explanations for f in (e.files or [])]
    return Explanation(
        maps=joined("maps"), attributions=joined("attributions"), targets=joined("targets"),
        scores=joined("scores"), method=first.method, params=_merged_params(explanations), images=joined("images"),
        image_index=joined("image_index"), probabilities=joined("probabilities"), raw_maps=joined("raw_maps"),
        layer=first.layer, layer_maps=joined("layer_maps"), completeness_error=joined("completeness_error"),
        extras=extras, signed=first.signed, labels=joined("labels"), files=files,
        skipped=[s for e in explanations for s in e.skipped],
    )  # fmt: skip
