"""Resume an interrupted run: per-image records kept on disk as they are made.

A long pass over a catalogue (the audit's explaining pass) writes what it keeps of each batch of images to a
folder, one file per batch, written whole or not at all (to a temporary name, then renamed). Run again with the
same folder, it reads those records and does only the images that are missing; the images' random draws are
seeded by their identities (:func:`cnn_exposed.sources.image_rng`), so the final result equals an uninterrupted
run's. The folder's ``manifest.json`` says what run the records belong to (the model's weights, the method, the
seed, the images); a folder holding another run's records is refused, never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import InputError

MANIFEST = "manifest.json"


def model_fingerprint(model) -> str:
    """A short digest of the model's architecture name and every weight's value: another model, or the same one
    trained further, gives another."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(str(getattr(model, "name", "")).encode())
    for w in model.weights:
        value = np.ascontiguousarray(w.numpy() if hasattr(w, "numpy") else np.asarray(w))
        digest.update(f"{w.path if hasattr(w, 'path') else w.name}{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def identities_digest(identities) -> str:
    """A short digest of the images' identities, in order."""
    digest = hashlib.blake2b(digest_size=12)
    for name in identities:
        digest.update(f"{name}\n".encode())
    return digest.hexdigest()


class Checkpoint:
    """Records of one run kept in ``folder``: :meth:`load` what an earlier attempt finished, :meth:`save` each new
    batch, :meth:`clear` once the run is complete. ``manifest``: what identifies the run (JSON-serialisable)."""

    def __init__(self, folder, manifest: dict):
        self.folder = Path(folder)
        self.manifest = manifest

    def load(self, leave_out: tuple = ()) -> dict | None:
        """The records saved so far, column by column and concatenated (``rows`` and ``skipped_rows`` give the
        images they belong to), but for the columns in ``leave_out`` (left on disk: see :meth:`parts`), or None
        when the folder holds none. Raises :class:`InputError` when it holds another run's."""
        path = self.folder / MANIFEST
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        if saved != self.manifest:
            differ = sorted(k for k in set(saved) | set(self.manifest) if saved.get(k) != self.manifest.get(k))
            raise InputError(
                f"{self.folder} holds the records of another run (its {', '.join(differ)} differ), so it cannot be "
                "resumed here: give another folder, or delete this one to start over."
            )
        loaded = list(self.parts(leave_out=leave_out))
        if not loaded:
            return None
        return {k: np.concatenate([part[k] for part in loaded]) for k in loaded[0]}

    def parts(self, columns: tuple | None = None, leave_out: tuple = ()) -> Iterator[dict]:
        """The saved batches one at a time (memory holds one), each with those of ``columns`` it has (default all
        but ``leave_out``; a batch none of whose images could be read has no ``features``)."""
        for path in sorted(self.folder.glob("part-*.npz")):
            with np.load(path, allow_pickle=False) as part:
                names = [k for k in (columns or part.files) if k not in leave_out and k in part.files]
                yield {k: part[k] for k in names}

    def save(self, records: dict) -> None:
        """One batch's records (equal-length columns keyed by name), written whole or not at all."""
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / MANIFEST
        if not manifest.exists():
            _write_atomically(manifest, json.dumps(self.manifest, indent=1).encode())
        first = int(np.concatenate([records["rows"], records["skipped_rows"]]).min())
        target = self.folder / f"part-{first:012d}.npz"
        tmp = target.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **records)
        os.replace(tmp, target)

    def clear(self) -> None:
        """Delete the records (the run is complete)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
