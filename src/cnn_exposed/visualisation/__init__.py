"""Feature visualisation: what does a filter, a layer or a class respond to?

Three small algebras and a loop, after Lucid: :mod:`objectives` (channel, neuron, class logit, layer,
diversity; they add, subtract and scale), :mod:`param` (pixels, or a Fourier basis with decorrelated
colour), :mod:`transforms` (pad, jitter, scale, rotate; regularisers) and :mod:`render` (Adam, a whole batch
of objectives in one compiled step).
"""

from __future__ import annotations

from .grid import plot_grid
from .objectives import Objective, channel, class_logit, diversity, layer_objective, neuron
from .param import FourierImage, PixelImage
from .plots import network_walk, pick_layers, plot_activation_maps
from .render import (
    Visualisation,
    affine_colour_map,
    evaluate_objective,
    render,
    visualise_classes,
    visualise_filters,
)
from .transforms import Transforms

__all__ = [
    "FourierImage",
    "Objective",
    "PixelImage",
    "Transforms",
    "Visualisation",
    "affine_colour_map",
    "channel",
    "class_logit",
    "diversity",
    "evaluate_objective",
    "layer_objective",
    "network_walk",
    "neuron",
    "pick_layers",
    "plot_activation_maps",
    "plot_grid",
    "render",
    "visualise_classes",
    "visualise_filters",
]
