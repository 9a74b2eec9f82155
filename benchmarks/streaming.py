"""Memory of explaining a tf.data.Dataset: ``cnn_exposed.explain_batches`` (one Explanation per batch, consumed
as it comes) over 2,000 and 20,000 small images, against ``cnn_exposed.explain`` (all maps joined).

    python benchmarks/streaming.py [--sizes 2000 20000] [--batch-size 64] [--modes batches joined]

The images are generated inside the dataset (``tf.random.stateless_uniform`` per index, 32 x 32 RGB, labels
``index % 3``), so the data itself is never held. Each measurement runs in a fresh process, so its peak
resident memory (``ru_maxrss``) is its own. ``batches`` keeps only a running mean map and a count per class:
its peak should not grow with the number of images; ``joined`` keeps every map and image, and grows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np
import tensorflow as tf
import cnn_exposed as ce

mode, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
keras.utils.set_random_seed(0)
inp = keras.Input((32, 32, 3))
h = keras.layers.Conv2D(16, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inp))
h = keras.layers.Conv2D(16, 3, activation="relu")(h)
out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
model = keras.Model(inp, out)


def element(i):
    image = tf.random.stateless_uniform((32, 32, 3), seed=tf.stack([i, tf.constant(0, tf.int64)])) * 255.0
    return image, i % 3


ds = tf.data.Dataset.range(n).map(element).batch(batch)
start = time.perf_counter()
if mode == "batches":
    total, seen, agree = np.zeros((32, 32)), 0, 0
    for exp in ce.explain_batches(model, ds, "gradcam", target="true", batch_size=batch, progress=False):
        total += exp.maps.sum(axis=0)
        seen += len(exp)
        agree += int((exp.predictions == exp.labels).sum())
else:
    exp = ce.explain(model, ds, "gradcam", target="true", batch_size=batch, progress=False)
    seen = len(exp)
seconds = time.perf_counter() - start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"mode": mode, "images": seen, "seconds": seconds, "peak_mb": peak_mb}))
"""


def run(mode: str, n: int, batch: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(n), str(batch)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--modes", nargs="+", default=["batches", "joined"], choices=["batches", "joined"])
    args = parser.parse_args()
    print(f"{'mode':8} {'images':>7} {'seconds':>8} {'peak RSS MB':>12}")
    for mode in args.modes:
        for n in args.sizes:
            r = run(mode, n, args.batch_size)
            print(f"{mode:8} {r['images']:7d} {r['seconds']:8.1f} {r['peak_mb']:12.0f}", flush=True)


if __name__ == "__main__":
    main()
