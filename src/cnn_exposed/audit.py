"""Find the shortcut: what a model attends to in its mistakes (and in its correct answers), grouped by what
it is, and proved or disproved by hiding it.

For every image: its explanation, and the region the map points at (a box around the peak). Images are
grouped by (true class, predicted class); within a group they are clustered by *what* they attend to (the
attended crops seen through the model's own last spatial layer), the number of clusters read from the
spectrum of their similarity graph (the eigengap, as SpRAy does; Lapuschkin et al. 2019). Each cluster is then
tested causally: its attended regions are blurred and the images predicted again. A shortcut flips the
prediction (a mistake returns to the true class, a correct answer changes), and a region of the same size
elsewhere in the same image does not: that control is what separates "the model looks here" from "any
damage to the image changes the answer". The two are compared image by image (an exact McNemar test), and the
cluster's crops are tested as a concept with TCAV (:mod:`cnn_exposed.tcav`) against random regions.

The images are streamed: read (or sliced, from an array or a list of files) a batch at a time, explained and
forgotten. What is kept in memory per image is its prediction and its two boxes (80 bytes); its crop features (at
most :data:`FEATURE_DIMS` numbers, a kilobyte) are written to disk with them, one file per batch, and read back a
batch at a time: all of a group's sample for its clustering, the others to join the nearest cluster. The images a
candidate shows or tests are read again when it is built.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from . import sources
from .attribution import method_class
from .checkpoint import Checkpoint, identities_digest, model_fingerprint
from .distributed import as_engine, model_from_bytes, model_to_bytes, padded
from .engine import DEFAULT_BATCH_SIZE, batch_slices, engine_for
from .errors import InputError
from .images import collect_images, match_folder_classes, no_images_message
from .inputs import fill_images, prepare_images
from .layers import find_last_spatial_layer
from .model_io import input_names
from .models import LoadedModel, unwrap_loaded
from .plotting import to_uint8
from .remote import as_path
from .rules import GRADIENT_RULES
from .tcav import MAX_SET, TCAVResult, tcav

CROP_SIDE = 48  # pixels of the attended crops kept per image, for the report
THUMB_SIDE = 64  # pixels of the image thumbnails kept per image, for the report
PEAK_SHARE = 0.3  # the attended region: the connected part of the map above this share of its peak
MIN_BOX = 1 / 8  # ... grown to at least this share of the image's side
FEATURE_DIMS = 256  # crop features longer than this are randomly projected to it (cosines are kept, nearly)
MAX_SPECTRAL = 500  # larger groups: the clusters are found on this many, the rest join the nearest
MAX_TESTED = 256  # images per candidate blurred and predicted again (a seeded sample of larger ones)
SHOWN = 12  # images per candidate on the report's first page
LISTED = 100  # thumbnails on a candidate's own page (for the first LISTED_CANDIDATES candidates)
LISTED_CANDIDATES = 20
PAGE = 10  # candidates per report page
ALPHA = 0.05  # significance level of the flip test and of TCAV
TCAV_CANDIDATES = 5  # the leading candidates whose crops are tested as a concept
TCAV_TARGETS = 100  # ... on at most this many images of the predicted class (a seeded sample)


@dataclass
class Candidate:
    """A group of images that attend to the same thing, and what hiding it does.

    Attributes
    ----------
    true_class, predicted_class : int
    kind : "mistake" or "correct"
    indices : (K,) int
        Into the audited images (``Audit.files`` when files were audited).
    boxes : (K, 4) int
        Each image's attended region ``(y0, x0, y1, x1)`` in image pixels (end exclusive).
    crops : (min(K, 50), CROP_SIDE, CROP_SIDE, C) uint8
        The attended regions of the first images, resized.
    flip_rate : float
        Share of the tested images whose prediction changes when the region is blurred: back to the true
        class for mistakes, away from the predicted class for correct answers.
    control_flip_rate : float
        The same for a region of the same size elsewhere in the same image.
    p_value : float
        Exact one-sided McNemar test, image by image, that hiding the region flips more than the control.
    tested : int
        How many of the images the flip test used (all, up to :data:`MAX_TESTED`).
    thumbnails : (L, THUMB_SIDE, THUMB_SIDE, 3) uint8
        The first images, resized, their attended region outlined in red.
    tcav : TCAVResult or None
        The crops as a concept for the predicted class, against random regions (leading candidates only).
    """

    true_class: int
    predicted_class: int
    kind: str
    indices: np.ndarray
    boxes: np.ndarray
    crops: np.ndarray
    flip_rate: float
    control_flip_rate: float
    thumbnails: np.ndarray | None = None
    p_value: float = 1.0
    tested: int = 0
    tcav: TCAVResult | None = None

    @property
    def effect(self) -> float:
        """How much more hiding the attended region flips than hiding the control region."""
        return self.flip_rate - self.control_flip_rate

    @property
    def significant(self) -> bool:
        """Hiding the region flips significantly more than the control (:data:`ALPHA`)."""
        return self.p_value < ALPHA

    def to_dict(self, class_names=None, files=None) -> dict:
        def name(c: int):
            return class_names[c] if class_names is not None else int(c)

        out = {
            "true_class": name(self.true_class), "predicted_class": name(self.predicted_class),
            "kind": self.kind, "count": len(self.indices), "indices": self.indices.tolist(),
            "boxes": self.boxes.tolist(), "flip_rate": self.flip_rate, "control_flip_rate": self.control_flip_rate,
            "p_value": self.p_value, "tested": self.tested,
        }  # fmt: skip
        if files is not None:
            out["files"] = [str(files[i]) for i in self.indices]
        if self.tcav is not None:
            t = self.tcav
            out["tcav"] = {
                "score": t.score, "random_mean": float(t.random_scores.mean()), "p_value": t.p_value,
                "significant": t.significant, "layer": t.layer, "runs": len(t.scores),
            }  # fmt: skip
        return out

    def evidence(self) -> str:
        """The flip test and TCAV in one sentence."""
        text = (
            f"hiding the attended region flips {self.flip_rate:.0%} of {self.tested} tested, a region of the "
            f"same size elsewhere {self.control_flip_rate:.0%} (p = {self.p_value:.2g})"
        )
        if self.tcav is not None:
            t = self.tcav
            text += (
                f"; as a concept (TCAV) its crops score {t.score:.2f} for the predicted class against "
                f"{t.random_scores.mean():.2f} for random regions (p = {t.p_value:.2g}"
                f"{', significant' if t.significant else ', not significant'})"
            )
        return text


@dataclass
class Audit:
    """The result of :func:`audit`: ``candidates`` ranked most-likely-shortcut first."""

    candidates: list
    predictions: np.ndarray  # (N,) predicted class of every audited image
    labels: np.ndarray  # (N,) true class
    class_names: list | None = None
    params: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)  # (file, reason) of the inputs that could not be read
    files: list | None = None  # the audited files, when files were given (what ``indices`` point into)
    resumed: int = 0  # images whose records an earlier, interrupted attempt left in the checkpoint
    boxes: np.ndarray | None = None  # (N, 4) every audited image's attended region (y0, x0, y1, x1)
    controls: np.ndarray | None = None  # (N, 4) ... and its control region
    scores: np.ndarray | None = None  # (N,) the predicted class's score (the explained one)
    peaks: np.ndarray | None = None  # (N, 2) (y, x) of each map's peak, in image pixels
    flips: np.ndarray | None = (
        None  # (N, 2) int8, of the flip-tested images: did hiding the region, the control flip it
    )

    def _name(self, c: int) -> str:
        return str(self.class_names[c]) if self.class_names is not None else str(c)

    def summary(self, top: int = 3) -> list[str]:
        """One line per leading candidate, as the command line prints them."""
        lines = []
        for i, c in enumerate(self.candidates[:top]):
            lines.append(
                f"candidate {i + 1}: {self._name(c.true_class)} -> {self._name(c.predicted_class)} ({c.kind}, "
                f"{len(c.indices)} images): {c.evidence()}"
            )
        return lines or ["no group of images large enough to be a candidate"]

    def to_json(self) -> dict:
        return {
            "params": self.params,
            "images": len(self.labels),
            "mistakes": int((self.predictions != self.labels).sum()),
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "candidates": [c.to_dict(self.class_names, self.files) for c in self.candidates],
        }

    def image_table(self) -> dict:
        """One row per audited image, as columns: ``image`` (its file, or its position), ``true`` and
        ``predicted`` (class names when known), ``mistake``, ``score`` (the predicted class's, as explained),
        ``peak_y``, ``peak_x`` (the map's peak), ``candidate`` (the rank, from 1, of the candidate it belongs to; 0
        for none), its attended and control regions (``box_*``, ``control_*``: y0, x0, y1, x1), and the flip test's
        outcome, ``flipped`` and ``control_flipped`` (1 or 0; -1 when the image was not tested). -1 (NaN for the
        score) where not known. What to join with a catalogue's own records."""
        n = len(self.labels)
        rank = np.zeros(n, np.int64)
        for i, cand in enumerate(self.candidates):
            rank[cand.indices] = i + 1
        boxes = self.boxes if self.boxes is not None else np.full((n, 4), -1)
        controls = self.controls if self.controls is not None else np.full((n, 4), -1)
        names = (lambda c: [self._name(int(v)) for v in c]) if self.class_names is not None else (lambda c: c.tolist())
        table = {
            "image": [str(f) for f in self.files] if self.files is not None else list(range(n)),
            "true": names(self.labels), "predicted": names(self.predictions),
            "mistake": (self.labels != self.predictions).tolist(), "candidate": rank.tolist(),
        }  # fmt: skip
        table["score"] = (self.scores if self.scores is not None else np.full(n, np.nan)).astype(float).tolist()
        peaks = self.peaks if self.peaks is not None else np.full((n, 2), -1)
        table["peak_y"], table["peak_x"] = (np.asarray(peaks)[:, k].astype(np.int64).tolist() for k in (0, 1))
        for prefix, values in (("box", boxes), ("control", controls)):
            for k, side in enumerate(("y0", "x0", "y1", "x1")):
                table[f"{prefix}_{side}"] = np.asarray(values)[:, k].astype(np.int64).tolist()
        flips = self.flips if self.flips is not None else np.full((n, 2), -1)
        table["flipped"], table["control_flipped"] = (np.asarray(flips)[:, k].astype(np.int64).tolist() for k in (0, 1))
        return table

    def write_image_table(self, folder) -> list[Path]:
        """:meth:`image_table` as ``folder/images.csv``, and as ``folder/images.parquet`` when pyarrow is installed
        (the ``ray`` extra). Returns the files written."""
        import csv

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        table = self.image_table()
        written = [folder / "images.csv"]
        with open(written[0], "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(table)
            out.writerows(zip(*table.values()))
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            return written
        pq.write_table(pa.table(table), folder / "images.parquet")
        return [*written, folder / "images.parquet"]

    def to_html(self, folder) -> Path:
        """Write the report: ``folder/index.html`` (the candidates, :data:`PAGE` per page, each with a strip
        of its attended crops, its images with the region outlined, counts and evidence), one page per
        candidate with more of its images, ``folder/audit.json`` (everything, every candidate image's box), and
        :meth:`write_image_table`'s ``folder/images.csv`` (and ``.parquet``): one row per audited image.
        Returns the first page's path. Pages stay small however many images were audited: images are
        separate, lazily loaded files, and file lists are cut at 1,000 names (all are in ``audit.json``)."""
        from .plotting import save_png

        folder = Path(folder)
        (folder / "crops").mkdir(parents=True, exist_ok=True)
        (folder / "audit.json").write_text(json.dumps(self.to_json(), indent=2))
        self.write_image_table(folder)
        style = (
            "<!doctype html><meta charset=utf-8><title>cnn-exposed audit</title>"
            "<style>body{font:14px system-ui;margin:2em}img{image-rendering:pixelated;max-width:100%}"
            ".idx{color:#666;font-size:12px}.weak{color:#a60}nav a{margin-right:1em}</style>"
        )
        pages = max(1, math.ceil(len(self.candidates) / PAGE))

        def page_name(p: int) -> str:
            return "index.html" if p == 0 else f"index_{p + 1}.html"

        nav = (
            "<nav>" + "".join(f'<a href="{page_name(p)}">page {p + 1}</a>' for p in range(pages)) + "</nav>"
            if pages > 1
            else ""
        )
        intro = (
            f"<p>{len(self.labels)} images, {int((self.predictions != self.labels).sum())} mistakes; method "
            f"{html.escape(str(self.params.get('method')))}. Ranked by how much more hiding the attended region "
            "flips the prediction than hiding a region of the same size elsewhere; candidates whose difference "
            f"is not significant (p &ge; {ALPHA}) come last.</p>"
        )
        if self.skipped:
            intro += (
                f"<p>{len(self.skipped)} file(s) skipped: "
                + "; ".join(html.escape(f"{f}: {r}") for f, r in self.skipped[:20])
                + (" ..." if len(self.skipped) > 20 else "")
                + "</p>"
            )
        for p in range(pages):
            rows = []
            for i in range(p * PAGE, min((p + 1) * PAGE, len(self.candidates))):
                rows.append(self._section(i, folder, save_png))
            top = "<h1>Candidate shortcuts</h1>" + (intro if p == 0 else "")
            (folder / page_name(p)).write_text(style + top + nav + "".join(rows) + nav, encoding="utf-8")
        return folder / "index.html"

    def _section(self, i: int, folder: Path, save_png) -> str:
        cand = self.candidates[i]
        save_png(np.concatenate(list(cand.crops[:SHOWN]), axis=1), folder / "crops" / f"candidate_{i}.png")
        thumbs = ""
        if cand.thumbnails is not None and len(cand.thumbnails):
            save_png(np.concatenate(list(cand.thumbnails[:SHOWN]), axis=1), folder / "crops" / f"images_{i}.png")
            thumbs = f'<br><img src="crops/images_{i}.png" alt="the images, attended region in red" loading="lazy">'
        title = (
            f"{html.escape(self._name(cand.true_class))} &rarr; {html.escape(self._name(cand.predicted_class))} "
            f"({cand.kind}, {len(cand.indices)} images)"
        )
        more = ""
        if len(cand.indices) > SHOWN:
            self._candidate_page(i, folder, save_png, title)
            more = f' <a href="candidate_{i}.html">all {len(cand.indices)} images</a>'
        weak = "" if cand.significant else ' class="weak"'
        return (
            f"<section><h2>{i + 1}. {title}</h2><p{weak}>{html.escape(cand.evidence())}</p>"
            f'<img src="crops/candidate_{i}.png" alt="attended regions" loading="lazy">{thumbs}'
            f"<p class=idx>{self._members(cand, SHOWN)}{more}</p></section>"
        )

    def _members(self, cand: Candidate, count: int) -> str:
        names = [self.files[j].name if self.files is not None else str(j) for j in cand.indices[:count]]
        label = "files" if self.files is not None else "images"
        return f"{label} " + html.escape(", ".join(names)) + (" ..." if len(cand.indices) > count else "")

    def _candidate_page(self, i: int, folder: Path, save_png, title: str) -> None:
        cand = self.candidates[i]
        sheet = ""
        if cand.thumbnails is not None and len(cand.thumbnails):
            grid = _sheet(cand.thumbnails, columns=10)
            save_png(grid, folder / "crops" / f"sheet_{i}.png")
            sheet = (
                f"<p>the first {len(cand.thumbnails)} images, attended region in red:</p>"
                f'<img src="crops/sheet_{i}.png" alt="images" loading="lazy">'
            )
        page = (
            "<!doctype html><meta charset=utf-8><title>cnn-exposed audit: candidate</title>"
            "<style>body{font:14px system-ui;margin:2em}img{image-rendering:pixelated;max-width:100%}"
            ".idx{color:#666;font-size:12px}</style>"
            f'<p><a href="index.html">all candidates</a></p><h1>{i + 1}. {title}</h1>'
            f"<p>{html.escape(cand.evidence())}</p>{sheet}"
            f"<p class=idx>{self._members(cand, 1000)}</p>"
        )
        (folder / f"candidate_{i}.html").write_text(page, encoding="utf-8")


def _sheet(tiles: np.ndarray, columns: int) -> np.ndarray:
    """Tiles ``(n, h, w, c)`` in rows of ``columns``, the last row padded white."""
    n, h, w, c = tiles.shape
    rows = math.ceil(n / columns)
    out = np.full((rows * h, columns * w, c), 255, dtype=tiles.dtype)
    for k, tile in enumerate(tiles):
        r, q = divmod(k, columns)
        out[r * h : (r + 1) * h, q * w : (q + 1) * w] = tile
    return out


def attended_box(heat: np.ndarray, image_shape: tuple) -> np.ndarray:
    """``(y0, x0, y1, x1)`` in image pixels around the peak of ``heat`` (any resolution): the bounding box of
    the connected region above :data:`PEAK_SHARE` of the peak that holds the peak, grown to at least
    :data:`MIN_BOX` of the image's side."""
    h, w = image_shape[:2]
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    top = float(heat[peak])
    above = (heat >= PEAK_SHARE * top).astype(np.uint8) if top > 0 else np.zeros((h, w), np.uint8)
    above[peak] = 1
    _, labels = cv2.connectedComponents(above, connectivity=8)
    ys, xs = np.nonzero(labels == labels[peak])
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    least_h, least_w = max(1, round(MIN_BOX * h)), max(1, round(MIN_BOX * w))
    y0, y1 = _grown(y0, y1, least_h, h)
    x0, x1 = _grown(x0, x1, least_w, w)
    return np.array([y0, x0, y1, x1], dtype=np.int64)


def _grown(lo: int, hi: int, least: int, size: int) -> tuple[int, int]:
    if hi - lo >= least:
        return lo, hi
    centre = (lo + hi) / 2
    lo = int(round(min(max(centre - least / 2, 0), size - least)))
    return lo, lo + least


def control_box(box: np.ndarray, image_shape: tuple, rng: np.random.Generator, tries: int = 64) -> np.ndarray:
    """A box of ``box``'s size elsewhere in the image: the candidate position overlapping it least (of
    ``tries`` random ones; no overlap when the image has room)."""
    h, w = image_shape[:2]
    y0, x0, y1, x1 = (int(v) for v in box)
    bh, bw = y1 - y0, x1 - x0
    best, best_overlap = (0, 0), None
    for _ in range(tries):
        cy, cx = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        overlap = max(0, min(y1, cy + bh) - max(y0, cy)) * max(0, min(x1, cx + bw) - max(x0, cx))
        if best_overlap is None or overlap < best_overlap:
            best, best_overlap = (cy, cx), overlap
            if overlap == 0:
                break
    cy, cx = best
    return np.array([cy, cx, cy + bh, cx + bw], dtype=np.int64)


def _hidden(x: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Model inputs ``x`` with each image's box replaced by the blurred image (:func:`fill_images`)."""
    blurred = fill_images(x, "blur")
    out = np.array(x, dtype=np.float32, copy=True)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        out[i, y0:y1, x0:x1] = blurred[i, y0:y1, x0:x1]
    return out


def spectral_clusters(features: np.ndarray, max_clusters: int = 8, seed: int = 0) -> np.ndarray:
    """Cluster labels ``(K,)`` of row vectors by spectral clustering of their cosine-similarity graph
    (each point joined to its nearest neighbours), the number of clusters chosen by the largest gap
    between consecutive eigenvalues of the normalised Laplacian (the eigengap heuristic), kept only when
    that gap is at least twice the last eigenvalue before it (otherwise one cluster)."""
    n = len(features)
    if n < 3:
        return np.zeros(n, dtype=np.int64)
    f = features - features.mean(axis=0)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sim = np.clip(f @ f.T, 0.0, None)
    k = int(min(n - 1, max(3, round(np.sqrt(n)))))
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, 1 : k + 1]
    affinity = np.zeros_like(sim)
    rows = np.repeat(np.arange(n), k)
    affinity[rows, nearest.ravel()] = sim[rows, nearest.ravel()]
    affinity = np.maximum(affinity, affinity.T)
    degree = affinity.sum(axis=1)
    inv = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    laplacian = np.eye(n) - inv[:, None] * affinity * inv[None, :]
    values, vectors = np.linalg.eigh(laplacian)
    top = min(max_clusters, n - 1) + 1
    gaps = np.diff(values[:top])
    clusters = int(np.argmax(gaps)) + 1
    # A real split leaves the graph nearly disconnected: the eigenvalues kept are near 0 and the gap after them
    # is much larger (measured: 8 demo rail crops 0, 0.04 | 0.87; one Gaussian blob 0, 0.19 | 0.46, not split).
    if clusters == 1 or gaps[clusters - 1] < 2 * values[clusters - 1]:
        return np.zeros(n, dtype=np.int64)
    embedding = vectors[:, :clusters]
    embedding = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    return _kmeans(embedding, clusters, np.random.default_rng(seed))


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, rounds: int = 50) -> np.ndarray:
    """k-means with k-means++ seeding, labels renumbered by first appearance (deterministic for a seed)."""
    centres = [x[int(rng.integers(len(x)))]]
    for _ in range(1, k):
        d = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(x[int(rng.choice(len(x), p=d / d.sum()))] if d.sum() > 0 else x[int(rng.integers(len(x)))])
    c = np.stack(centres)
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(rounds):
        labels = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        moved = np.stack([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
        if np.allclose(moved, c):
            break
        c = moved
    _, first = np.unique(labels, return_index=True)
    order = {old: new for new, old in enumerate(labels[np.sort(first)])}
    return np.array([order[v] for v in labels], dtype=np.int64)


class _Images:
    """The audited images, read a batch at a time: an array (or anything with ``len`` and indexing by an
    integer array, such as a memory map), or a list of image files (read and resized to ``size``)."""

    def __init__(self, images, size: tuple | None):
        items = images if isinstance(images, (list, tuple)) else None
        self.files = [as_path(p) for p in items] if items and isinstance(items[0], (str, os.PathLike)) else None
        array = images if items is None else np.asarray(images)
        if getattr(array, "ndim", None) == 3:  # one image (read through .ndim: np.ndim would read it all)
            array = np.asarray(array)[None]
        self.array: Any = array  # unused when files were given
        self.size = size
        self.names = sources.file_identities(self.files) if self.files is not None else None

    def in_canonical_order(self, labels: np.ndarray) -> np.ndarray:
        """Files put in the order of their identities (paths relative to their shared folder), ``labels`` with
        them: what is drawn and sampled then depends neither on the order of the list nor on the batching.
        Returns the labels in the new order; an array keeps its order."""
        names = self.names
        if self.files is None or names is None:
            return labels
        order = sorted(range(len(self.files)), key=names.__getitem__)
        self.files = [self.files[i] for i in order]
        self.names = [names[i] for i in order]
        return labels[order]

    def identity(self, index: int):
        """What seeds an image's random draws: its file's identity, or its position in an array."""
        return self.names[index] if self.names is not None else int(index)

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.array)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
        """(images, which of ``indices`` were read, [(file, reason) of the others])."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.files is None:
            return np.asarray(self.array[indices]), indices, []
        batch, errors = sources.read_files([self.files[i] for i in indices], indices, self.size)
        if batch is None:
            return np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, np.int64), errors
        if self.size is None:  # a model of any input size: the first image's size for all
            self.size = batch.images.shape[1:3]
        return batch.images, batch.index, errors


def sampled_clusters(features: np.ndarray, seed: int) -> np.ndarray:
    """:func:`spectral_clusters` of the rows, on a seeded sample of :data:`MAX_SPECTRAL` when there are more
    (the others join the cluster whose mean direction is nearest): time and memory stay bounded."""
    if len(features) <= MAX_SPECTRAL:
        return spectral_clusters(features, seed=seed)
    sample = _sample(len(features), seed)
    labels_sample, mean, centres = _clustered_sample(features[sample], seed)
    labels = _nearest(features, mean, centres)
    labels[sample] = labels_sample
    return labels


def _sample(n: int, seed: int) -> np.ndarray:
    """The :data:`MAX_SPECTRAL` of ``n`` (sorted positions) whose clusters are found by the spectrum."""
    return np.sort(np.random.default_rng(seed).choice(n, MAX_SPECTRAL, replace=False))


def _clustered_sample(sample: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample's clusters, its mean, and each cluster's mean direction (what the others are assigned by)."""
    labels = spectral_clusters(sample, seed=seed)
    mean = sample.mean(axis=0)
    f = _directions(sample, mean)
    return labels, mean, np.stack([f[labels == c].mean(axis=0) for c in np.unique(labels)])


def _directions(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    f = features - mean
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _nearest(features: np.ndarray, mean: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The cluster whose mean direction each row's direction (from the sample's mean) is nearest."""
    return (_directions(features, mean) @ centres.T).argmax(axis=1)


def flip_p_value(flipped: np.ndarray, control_flipped: np.ndarray) -> float:
    """Exact one-sided McNemar test: the chance of at least as many images flipping only when their region is
    hidden (rather than only when the control is), if either were equally likely."""
    only_box = int((flipped & ~control_flipped).sum())
    discordant = only_box + int((control_flipped & ~flipped).sum())
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(only_box, discordant + 1))
    return float(tail / 2.0**discordant)


def audit(
    model,
    images,
    labels=None,
    *,
    preprocess=None,
    class_names=None,
    method: str = "gradcam",
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    min_group: int = 3,
    checkpoint=None,
    engine=None,
) -> Audit:
    """Find what the model attends to in its mistakes and correct answers, and test whether it causes them.

    Parameters
    ----------
    model : keras.Model
        Or what :func:`~cnn_exposed.load_model` returns: its preprocessing and class names then apply unless given.
    images : (N, H, W, C) array, array-like, image files, or a dataset, PyDataset or iterable of batches
        In the model's own value range, or raw pixels when ``preprocess`` is given. Arrays may be memory
        maps; files (a list, or a folder of class sub-folders) are read a batch at a time (unreadable ones
        are reported in ``Audit.skipped``), in the order of their paths relative to the folder they share
        (``Audit.files``; each image's random draws are seeded by that path, so neither the order of the list
        nor the batch size changes the answer). A ``tf.data.Dataset``, ``keras.utils.PyDataset`` or any iterable of
        batches (a generator too: see :mod:`cnn_exposed.sources`) is read once, and its images spooled to a
        temporary file on disk (deleted before this returns) from which the candidates' images are read
        again: memory stays bounded by the batch, the disk holds the images (as uint8 when they are
        integer-valued pixels, as ``image_dataset_from_directory`` gives them).
    labels : (N,) int, or None
        The true class of every image; None: the labels that come with the images (a dataset's
        ``(images, labels)`` batches, sparse or one-hot; a folder's class sub-folders).
    method : str
        The attribution method whose map points at the attended region (any of :data:`cnn_exposed.METHODS`).
    min_group : int
        Groups and clusters with fewer images are not candidates.
    checkpoint : str or Path, optional
        A folder where the explaining pass (the part that grows with the images) keeps its per-image records,
        one file per batch, as it goes. Given again after an interruption, the images already done are not
        explained again and the result equals an uninterrupted run's (``Audit.resumed`` says how many were read
        back). A folder holding another run's records (another model or weights, method, seed or set
        of images) is refused. The records stay after the run; delete the folder when done.
    engine : :class:`~cnn_exposed.RayEngine` or "ray", optional
        Run the explaining pass on a Ray cluster (``"ray"``: a local one, or the one this process is connected
        to): each worker builds the model and its passes once and explains batches of files (read by the
        workers, so they must reach the paths) or of images sent from here. The rest of the audit (bounded:
        at most :data:`MAX_TESTED` images per candidate) runs here. The answer is the single machine's.

    Returns
    -------
    Audit
        ``candidates`` ranked most-likely-shortcut first: those whose flip test is significant first, each
        part by how much more hiding the attended region flips the prediction than hiding the control region,
        then by size.
    """
    batch_size = int(batch_size or DEFAULT_BATCH_SIZE)
    engine = as_engine(engine)
    if class_names is None and isinstance(model, LoadedModel):
        class_names = model.class_names
    model, preprocess = unwrap_loaded(model, preprocess)
    with sources.temporary_folder() as spool_folder:
        source, labels = _source(model, images, labels, batch_size, spool_folder, class_names)
        try:
            folder = Path(spool_folder) / "records" if checkpoint is None else checkpoint  # kept on disk either way
            kept = _checkpoint(folder, model, source, method, seed, preprocess)
            return _audit(
                model,
                source,
                labels,
                preprocess,
                class_names,
                method,
                batch_size,
                seed,
                progress,
                min_group,
                kept,
                engine,
            )
        finally:
            if isinstance(source.array, sources.Spooled):
                source.array.close()


def _source(model, images, labels, batch_size: int, folder, class_names=None) -> tuple[_Images, np.ndarray]:
    """The audited images as an :class:`_Images` reader (a dataset or iterable spooled to ``folder``), and one
    true class per image (given, or those that came with the images)."""
    shape = engine_for(model, None, "logit", GRADIENT_RULES).input_shape
    size = tuple(shape[:2]) if None not in shape[:2] else None
    known = None
    what = sources.kind(images)
    if what in ("dataset", "pydataset", "batches"):
        images, known = sources.spool(images, folder, batch_size=batch_size, names=input_names(model))
    elif what == "files" and isinstance(images, (str, os.PathLike)):  # a folder: its files, labelled by class folders
        found, folder_classes = collect_images([images])
        if not found:
            raise InputError(no_images_message([images]))
        note = match_folder_classes(found, folder_classes, class_names)  # numbered as the model numbers them
        if note and labels is None:
            raise InputError(f"{images}: {note}. Name the sub-folders after the classes, or give labels=...")
        images = [f.path for f in found]
        known = np.asarray([f.label for f in found]) if found and all(f.label is not None for f in found) else None
    source = _Images(images, size)
    if labels is None and known is None:
        raise InputError(
            "The audit needs the true class of every image: give labels=..., or images that come with them (a "
            "dataset of (images, labels) batches, or a folder of class sub-folders)."
        )
    labels = np.asarray(known if labels is None else labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(source):
        raise InputError(f"Got {len(labels)} labels for {len(source)} images: give one true class per image.")
    labels = source.in_canonical_order(labels)
    if source.files is not None and source.size is None:  # a model of any input size: the first file's, for all
        source.size = sources.first_size(source.files)  # (set now: a resumed run or a Ray worker starts elsewhere)
    return source, labels


@dataclass
class _Pass:
    """What the explaining pass keeps of every audited image."""

    rows: np.ndarray  # audited image -> position in the given images
    boxes: np.ndarray
    controls: np.ndarray
    predicted: np.ndarray
    skipped: list
    resumed: int = 0  # images an earlier, interrupted attempt had done (read from the checkpoint)
    scores: np.ndarray | None = None  # the explained (predicted) class's score
    peaks: np.ndarray | None = None  # (y, x) of the map's peak
    flips: np.ndarray | None = None  # (N, 2) int8: region hidden, control hidden -> flipped 1 / 0; -1 not tested

    def __post_init__(self):
        self.flips = np.full((len(self.rows), 2), -1, np.int8)


def _checkpoint(folder, model, source, method: str, seed: int, preprocess) -> Checkpoint:
    """The audit's records in ``folder``, for this model, method, seed, preprocessing and images."""
    manifest = {
        "run": "audit: explaining pass", "format": 2, "model": model_fingerprint(model), "method": method,
        "seed": seed, "preprocess": getattr(preprocess, "__qualname__", repr(preprocess)), "images": len(source),
        "identities": identities_digest(source.identity(i) for i in range(len(source))),
        "feature_dims": FEATURE_DIMS,
    }  # fmt: skip
    return Checkpoint(folder, manifest)


def _audit(
    model, source, labels, preprocess, class_names, method, batch_size, seed, progress, min_group, records, on_ray
) -> Audit:
    explainer = method_class(method)(model, batch_size=batch_size, progress=False)  # built once, compiled once
    engine = engine_for(model, None, "logit", GRADIENT_RULES)  # predictions; the fast plan, as the explainer's
    rng = np.random.default_rng(seed)
    found = _explaining_pass(model, source, explainer, preprocess, batch_size, seed, progress, records, on_ray)
    true = labels[found.rows]
    groups = _groups(true, found.predicted, _Features(records, found.rows), min_group, seed)
    read = _Reader(source, found.rows, engine.input_shape, preprocess)
    candidates = [
        _tested(t, p, idx, read, engine, found, rng, batch_size)
        for t, p, idx in tqdm(groups, desc="audit: testing", disable=not progress, leave=False)
    ]
    candidates.sort(key=lambda c: (not c.significant, -c.effect, c.kind != "mistake", -len(c.indices)))
    _add_evidence(model, candidates, read, found, true, rng, preprocess, seed, batch_size, progress)
    names = list(class_names) if class_names is not None else None
    params = {
        "method": method, "seed": seed, "min_group": min_group, "blur_sigma": "1/16 of the longer side",
        "max_tested": MAX_TESTED, "alpha": ALPHA,
    }  # fmt: skip
    files = [source.files[i] for i in found.rows] if source.files is not None else None
    return Audit(candidates, found.predicted, true, names, params, found.skipped, files, found.resumed, found.boxes,
                 found.controls, found.scores, found.peaks, found.flips)  # fmt: skip


def _explaining_pass(model, source, explainer, preprocess, batch_size, seed, progress, records, on_ray) -> _Pass:
    """Every image read a batch at a time, explained, and forgotten but for its prediction, attended and
    control boxes; its (projected) crop features are saved with them in ``records``, one file per batch, as they
    are made, and left there (:class:`_Features` reads them). The images an earlier attempt finished (whose records
    are in ``records``) are not done again."""
    feature_engine = engine_for(model, find_last_spatial_layer(model), "logit", GRADIENT_RULES)
    earlier = records.load(leave_out=("features",))
    parts = [earlier] if earlier is not None else []
    done = np.zeros(len(source), bool)
    if earlier is not None:
        done[np.concatenate([earlier["rows"], earlier["skipped_rows"]])] = True
    projection: list = []
    todo = [np.arange(b.start, b.stop)[~done[b]] for b in batch_slices(len(source), batch_size, progress=False)]
    todo = [wanted for wanted in todo if len(wanted)]
    if on_ray is None:
        results: Iterator = (
            _explain_batch(source, wanted, explainer, feature_engine, preprocess, batch_size, seed, projection)
            for wanted in todo
        )
    else:  # the same batches, on the workers
        job = _ExplainJob(model, explainer.name, preprocess, batch_size, seed, source.size)
        results = on_ray.map(job, (_job_item(source, wanted) for wanted in todo))
    results = tqdm(results, total=len(todo), desc="audit: explaining", unit="batch", disable=not progress)
    for batch in results:
        records.save(batch)
        parts.append({k: v for k, v in batch.items() if k != "features"})
    return _merged(parts, source, int(done.sum()))


def _job_item(source, wanted: np.ndarray) -> tuple:
    """What a worker needs of one batch: its rows, and its files (with their identities) or images."""
    if source.files is not None:
        return wanted, [str(source.files[i]) for i in wanted], [source.identity(i) for i in wanted]
    return wanted, source.read(wanted)[0], [int(i) for i in wanted]


class _ExplainJob:
    """The explaining pass's work for a Ray worker (:class:`cnn_exposed.distributed.RayEngine`): the model travels
    as a ``.keras`` file's bytes, rebuilt with the explainer and the feature pass once per worker. Short batches
    are padded to the full size, so that the worker's passes are compiled for one shape."""

    def __init__(self, model, method: str, preprocess, batch_size: int, seed: int, size):
        self.model_bytes = model_to_bytes(model)
        self.method, self.preprocess, self.batch_size, self.seed, self.size = method, preprocess, batch_size, seed, size

    def setup(self) -> None:
        model = model_from_bytes(self.model_bytes)
        self.explainer = method_class(self.method)(model, batch_size=self.batch_size, progress=False)
        self.features = engine_for(model, find_last_spatial_layer(model), "logit", GRADIENT_RULES)
        self.projection: list = []

    def __call__(self, item) -> dict:
        wanted, images, names = item
        local = _Images(images, self.size)
        local.names = names
        records = _explain_batch(local, np.arange(len(wanted)), self.explainer, self.features, self.preprocess,
                                 self.batch_size, self.seed, self.projection, pad=True)  # fmt: skip
        return {**records, "rows": wanted[records["rows"]], "skipped_rows": wanted[records["skipped_rows"]]}


def _explain_batch(source, wanted, explainer, feature_engine, preprocess, batch_size, seed, projection,
                   pad: bool = False) -> dict:  # fmt: skip
    """The records of one batch of images (by position): those read, and those that could not be. ``pad``: a
    short batch is explained padded to ``batch_size`` (its last image repeated, the extra results dropped)."""
    raw, ok, errors = source.read(wanted)
    failed = wanted[~np.isin(wanted, ok)]  # in order, as ``errors`` lists them
    records = {"skipped_rows": failed, "skipped_reasons": np.array([r for _, r in errors], dtype=str).reshape(-1)}
    if not len(ok):
        return {"rows": ok, **records}
    _, x = prepare_images(raw, explainer.engine.input_shape, preprocess)
    n = len(x)
    if pad:
        x = padded(x, batch_size)
    exp = explainer.explain(x)
    b = np.stack([attended_box(m, x.shape[1:3]) for m in exp.maps])
    f = _crop_features(feature_engine, x, b, batch_size)[:n]
    x, b, targets = x[:n], b[:n], np.asarray(exp.targets[:n], np.int64)
    if not projection and f.shape[1] > FEATURE_DIMS:
        projection.append(np.random.default_rng(seed).normal(size=(f.shape[1], FEATURE_DIMS)) / math.sqrt(FEATURE_DIMS))
    draws = [sources.image_rng(seed, source.identity(i)) for i in ok]  # per image: any order, any batching
    return {
        "rows": ok, "predicted": targets, "boxes": b, "score": np.asarray(exp.scores[:n], np.float32),
        "peak": np.array([np.unravel_index(int(np.argmax(m)), m.shape) for m in exp.maps[:n]], np.int32),
        "controls": np.stack([control_box(box, x.shape[1:3], g) for box, g in zip(b, draws)]),
        "features": (f @ projection[0] if projection else f).astype(np.float32), **records,
    }  # fmt: skip


def _merged(parts: list, source, resumed: int) -> _Pass:
    """The records of all batches, in the order of the images."""
    read = [p for p in parts if len(p["rows"])]
    if not read:
        raise InputError(f"None of the {len(source)} images could be read.")
    cols = {
        k: np.concatenate([p[k] for p in read]) for k in ("rows", "predicted", "boxes", "controls", "score", "peak")
    }
    order = np.argsort(cols["rows"], kind="stable")
    failed = [p for p in parts if len(p["skipped_rows"])]
    skipped_rows = np.concatenate([p["skipped_rows"] for p in failed]) if failed else np.zeros(0, np.int64)
    reasons = np.concatenate([p["skipped_reasons"] for p in failed]) if failed else np.zeros(0, str)
    where = np.argsort(skipped_rows, kind="stable")
    name = (lambda r: str(source.files[r])) if source.files is not None else str
    skipped = [(name(int(skipped_rows[i])), str(reasons[i])) for i in where]
    c = {k: v[order] for k, v in cols.items()}
    return _Pass(c["rows"], c["boxes"], c["controls"], c["predicted"], skipped, resumed, c["score"], c["peak"])


def _groups(true: np.ndarray, predicted: np.ndarray, features: _Features, min_group: int, seed: int) -> list:
    """(true class, predicted class, audited images) of every cluster of a (true, predicted) group that has at
    least ``min_group`` images: :func:`sampled_clusters` of each group, with the features read from disk, those of
    the samples at once, the others' a batch at a time."""
    plans = []  # (true, predicted, members, the sample clustered by the spectrum or None for all)
    for t in np.unique(true):
        for p in np.unique(predicted[true == t]):
            members = np.nonzero((true == t) & (predicted == p))[0]
            if len(members) >= min_group:
                plans.append(
                    (int(t), int(p), members, None if len(members) <= MAX_SPECTRAL else _sample(len(members), seed))
                )
    if not plans:
        return []
    wanted = np.unique(np.concatenate([m if s is None else m[s] for _, _, m, s in plans]))
    read = features.read(wanted)
    labelled, rest = [], []
    for _, _, members, sample in plans:
        if sample is None:
            labels = spectral_clusters(read[np.searchsorted(wanted, members)], seed=seed)
        else:
            labels = np.full(len(members), -1, np.int64)
            labels[sample], mean, centres = _clustered_sample(read[np.searchsorted(wanted, members[sample])], seed)
            rest.append((members, labels, mean, centres))
        labelled.append(labels)
    features.assign(rest)
    return [(t, p, members[labels == c]) for (t, p, members, _), labels in zip(plans, labelled)
            for c in np.unique(labels) if (labels == c).sum() >= min_group]  # fmt: skip


class _Features:
    """The audited images' crop features, left on disk in the records (a kilobyte per image: a gigabyte per
    million) and read a batch of records at a time."""

    def __init__(self, records: Checkpoint, rows: np.ndarray):
        self.records, self.rows = records, rows  # audited image -> its row in the given images (sorted)

    def read(self, audited: np.ndarray) -> np.ndarray:
        """The features of the audited images ``audited`` (sorted), in that order."""
        wanted = self.rows[audited]
        out = None
        for part in self.records.parts(("rows", "features")):
            if "features" not in part:  # a batch of unreadable files
                continue
            hit = np.isin(part["rows"], wanted)
            if out is None:
                out = np.zeros((len(wanted), part["features"].shape[1]), np.float32)
            out[np.searchsorted(wanted, part["rows"][hit])] = part["features"][hit]
        assert out is not None  # at least one image was read, so one part was saved
        return out

    def assign(self, rest: list) -> None:
        """Each (members, labels, mean, centres): the members still labelled -1 get the nearest centre's label."""
        if not rest:
            return
        for part in self.records.parts(("rows", "features")):
            if "features" not in part:
                continue
            audited = np.searchsorted(self.rows, part["rows"])
            for members, labels, mean, centres in rest:
                hit = np.isin(audited, members)
                at = np.searchsorted(members, audited[hit])
                todo = labels[at] == -1
                if todo.any():
                    labels[at[todo]] = _nearest(part["features"][hit][todo], mean, centres)


class _Reader:
    """Audited images read again (by their audited position), as model input and for display."""

    def __init__(self, source: _Images, rows: np.ndarray, shape: tuple, preprocess):
        self.source, self.rows, self.shape, self.preprocess = source, rows, shape, preprocess

    def __call__(self, audited: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw, ok, _ = self.source.read(self.rows[audited])
        if len(ok) != len(audited):
            raise InputError("An image that was read a moment ago cannot be read any more; is the folder changing?")
        return prepare_images(raw, self.shape, self.preprocess)


def _tested(t: int, p: int, idx: np.ndarray, read: _Reader, engine, found: _Pass, rng, batch_size: int) -> Candidate:
    """A candidate of images ``idx``: its flip test (on at most :data:`MAX_TESTED` of them), crops, thumbnails."""
    tested = idx if len(idx) <= MAX_TESTED else np.sort(rng.choice(idx, MAX_TESTED, replace=False))
    _, x = read(tested)
    flipped, control_flipped = _flips(engine, x, found.boxes[tested], found.controls[tested], t, p, batch_size)
    assert found.flips is not None
    found.flips[tested] = np.stack([flipped, control_flipped], axis=1)
    first = idx[:MAX_SET]
    display, _ = read(first)
    crops = np.stack([_crop(img, box) for img, box in zip(display, found.boxes[first])])
    thumbs = np.stack([_thumbnail(img, box) for img, box in zip(display[:SHOWN], found.boxes[first[:SHOWN]])])
    return Candidate(
        t, p, "correct" if t == p else "mistake", idx, found.boxes[idx], crops, float(flipped.mean()),
        float(control_flipped.mean()), thumbs, flip_p_value(flipped, control_flipped), len(tested),
    )  # fmt: skip


def _add_evidence(model, candidates, read, found, true, rng, preprocess, seed, batch_size, progress) -> None:
    """Evidence for the leading candidates: their crops as a concept (TCAV), and more of their images."""
    random_pool = None
    box_all, predicted = found.boxes, found.predicted
    for rank, cand in enumerate(tqdm(candidates, desc="audit: concepts", disable=not progress, leave=False)):
        listing = rank < LISTED_CANDIDATES and len(cand.indices) > SHOWN
        target = np.nonzero((true == cand.predicted_class) & (predicted == cand.predicted_class))[0]
        # too few for a concept test (or not significant, or not leading): the flip test stands alone
        testing = rank < TCAV_CANDIDATES and cand.significant and len(target) >= 10 and len(cand.indices) >= 5
        if not (listing or testing):
            continue
        members = cand.indices[: max(LISTED if listing else 0, MAX_SET if testing else 0)]
        display, _ = read(members)  # once, for both the thumbnails and the concept
        if listing:
            listed = slice(0, LISTED)
            cand.thumbnails = np.stack([_thumbnail(i, b) for i, b in zip(display[listed], box_all[members][listed])])
        if not testing:
            continue
        if random_pool is None:
            chosen = np.sort(rng.choice(len(found.rows), min(len(found.rows), 2 * MAX_SET), replace=False))
            random_pool = _regions(read(chosen)[0], found.controls[chosen])
        if len(target) > TCAV_TARGETS:
            target = np.sort(rng.choice(target, TCAV_TARGETS, replace=False))
        concept = _regions(display[:MAX_SET], box_all[members[:MAX_SET]])
        try:
            cand.tcav = tcav(
                model, None, concept, read(target)[0], cand.predicted_class, random_images=random_pool,
                preprocess=preprocess, seed=seed, batch_size=batch_size,
            )  # fmt: skip
        except InputError:  # too few images for a concept test: the flip test stands alone
            cand.tcav = None


def _regions(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Each image's box cut out and resized to the image's size (bilinear): what the model sees of it alone."""
    h, w = images.shape[1:3]
    out = [
        cv2.resize(np.asarray(img[y0:y1, x0:x1]), (w, h), interpolation=cv2.INTER_LINEAR).reshape(img.shape)
        for img, (y0, x0, y1, x1) in zip(images, boxes)
    ]
    return np.stack(out)


def _crop(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    y0, x0, y1, x1 = (int(v) for v in box)
    crop = to_uint8(image[y0:y1, x0:x1])
    out = cv2.resize(crop, (CROP_SIDE, CROP_SIDE), interpolation=cv2.INTER_AREA)
    return out.reshape(CROP_SIDE, CROP_SIDE, -1)


def _thumbnail(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The image at THUMB_SIDE x THUMB_SIDE, RGB, its attended region outlined in red."""
    img = to_uint8(image)
    img = np.repeat(img, 3, axis=-1) if img.ndim == 3 and img.shape[-1] == 1 else img[..., :3]
    h, w = img.shape[:2]
    thumb = np.ascontiguousarray(cv2.resize(img, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA))
    y0, x0, y1, x1 = (int(v) for v in box)
    sy, sx = THUMB_SIDE / h, THUMB_SIDE / w
    cv2.rectangle(thumb, (int(x0 * sx), int(y0 * sy)), (int(x1 * sx) - 1, int(y1 * sy) - 1), (255, 0, 0), 1)
    return thumb


def _crop_features(engine, x: np.ndarray, boxes: np.ndarray, batch_size: int) -> np.ndarray:
    """What each attended region looks like to the model: the region cut out and resized to the model's
    input, through the last spatial layer (``engine``'s layer), averaged over space ``(N, channels)``."""
    regions = _regions(x, boxes).astype(np.float32)
    acts = engine.map_batches(engine.activations, (regions,), batch_size).activations
    return acts.reshape(len(x), -1, acts.shape[-1]).mean(axis=1)


def _flips(engine, x, boxes, controls, true: int, predicted: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image: does the prediction flip when the attended region, and when the control region, is hidden?"""
    out = []
    for hide in (boxes, controls):
        now = engine.predict_all(_hidden(x, hide), batch_size).scores.argmax(axis=1)
        out.append(now == true if true != predicted else now != predicted)
    return out[0], out[1]
