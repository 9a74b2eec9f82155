"""What holds the images: arrays, ``tf.data`` datasets, Keras ``PyDataset``\\ s, iterables of batches, and
image files, all read the same way, a batch at a time.

Every function of the package that takes images takes any of these:

* a NumPy array ``(N, H, W, C)`` (or one image ``(H, W, C)``), an array-like (a memory map, a ``tf.Tensor``), a
  list of equally sized images, or a dict of arrays keyed by model input name: used as they are;
* a ``tf.data.Dataset``, batched or not, whose elements are ``images``, ``(images, labels)``,
  ``(images, labels, sample_weights)`` or dicts keyed by input name (what
  ``keras.utils.image_dataset_from_directory`` and ``model.fit`` use); unbatched datasets are batched here;
* a ``keras.utils.PyDataset`` (its batches, in order);
* any other iterable of such batches (a generator is consumed exactly once);
* image files: a path, a list of paths, or a folder (a folder of class sub-folders gives every image its true
  label, sub-folders in sorted order as ``image_dataset_from_directory`` numbers them). Files are read and
  resized to the model's input size as the command line does; unreadable ones are reported (a warning, and
  ``skipped`` lists) and left out.

Labels that come with the data are normalised to one class index per image: sparse integer labels are kept,
one-hot or categorical vectors become their argmax, a binary ``(N, 1)`` label its value.

:func:`iter_batches` yields :class:`Batch` objects lazily, so memory is bounded by a batch, not by the data.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ImageReadError, InputError, TargetError
from .images import collect_images, no_images_message, read_image, resize_image
from .remote import as_path, is_uri

NO_LABELS = (
    "target='true' explains each image's true class, but these images come without labels. Give a tf.data.Dataset "
    "or iterable of (images, labels) batches, a folder of class sub-folders, or the classes themselves: "
    "target=labels."
)
LABEL_KEYS = ("label", "labels")  # keys of a dataset's dict elements read as labels when no input has the name


@dataclass
class Batch:
    """One batch of images from a source.

    Attributes
    ----------
    images : (n, H, W, C) array, or a dict of arrays keyed by model input name (a multi-input model)
    labels : (n,) int64 or None
        The true classes that came with the data (None when it has none).
    index : (n,) int64
        Each image's position in the source (counted over all its images; for files, the position in the list,
        so skipped files leave gaps).
    files : list of Path or None
        Each image's file, when the source is files.
    skipped : list of (file, reason)
        Files of this batch (or of earlier batches no image was left of) that could not be read.
    """

    images: Any
    labels: np.ndarray | None
    index: np.ndarray
    files: list | None = None
    skipped: list = field(default_factory=list)
    label_problem: str | None = None  # why labels that came with the images could not be read as classes

    def __len__(self) -> int:
        return len(self.index)


def _dataset_type():
    tf = sys.modules.get("tensorflow")  # a tf.data.Dataset exists only if TensorFlow was imported
    return getattr(getattr(tf, "data", None), "Dataset", None)


def kind(images) -> str:
    """How ``images`` are held: ``"array"``, ``"files"``, ``"dataset"``, ``"pydataset"`` or ``"batches"``."""
    if isinstance(images, (np.ndarray, dict)):
        return "array"
    if isinstance(images, (str, os.PathLike)):
        return "files"
    dataset = _dataset_type()
    if dataset is not None and isinstance(images, dataset):
        return "dataset"
    import keras

    if isinstance(images, keras.utils.PyDataset):
        return "pydataset"
    if isinstance(images, (list, tuple)):
        if images and isinstance(images[0], (str, os.PathLike)):
            return "files"
        if images and isinstance(images[0], (tuple, dict)):
            return "batches"
        return "array"  # a list of images: stacked, as always
    if hasattr(images, "__array__") or (hasattr(images, "ndim") and hasattr(images, "__getitem__")):
        return "array"
    return "batches" if hasattr(images, "__iter__") else "array"


def is_array(images) -> bool:
    """True for what is used as it is (arrays, array-likes, lists of images, dicts of arrays)."""
    return kind(images) == "array"


def reiterable(images) -> bool:
    """Whether ``images`` can be read more than once (everything but iterators such as generators)."""
    return kind(images) != "batches" or iter(images) is not images


def as_labels(labels, n: int) -> np.ndarray:
    """One class index per image from sparse, one-hot / categorical or binary ``(n, 1)`` labels."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)  # one-hot or categorical (soft labels: the most likely class)
    elif y.ndim == 2 and y.shape[1] == 1 or y.ndim == 0:
        y = y.reshape(-1)
    if y.ndim != 1 or len(y) != n:
        raise InputError(
            f"The labels have shape {np.shape(labels)} for {n} images; give one class index per image, or one "
            "one-hot row per image."
        )
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.number) or not np.array_equal(y, np.round(y)):
            raise InputError(f"The labels must be class indices or one-hot rows; got {y.dtype} values {y[:5]}.")
    return y.astype(np.int64)


def split_element(element, names: list) -> tuple[Any, np.ndarray | None]:
    """(images, labels or None) of one element of a dataset or iterable, as numpy."""
    labels = None
    if isinstance(element, (tuple, list)) and 1 <= len(element) <= 3:
        if len(element) == 1 or np.ndim(element[1]) <= 2:  # (x,), (x, y) or (x, y, weights): labels are <= 2-D
            x = element[0]
            labels = element[1] if len(element) > 1 else None
        else:  # a list of images
            x = element
    else:
        x = element
    if isinstance(x, dict):
        x = dict(x)
        for key in LABEL_KEYS:
            if key in x and key not in names and labels is None:
                labels = x.pop(key)
        keys = list(x)
        if len(keys) == 1 and (len(names) <= 1 or keys[0] in names):
            x = x[keys[0]]  # a single-input model: its input, by its name (or the only one)
        else:
            x = {k: np.asarray(v) for k, v in x.items()}
    if not isinstance(x, dict):
        x = np.asarray(x)
        if x.ndim == 3:  # one image, e.g. from a generator of single images
            x = x[None]
            labels = None if labels is None else np.asarray(labels).reshape(1, -1)
    return x, labels


def _count(x) -> int:
    if isinstance(x, dict):
        return max(len(v) for v in x.values())
    return len(x)


def _batched(dataset, batch_size: int):
    """``dataset`` batched, unless its elements already are batches (images of rank 4)."""
    import tensorflow as tf

    spec = dataset.element_spec
    head = spec[0] if isinstance(spec, tuple) else spec
    ranks = [s.shape.rank for s in tf.nest.flatten(head) if hasattr(s, "shape")]
    rank = max((r for r in ranks if r is not None), default=4)
    return dataset if rank >= 4 else dataset.batch(batch_size)


def _elements(images, what: str, batch_size: int) -> Iterator:
    if what == "dataset":
        yield from _batched(images, batch_size).as_numpy_iterator()
    elif what == "pydataset":
        count = images.num_batches
        if count is None:
            raise InputError("This PyDataset is infinite (num_batches is None); give one with a length.")
        for i in range(count):
            yield images[i]
    else:
        yield from images


def file_list(images) -> tuple[list, np.ndarray | None]:
    """The files of a file source (a path, a folder, a list of paths; URIs as :class:`~cnn_exposed.remote.RemotePath`)
    and their labels (a folder of class sub-folders), without reading them."""
    if isinstance(images, (str, os.PathLike)):
        found, _ = collect_images([images])
        if not found:
            raise InputError(no_images_message([images]))
        known: np.ndarray | None = None
        if all(f.label is not None for f in found):
            known = np.asarray([f.label for f in found], np.int64)
        return [f.path for f in found], known
    return [as_path(p) for p in images], None


def first_size(paths: list) -> tuple[int, int] | None:
    """The size of the first readable file (what a model of any input size takes all of them at), or None."""
    for path in paths:
        try:
            return read_image(path).shape[:2]
        except ImageReadError:
            continue
    return None


def read_files(paths: list, positions: np.ndarray, size, labels: np.ndarray | None = None) -> tuple[Batch | None, list]:
    """One batch of files read and resized to ``size`` (None: the first image's), as a :class:`Batch` whose
    ``index`` is ``positions`` of the files read (None when none could be), and the (file, reason) of the
    others. ``labels``: one per file, or None."""
    read, ok, errors = [], [], []
    for k, path in enumerate(paths):
        try:
            image = read_image(path)
        except ImageReadError as err:
            errors.append((str(path), str(err)))
            continue
        size = image.shape[:2] if size is None else size
        read.append(resize_image(image, tuple(size)))
        ok.append(k)
    if not ok:
        return None, errors
    kept = np.asarray(ok, np.int64)
    index = np.asarray(positions, np.int64)[kept]
    return Batch(np.stack(read), None if labels is None else labels[kept], index, [paths[k] for k in ok]), errors


def warn_unreadable(errors: list, stacklevel: int = 3) -> None:
    """The warning that files were skipped (the first ten named)."""
    if errors:
        text = "; ".join(f"{f}: {r}" for f, r in errors[:10]) + (" ..." if len(errors) > 10 else "")
        warnings.warn("Skipped unreadable file(s): " + text, UserWarning, stacklevel=stacklevel + 1)


def _file_batches(images, batch_size: int, size) -> Iterator[Batch]:
    """Files read a batch at a time, resized to ``size`` (None: the first image's size). Each batch is yielded once
    the next one with a readable image has been read (or the files have ended), so that the files skipped after it
    are listed in its ``skipped``: no unreadable file goes unlisted."""
    paths, known = file_list(images)
    pending: list = []
    held: Batch | None = None
    for start in range(0, len(paths), batch_size):
        positions = np.arange(start, min(start + batch_size, len(paths)))
        labels = known[positions] if known is not None else None
        batch, errors = read_files(paths[start : positions[-1] + 1], positions, size, labels)
        warn_unreadable(errors, stacklevel=4)
        pending += errors
        if batch is None:
            continue
        size = batch.images.shape[1:3]
        if held is not None:
            yield held
        held, batch.skipped, pending = batch, pending, []
    if held is None:
        raise InputError(f"None of the {len(paths)} files could be read ({pending[0][0]}: {pending[0][1]}).")
    held.skipped += pending
    yield held


def iter_batches(
    images, *, batch_size: int, size: tuple | None = None, names: list | None = None, whole_arrays: bool = False
) -> Iterator[Batch]:
    """The images of any source a batch at a time (see the module notes), lazily.

    Parameters
    ----------
    batch_size : int
        Images per batch for sources that are not batched already (arrays, files, unbatched datasets);
        batched datasets, PyDatasets and iterables keep their own batches.
    size : (height, width) or None
        What files are resized to (None: the first file's size).
    names : list of str
        The model's input names, to read dict elements by.
    whole_arrays : bool
        Yield an array source as one batch (the callers that batch internally), rather than slices.
    """
    what, names = kind(images), names or []
    if what == "files":
        yield from _file_batches(images, batch_size, size)
        return
    if what == "array":
        x = images if isinstance(images, dict) else np.asarray(images)
        if not isinstance(x, dict) and x.ndim == 3:
            x = x[None]
        n = _count(x)
        step = n if whole_arrays else batch_size
        for start in range(0, max(n, 1), max(step, 1)):
            part = slice(start, min(start + step, n))
            chunk = {k: v[part] for k, v in x.items()} if isinstance(x, dict) else x[part]
            yield Batch(chunk, None, np.arange(part.start, part.stop))
        return
    start, seen = 0, False
    for element in _elements(images, what, batch_size):
        x, labels = split_element(element, names)
        n = _count(x)
        if n == 0:
            continue
        seen = True
        batch = Batch(x, None, np.arange(start, start + n))
        try:  # labels that are not classes (e.g. a multi-output model's dict) only matter for target="true"
            batch.labels = None if labels is None else as_labels(labels, n)
        except (InputError, TypeError, ValueError) as err:
            batch.label_problem = str(err)
        yield batch
        start += n
    if not seen:
        raise InputError(f"The {what} yielded no images.")


def batch_target(target, batch: Batch, positions: np.ndarray | None = None):
    """The ``target=`` of one batch: ``"true"`` -> its labels; one class per image -> the batch's share
    (indexed by ``positions``, default the batch's source positions); anything else unchanged."""
    if isinstance(target, str):
        if target != "true":
            return target
        if batch.labels is None:
            raise TargetError(NO_LABELS if batch.label_problem is None else batch.label_problem)
        return batch.labels
    if isinstance(target, (int, np.integer)) or np.ndim(target) == 0:
        return target
    where = batch.index if positions is None else positions
    arr = np.asarray(target)
    if arr.ndim != 1 or (len(where) and where.max() >= len(arr)):
        raise TargetError(f"target has shape {arr.shape}; give one class index per image, or a single index.")
    return arr[where]


def collect(images, *, batch_size: int = 64, size: tuple | None = None, names: list | None = None):
    """(images, labels or None) of any source, all in memory: for the work that needs every image at once
    (TCAV's sets, the randomisation check). Arrays are returned as they are."""
    if is_array(images):
        return images, None
    parts: list = []
    labels: list = []
    for batch in iter_batches(images, batch_size=batch_size, size=size, names=names):
        parts.append(batch.images)
        labels.append(batch.labels)
    if isinstance(parts[0], dict):
        stacked: Any = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    else:
        stacked = np.concatenate(parts)
    known: np.ndarray | None = None
    if not any(y is None for y in labels):
        known = np.concatenate(labels)
    return stacked, known


class Spooled:
    """A source's images written to a temporary file as they are read, then read back by index like an
    array (a memory map): what the audit re-reads candidates' images from when the source can only be read
    once, or only in order. Memory holds a batch; the disk holds the images in their own dtype (integer-valued
    float pixels, as ``image_dataset_from_directory`` gives, are stored as uint8 and read back as floats)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / "images.raw"
        self.labels: list = []
        self.count = 0
        self.shape: tuple | None = None
        self.dtype: Any = None
        self.stored: Any = None
        self._memmap: Any = None

    def _compact(self, x: np.ndarray) -> bool:
        return bool(np.issubdtype(x.dtype, np.floating) and x.min() >= 0 and x.max() <= 255) and np.array_equal(
            x, np.round(x)
        )

    def add(self, x: np.ndarray, labels) -> None:
        if self.shape is None:
            self.shape, self.dtype = x.shape[1:], x.dtype
            self.stored = np.dtype(np.uint8) if self._compact(x) else x.dtype
        elif x.shape[1:] != self.shape:
            raise InputError(f"The images change shape from {self.shape} to {x.shape[1:]}; give them one size.")
        if self.stored == np.uint8 and self.dtype != np.uint8 and not self._compact(x):
            self._widen()
        with open(self.path, "ab") as f:
            f.write(np.ascontiguousarray(x, dtype=self.stored).tobytes())
        self.count += len(x)
        self.labels.append(labels)

    def _widen(self) -> None:
        """The stored uint8 pixels rewritten in the images' own dtype (a later batch was not integral)."""
        old = np.fromfile(self.path, dtype=np.uint8).astype(self.dtype)
        old.tofile(self.path)
        self.stored = self.dtype

    @property
    def ndim(self) -> int:
        return 1 + len(self.shape or ())

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index) -> np.ndarray:
        if self._memmap is None:
            shape = (self.count, *(self.shape or ()))
            self._memmap = np.memmap(self.path, dtype=self.stored, mode="r", shape=shape)
        return np.asarray(self._memmap[index], dtype=self.dtype)

    def close(self) -> None:
        self._memmap = None


def spool(images, folder, *, batch_size: int, names: list | None = None) -> tuple[Spooled, np.ndarray | None]:
    """Read a dataset, PyDataset or iterable once into a :class:`Spooled` store in ``folder``; returns it and
    the labels that came with the images (None when there were none)."""
    store = Spooled(folder)
    for batch in iter_batches(images, batch_size=batch_size, names=names):
        if isinstance(batch.images, dict):
            raise InputError("The audit explains single-input models; the images are a dict of several inputs.")
        store.add(np.asarray(batch.images), batch.labels)
    known: np.ndarray | None = None
    if not any(y is None for y in store.labels):
        known = np.concatenate(store.labels)
    return store, known


def image_rng(seed: int, identity) -> np.random.Generator:
    """The random numbers of one image, seeded by ``seed`` and the image's identity: its position in the source
    (an int) or a name (a str, such as a file's path relative to the folder: see :func:`file_identities`), so
    they depend neither on how the images are batched nor on the order they are read in."""
    if isinstance(identity, str):
        identity = int.from_bytes(hashlib.blake2b(identity.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([int(seed), int(identity)])


def file_identities(files) -> list[str]:
    """Each file's identity: its path relative to the folder all of them share (``bathroom/0001.jpg``), in POSIX
    form, so that it does not change with the working directory, the order of the list or the machine."""
    paths = [str(f) if is_uri(f) else os.path.abspath(os.fspath(f)) for f in files]  # a URI is absolute
    if not paths:
        return []
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    return [Path(os.path.relpath(p, root)).as_posix() for p in paths]


def temporary_folder() -> tempfile.TemporaryDirectory:
    """Where :func:`spool` writes (deleted when the context exits)."""
    return tempfile.TemporaryDirectory(prefix="cnn-exposed-")
