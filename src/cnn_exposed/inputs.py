"""Checking and preparing the images a user passes in."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from .errors import InputError

# ITU-R BT.601 luma, the weights of OpenCV's and Pillow's RGB -> gray conversion.
LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray | None:
    """``(N, H, W, C)`` images converted to ``channels`` channels: colour (RGB, or RGBA with the alpha
    dropped) to gray by BT.601 luma, gray to RGB by repetition; None when no such conversion exists.
    The dtype is kept (uint8 stays uint8, rounded)."""
    have = images.shape[-1]
    if have == channels:
        return images
    if channels == 1 and have in (3, 4):
        gray = images[..., :3].astype(np.float32) @ LUMA
        if images.dtype == np.uint8:
            gray = np.clip(np.rint(gray), 0, 255)
        return gray[..., None].astype(images.dtype)
    if channels == 3 and have == 1:
        return np.repeat(images, 3, axis=-1)
    if channels == 3 and have == 4:
        return images[..., :3]
    return None


def as_batch(images, what: str = "images") -> np.ndarray:
    """``images`` as an ``(N, H, W, C)`` array; a single ``(H, W, C)`` image becomes a batch of one."""
    try:
        arr = np.asarray(images)
    except ValueError as err:  # ragged lists
        raise InputError(
            f"{what} could not be stacked into one array ({err}). Resize all images to the same "
            "size first (cnn_exposed.plotting and the CLI do this for files)."
        ) from None
    if arr.dtype == object:
        raise InputError(f"{what} have different shapes; resize them to one size first.")
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        hint = " Add a channel axis: images[..., None]." if arr.ndim == 2 else ""
        raise InputError(
            f"{what} must have shape (N, height, width, channels) or (height, width, channels); "
            f"got shape {arr.shape}.{hint}"
        )
    if arr.shape[0] == 0:
        raise InputError(f"{what} is empty: pass at least one image.")
    return arr


def prepare_images(images, input_shape: tuple, preprocess: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``images`` and turn them into model input.

    Parameters
    ----------
    images : array-like, (N, H, W, C) or (H, W, C)
        In the model's own value range, or raw pixels when ``preprocess`` is given.
    input_shape : tuple
        The model's input shape without the batch axis, ``(H, W, C)``; None entries accept any size.
    preprocess : callable, optional
        Maps raw images to model input (e.g. ``keras.applications.mobilenet_v2.preprocess_input``). It
        gets a copy, so an in-place preprocessing function does not change the caller's array.

    Returns
    -------
    display : (N, H, W, C) array
        What heatmaps are drawn over: the raw images when ``preprocess`` is given, else the input.
    x : (N, H, W, C) float32
        The model input.
    """
    raw = as_batch(images)
    want = tuple(input_shape)
    channels = want[-1] if len(want) == 3 else None
    converted = convert_channels(raw, channels) if channels is not None and raw.shape[-1] != channels else None
    x: np.ndarray | None
    try:
        x = _model_input(raw, preprocess)
    except InputError:
        if converted is None:
            raise
        x = None  # a preprocessing written for the model's channel count: retried on converted images
    if converted is not None and (x is None or x.shape[-1] != channels):
        # RGB photos for a grayscale model (or gray ones for an RGB model): convert, and say so once.
        x = _model_input(converted, preprocess)
        warnings.warn(
            f"The model takes {channels}-channel images and these have {raw.shape[-1]}: converted "
            + ("to gray (BT.601 luma)." if channels == 1 else "to RGB.")
            + " Heatmaps are drawn over the images as given.",
            UserWarning,
            stacklevel=3,
        )
    assert x is not None  # converted, or the first attempt worked
    if len(want) == 3:
        if want[-1] is not None and x.shape[-1] != want[-1]:
            hint = (
                " Convert grayscale to RGB with np.repeat(images, 3, axis=-1)."
                if x.shape[-1] == 1 and want[-1] == 3
                else " Drop the alpha channel with images[..., :3]."
                if x.shape[-1] == 4 and want[-1] == 3
                else ""
            )
            raise InputError(
                f"The model expects {want[-1]} channels but the images have {x.shape[-1]} (shape {x.shape}).{hint}"
            )
        size = want[:2]
        if any(w is not None and w != h for w, h in zip(size, x.shape[1:3])):
            raise InputError(
                f"The model expects images of {size[0]}x{size[1]} pixels but got "
                f"{x.shape[1]}x{x.shape[2]}. Resize them first, e.g. with "
                "keras.ops.image.resize(images, size) or cv2.resize."
            )
    bad = ~np.isfinite(x)
    if bad.any():
        images_hit = np.unique(np.nonzero(bad)[0])
        raise InputError(
            f"The input holds {int(bad.sum())} NaN or infinite values (in image(s) "
            f"{images_hit[:10].tolist()}). Check the image loading and preprocessing."
        )
    display = raw if preprocess is not None or raw.shape[-1] != x.shape[-1] else x
    return display, x


def _model_input(raw: np.ndarray, preprocess: Callable | None) -> np.ndarray:
    if preprocess is None:
        return np.asarray(raw, dtype=np.float32)
    try:
        x = preprocess(raw.copy())
    except Exception as err:  # the user's function: say where it failed
        raise InputError(f"preprocess failed on images of shape {raw.shape}: {err}") from err
    x = np.asarray(x)
    if x.ndim == 3 and raw.ndim == 4 and len(x) == len(raw) and x.shape[1:] != raw.shape[1:]:
        x = x[..., None]
    return np.asarray(as_batch(x, "preprocessed images"), dtype=np.float32)


# The one blur of the package: σ = 1/16 of the image's longer side (6 px at 96, 14 px at 224) removes the
# detail an explanation points at (edges, small parts such as the demo's rails) and keeps the layout and the
# colours, so a blurred region reads as "nothing here" rather than as a new object (Fong & Vedaldi 2017 blur
# their perturbations the same way; a black or mean fill adds edges of its own).
BLUR_SIGMA = 1 / 16


def fill_images(x: np.ndarray, fill, blur_sigma: float = BLUR_SIGMA) -> np.ndarray:
    """What hidden pixels are replaced with, for occlusion, the deletion and insertion curves and the
    blurred baseline of integrated gradients: ``(N, H, W, C)`` float32 like ``x``.

    ``fill``: ``"blur"`` (each image blurred by a Gaussian of σ = ``blur_sigma`` × its longer side),
    ``"mean"`` (each image's mean colour), ``"zeros"``, or a number.
    """
    x = np.asarray(x, dtype=np.float32)
    if isinstance(fill, str):
        if fill == "blur":
            import cv2

            sigma = float(blur_sigma) * max(x.shape[1:3])
            return np.stack([cv2.GaussianBlur(i, (0, 0), sigma).reshape(i.shape) for i in x]).astype(np.float32)
        if fill == "mean":
            return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).astype(np.float32)
        if fill == "zeros":
            return np.zeros_like(x)
        raise ValueError(f"fill must be 'blur', 'mean', 'zeros' or a number, got {fill!r}.")
    return np.full(x.shape, float(fill), dtype=np.float32)
