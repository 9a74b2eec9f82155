"""Drawing explanations: heatmap overlays and an images × methods grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from .explanation import Explanation, signed_maps
from .inputs import LUMA

_COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "magma": cv2.COLORMAP_MAGMA,
    "hot": cv2.COLORMAP_HOT,
}


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An image for display as ``(H, W, 3)`` uint8 RGB.

    uint8 passes through; floats in [0, 1] are scaled by 255, floats in [0, 255] are clipped, any other
    range is min–max stretched. Grayscale becomes RGB and an alpha channel is dropped.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.dtype != np.uint8:
        img = img.astype(np.float32)
        lo, hi = float(img.min()), float(img.max())
        if lo >= 0.0 and hi <= 1.0:
            img = img * 255.0
        elif not (lo >= 0.0 and hi <= 255.0):
            img = (img - lo) / (hi - lo if hi > lo else 1.0) * 255.0
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A ``(H, W)`` map in [0, 1] as ``(H, W, 3)`` uint8 RGB through an OpenCV colormap."""
    if colormap not in _COLORMAPS:
        raise ValueError(f"Unknown colormap {colormap!r}; choose from {sorted(_COLORMAPS)}.")
    levels = np.clip(np.rint(np.asarray(heatmap, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, _COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend a ``(h, w)`` heatmap in [0, 1] over an image; returns ``(H, W, 3)`` uint8 RGB.

    The heatmap is resized (bilinear) to the image when their sizes differ, e.g. when ``preprocess``
    resized the image for the model.
    """
    img = to_uint8(image)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != img.shape[:2]:
        heat = np.asarray(cv2.resize(heat, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR), np.float32)
    colored = colorize(heat, colormap)
    blended = (1.0 - alpha) * img.astype(np.float32) + alpha * colored.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def overlay_signed(image: np.ndarray, signed_map: np.ndarray, alpha: float = 0.85) -> np.ndarray:
    """Draw a ``(h, w)`` map in [-1, 1] over an image with a diverging colormap centred at 0: red where the
    evidence is for the class, blue where it is against, the photo (in gray) where it is near 0.

    The colour's opacity grows with ``|value|`` (up to ``alpha``), so the photo stays readable under weak
    evidence. Returns ``(H, W, 3)`` uint8 RGB.
    """
    import matplotlib

    img = to_uint8(image).astype(np.float32)
    value = np.asarray(signed_map, dtype=np.float32)
    if value.shape != img.shape[:2]:
        value = np.asarray(cv2.resize(value, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR), np.float32)
    value = np.clip(value, -1.0, 1.0)
    gray = np.repeat(img @ LUMA, 3).reshape(img.shape)
    colour = matplotlib.colormaps["bwr"]((value + 1.0) / 2.0)[..., :3] * 255.0
    weight = (alpha * np.abs(value))[..., None]
    return np.clip(np.rint((1.0 - weight) * gray + weight * colour), 0, 255).astype(np.uint8)


def draw_map(exp: Explanation, index: int, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """The overlay of map ``index`` of ``exp`` as cnn-exposed draws it: signed methods (LRP, gradient × input,
    integrated gradients) with :func:`overlay_signed`, the others with :func:`overlay_heatmap`."""
    if exp.signed and exp.attributions is not None:
        return overlay_signed(exp.images[index], signed_maps(exp.attributions[index : index + 1])[0])
    return overlay_heatmap(exp.images[index], exp.maps[index], alpha, colormap)


def _label(index: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return str(index)


def plot_explanations(
    explanations: Explanation | Sequence[Explanation] | Mapping[str, Explanation],
    class_names: Sequence[str] | None = None,
    *,
    true_labels: Sequence[int] | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
    cell_size: float = 2.4,
    max_images: int = 16,
):
    """A grid: one row per image, the original then one overlay per method.

    Titles give the predicted class and its probability (and the true class when known) on the
    original, and the explained class and its score on each overlay. Signed methods (LRP, gradient ×
    input, integrated gradients) are drawn red for and blue against the class (:func:`overlay_signed`).

    Parameters
    ----------
    explanations : Explanation, list of them, or dict title -> Explanation
        All for the same images (in the same order).
    class_names : sequence of str, optional
    true_labels : sequence of int, optional
        One per input image (indexed by ``image_index``); default: the labels that came with the images
        (:attr:`Explanation.labels`, e.g. from a ``tf.data.Dataset`` of ``(images, labels)``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if isinstance(explanations, Explanation):
        explanations = [explanations]
    if isinstance(explanations, Mapping):
        titles, items = list(explanations.keys()), list(explanations.values())
    else:
        items = list(explanations)
        titles = [e.method for e in items]
    if not items:
        raise ValueError("plot_explanations needs at least one Explanation.")
    rows = min(len(items[0]), max_images)
    cols = 1 + len(items)
    fig, axes = plt.subplots(rows, cols, figsize=(cell_size * cols, cell_size * rows + 0.3), squeeze=False)
    first = items[0]
    for r in range(rows):
        pred = int(first.predictions[r])
        title = f"{_label(pred, class_names)} {first.probabilities[r, pred]:.2f}"
        if true_labels is not None:
            title = f"true {_label(int(true_labels[first.image_index[r]]), class_names)}\npred {title}"
        elif first.labels is not None:  # the labels that came with the images (a dataset, class folders)
            title = f"true {_label(int(first.labels[r]), class_names)}\npred {title}"
        axes[r, 0].imshow(to_uint8(first.images[r]))
        axes[r, 0].set_title(title, fontsize=8)
        for c, (name, exp) in enumerate(zip(titles, items), start=1):
            axes[r, c].imshow(draw_map(exp, r, alpha, colormap))
            score_kind = exp.params.get("score", "")
            axes[r, c].set_title(
                f"{name}\n{_label(int(exp.targets[r]), class_names)} {score_kind} {exp.scores[r]:.2f}",
                fontsize=8,
            )
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return fig


def save_png(image: np.ndarray, path) -> None:
    """Write an ``(H, W, 3)`` RGB image (any dtype :func:`to_uint8` accepts) to a PNG file."""
    ok = cv2.imwrite(str(path), cv2.cvtColor(to_uint8(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"Could not write {path}.")
