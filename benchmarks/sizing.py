"""How many worker-hours a catalogue costs: seconds per image of each method on one CPU thread, the share of a Ray
CPU worker (``RayEngine(cpus_per_worker=1)`` pins TensorFlow to one intra-op thread), for the demo model and for a
transfer-learned MobileNetV2 at 224 x 224 (random weights: the cost does not depend on them), and the
worker-hours that makes for a million images.

    python benchmarks/sizing.py [--images 8] [--models demo mobilenet_v2] [--methods gradcam ...]

Each (model, method) is measured in its own process, pinned to one thread, on ``--images`` images after a
warm-up batch of the same size (its compilation is paid once per worker, not per image). What is measured: the
seconds per image on this machine's one thread. What is extrapolated: the worker-hours for a million images
(linear in the images; a worker's start, ~10 s, and reading the files are left out). A GPU worker is not measured
here (no GPU on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CHILD = r"""
import json, os, sys, time
os.environ["TF_NUM_INTRAOP_THREADS"] = "1"
os.environ["TF_NUM_INTEROP_THREADS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
import cnn_exposed as ce
from cnn_exposed.attribution import make_method

name, method, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
keras.utils.set_random_seed(0)
if name == "demo":
    loaded = ce.load_model("demo")
    model, preprocess, side = loaded.model, loaded.preprocess, loaded.input_size[0]
else:  # a transfer-learned MobileNetV2 as users build one: the base inside a Sequential, a new head
    base = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, weights=None)
    model = keras.Sequential([keras.Input((224, 224, 3)), base, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, name="head")])
    preprocess, side = keras.applications.mobilenet_v2.preprocess_input, 224
x = np.random.default_rng(0).integers(0, 256, (2 * n, side, side, 3)).astype(np.float32)
explainer = make_method(model, method, preprocess=preprocess, batch_size=n, progress=False)
explainer.explain(x[:n])  # compiled once, as a worker does on its first batch
start = time.perf_counter()
explainer.explain(x[n:])
print(json.dumps({"seconds_per_image": (time.perf_counter() - start) / n}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=["demo", "mobilenet_v2"])
    parser.add_argument("--methods", nargs="+",
                        default=["gradcam", "lrp", "integrated_gradients", "smoothgrad", "occlusion"])  # fmt: skip
    args = parser.parse_args()
    print(f"{'model':<14}{'method':<22}{'s/image, 1 thread':>18}{'worker-hours per 1M':>22}")
    for model in args.models:
        for method in args.methods:
            out = subprocess.run([sys.executable, "-c", CHILD, model, method, str(args.images)], capture_output=True,
                                 text=True, check=True)  # fmt: skip
            seconds = json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_image"]
            print(f"{model:<14}{method:<22}{seconds:>18.4f}{seconds * 1e6 / 3600:>22,.0f}", flush=True)


if __name__ == "__main__":
    main()
