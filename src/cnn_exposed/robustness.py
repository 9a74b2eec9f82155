"""Robustness: does an explanation stay put when the image barely changes?

:func:`max_sensitivity` and :func:`average_sensitivity` (Yeh et al. 2019, NeurIPS, "On the (in)fidelity and
sensitivity of explanations"; Quantus' ``MaxSensitivity`` / ``AvgSensitivity``): add uniform noise to the image,
explain it again for the same class, and measure how far the attribution moved relative to its size,
``‖a − a′‖_F / ‖a‖_F``; the largest or the mean over ``samples`` draws. Lower is more robust.
"""

from __future__ import annotations

import numpy as np

from . import sources
from .faithfulness import as_attributions, image_rng, metric_batches
from .model_io import input_names, split_inputs


def _with_explained(model, index: int, sides, images):
    """What :func:`~cnn_exposed.explain` takes: ``images`` alone, or with the side inputs, keyed by input name."""
    if sides is None:
        return images
    names = input_names(model)
    others = iter(sides)
    return {name: images if i == index else next(others) for i, name in enumerate(names)}


def _sensitivity(model, images, method: str, aggregate, *, samples: int, radius: float, seed: int, preprocess,
                 target, **method_options) -> np.ndarray:  # fmt: skip
    from .attribution import make_method

    explainer = make_method(model, method, preprocess=preprocess, progress=False, **method_options)
    out = []
    for batch in metric_batches(images, explainer.engine, explainer.batch_size):
        index = explainer.engine.input_index
        x, sides = split_inputs(explainer.model, batch.images, index)
        x = np.asarray(x, np.float32)
        exp = explainer.explain(batch.images, target=sources.batch_target(target, batch))
        a = as_attributions(exp).reshape(len(exp), -1).astype(np.float64)
        norm = np.sqrt((a * a).sum(1))
        flat = np.asarray(x, np.float32).reshape(len(x), -1)
        span = (flat.max(1) - flat.min(1)).reshape((-1,) + (1,) * (x.ndim - 1))
        rngs = [image_rng(seed, p) for p in batch.index]
        moved = np.zeros((samples, len(exp)))
        for s in range(samples):
            noise = np.stack([rng.uniform(-radius, radius, x.shape[1:]) for rng in rngs]) * span
            noisy = _with_explained(explainer.model, index, sides, (x + noise).astype(np.float32))
            again = as_attributions(explainer.explain(noisy, target=exp.targets)).reshape(len(exp), -1)
            moved[s] = np.sqrt(((a - again) ** 2).sum(1)) / np.where(norm > 0, norm, np.nan)
        out.append(aggregate(moved, axis=0))
    return np.concatenate(out)


def max_sensitivity(model, images, method: str, *, samples: int = 200, radius: float = 0.2, seed: int = 0,
                    preprocess=None, target="predicted", **method_options) -> np.ndarray:  # fmt: skip
    """Max-sensitivity (Yeh et al. 2019), ``(N,)``: the largest ``‖a − a′‖_F / ‖a‖_F`` over ``samples`` copies of each
    image with uniform noise in ``±radius`` × the image's value range (max − min) on every value, each explained
    again for the image's explained class. ``a`` is the Explanation's ``attributions`` (the gradient and path
    methods) or its ``raw_maps`` (the CAMs and other map-only methods). Quantus' defaults: 200 samples, radius 0.2
    in the input's own units (the same on [0, 1] images), relative Frobenius norms, the class kept; Yeh et al.
    report the unnormalised norm. NaN for an image with no attribution. ``images``: an array or any source
    :mod:`cnn_exposed.sources` reads (the noise is drawn per image from ``seed`` and its position, so it does not
    depend on batching); ``target``, ``method`` and ``method_options`` as :func:`cnn_exposed.explain` takes them
    (the noisy copies are explained for the class each image was explained for)."""
    return _sensitivity(model, images, method, np.max, samples=samples, radius=radius, seed=seed,
                        preprocess=preprocess, target=target, **method_options)  # fmt: skip


def average_sensitivity(model, images, method: str, *, samples: int = 200, radius: float = 0.2, seed: int = 0,
                        preprocess=None, target="predicted", **method_options) -> np.ndarray:  # fmt: skip
    """Average-sensitivity (Bhatt et al. 2020; Quantus' ``AvgSensitivity``): as :func:`max_sensitivity`, the mean
    over the samples instead of the largest, ``(N,)``."""
    return _sensitivity(model, images, method, np.mean, samples=samples, radius=radius, seed=seed,
                        preprocess=preprocess, target=target, **method_options)  # fmt: skip
