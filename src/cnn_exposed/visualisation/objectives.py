"""What to maximise: objectives over a batch of images that add, subtract and scale.

An objective maps the recorded layer outputs (and the model's logits) of a batch to one value per image.
Indices may differ per image, so that one batch renders many filters at once: ``channel("conv", [0, 1,
2])`` asks image 0 for filter 0, image 1 for filter 1, and so on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from keras import ops

from ..errors import CnnExposedError


class Objective:
    """A per-image objective ``(B,)``.

    Parameters
    ----------
    fn : callable
        ``fn(acts, logits) -> (B,)`` where ``acts[spec]`` is the output of the layer named ``spec``.
    layers : tuple
        The layer specs (names, paths or layer objects) whose outputs ``fn`` reads.
    uses_logits : bool
        Whether ``fn`` reads the model's pre-softmax scores.
    description : str
    key : hashable or None
        Identifies what the objective computes, so that a compiled optimisation step can be reused by a
        later call with an equal objective. The built-in objectives and their combinations set it; by
        default it is the function itself.
    """

    def __init__(
        self, fn: Callable, layers: tuple = (), uses_logits: bool = False, description: str = "", key=None
    ) -> None:
        self.fn = fn
        self.layers = tuple(layers)
        self.uses_logits = uses_logits
        self.description = description
        self.key = key if key is not None else ("fn", fn)
        self.channel_index: np.ndarray | int | None = None  # set by channel(): which filter, per image
        self.class_index: np.ndarray | int | None = None  # set by class_logit(): which class, per image

    def __call__(self, acts: dict, logits):
        return self.fn(acts, logits)

    def _combine(self, other, op, symbol: str) -> Objective:
        if isinstance(other, Objective):
            return Objective(
                lambda a, z: op(self(a, z), other(a, z)),
                self.layers + tuple(x for x in other.layers if x not in self.layers),
                self.uses_logits or other.uses_logits,
                f"({self.description} {symbol} {other.description})",
                (symbol, self.key, other.key),
            )
        value = float(other)
        return Objective(
            lambda a, z: op(self(a, z), value),
            self.layers,
            self.uses_logits,
            f"({self.description} {symbol} {value})",
            (symbol, self.key, value),
        )

    def __add__(self, other):
        return self._combine(other, lambda a, b: a + b, "+")

    __radd__ = __add__

    def __sub__(self, other):
        return self._combine(other, lambda a, b: a - b, "-")

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        if isinstance(other, Objective):
            raise TypeError("Objectives scale by numbers; multiply an objective by a float.")
        return self._combine(other, lambda a, b: a * b, "*")

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self * (1.0 / float(other))

    def __neg__(self):
        return self * -1.0

    def __repr__(self) -> str:
        return f"Objective({self.description})"


def _per_image(index, name: str) -> np.ndarray | int:
    if np.isscalar(index):
        return int(index)  # type: ignore[arg-type]  # a scalar index
    arr = np.asarray(index, dtype=np.int64)
    if arr.ndim != 1:
        raise CnnExposedError(f"{name} must be an int or one int per image, got shape {arr.shape}.")
    return arr


def _gather_last(values, index, batch: int):
    """``values[i, index_i]`` for ``values`` of shape ``(B, C)``."""
    if isinstance(index, int):
        return values[:, index]
    idx = ops.convert_to_tensor(np.asarray(index, dtype="int32")[:batch].reshape(-1, 1))
    return ops.take_along_axis(values, idx, axis=1)[:, 0]


def channel(layer, index: int | Sequence[int]) -> Objective:
    """Mean activation of channel ``index`` (per image: ``index[i]``) over all positions of ``layer``."""
    idx = _per_image(index, "channel index")

    def fn(acts, _):
        a = acts[layer]
        pooled = ops.mean(a, axis=tuple(range(1, len(a.shape) - 1))) if len(a.shape) > 2 else a
        return _gather_last(pooled, idx, a.shape[0])

    obj = Objective(fn, (layer,), description=f"channel {_name(layer)}:{index}", key=("channel", layer, _key(idx)))
    obj.channel_index = idx
    return obj


def neuron(layer, index: int | Sequence[int], position: tuple[int, int] | None = None) -> Objective:
    """Activation of channel ``index`` at one spatial ``position`` (default: the centre) of ``layer``."""
    idx = _per_image(index, "channel index")

    def fn(acts, _):
        a = acts[layer]
        if len(a.shape) != 4:
            raise CnnExposedError(f"neuron() needs a spatial (N, H, W, C) layer; {_name(layer)} has {a.shape}.")
        y, x = position if position is not None else (a.shape[1] // 2, a.shape[2] // 2)
        return _gather_last(a[:, y, x, :], idx, a.shape[0])

    obj = Objective(
        fn,
        (layer,),
        description=f"neuron {_name(layer)}:{index}@{position or 'centre'}",
        key=("neuron", layer, _key(idx), None if position is None else tuple(position)),
    )
    obj.channel_index = idx
    return obj


def class_logit(index: int | Sequence[int]) -> Objective:
    """The pre-softmax (or pre-sigmoid) score of class ``index`` (per image: ``index[i]``).

    A one-unit sigmoid model has two classes, as everywhere in cnn-exposed: class 1's logit is the unit's
    ``z`` and class 0's is ``-z``. A K-unit sigmoid (multi-label) model has K classes, each its unit's logit.
    """
    idx = _per_image(index, "class index")

    def two_class(z):
        return ops.concatenate([-z, z], axis=-1) if z.shape[-1] == 1 else z

    obj = Objective(
        lambda _, z: _gather_last(two_class(z), idx, z.shape[0]),
        (),
        uses_logits=True,
        description=f"class logit {index}",
        key=("class", _key(idx)),
    )
    obj.class_index = idx
    return obj


def layer_objective(layer) -> Objective:
    """DeepDream: the mean of the squared activations of the whole ``layer``."""

    def fn(acts, _):
        a = acts[layer]
        return ops.mean(ops.square(a), axis=tuple(range(1, len(a.shape))))

    return Objective(fn, (layer,), description=f"layer {_name(layer)}", key=("layer", layer))


def diversity(layer, weight: float = 1.0) -> Objective:
    """Minus the mean cosine similarity of each image's Gram matrix to the others' (Olah et al. 2017).

    Added to another objective, it pushes the images of a batch apart.
    """

    def fn(acts, _):
        a = acts[layer]
        b = a.shape[0]
        flat = ops.reshape(a, (b, -1, a.shape[-1]))
        gram = ops.einsum("bpi,bpj->bij", flat, flat)
        gram = ops.reshape(gram, (b, -1))
        gram = gram / (ops.norm(gram, axis=1, keepdims=True) + 1e-8)
        sim = ops.matmul(gram, ops.transpose(gram))
        off_diag = ops.sum(sim, axis=1) - ops.diagonal(sim)
        return -weight * off_diag / max(b - 1, 1)

    return Objective(fn, (layer,), description=f"diversity {_name(layer)} x{weight}", key=("diversity", layer, weight))


def _key(index) -> int | tuple:
    return index if isinstance(index, int) else tuple(int(i) for i in index)


def _name(layer) -> str:
    return layer if isinstance(layer, str) else getattr(layer, "name", str(layer))
