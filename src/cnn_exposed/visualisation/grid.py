"""The labelled grid of a :class:`~cnn_exposed.visualisation.Visualisation` (its ``plot()``); apart from the
other figures (:mod:`.plots`), which call the optimiser, so that the optimiser's results can draw themselves
without an import circle."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..plotting import to_uint8

if TYPE_CHECKING:
    from .render import Visualisation


def plot_grid(vis: Visualisation, ncols: int | None = None, title: str | None = None, cell_size: float = 1.8):
    """A grid of a Visualisation's images, each titled with its label and final objective value."""
    import matplotlib.pyplot as plt

    n = len(vis)
    ncols = ncols or min(n, 8)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_size * ncols, cell_size * nrows + (0.4 if title else 0.1)))
    axes = np.atleast_1d(axes).ravel()
    for ax in axes:
        ax.axis("off")
    for i in range(n):
        axes[i].imshow(to_uint8(vis.images[i]))  # grayscale shown as gray
        axes[i].set_title(f"{vis.labels[i]}\n{vis.objective[i]:.3g}", fontsize=7)
    if title is None and vis.layer:
        title = f"{vis.layer} ({vis.params.get('parameterisation')}, {vis.params.get('steps')} steps)"
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
