"""Find the shortcut: what a model attends to in its mistakes (and in its correct answers), grouped by what
it is, and proved or disproved by hiding it.

For every image: its explanation, and the region the map points at (a box around the peak). Images are
grouped by (true class, predicted class); within a group they are clustered by *what* they attend to (the
attended crops seen through the model's own last spatial layer), the number of clusters read from the
spectrum of their similarity graph (the eigengap, as SpRAy does; Lapuschkin et al. 2019). Each cluster is then
tested causally: its attended regions are blurred and the images predicted again. A shortcut flips the
prediction (a mistake returns to the true class, a correct answer changes), and a region of the same size
elsewhere in the same image does not: that control is what separates "the model looks here" from "any
damage to the image changes the answer".
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .attribution import explain
from .engine import DEFAULT_BATCH_SIZE, engine_for
from .errors import InputError
from .inputs import fill_images, prepare_images
from .layers import find_last_spatial_layer
from .plotting import to_uint8

CROP_SIDE = 48  # pixels of the attended crops kept per image, for the report
THUMB_SIDE = 64  # pixels of the image thumbnails kept per image, for the report
PEAK_SHARE = 0.3  # the attended region: the connected part of the map above this share of its peak
MIN_BOX = 1 / 8  # ... grown to at least this share of the image's side


@dataclass
class Candidate:
    """A group of images that attend to the same thing, and what hiding it does.

    Attributes
    ----------
    true_class, predicted_class : int
    kind : "mistake" or "correct"
    indices : (K,) int
        Into the audited images.
    boxes : (K, 4) int
        Each image's attended region ``(y0, x0, y1, x1)`` in image pixels (end exclusive).
    crops : (K, CROP_SIDE, CROP_SIDE, C) uint8
        The attended regions, resized.
    thumbnails : (K, THUMB_SIDE, THUMB_SIDE, 3) uint8
        The images, resized, their attended region outlined in red.
    flip_rate : float
        Share of the images whose prediction changes when the region is blurred: back to the true class for
        mistakes, away from the predicted class for correct answers.
    control_flip_rate : float
        The same for a region of the same size elsewhere in the same image.
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

    @property
    def effect(self) -> float:
        """How much more hiding the attended region flips than hiding the control region."""
        return self.flip_rate - self.control_flip_rate

    def to_dict(self, class_names=None) -> dict:
        def name(c: int):
            return class_names[c] if class_names is not None else int(c)

        return {
            "true_class": name(self.true_class), "predicted_class": name(self.predicted_class),
            "kind": self.kind, "count": len(self.indices), "indices": self.indices.tolist(),
            "boxes": self.boxes.tolist(), "flip_rate": self.flip_rate, "control_flip_rate": self.control_flip_rate,
        }  # fmt: skip


@dataclass
class Audit:
    """The result of :func:`audit`: ``candidates`` ranked most-likely-shortcut first."""

    candidates: list
    predictions: np.ndarray  # (N,) predicted class of every audited image
    labels: np.ndarray  # (N,) true class
    class_names: list | None = None
    params: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)  # (file, reason) of the inputs that could not be read

    def summary(self, top: int = 3) -> list[str]:
        """One line per leading candidate, as the command line prints them."""

        def name(c: int) -> str:
            return str(self.class_names[c]) if self.class_names is not None else str(c)

        lines = []
        for i, c in enumerate(self.candidates[:top]):
            lines.append(
                f"candidate {i + 1}: {name(c.true_class)} -> {name(c.predicted_class)} ({c.kind}, "
                f"{len(c.indices)} images): hiding the attended region flips {c.flip_rate:.0%}, a region "
                f"elsewhere {c.control_flip_rate:.0%}"
            )
        return lines or ["no group of images large enough to be a candidate"]

    def to_json(self) -> dict:
        return {
            "params": self.params,
            "images": len(self.labels),
            "mistakes": int((self.predictions != self.labels).sum()),
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "candidates": [c.to_dict(self.class_names) for c in self.candidates],
        }

    def to_html(self, folder) -> Path:
        """Write ``folder/index.html`` (the candidates, each with a strip of its attended crops, its counts
        and flip rates) and ``folder/audit.json``; returns the HTML file's path."""
        from .plotting import save_png

        folder = Path(folder)
        (folder / "crops").mkdir(parents=True, exist_ok=True)
        (folder / "audit.json").write_text(json.dumps(self.to_json(), indent=2))
        names = self.class_names

        def name(c: int) -> str:
            return str(names[c]) if names is not None else str(c)

        rows = []
        for i, cand in enumerate(self.candidates):
            strip = np.concatenate(list(cand.crops[:12]), axis=1)
            save_png(strip, folder / "crops" / f"candidate_{i}.png")
            thumbs = ""
            if cand.thumbnails is not None:
                save_png(np.concatenate(list(cand.thumbnails[:12]), axis=1), folder / "crops" / f"images_{i}.png")
                thumbs = f'<br><img src="crops/images_{i}.png" alt="the images, attended region in red" loading="lazy">'
            rows.append(
                f"<section><h2>{i + 1}. {html.escape(name(cand.true_class))} &rarr; "
                f"{html.escape(name(cand.predicted_class))} ({cand.kind}, {len(cand.indices)} images)</h2>"
                f"<p>hiding the attended region flips {cand.flip_rate:.0%} of them; a region of the same size "
                f"elsewhere flips {cand.control_flip_rate:.0%}</p>"
                f'<img src="crops/candidate_{i}.png" alt="attended regions" loading="lazy">{thumbs}'
                f"<p class=idx>images {', '.join(map(str, cand.indices[:50].tolist()))}"
                f"{' ...' if len(cand.indices) > 50 else ''}</p></section>"
            )
        page = (
            "<!doctype html><meta charset=utf-8><title>cnn-exposed audit</title>"
            "<style>body{font:14px system-ui;margin:2em}img{image-rendering:pixelated;max-width:100%}"
            ".idx{color:#666;font-size:12px}</style><h1>Candidate shortcuts</h1>"
            f"<p>{len(self.labels)} images, {int((self.predictions != self.labels).sum())} mistakes; method "
            f"{html.escape(str(self.params.get('method')))}. Ranked by how much more hiding the attended region "
            "flips the prediction than hiding a region of the same size elsewhere.</p>"
            + (
                f"<p>{len(self.skipped)} file(s) skipped: "
                + "; ".join(html.escape(f"{f}: {r}") for f, r in self.skipped[:20])
                + "</p>"
                if self.skipped
                else ""
            )
            + "".join(rows)
        )
        path = folder / "index.html"
        path.write_text(page, encoding="utf-8")
        return path


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


def audit(
    model,
    images,
    labels,
    *,
    preprocess=None,
    class_names=None,
    method: str = "gradcam",
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    min_group: int = 3,
) -> Audit:
    """Find what the model attends to in its mistakes and correct answers, and test whether it causes them.

    Parameters
    ----------
    model : keras.Model
    images : (N, H, W, C) array
        In the model's own value range, or raw pixels when ``preprocess`` is given.
    labels : (N,) int
        The true class of every image.
    method : str
        The attribution method whose map points at the attended region (any of :data:`cnn_exposed.METHODS`).
    min_group : int
        Groups and clusters with fewer images are not candidates.

    Returns
    -------
    Audit
        ``candidates`` ranked most-likely-shortcut first: by how much more hiding the attended region
        flips the prediction than hiding the control region, then by size.
    """
    batch_size = int(batch_size or DEFAULT_BATCH_SIZE)
    engine = engine_for(model)
    display, x = prepare_images(images, engine.input_shape, preprocess)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(x):
        raise InputError(f"Got {len(labels)} labels for {len(x)} images: give one true class per image.")
    rng = np.random.default_rng(seed)
    boxes = np.zeros((len(x), 4), dtype=np.int64)
    predictions = np.zeros(len(x), dtype=np.int64)
    for start in range(0, len(x), batch_size):
        part = slice(start, start + batch_size)
        exp = explain(model, x[part], method, batch_size=batch_size, progress=False)
        predictions[part] = exp.targets
        boxes[part] = [attended_box(m, x.shape[1:3]) for m in exp.maps]
    crops = np.stack([_crop(display[i], boxes[i]) for i in range(len(x))])
    thumbnails = np.stack([_thumbnail(display[i], boxes[i]) for i in range(len(x))])
    features = _crop_features(model, x, boxes, batch_size)
    controls = np.stack([control_box(b, x.shape[1:3], rng) for b in boxes])
    candidates = []
    for t in np.unique(labels):
        for p in np.unique(predictions[labels == t]):
            members = np.nonzero((labels == t) & (predictions == p))[0]
            if len(members) < min_group:
                continue
            clusters = spectral_clusters(features[members], seed=seed)
            for c in np.unique(clusters):
                idx = members[clusters == c]
                if len(idx) < min_group:
                    continue
                flip, control = _flip_rates(engine, x[idx], boxes[idx], controls[idx], int(t), int(p), batch_size)
                kind = "correct" if t == p else "mistake"
                candidates.append(
                    Candidate(int(t), int(p), kind, idx, boxes[idx], crops[idx], flip, control, thumbnails[idx])
                )
    candidates.sort(key=lambda c: (-c.effect, c.kind != "mistake", -len(c.indices)))
    names = list(class_names) if class_names is not None else None
    params = {"method": method, "seed": seed, "min_group": min_group, "blur_sigma": "1/16 of the longer side"}
    return Audit(candidates, predictions, labels, names, params)


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


def _crop_features(model, x: np.ndarray, boxes: np.ndarray, batch_size: int) -> np.ndarray:
    """What each attended region looks like to the model: the region cut out and resized to the model's
    input, through the last spatial layer, averaged over space ``(N, channels)``."""
    layer = find_last_spatial_layer(model)
    engine = engine_for(model, layer)
    h, w = x.shape[1:3]
    regions = np.stack(
        [
            cv2.resize(img[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_LINEAR).reshape(img.shape)
            for img, (y0, x0, y1, x1) in zip(x, boxes)
        ]
    ).astype(np.float32)
    acts = engine.map_batches(engine.activations, (regions,), batch_size).activations
    return acts.reshape(len(x), -1, acts.shape[-1]).mean(axis=1)


def _flip_rates(engine, x, boxes, controls, true: int, predicted: int, batch_size: int) -> tuple[float, float]:
    """Share of flips when the attended region, and when the control region, is hidden."""
    rates = []
    for hide in (boxes, controls):
        outputs, _ = engine.predict_all(_hidden(x, hide), batch_size)
        now = outputs.argmax(axis=1)
        flipped = now == true if true != predicted else now != predicted
        rates.append(float(flipped.mean()))
    return rates[0], rates[1]
