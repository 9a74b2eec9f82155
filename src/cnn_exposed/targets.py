"""Turning the ``target=`` argument into one class index per explained map."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from .errors import TargetError

_TOP_K = re.compile(r"^top-?(\d+)$")


PREDICTED = -1  # a target resolved to the top class inside the explaining pass itself


def resolve_targets(
    target, num_classes: int, n: int, outputs: Callable[[], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Class indices to explain and, for each, the image it belongs to.

    Parameters
    ----------
    target : "predicted", int, sequence of int, or "top-k" (e.g. ``"top3"``)
        ``"predicted"`` explains each image's highest-scoring class; an int explains that class for
        every image; a sequence gives one class per image; ``"top-k"`` explains each image's k best
        classes (k maps per image, best first).
    num_classes : int
        K, the number of classes (2 for a binary sigmoid model).
    n : int
        The number of images.
    outputs : callable
        Returns the model's ``(N, K)`` scores; called only for top-k.

    Returns
    -------
    targets : (M,) int32
        Class indices; :data:`PREDICTED` (-1) for "predicted", resolved by the explaining pass.
    image_index : (M,) int64
        ``M == N`` except for top-k, where ``M == N * k`` ordered image by image.
    """
    k = num_classes
    if isinstance(target, str):
        if target == "predicted":
            return np.full(n, PREDICTED, dtype=np.int32), np.arange(n)
        match = _TOP_K.match(target)
        if not match:
            raise TargetError(
                f"Unknown target {target!r}. Use 'predicted', a class index, one index per image, "
                "or 'top-k' such as 'top3'."
            )
        top = int(match.group(1))
        if not 1 <= top <= k:
            raise TargetError(f"{target!r} asks for {top} classes but the model has {k}.")
        order = np.argsort(-outputs(), axis=1, kind="stable")
        return order[:, :top].reshape(-1).astype(np.int32), np.repeat(np.arange(n), top)
    if isinstance(target, (bool, np.bool_)):
        raise TargetError(f"target must be a class index, not a boolean ({target!r}).")
    arr = np.asarray(target)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TargetError(f"target must hold integer class indices, got {arr.dtype} values {target!r}.")
    if arr.ndim == 0:
        arr = np.full(n, int(arr))
    elif arr.ndim != 1 or len(arr) != n:
        raise TargetError(
            f"target has shape {arr.shape}; give one class index per image ({n} images) or a single index for all."
        )
    bad = (arr < 0) | (arr >= k)
    if bad.any():
        raise TargetError(
            f"Target class {int(arr[bad][0])} is out of range: the model has {k} classes "
            f"(valid indices 0 to {k - 1})" + (", a binary sigmoid model has classes 0 and 1." if k == 2 else ".")
        )
    return arr.astype(np.int32), np.arange(n)


def class_count(units: int) -> int:
    """K, the classes of a model with ``units`` outputs: 2 for one sigmoid unit (class 1's logit is z, class
    0's is -z), else one per unit."""
    return 2 if int(units) == 1 else int(units)


def resolve_predicted(targets: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """``targets`` with each :data:`PREDICTED` replaced by its row's top class in ``outputs`` ``(M, K)``.

    The host-side twin of the resolution the explaining pass does in-graph (:meth:`Engine._select`)."""
    targets = np.asarray(targets)
    return np.where(targets < 0, np.asarray(outputs).argmax(axis=1), targets).astype(np.int32)


def one_per_image(target, outputs: np.ndarray) -> np.ndarray:
    """One class index per image, for callers that have the model's ``(N, K)`` outputs at hand: ``target`` as
    :func:`resolve_targets` takes it (validated the same way), ``"predicted"`` resolved. ``"top-k"`` asks
    for several classes per image and is refused."""
    n, k = outputs.shape
    targets, index = resolve_targets(target, k, n, lambda: outputs)
    if len(index) != n:
        raise TargetError(
            f"target {target!r} gives several classes per image; this takes one: 'predicted', a class index "
            "or one index per image."
        )
    return resolve_predicted(targets, outputs)
