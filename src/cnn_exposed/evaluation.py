"""Which explanation should I trust for my model? Every chosen method scored by every chosen metric, with the
uncertainty over images, and a recommendation.

:func:`evaluate` reads the images a batch at a time (any source :mod:`cnn_exposed.sources` reads): each method
explains the batch once and every metric scores that explanation, so memory holds one batch and the per-image
values. The randomisation check (Adebayo et al. 2018) runs on the first ``sanity_images`` images: a method whose
maps survive a fully randomised model does not explain the model and is never recommended.

:meth:`Evaluation.recommend` names the method that passes the sanity checks and is most faithful (the best mean
rank over the faithfulness metrics), and says how sure that is: the share of bootstrap resamples of the images
in which it stays first, how many faithfulness metrics put it first, whether its confidence intervals overlap
the runner-up's, and how far the metrics agree (Kendall's W); the literature warns that they often disagree
(Hedström et al. 2023).
"""

from __future__ import annotations

import base64
import html
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import faithfulness as fa
from . import metrics as mt
from .engine import DEFAULT_BATCH_SIZE
from .models import unwrap_loaded


@dataclass(frozen=True)
class Metric:
    """How a metric is read: its group, whether higher is better, whether it needs masks."""

    group: str
    higher_is_better: bool
    label: str
    needs_masks: bool = False
    span: float = 1.0  # the width of its values' natural range (AUCs of probabilities: 1; correlations: 2)


METRICS: dict[str, Metric] = {
    "deletion": Metric("faithfulness", False, "deletion AUC"),
    "insertion": Metric("faithfulness", True, "insertion AUC"),
    "faithfulness_correlation": Metric("faithfulness", True, "faithfulness corr.", span=2.0),
    "road": Metric("faithfulness", False, "ROAD MoRF AUC"),
    "irof": Metric("faithfulness", True, "IROF"),
    "average_drop": Metric("faithfulness", False, "average drop %", span=100.0),
    "pointing_game": Metric("localisation", True, "pointing game", True),
    "relevance_rank_accuracy": Metric("localisation", True, "rank accuracy", True),
    "relevance_mass_accuracy": Metric("localisation", True, "mass accuracy", True),
    "sparseness": Metric("complexity", True, "sparseness"),
    "complexity": Metric("complexity", False, "complexity"),
    "random_logit": Metric("sanity", False, "random logit SSIM"),
    "average_sensitivity": Metric("robustness", False, "avg. sensitivity"),
}
DEFAULT_METRICS = (
    "deletion", "insertion", "faithfulness_correlation", "road", "irof", "sparseness", "complexity", "random_logit",
)  # fmt: skip
NEGLIGIBLE = 1e-3  # methods whose means differ by less than this share of a metric's span are not told apart
DEFAULT_METHODS = ("gradcam", "gradcam++", "saliency", "integrated_gradients", "occlusion", "lrp")
# lighter than each metric's published default, so that evaluate costs a few passes per method and image
FAST_SETTINGS: dict[str, dict] = {
    "deletion": {"steps": 16},
    "insertion": {"steps": 16},
    "faithfulness_correlation": {"runs": 50},
    "road": {"percentages": (10, 30, 50, 70, 90)},
    "irof": {"segment_options": {"n_segments": 30, "compactness": 10.0, "sigma": 0.0}},
    "average_sensitivity": {"samples": 5},
}


@dataclass
class Recommendation:
    """What :meth:`Evaluation.recommend` concludes (``method`` None when no method passes the sanity checks)."""

    method: str | None
    runner_up: str | None
    certainty: float  # share of bootstrap resamples of the images in which ``method`` stays first
    first_on: int  # how many faithfulness metrics rank it first
    faithfulness_metrics: list
    overlapping: list  # faithfulness metrics on which its interval overlaps the runner-up's
    agreement: float  # Kendall's W of the faithfulness metrics' rankings (1: they agree)
    failed_sanity: list
    text: str
    uninformative: list = field(default_factory=list)  # faithfulness metrics that cannot tell the methods apart


@dataclass
class Evaluation:
    """Per method × metric: per-image values, their mean, a bootstrap confidence interval and ranks.

    Attributes
    ----------
    values : dict (method, metric) -> (N,) float
    sanity : dict method -> dict with ``passed``, ``spearman_abs`` (the randomisation check's last step: below
        its threshold 0.5 passes) and ``emprt`` (efficient MPRT on the same maps, higher is better)
    """

    methods: list
    metrics: list
    values: dict
    sanity: dict
    confidence: float = 0.95
    resamples: int = 1000
    seed: int = 0
    settings: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)  # (file, reason) of unreadable files
    _boot: dict | None = field(default=None, init=False, repr=False)

    def bootstrap_means(self) -> dict:
        """(method, metric) -> the mean over images in each of ``resamples`` resamples of the images, ``(R,)``. The
        same resamples serve every method and metric (paired), drawn a few at a time so that memory stays about
        two million indices whatever the number of images; computed once."""
        if self._boot is None:
            n = len(next(iter(self.values.values())))
            rng = np.random.default_rng(self.seed)
            chunk = max(1, min(self.resamples, 2_000_000 // max(n, 1)))
            parts: dict = {key: [] for key in self.values}
            done = 0
            while done < self.resamples:
                draw = rng.integers(0, n, (min(chunk, self.resamples - done), n))
                with np.errstate(invalid="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # a resample of NaNs only: its mean is NaN
                    for key, v in self.values.items():
                        parts[key].append(np.nanmean(v[draw], axis=1) if n else np.full(len(draw), np.nan))
                done += len(draw)
            self._boot = {key: np.concatenate(v) for key, v in parts.items()}
        return self._boot

    def mean(self, method: str, metric: str) -> float:
        return float(np.nanmean(self.values[method, metric])) if len(self.values[method, metric]) else np.nan

    def interval(self, method: str, metric: str) -> tuple[float, float]:
        """Percentile bootstrap interval of the mean over images (the same resamples for every method)."""
        means = self.bootstrap_means()[method, metric]
        tail = 100 * (1 - self.confidence) / 2
        return float(np.nanpercentile(means, tail)), float(np.nanpercentile(means, 100 - tail))

    def ranks(self, metric: str, methods: Sequence[str] | None = None) -> dict:
        """Rank of each method on ``metric`` (1 is best, ties share the mean rank)."""
        methods = list(methods or self.methods)
        means = np.array([[self.mean(m, metric) for m in methods]])
        return dict(zip(methods, _rank_rows(means, metric)[0]))

    def _faithfulness(self) -> list:
        return [k for k in self.metrics if METRICS[k].group == "faithfulness"]

    def uninformative(self, methods: Sequence[str] | None = None) -> list:
        """The faithfulness metrics that cannot tell ``methods`` apart: their means differ by less than
        :data:`NEGLIGIBLE` of the metric's span (0.001 of an AUC of probabilities). A model whose score does not
        follow what is hidden gives every map the same curve: an untrained one whose probabilities stay uniform,
        or a confident one whose probabilities stay saturated near 1 (score logits there, where the metric can:
        ``metric_options={"deletion": {"score": "logit"}}``)."""
        methods = list(methods or self.methods)
        out = []
        for k in self._faithfulness():
            means = np.array([self.mean(m, k) for m in methods])
            if not np.isfinite(means).any() or np.nanmax(means) - np.nanmin(means) < NEGLIGIBLE * METRICS[k].span:
                out.append(k)
        return out

    def recommend(self) -> Recommendation:
        """The method that passes the sanity checks and is most faithful on this model, and how sure that is."""
        failed = [m for m in self.methods if not self.sanity.get(m, {}).get("passed", True)]
        eligible = [m for m in self.methods if m not in failed]
        dead = self.uninformative(eligible) if len(eligible) > 1 else []
        faith = [k for k in self._faithfulness() if k not in dead]
        if not eligible or not faith:
            why = (
                "no method passes the randomisation check" if not eligible
                else f"no faithfulness metric tells the methods apart on this model ({', '.join(dead)}: the methods' "
                f"means differ by less than {NEGLIGIBLE:g} of each metric's span, so the model's score hardly follows "
                "what is hidden)" if dead
                else "no faithfulness metric was run"
            )  # fmt: skip
            return Recommendation(None, None, 0.0, 0, faith, [], np.nan, failed, f"No recommendation: {why}.", dead)
        per_metric = {k: self.ranks(k, eligible) for k in faith}
        order = sorted(eligible, key=lambda m: (np.mean([per_metric[k][m] for k in faith]), eligible.index(m)))
        best, runner = order[0], (order[1] if len(order) > 1 else None)
        certainty = self._certainty(eligible, faith, best)
        first_on = sum(per_metric[k][best] == 1 for k in faith)
        overlapping = []
        if runner is not None:
            for k in faith:
                (a, b), (c, d) = self.interval(best, k), self.interval(runner, k)
                if a <= d and c <= b:
                    overlapping.append(k)
        agreement = kendall_w(np.array([[per_metric[k][m] for m in eligible] for k in faith]))
        text = (
            f"{best}: the most faithful of the {len(eligible)} method(s) that pass the randomisation check "
            f"(mean rank {np.mean([per_metric[k][best] for k in faith]):.1f} over {len(faith)} faithfulness "
            f"metrics; first on {first_on} of {len(faith)}). It stays first in {100 * certainty:.0f} % of "
            f"bootstrap resamples of the images"
            + (f"; its {int(100 * self.confidence)} % intervals overlap {runner}'s on {len(overlapping)} of "
               f"{len(faith)} metrics" if runner else "")
            + (f". The metrics' rankings agree with Kendall's W = {agreement:.2f} (1: fully)." if len(faith) > 1
               else ": one metric, so no agreement between metrics to measure.")
            + (f" Left out, as the methods' means differ by less than {NEGLIGIBLE:g} of the metric's span (the "
               f"model's score hardly follows what is hidden there): {', '.join(dead)}." if dead else "")
            + (f" Failed the randomisation check (never recommended): {', '.join(failed)}." if failed else "")
        )  # fmt: skip
        return Recommendation(best, runner, certainty, first_on, faith, overlapping, agreement, failed, text, dead)

    def _certainty(self, eligible: list, faith: list, best: str) -> float:
        """Share of bootstrap resamples in which ``best`` has the lowest mean rank over ``faith``; a resample where
        several methods tie for first counts for each of them in equal parts."""
        boot = self.bootstrap_means()
        per_resample = np.mean(
            [_rank_rows(np.stack([boot[m, k] for m in eligible], axis=1), k) for k in faith], axis=0
        )  # (R, methods): each resample's mean rank over the faithfulness metrics
        tied = np.isclose(per_resample, per_resample.min(axis=1, keepdims=True), rtol=0, atol=1e-9)
        return float(np.mean(tied[:, eligible.index(best)] / tied.sum(axis=1)))

    def table(self) -> str:
        """A Markdown table: per method, each metric's mean [interval] (rank), and the sanity verdict."""
        head = ["method", *(METRICS[k].label + (" ↑" if METRICS[k].higher_is_better else " ↓") for k in self.metrics)]
        lines = ["| " + " | ".join(head + ["randomisation"]) + " |", "|" + "---|" * (len(head) + 1)]
        ranks = {k: self.ranks(k) for k in self.metrics}
        for m in self.methods:
            cells = [m]
            for k in self.metrics:
                lo, hi = self.interval(m, k)
                cells.append(f"{self.mean(m, k):.3g} [{lo:.3g}, {hi:.3g}] ({ranks[k][m]:g})")
            cells.append(_sanity_word(self.sanity.get(m)))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self):
        """Methods × metrics at a glance: colour is the rank (green best), text the mean and its interval;
        the recommended method's row is framed, methods failing the randomisation check are marked."""
        return _plot(self)

    def to_dict(self) -> dict:
        rec = self.recommend()
        return {
            "methods": self.methods,
            "metrics": self.metrics,
            "settings": self.settings,
            "sanity": self.sanity,
            "skipped": [list(s) for s in self.skipped],
            "results": {
                m: {
                    k: {
                        "mean": self.mean(m, k),
                        "interval": list(self.interval(m, k)),
                        "rank": float(self.ranks(k)[m]),
                        "values": [float(v) for v in self.values[m, k]],
                    }
                    for k in self.metrics
                }
                for m in self.methods
            },  # fmt: skip
            "recommendation": {
                key: getattr(rec, key)
                for key in (
                    "method",
                    "runner_up",
                    "certainty",
                    "first_on",
                    "overlapping",
                    "agreement",
                    "uninformative",
                    "text",
                )
            },
        }

    def html_section(self, figure: str = "evaluation.png") -> str:
        """The evaluation as an HTML ``<section>`` (the recommendation, the figure and the table)."""
        return _html_section(self, figure)

    def to_html(self, out) -> Path:
        """Write ``out/evaluation.html`` (self-contained: the figure is embedded), ``out/evaluation.png`` and
        ``out/evaluation.json``; returns the HTML file's path."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        fig = self.plot()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        (out / "evaluation.png").write_bytes(buffer.getvalue())
        import matplotlib.pyplot as plt

        plt.close(fig)
        data = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>cnn-exposed: which explanation to trust"
            "</title><style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
            "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}.rec{font-size:17px;background:#eef7ee;"
            "padding:10px}</style></head><body>" + self.html_section(data) + "</body></html>"
        )
        (out / "evaluation.html").write_text(page, encoding="utf-8")
        (out / "evaluation.json").write_text(json.dumps(self.to_dict(), indent=1, default=_json_default))
        return out / "evaluation.html"


def _rank_rows(means: np.ndarray, metric: str) -> np.ndarray:
    """Ranks (1 best, ties averaged, NaN last) of each row of ``means`` ``(R, methods)`` on ``metric``."""
    signed = np.where(np.isnan(means), np.inf, -means if METRICS[metric].higher_is_better else means)
    return fa.average_ranks(signed) + 1


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def _sanity_word(result) -> str:
    if not result:
        return "-"
    verdict = "passes" if result["passed"] else "FAILS"
    return f"{verdict} (ρ {result['spearman_abs']:.2f}, eMPRT {result['emprt']:.2f})"


def kendall_w(ranks: np.ndarray) -> float:
    """Kendall's coefficient of concordance of ``ranks`` (raters × items, ranks 1 … n): 1 when every rater ranks
    the items alike, 0 when they share nothing (no tie correction). NaN for fewer than two items or raters."""
    m, n = ranks.shape
    if m < 2 or n < 2:
        return float("nan")
    totals = ranks.sum(0)
    s = ((totals - totals.mean()) ** 2).sum()
    return float(12 * s / (m**2 * (n**3 - n)))


def _html_section(ev: Evaluation, figure: str) -> str:
    rec = ev.recommend()
    rows = ev.table().splitlines()
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in rows[0].strip("|").split("|"))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r.strip("|").split("|")) + "</tr>"
        for r in rows[2:]
    )
    settings = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in ev.settings.items())
    settings += "".join(f"<li>skipped {html.escape(f)}: {html.escape(r)}</li>" for f, r in ev.skipped)
    return (
        "<section id='evaluation'><h2>Which explanation should I trust?</h2>"
        f"<p class='rec'>{html.escape(rec.text)}</p>"
        f"<img src='{html.escape(figure)}' alt='methods by metrics: ranks and intervals' style='max-width:100%'>"
        f"<table><tr>{head}</tr>{body}</table>"
        "<p>Each cell: mean over images [bootstrap interval] (rank, 1 best). ↑ higher is better, ↓ lower.</p>"
        f"<ul>{settings}</ul></section>"
    )


def _plot(ev: Evaluation):
    import matplotlib.pyplot as plt

    rec = ev.recommend()
    n_m, n_k = len(ev.methods), len(ev.metrics)
    ranks = np.array([[ev.ranks(k)[m] for k in ev.metrics] for m in ev.methods])
    fig, ax = plt.subplots(figsize=(1.45 * n_k + 2.2, 0.55 * n_m + 1.6))
    ax.imshow(ranks, cmap="RdYlGn_r", vmin=1, vmax=max(n_m, 2), aspect="auto", alpha=0.7)
    for i, m in enumerate(ev.methods):
        for j, k in enumerate(ev.metrics):
            lo, hi = ev.interval(m, k)
            ax.text(j, i, f"{ev.mean(m, k):.2f}\n[{lo:.2f}, {hi:.2f}]", ha="center", va="center", fontsize=7)
    labels = [METRICS[k].label + (" ↑" if METRICS[k].higher_is_better else " ↓") for k in ev.metrics]
    ax.set_xticks(range(n_k), labels, rotation=30, ha="right", fontsize=8)
    names = [m + ("" if ev.sanity.get(m, {}).get("passed", True) else "  ✗ randomisation") for m in ev.methods]
    ax.set_yticks(range(n_m), names, fontsize=8)
    if rec.method is not None:
        i = ev.methods.index(rec.method)
        ax.add_patch(plt.Rectangle((-0.5, i - 0.5), n_k, 1, fill=False, lw=2.5, ec="black"))
    title = f"recommended: {rec.method} (first in {100 * rec.certainty:.0f} % of resamples)" if rec.method else (
        "no method passes the randomisation check")  # fmt: skip
    ax.set_title(f"colour: rank (green best) · {title}", fontsize=9)
    fig.tight_layout()
    return fig


def _metric_values(metric: str, model, images, exp, preprocess, first: int, options: dict, masks):
    """One metric's per-image values for one batch's explanation."""
    common = dict(target=exp.targets, preprocess=preprocess, first=first, **options)
    if metric in ("deletion", "insertion"):
        curve = fa.deletion_curve if metric == "deletion" else fa.insertion_curve
        return curve(model, images, exp.maps, **common).auc
    if metric == "road":
        return fa.road(model, images, exp.maps, **common).auc
    if metric in ("faithfulness_correlation", "irof", "average_drop"):
        return getattr(fa, metric)(model, images, exp, **common)
    if metric in ("sparseness", "complexity"):
        return getattr(mt, metric)(exp)
    if metric == "pointing_game":
        return mt.pointing_game(exp.maps, masks).astype(float)
    if metric in ("relevance_rank_accuracy", "relevance_mass_accuracy"):
        return getattr(mt, metric)(exp.maps, masks)
    raise ValueError(f"no such metric: {metric!r}")


def _check(methods, metric_names, masks) -> None:
    from .attribution import method_class

    for m in methods:
        method_class(m)  # an unknown name lists the methods
    unknown = [k for k in metric_names if k not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}: use some of {', '.join(METRICS)}.")
    if masks is None and any(METRICS[k].needs_masks for k in metric_names):
        raise ValueError(
            f"{[k for k in metric_names if METRICS[k].needs_masks]} need masks: pass masks=, one (H, W) per image."
        )


def evaluate(
    model, images, methods: Sequence[str] = DEFAULT_METHODS, metrics: Sequence[str] | None = None, *,
    masks=None, preprocess=None, target="predicted", options: dict | None = None, metric_options: dict | None = None,
    sanity_images: int = 8, seed: int = 0, batch_size: int | None = None, resamples: int = 1000,
    confidence: float = 0.95, progress: bool = False,
) -> Evaluation:  # fmt: skip
    """Score every method in ``methods`` by every metric in ``metrics`` on ``images``; see the module notes.

    ``methods``: names from ``ce.METHODS`` or :class:`~cnn_exposed.AttributionMethod` subclasses (keyed by their
    ``name``). ``metrics``: names from :data:`METRICS` (default :data:`DEFAULT_METRICS`, plus the localisation
    metrics when ``masks`` are given); ``masks``: one ``(H, W)`` bool mask per image, in order. ``options``: per
    method, as :func:`cnn_exposed.explain` takes them; ``metric_options``: per metric, replacing
    :data:`FAST_SETTINGS` (the lighter settings used here, e.g. 50 runs of faithfulness correlation instead of
    Quantus' 100). ``target`` as :func:`cnn_exposed.explain`. The randomisation check randomises every weighted
    layer (top down, as the full check's last step) and explains the first ``sanity_images`` images again. Bootstrap
    intervals: ``resamples`` resamples of the images, ``confidence`` level; everything is seeded by ``seed``."""
    from tqdm.auto import tqdm

    from . import sources
    from .attribution import make_method
    from .robustness import average_sensitivity

    model, preprocess = unwrap_loaded(model, preprocess)
    metric_names = list(metrics or DEFAULT_METRICS)
    if metrics is None and masks is not None:
        metric_names += ["pointing_game", "relevance_rank_accuracy", "relevance_mass_accuracy"]
    _check(methods, metric_names, masks)
    given = {(m if isinstance(m, str) else m.name or m.__name__): m for m in methods}  # a class: its name
    methods = list(given)
    options, metric_options = options or {}, metric_options or {}
    settings = {k: {**FAST_SETTINGS.get(k, {}), **metric_options.get(k, {})} for k in metric_names}
    explainers = {
        m: make_method(model, given[m], preprocess=preprocess, progress=False, **options.get(m, {})) for m in methods
    }
    values: dict = {(m, k): [] for m in methods for k in metric_names}
    held, skipped, done = [], [], 0
    batches = fa.metric_batches(images, next(iter(explainers.values())).engine, int(batch_size or DEFAULT_BATCH_SIZE))
    for batch in tqdm(batches, desc="evaluating", unit="batch", disable=not progress):
        skipped += batch.skipped
        if done < sanity_images:
            held.append(_first(batch.images, sanity_images - done))
        part = None if masks is None else np.asarray(masks)[batch.index].astype(bool)
        for m, explainer in explainers.items():
            exp = explainer.explain(batch.images, target=sources.batch_target(target, batch))
            for k in metric_names:
                if k == "random_logit":
                    found = mt.ssim(exp.maps, mt.other_class_maps(explainer, batch.images, exp, batch.index, seed))
                elif k == "average_sensitivity":
                    found = average_sensitivity(
                        model, batch.images, given[m], preprocess=preprocess, target=exp.targets, seed=seed,
                        **settings[k], **options.get(m, {}),
                    )  # fmt: skip
                else:
                    found = _metric_values(k, model, batch.images, exp, preprocess, done, settings[k], part)
                values[m, k].append(np.asarray(found, float))
        done += len(batch.index)
    values = {key: np.concatenate(v) for key, v in values.items()}
    sanity = _sanity(model, _join(held), given, preprocess, options, seed) if sanity_images else {}
    meta = {"images": done, "methods": ", ".join(methods), "randomisation check on": min(done, sanity_images),
            **{f"{k} settings": v for k, v in settings.items() if v}}  # fmt: skip
    return Evaluation(methods, metric_names, values, sanity, confidence, resamples, seed, meta, skipped)


def _first(images, n: int):
    if isinstance(images, dict):
        return {k: v[:n] for k, v in images.items()}
    return np.asarray(images)[:n]


def _join(parts: list):
    if parts and isinstance(parts[0], dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def _sanity(model, images, given: dict, preprocess, options, seed) -> dict:
    out = {}
    for m, method in given.items():
        check = mt.randomisation_check(
            model, images, method, preprocess=preprocess, seed=seed, final_only=True, **options.get(m, {})
        )
        emprt = float(np.nanmean(mt.entropy_rise(check.maps[0], check.maps[-1])))
        out[m] = {"passed": bool(check.passed), "spearman_abs": float(check.spearman_abs[-1].mean()), "emprt": emprt}
    return out
