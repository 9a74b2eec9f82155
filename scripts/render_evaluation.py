"""Render the README's evaluation of the demo model: images/evaluation.png and the recommendation's text.

    python scripts/render_evaluation.py

ce.evaluate with its default methods and metrics on the demo's 8 trap pools (rails in view: the shortcut) and its
12 clean photos.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

import cnn_exposed as ce

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    keras.utils.set_random_seed(0)
    loaded = ce.load_model("demo")
    trap, trap_labels, _ = ce.demo.load_images("trap")
    clean, _, _ = ce.demo.load_images("clean")
    pools = np.flatnonzero(trap_labels == ce.demo.CLASS_NAMES.index("pool"))
    images = np.concatenate([trap[pools], clean]).astype(np.float32)
    start = time.perf_counter()
    ev = ce.evaluate(loaded, images)
    took = time.perf_counter() - start
    print(f"{len(images)} images, {len(ev.methods)} methods, {len(ev.metrics)} metrics: {took:.0f} s")
    print(ev.table())
    print(ev.recommend().text)
    fig = ev.plot()
    fig.savefig(ROOT / "images" / "evaluation.png", dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main()
