"""Gradient saliency, gradient × input, and SmoothGrad / VarGrad / SquareGrad as a noise wrapper."""

from __future__ import annotations

import numpy as np

from ..backend import stateless_noise
from ..engine import batch_slices
from ..model_io import rows
from .base import GradientMethod, Result, gradient_result


class Saliency(GradientMethod):
    """Vanilla gradient saliency (Simonyan et al. 2013): ``∂score/∂x``.

    ``attributions`` hold the signed gradient; ``maps`` its absolute value's max over colour channels.
    """

    name = "saliency"

    def from_gradients(self, gradients: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Attributions from the input gradients (here: the gradients themselves)."""
        return gradients

    def _pass(self, x, targets):
        """(scores, gradients, resolved targets, probabilities), one compiled call per batch."""
        return self.engine.map_batches(
            self.engine.input_gradients, (x, targets), self.batch_size, self.progress, self.name
        )

    def attribute(self, x, targets):
        return self.from_gradients(self._pass(x, targets)[1], x)

    def compute(self, x, targets, images) -> Result:
        # The prediction is resolved inside the gradient pass: one pass in all.
        scores, grads, targets, probs = self._pass(x, targets)
        return gradient_result(self.from_gradients(grads, x), targets, scores, probs)


class GradientXInput(Saliency):
    """Gradient × input: ``x ⊙ ∂score/∂x`` (equals ε-LRP with ε → 0 on bias-free ReLU networks)."""

    name = "gradient_x_input"
    signed = True

    def from_gradients(self, gradients, x):
        return gradients * x


_REDUCTIONS = {
    "mean": "mean",
    "smoothgrad": "mean",
    "var": "vargrad",
    "vargrad": "vargrad",
    "square": "squaregrad",
    "squaregrad": "squaregrad",
}


def _gradient_methods() -> dict:
    """``name -> class`` of every gradient method (the subclasses of :class:`GradientMethod`, at any depth):
    what SmoothGrad can wrap, found without importing the registry that imports this module."""
    found: dict[str, type] = {}
    todo = list(GradientMethod.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if isinstance(getattr(cls, "name", None), str) and cls.name:
            found.setdefault(cls.name, cls)
    return found


class SmoothGrad(GradientMethod):
    """SmoothGrad (Smilkov et al. 2017) around any gradient method, with VarGrad and SquareGrad.

    The wrapped method runs on ``samples`` noisy copies ``x + N(0, σ²)`` of each image, with ``σ =
    noise × (max(x) − min(x))`` per image, and its attributions are reduced over the copies: their mean
    (SmoothGrad), their variance (VarGrad) or the mean of their squares (SquareGrad, Hooker et al.
    2019). Copies of several images are packed into the same batches.

    The noise of sample ``j`` of image ``i`` is ``tf.random.stateless_normal(image shape, seed=(seed, i *
    samples + j))``: the same whatever the batch size. Wrapping saliency or gradient × input, noise, gradients
    and the sums over copies run in one compiled pass (:meth:`Engine.noisy_moments`), so the noise is never
    made, nor each copy's gradient copied out, in NumPy.

    Parameters
    ----------
    base : str or GradientMethod class
        The wrapped method: ``"saliency"`` (default), ``"gradient_x_input"`` or
        ``"integrated_gradients"``.
    samples : int
        Noisy copies per image (paper: 50).
    noise : float
        σ as a fraction of the image's value range (paper: 0.10–0.20).
    reduction : {"mean", "vargrad", "squaregrad"}
    seed : int
        Seeds the noise; results do not depend on ``batch_size``.
    **base_options
        Passed to the wrapped method (e.g. ``steps`` for integrated gradients).
    """

    name = "smoothgrad"

    def __init__(
        self,
        model,
        *,
        base="saliency",
        samples: int = 50,
        noise: float = 0.15,
        reduction: str = "mean",
        seed: int = 0,
        score=None,
        preprocess=None,
        batch_size=None,
        progress: bool = True,
        input=None,
        output=None,
        **base_options,
    ) -> None:
        ports = dict(input=input, output=output)
        super().__init__(model, score=score, preprocess=preprocess, batch_size=batch_size, progress=progress, **ports)
        wrappable = _gradient_methods()
        base_cls = wrappable.get(base, base) if isinstance(base, str) else base
        if not (isinstance(base_cls, type) and issubclass(base_cls, GradientMethod)):
            valid = sorted(k for k, v in wrappable.items() if v is not SmoothGrad)
            raise ValueError(f"SmoothGrad wraps a gradient method; base={base!r} is not one of {valid}.")
        if base_cls is SmoothGrad:
            raise ValueError("SmoothGrad cannot wrap itself.")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of 'mean', 'vargrad', 'squaregrad'; got {reduction!r}.")
        if int(samples) < 1:
            raise ValueError(f"samples must be at least 1, got {samples}.")
        if not noise >= 0:
            raise ValueError(f"noise must be a non-negative fraction of the input range, got {noise}.")
        self.base = base_cls(
            model,
            score=self.score,
            preprocess=preprocess,
            batch_size=self.batch_size,
            progress=False,
            **ports,
            **base_options,
        )
        self.samples = int(samples)
        self.noise = float(noise)
        self.reduction = _REDUCTIONS[reduction]
        self.seed = seed

    def options(self):
        return {
            "base": self.base.name,
            "samples": self.samples,
            "noise": self.noise,
            "reduction": self.reduction,
            "seed": self.seed,
            **{f"base_{k}": v for k, v in self.base.options().items()},
        }

    def seeds(self, count: int, first: int = 0) -> np.ndarray:
        """The noise seeds of copies ``first .. first + count - 1`` (copy ``i * samples + j`` is sample ``j``
        of image ``i``): ``(seed, copy)`` pairs for :func:`~cnn_exposed.backend.stateless_noise`."""
        copies = np.arange(first, first + count, dtype=np.int64)
        return np.stack([np.full(count, self.seed, np.int64), copies], axis=1).astype(np.int32)

    def attribute(self, x, targets):
        span = x.reshape(len(x), -1)
        sigma = (self.noise * (span.max(axis=1) - span.min(axis=1))).astype(np.float32)
        if type(self.base) in (Saliency, GradientXInput):
            return self._in_graph(x, targets, sigma)
        # Any other wrapped method (integrated gradients): the same noise, drawn here, copies in groups.
        group = max(1, (4 * self.batch_size) // self.samples)
        out = np.empty(x.shape, dtype=np.float32)
        for s in batch_slices(len(x), group, progress=self.progress, desc=self.name):
            n = s.stop - s.start
            eps = np.asarray(stateless_noise(x.shape[1:], self.seeds(n * self.samples, s.start * self.samples)))
            eps = eps.reshape((n, self.samples) + x.shape[1:])
            noisy = x[s, None] + eps * sigma[s, None, None, None, None]
            noisy = noisy.reshape((n * self.samples,) + x.shape[1:])
            with rows(np.repeat(np.arange(s.start, s.stop), self.samples)):  # each copy with its image's side inputs
                a = self.base.attribute(noisy, np.repeat(targets[s], self.samples))
            a = a.reshape((n, self.samples) + x.shape[1:])
            out[s] = self._reduce(a.sum(axis=1, dtype=np.float64), np.square(a).sum(axis=1, dtype=np.float64))
        return out

    def _in_graph(self, x, targets, sigma):
        """Saliency and gradient x input: noise, gradients and the sums over copies in one compiled pass
        (:meth:`Engine.noisy_moments`), so only one sum per image and batch leaves it."""
        times_input = type(self.base) is GradientXInput
        engine = self.base.engine
        sums = np.zeros(x.shape, np.float64)
        squares = np.zeros(x.shape, np.float64)
        total = len(x) * self.samples
        for s in batch_slices(total, self.batch_size, progress=self.progress, desc=self.name):
            copy = np.arange(s.start, s.stop)
            image = copy // self.samples
            first, last = int(image[0]), int(image[-1]) + 1
            with rows(slice(first, last)):  # side inputs of images first..last; copies gathered in the graph
                a, a2 = engine.noisy_moments(
                    x[first:last], targets[image], sigma[first:last], self.seeds(len(copy), s.start), image - first,
                    times_input,
                )  # fmt: skip
            sums[first:last] += a
            squares[first:last] += a2
        return self._reduce(sums, squares)

    def _reduce(self, sums: np.ndarray, squares: np.ndarray) -> np.ndarray:
        """Mean, variance (VarGrad) or mean square (SquareGrad) over the copies, from their sums."""
        mean = sums / self.samples
        if self.reduction == "mean":
            return mean.astype(np.float32)
        if self.reduction == "vargrad":
            return np.maximum(squares / self.samples - mean * mean, 0.0).astype(np.float32)
        return (squares / self.samples).astype(np.float32)
