"""Measuring whether a heatmap points where it should."""

from __future__ import annotations

import cv2
import numpy as np


def pointing_game(maps: np.ndarray, masks: np.ndarray, tolerance: float = 0.07) -> np.ndarray:
    """Hits of the pointing game (Zhang et al. 2016): does each map's maximum fall on its mask?

    Parameters
    ----------
    maps : (N, H, W) float
        Heatmaps (any scale); the maximum is taken per map (the first one on ties).
    masks : (N, H, W) bool
        Ground-truth object masks, at the maps' resolution.
    tolerance : float
        The mask is grown by this fraction of the image's longer side before the test (the paper's 15
        pixels at 224 is about 7 %).

    Returns
    -------
    (N,) bool
    """
    maps, masks = np.asarray(maps), np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must have the same shape.")
    radius = int(round(tolerance * max(maps.shape[1:3]))) if maps.ndim == 3 else 0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    hits = np.zeros(len(maps), dtype=bool)
    for i, (heat, mask) in enumerate(zip(maps, masks)):
        grown = cv2.dilate(mask.astype(np.uint8), kernel) > 0 if radius else mask
        row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
        hits[i] = grown[row, col]
    return hits
