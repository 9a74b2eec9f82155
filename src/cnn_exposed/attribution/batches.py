"""A source of images explained batch by batch with one or several methods, on this machine or on a Ray cluster.

:func:`explain_many` is what :func:`cnn_exposed.explain` and :func:`cnn_exposed.explain_batches` (with
``engine=``) and the command line's ``explain`` use. On Ray (:class:`cnn_exposed.RayEngine`) the batches are the
ones this machine would make, in the same order, explained by workers that each rebuild the model and the methods
once: image files are read by the workers (only their paths travel, so the workers must reach them; a model of any
input size takes every file at the first readable file's size, read here, so that no worker picks its own), other
sources are read here and their batches sent. The results come back in order, and equal this machine's map for
map: every method's random draws depend on the image's position in its batch and on the method's seed, never on
which worker ran it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .. import sources
from ..distributed import RayEngine, as_engine, model_from_bytes, model_to_bytes, padded
from ..errors import InputError
from .registry import make_method


def explain_many(model, recipes: dict, images, target="predicted", engine=None) -> Iterator[dict]:
    """``{label: Explanation}`` for every batch of ``images``, in order.

    Parameters
    ----------
    recipes : dict
        ``{label: (method, options)}``: each method by name with the options :func:`cnn_exposed.make_method`
        takes (``layer``, ``preprocess``, ``batch_size``, the method's own). The first method's ``batch_size``
        cuts the batches.
    engine : None, "ray" or RayEngine
        Where the batches are explained.
    """
    explainers = {label: make_method(model, method, **options) for label, (method, options) in recipes.items()}
    first = next(iter(explainers.values()))
    engine = as_engine(engine)
    if engine is None:
        for batch in first.batches(images):
            yield {label: e.explain_batch(batch, target) for label, e in explainers.items()}
        return
    yield from _on_ray(engine, recipes, explainers, images, target)


def _on_ray(engine: RayEngine, recipes: dict, explainers: dict, images, target) -> Iterator[dict]:
    first = next(iter(explainers.values()))
    shipped = {}
    for label, (method, options) in recipes.items():
        built = explainers[label]  # what it resolved travels: the layer as its path, the loaded model's preprocessing
        layer = {"layer": built.layer_ref.path} if built.layer_ref is not None else {}
        shipped[label] = (method, {**options, "progress": False, "preprocess": built.preprocess, **layer})
    what = sources.kind(images)
    size = first.image_size
    paths: list = []  # the files, when files are the source
    if what == "files":
        paths, known = sources.file_list(images)
        size = size or sources.first_size(paths)
        items: Iterator = _file_items(paths, known, first.batch_size, target)
    else:
        items = (("batch", b, b.index, None, _share(target, b.index)) for b in first.batches(images))
    job = _ExplainJob(model_to_bytes(first.model), shipped, size, first.batch_size)
    pending: list = []
    held: dict | None = None  # yielded once the next readable batch is in, as the files' own reading does
    for errors, result in engine.map(job, items, ordered=True):
        sources.warn_unreadable(errors)
        pending += errors
        if result is None:
            continue
        if held is not None:
            yield held
        for exp in result.values():
            exp.skipped = list(pending)
        held, pending = result, []
    if held is None:  # (a source of arrays or batches that yields none says so as it is read)
        raise InputError(f"None of the {len(paths)} files could be read ({pending[0][0]}: {pending[0][1]}).")
    for exp in held.values():
        exp.skipped += pending
    yield held


def _share(target, positions: np.ndarray):
    """What a worker needs of ``target`` for the images at ``positions``: a class or a rule as it is, one
    class per image as those images' classes."""
    if isinstance(target, str):  # ("true": the labels the worker reads with the images)
        return target
    return sources.batch_target(target, sources.Batch(None, None, positions))


def _file_items(paths: list, known, batch_size: int, target) -> Iterator[tuple]:
    for start in range(0, len(paths), batch_size):
        positions = np.arange(start, min(start + batch_size, len(paths)))
        labels = None if known is None else known[positions]
        yield "files", paths[start : positions[-1] + 1], positions, labels, _share(target, positions)


class _ExplainJob:
    """The work of a Ray worker (:class:`~cnn_exposed.RayEngine`): the model (as ``.keras`` bytes) and the methods
    rebuilt once, then batches explained. A short batch is padded to the full one (its last image repeated, the
    extra maps dropped), so that every batch has the shape the worker's passes were compiled for."""

    def __init__(self, model_bytes: bytes, recipes: dict, size, batch_size: int):
        self.model_bytes, self.recipes, self.size, self.batch_size = model_bytes, recipes, size, batch_size

    def setup(self) -> None:
        model = model_from_bytes(self.model_bytes)
        self.explainers = {label: make_method(model, m, **options) for label, (m, options) in self.recipes.items()}

    def __call__(self, item) -> tuple[list, dict | None]:
        kind, payload, positions, labels, target = item
        if kind == "files":
            batch, errors = sources.read_files(payload, positions, self.size, labels)
        else:
            batch, errors = payload, []
        if batch is None:
            return errors, None
        per_row = sources.batch_target(target, batch, np.searchsorted(positions, batch.index))
        full = _padded_batch(batch, self.batch_size)
        if full is not batch and not isinstance(per_row, str) and np.ndim(per_row) == 1:
            per_row = padded(np.asarray(per_row), self.batch_size)
        results = {}
        for label, explainer in self.explainers.items():
            exp = explainer.explain_batch(full, target, per_row)
            results[label] = exp if full is batch else _cut(exp, batch)
        return errors, results


def _padded_batch(batch: sources.Batch, rows: int) -> sources.Batch:
    """``batch`` padded to ``rows`` images at made-up positions after its own (only a plain array of images; a
    dict of inputs is left as it is)."""
    if isinstance(batch.images, dict) or len(batch) >= rows:
        return batch
    made_up = batch.index[-1] + np.arange(1, rows - len(batch) + 1)
    labels = None if batch.labels is None else padded(batch.labels, rows)
    return sources.Batch(padded(np.asarray(batch.images), rows), labels, np.concatenate([batch.index, made_up]))


def _cut(exp, batch: sources.Batch):
    """The explanation of a padded batch cut back to the maps of ``batch``'s own images, with its files."""
    cut = exp.take(np.nonzero(np.isin(exp.image_index, batch.index))[0])
    if batch.files is not None:
        cut.files = [batch.files[i] for i in np.searchsorted(batch.index, cut.image_index)]
    return cut
