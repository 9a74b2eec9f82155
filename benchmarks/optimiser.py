"""Feature visualisation's optimiser: the fused Adam step (``tf.raw_ops.ResourceApplyAdam``, one pass over the
parameters) against ``keras.optimizers.Adam``, side by side in one run.

    python benchmarks/optimiser.py [--steps 100] [--filters 16] [--size 128] [--repeats 3]

Both render the same MobileNetV2 (random weights) filters with ``visualise_filters``; only the Adam update
differs. Timings are the best of ``--repeats`` interleaved rounds after a warm-up (tracing excluded), and
the ratio is keras.optimizers.Adam / ours. The decision it informs (issue 14): use Keras' Adam if it is within
5 % of the fused step; otherwise keep the fused one, and say why where it is defined.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import importlib  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import cnn_exposed as ce  # noqa: E402
from cnn_exposed.visualisation import optimiser  # noqa: E402

render = importlib.import_module("cnn_exposed.visualisation.render")  # the module (the package exports a function)


class KerasAdamAscent(optimiser.GradientAscent):
    """The same ascent with ``keras.optimizers.Adam`` doing the update (same hyper-parameters)."""

    def __init__(self, init, loss_fn, learning_rate: float = 0.05) -> None:
        super().__init__(init, loss_fn, learning_rate)
        self.params = keras.Variable(np.asarray(init, dtype=np.float32))
        self._adam = keras.optimizers.Adam(learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
        self._adam.build([self.params])

    def reset(self, init) -> None:
        self.params.assign(np.asarray(init, dtype=np.float32))
        for v in self._adam.variables:
            v.assign(tf.zeros_like(v))

    def _step_impl(self, *inputs, **options):
        with tf.GradientTape() as tape:
            loss, values = self._loss_fn(self.params, *inputs, **options)
        grad = tape.gradient(loss, self.params.value)
        self._adam.apply_gradients([(grad, self.params)])
        return values

    def value(self):
        return np.asarray(self.params)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--layer", default="block_6_expand_relu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.filters, args.size, args.repeats = 5, 4, 64, 1

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(args.size, args.size, 3))
    prep = keras.applications.mobilenet_v2.preprocess_input
    twin = keras.models.clone_model(model)  # a model each: each keeps its own compiled program and optimiser
    twin.set_weights(model.get_weights())
    ascents = {"ours (fused Adam)": (optimiser.GradientAscent, model), "keras.optimizers.Adam": (KerasAdamAscent, twin)}

    def run(cls, net):
        render.GradientAscent = cls  # the one name render.py builds its optimiser from (at the first call)
        vis = ce.visualise_filters(
            net, args.layer, args.filters, steps=args.steps, size=args.size, preprocess=prep, progress=False
        )
        return vis.objective

    results = {name: run(*setup) for name, setup in ascents.items()}  # warm-up: traces each once
    times = {name: [] for name in ascents}
    for _ in range(args.repeats):
        for name, setup in ascents.items():
            start = time.perf_counter()
            run(*setup)
            times[name].append(time.perf_counter() - start)
    render.GradientAscent = optimiser.GradientAscent
    used = {type(p._ascent).__name__ for p in render._PROGRAMS.values()}
    assert used == {"GradientAscent", "KerasAdamAscent"}, used  # each program kept the optimiser it was built with
    best = {name: min(t) for name, t in times.items()}
    ours = best["ours (fused Adam)"]
    print(
        f"MobileNetV2 {args.size}px, layer {args.layer}, {args.filters} filters, {args.steps} steps,"
        f" best of {args.repeats}"
    )
    for name, t in best.items():
        print(f"  {name:24s} {t:7.2f} s   {t / ours:5.2f}x ours   final objective mean {results[name].mean():.4g}")
    gap = np.abs(results["keras.optimizers.Adam"] - results["ours (fused Adam)"]).max()
    print(f"  largest difference of the final objectives: {gap:.3g} (the same Adam, to float rounding)")


if __name__ == "__main__":
    main()
