"""Figures: labelled filter grids, the walk through the network, activation maps of one image."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import keras
import numpy as np

from ..layers import is_nested_model, iter_layers, layer_output_shape, probe_if_needed
from ..plotting import to_uint8
from .render import visualise_filters


def pick_layers(model: keras.Model, count: int = 3) -> list[str]:
    """Spatial layers spread through the network (early, middle, late), for :func:`network_walk`.

    Prefers layers that end a block (activations and convolutions) over padding, pooling and merges.
    """
    spatial = []
    probe_if_needed(model)
    for ref in iter_layers(model):
        shape = layer_output_shape(ref.layer)
        if is_nested_model(ref.layer) or shape is None or len(shape) != 4:
            continue
        kind = type(ref.layer).__name__
        if kind in ("ZeroPadding2D", "Cropping2D", "MaxPooling2D", "AveragePooling2D", "Dropout", "InputLayer"):
            continue
        spatial.append(ref.path)
    if not spatial:
        from ..errors import NoSpatialLayerError

        raise NoSpatialLayerError(f"Model {model.name!r} has no spatial layers to visualise.")
    picks = np.linspace(0.15, 1.0, count) * (len(spatial) - 1)
    return list(dict.fromkeys(spatial[int(round(p))] for p in picks))


def network_walk(
    model: keras.Model,
    layers: Sequence[str] | None = None,
    filters: int = 4,
    *,
    steps: int = 256,
    size: int | None = None,
    seed: int = 0,
    preprocess: Callable | None = None,
    cell_size: float = 1.8,
    **render_options,
):
    """A few filters from early, middle and late layers side by side: the complexity of what they respond
    to grows with depth. Returns ``(figure, {layer: Visualisation})``."""
    import matplotlib.pyplot as plt

    layers = list(layers) if layers is not None else pick_layers(model)
    results = {
        layer: visualise_filters(
            model, layer, filters, steps=steps, size=size, seed=seed, preprocess=preprocess, **render_options
        )
        for layer in layers
    }
    ncols = max(len(v) for v in results.values())
    fig, axes = plt.subplots(len(layers), ncols, figsize=(cell_size * ncols, cell_size * len(layers) + 0.3))
    axes = np.asarray(axes).reshape(len(layers), ncols)
    for r, (layer, vis) in enumerate(results.items()):
        for c in range(ncols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(vis):
                ax.imshow(to_uint8(vis.images[c]))
                ax.set_title(f"{vis.labels[c]}", fontsize=7)
        axes[r, 0].text(
            -0.08, 0.5, layer, transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center", fontsize=8
        )
    fig.suptitle("early → late: what filters respond to", fontsize=9)
    fig.tight_layout()
    return fig, results


def plot_activation_maps(
    model: keras.Model,
    image: np.ndarray,
    layer,
    *,
    preprocess: Callable | None = None,
    channels: int | Sequence[int] = 16,
    ncols: int = 8,
    cell_size: float = 1.5,
):
    """What the filters of ``layer`` see in one image: the image, then one activation map per channel.

    ``channels`` is a list of indices, or a number n for the n channels most active on this image.
    Returns ``(figure, activations (h, w, C))``.
    """
    import matplotlib.pyplot as plt

    from ..engine import engine_for
    from ..inputs import prepare_images

    engine = engine_for(model, layer)
    display, x = prepare_images(image, engine.input_shape, preprocess)
    acts = engine.activations(x[:1]).activations[0]
    path = engine.layer.path if engine.layer is not None else str(layer)
    if acts.ndim != 3:
        from ..errors import NoSpatialLayerError

        raise NoSpatialLayerError(f"Layer {path!r} output {acts.shape} is not a spatial feature map.")
    if isinstance(channels, (int, np.integer)):
        order = np.argsort(-acts.mean(axis=(0, 1)), kind="stable")
        channels = order[: int(channels)].tolist()
    channels = [int(c) for c in channels]  # type: ignore[union-attr]  # a sequence by now
    n = len(channels) + 1
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_size * ncols, cell_size * nrows + 0.3))
    axes = np.atleast_1d(axes).ravel()
    for ax in axes:
        ax.axis("off")
    axes[0].imshow(to_uint8(display[0]))
    axes[0].set_title("image", fontsize=7)
    vmax = max(float(acts[..., channels].max()), 1e-8)
    for ax, c in zip(axes[1:], channels):
        ax.imshow(acts[..., c], cmap="inferno", vmin=0.0, vmax=vmax)
        ax.set_title(f"ch {c} · mean {acts[..., c].mean():.2g}", fontsize=7)
    fig.suptitle(f"activations of {path}", fontsize=9)
    fig.tight_layout()
    return fig, acts
