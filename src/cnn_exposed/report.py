"""The static HTML report of a batch run: gallery, confusion pairs, settings, skipped files.

The page is one ``index.html`` beside an ``images/`` folder of PNGs; it needs no server, no network and
no JavaScript, so it opens from disk and can be zipped and mailed.
"""

from __future__ import annotations

import csv
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .plotting import colorize, overlay_heatmap, save_png

THUMB = 160  # px, the width images are shown at


@dataclass
class ImageRecord:
    """One explained image: where it came from, what the model said, and its overlay files."""

    index: int
    source: str
    original: str  # relative path of the saved (resized) image
    prediction: int
    probability: float
    true_label: int | None
    overlays: dict = field(default_factory=dict)  # method -> relative path
    targets: dict = field(default_factory=dict)  # method -> explained class
    scores: dict = field(default_factory=dict)  # method -> explained score
    peaks: dict = field(default_factory=dict)  # method -> (row, col) of the map's maximum, as fractions


@dataclass
class Report:
    """Collects results batch by batch, then writes ``index.html``, ``summary.json`` and ``summary.csv``."""

    out_dir: Path
    class_names: list
    methods: list
    settings: dict
    records: list = field(default_factory=list)
    problems: list = field(default_factory=list)  # (file, reason)
    _pair_sums: dict = field(default_factory=dict)  # (true, pred) -> method -> summed map
    _pair_counts: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        (self.out_dir / "images").mkdir(parents=True, exist_ok=True)

    def name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)

    def add_problem(self, source: str | Path, reason: str) -> None:
        self.problems.append((str(source), reason))

    def add(self, source: str, image: np.ndarray, probs: np.ndarray, true_label, explanations: dict) -> None:
        """Record one image: ``explanations`` maps method name -> (map (H, W), target, score)."""
        index = len(self.records)
        stem = f"{index:04d}_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source).stem)[:40]
        original = f"images/{stem}.png"
        save_png(image, self.out_dir / original)
        pred = int(np.argmax(probs))
        rec = ImageRecord(index, str(source), original, pred, float(probs[pred]), true_label)
        for method, (heat, target, score) in explanations.items():
            rel = f"images/{stem}_{re.sub(r'[^A-Za-z0-9]+', '', method)}.png"
            save_png(overlay_heatmap(image, heat), self.out_dir / rel)
            rec.overlays[method] = rel
            rec.targets[method] = int(target)
            rec.scores[method] = float(score)
            row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
            rec.peaks[method] = (round(row / heat.shape[0], 4), round(col / heat.shape[1], 4))
            if true_label is not None and true_label != pred:
                sums = self._pair_sums.setdefault((true_label, pred), {})
                sums[method] = sums.get(method, 0.0) + heat.astype(np.float64)
        if true_label is not None and true_label != pred:
            self._pair_counts[(true_label, pred)] = self._pair_counts.get((true_label, pred), 0) + 1
        self.records.append(rec)

    # ------------------------------------------------------------------ output
    def confusion_pairs(self) -> list:
        """``[(true, predicted, count)]``, largest first."""
        return sorted(((t, p, c) for (t, p), c in self._pair_counts.items()), key=lambda r: (-r[2], r[0], r[1]))

    def _summary_rows(self) -> list[dict]:
        rows = []
        for r in self.records:
            row = {
                "file": r.source,
                "true_label": None if r.true_label is None else self.name(r.true_label),
                "prediction": self.name(r.prediction),
                "probability": round(r.probability, 6),
            }
            for m in self.methods:
                if m in r.targets:
                    row[f"{m}_target"] = self.name(r.targets[m])
                    row[f"{m}_score"] = round(r.scores[m], 6)
                    row[f"{m}_peak_row"], row[f"{m}_peak_col"] = r.peaks[m]
            rows.append(row)
        return rows

    def write(self) -> Path:
        """Write the report files; returns the path of ``index.html``."""
        rows = self._summary_rows()
        summary = {
            "settings": self.settings,
            "class_names": list(self.class_names),
            "images": rows,
            "skipped": [{"file": f, "reason": why} for f, why in self.problems],
            "confusion_pairs": [
                {"true": self.name(t), "predicted": self.name(p), "count": c} for t, p, c in self.confusion_pairs()
            ],
        }
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        fields = list(dict.fromkeys(k for row in rows for k in row)) or ["file"]
        with open(self.out_dir / "summary.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        page = self.out_dir / "index.html"
        page.write_text(self._html(), encoding="utf-8")
        return page

    def _pair_mean_images(self, true: int, pred: int) -> dict:
        out = {}
        n = self._pair_counts[(true, pred)]
        for method, total in self._pair_sums.get((true, pred), {}).items():
            mean = total / n
            span = mean.max() - mean.min()
            mean = (mean - mean.min()) / span if span > 0 else np.zeros_like(mean)
            rel = f"images/pair_{true}_{pred}_{re.sub(r'[^A-Za-z0-9]+', '', method)}.png"
            save_png(colorize(mean), self.out_dir / rel)
            out[method] = rel
        return out

    def _card(self, r: ImageRecord) -> str:
        e = html.escape
        wrong = r.true_label is not None and r.true_label != r.prediction
        true = "" if r.true_label is None else f"true <b>{e(self.name(r.true_label))}</b> · "
        cells = [
            f'<figure><img src="{e(r.original)}" alt="original {e(Path(r.source).name)}" width="{THUMB}">'
            f"<figcaption>original</figcaption></figure>"
        ]
        for m in self.methods:
            if m in r.overlays:
                cells.append(
                    f'<figure><img src="{e(r.overlays[m])}" alt="{e(m)} heatmap" width="{THUMB}">'
                    f"<figcaption>{e(m)}<br>{e(self.name(r.targets[m]))} {r.scores[m]:.2f}"
                    "</figcaption></figure>"
                )
        return (
            f'<div class="card{" wrong" if wrong else ""}"><div class="caption">'
            f'<span class="file" title="{e(r.source)}">{e(Path(r.source).name)}</span> · {true}'
            f"pred <b>{e(self.name(r.prediction))}</b> {r.probability:.2f}</div>"
            f'<div class="row">{"".join(cells)}</div></div>'
        )

    def _html(self) -> str:
        e = html.escape
        n = len(self.records)
        labelled = [r for r in self.records if r.true_label is not None]
        correct = sum(r.true_label == r.prediction for r in labelled)
        parts = [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<title>cnn-exposed report: {e(str(self.settings.get('model', '')))}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>cnn-exposed report <small>{e(str(self.settings.get('model', '')))}</small></h1>",
            f"<p class='summary'>{n} image(s) explained with {e(', '.join(self.methods))}"
            + (f"; accuracy on labelled images {correct}/{len(labelled)}" if labelled else "")
            + (f"; <a href='#skipped'>{len(self.problems)} file(s) skipped</a>" if self.problems else "")
            + ". Heatmaps: red = most evidence for the explained class.</p>",
            "<nav><a href='#pairs'>Confusion pairs</a> · <a href='#gallery'>Gallery</a> · "
            "<a href='#settings'>Settings</a> · <a href='summary.json'>summary.json</a> · "
            "<a href='summary.csv'>summary.csv</a></nav>",
        ]
        pairs = self.confusion_pairs()
        parts.append("<section id='pairs'><h2>Mistakes by confusion pair</h2>")
        if not labelled:
            parts.append("<p>No true labels: give a folder of class sub-folders to see mistakes grouped here.</p>")
        elif not pairs:
            parts.append("<p>No mistakes among the labelled images.</p>")
        for t, p, c in pairs:
            means = self._pair_mean_images(t, p)
            parts.append(
                f"<div class='pair'><h3>{e(self.name(t))} → {e(self.name(p))} "
                f"<small>{c} image(s)</small></h3><div class='row'>"
            )
            for m in self.methods:
                if m in means:
                    parts.append(
                        f"<figure><img src='{e(means[m])}' alt='mean {e(m)} heatmap' width='{THUMB}'>"
                        f"<figcaption>mean {e(m)}</figcaption></figure>"
                    )
            parts.append("</div>")
            for r in self.records:
                if r.true_label == t and r.prediction == p:
                    parts.append(self._card(r))
            parts.append("</div>")
        parts.append("</section><section id='gallery'><h2>All images</h2>")
        parts += [self._card(r) for r in self.records]
        parts.append("</section>")
        if self.problems:
            parts.append("<section id='skipped'><h2>Skipped files</h2><table><tr><th>file</th><th>reason</th></tr>")
            parts += [f"<tr><td>{e(f)}</td><td>{e(why)}</td></tr>" for f, why in self.problems]
            parts.append("</table></section>")
        parts.append("<section id='settings'><h2>Settings</h2><table>")
        parts += [f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in self.settings.items()]
        parts.append("</table></section></body></html>")
        return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem;color:#222;
background:#fafafa}
h1 small,h3 small{color:#777;font-weight:normal}
nav{margin:.5rem 0 1rem}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem;margin:.5rem 0;
display:inline-block}
.card.wrong{border-color:#d33;box-shadow:0 0 0 1px #d33}
.caption{font-size:.85rem;margin-bottom:.3rem}
.file{font-family:monospace}
.row{display:flex;flex-wrap:wrap;gap:.4rem}
figure{margin:0;text-align:center;font-size:.75rem}
figure img{display:block;image-rendering:pixelated;border-radius:3px}
.pair{border-left:4px solid #d33;padding-left:.8rem;margin:1rem 0}
table{border-collapse:collapse;font-size:.85rem}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
"""
