"""The cost of ce.evaluate against the bare passes it needs, side by side in one run.

    python benchmarks/evaluation.py [--images 16] [--size 96] [--repeats 2]

Model: MobileNetV2 with random weights (no download) at ``--size``; ``--images`` random images. ``evaluate`` runs
Grad-CAM and saliency with its default metrics. Its bare passes, timed in the same run (interleaved, best of
``--repeats`` after a warm-up, so tracing is excluded):

- each method's explanation of the images, twice (the second is random logit's explanation of another class),
  and once more of the first 8 images (the randomisation check; the clone and its new weights excluded);
- one forward pass of every perturbed copy the metrics score (deletion and insertion 17 per image,
  faithfulness correlation 50, ROAD 6, IROF one per superpixel), through a bare compiled ``model(x)`` in batches
  of 32, and one of the images themselves per metric that predicts them.

What the bare passes leave out is evaluate's own work: building the copies (ROAD's sparse solves, IROF's
segmentation), the bootstrap and the ranks.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import cnn_exposed as ce  # noqa: E402
from cnn_exposed.evaluation import FAST_SETTINGS  # noqa: E402
from cnn_exposed.segmentation import segment_images  # noqa: E402

METHODS = ["gradcam", "saliency"]


def copies_per_image(x: np.ndarray) -> int:
    irof = segment_images(x, "slic", segment_options=FAST_SETTINGS["irof"]["segment_options"])
    segments = float(np.mean([labels.max() + 1 for labels in irof]))
    road = len(FAST_SETTINGS["road"]["percentages"]) + 1
    return int(
        round(
            2 * (FAST_SETTINGS["deletion"]["steps"] + 1)
            + FAST_SETTINGS["faithfulness_correlation"]["runs"]
            + road
            + segments
            + 5
        )
    )  # fmt: skip  (+5: the images themselves, once per scoring metric)


def bare(model, x: np.ndarray, copies: int) -> float:
    forward = tf.function(lambda t: model(t, training=False))
    start = time.perf_counter()
    for m in METHODS:
        for _ in range(2):
            ce.explain(model, x, m, progress=False)
        ce.explain(model, x[:8], m, progress=False)
    batch = np.random.default_rng(1).uniform(-1, 1, (32,) + x.shape[1:]).astype(np.float32)
    for _ in range(int(np.ceil(copies * len(x) * len(METHODS) / 32))):
        forward(batch)
    return time.perf_counter() - start


def ours(model, x: np.ndarray) -> float:
    start = time.perf_counter()
    ce.evaluate(model, x, METHODS, resamples=200)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(args.size, args.size, 3))
    model = keras.Sequential([keras.Input((args.size, args.size, 3)), base, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(5, activation="softmax")])  # fmt: skip
    x = np.random.default_rng(0).uniform(-1, 1, (args.images, args.size, args.size, 3)).astype(np.float32)
    copies = copies_per_image(x)
    ours(model, x[:4]), bare(model, x[:4], copies)  # warm-up: trace everything once
    times: dict = {"evaluate": [], "bare passes": []}
    for _ in range(args.repeats):
        times["evaluate"].append(ours(model, x))
        times["bare passes"].append(bare(model, x, copies))
    best = {k: min(v) for k, v in times.items()}
    paired = np.median(np.array(times["evaluate"]) / np.array(times["bare passes"]))
    print(f"MobileNetV2 {args.size} px, {args.images} images, {METHODS}, {copies} scored copies per image and method")
    for k, v in best.items():
        print(f"  {k:12s} {v:7.1f} s")
    print(f"  evaluate / bare passes: {best['evaluate'] / best['bare passes']:.2f}x (paired median {paired:.2f}x)")


if __name__ == "__main__":
    main()
