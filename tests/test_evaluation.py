"""ce.evaluate: methods x metrics with bootstrap intervals, ranks, and a recommendation that never names a method
failing the randomisation check."""

import json
import warnings

import keras
import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed.attribution import Result
from cnn_exposed.evaluation import kendall_w

SIZE = 12


def checker_model() -> tuple[keras.Model, np.ndarray]:
    """Reads only the left half of the image (a checkerboard detector there); the images carry the pattern."""
    checker = np.indices((SIZE, SIZE)).sum(0) % 2 * 2.0 - 1.0
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(2, use_bias=False, activation="softmax"),
        ]
    )
    kernel = np.zeros((SIZE, SIZE, 3, 2), np.float32)
    kernel[:, : SIZE // 2, :, 0] = 0.05 * checker[:, : SIZE // 2, None]
    model.layers[-1].set_weights([kernel.reshape(-1, 2)])
    rng = np.random.default_rng(0)
    x = 0.5 + rng.uniform(-0.05, 0.05, (6, SIZE, SIZE, 3))
    x[:, :, : SIZE // 2] += 0.3 * checker[:, : SIZE // 2, None]
    return model, x.astype(np.float32)


class _Half(ce.AttributionMethod):
    """A fixed map on one half of the image, whatever the model: it cannot pass the randomisation check."""

    columns = slice(0, 0)

    def compute(self, x, targets, images) -> Result:
        targets, scores, probs = self.resolve(x, targets)
        maps = np.zeros(x.shape[:3], np.float32)
        maps[:, :, self.columns] = np.linspace(1.0, 2.0, x.shape[1])[:, None]  # ranked within the half
        return Result(maps, targets, scores, probs)


class LeftHalf(_Half):
    name = "left_half"
    columns = slice(0, SIZE // 2)


class RightHalf(_Half):
    name = "right_half"
    columns = slice(SIZE // 2, SIZE)


FAITHFUL = ["deletion", "insertion", "faithfulness_correlation", "road", "irof"]
LIGHT = {"road": {"percentages": (25, 50)}, "irof": {"segment_options": {"n_segments": 6}}, "deletion": {"steps": 6},
         "insertion": {"steps": 6}, "faithfulness_correlation": {"runs": 20, "subset_size": 24}}  # fmt: skip


def test_the_method_pointing_at_the_region_the_model_reads_ranks_first():
    model, x = checker_model()
    ev = ce.evaluate(model, x, [RightHalf, LeftHalf], FAITHFUL, target=0, metric_options=LIGHT, sanity_images=0,
                     resamples=200)  # fmt: skip
    for metric in FAITHFUL:
        assert ev.ranks(metric) == {"left_half": 1.0, "right_half": 2.0}, metric
    rec = ev.recommend()
    assert rec.method == "left_half" and rec.first_on == 5 and rec.certainty > 0.9
    assert rec.agreement == pytest.approx(1.0)
    lo, hi = ev.interval("left_half", "irof")
    assert lo <= ev.mean("left_half", "irof") <= hi and lo < hi


def test_a_method_failing_the_randomisation_check_is_never_recommended():
    model, x = checker_model()
    ev = ce.evaluate(model, x, [LeftHalf, "saliency"], ["deletion", "irof"], target=0, metric_options=LIGHT,
                     sanity_images=4, resamples=100)  # fmt: skip
    assert ev.sanity["left_half"]["passed"] is False and ev.sanity["saliency"]["passed"] is True
    rec = ev.recommend()
    assert rec.method == "saliency" and rec.failed_sanity == ["left_half"]
    alone = ce.evaluate(model, x, [LeftHalf], ["deletion"], metric_options=LIGHT, sanity_images=4, resamples=50)
    assert alone.recommend().method is None and "no method passes" in alone.recommend().text


def test_results_do_not_depend_on_the_batch_size_or_the_source():
    model, x = checker_model()
    run = dict(metrics=["faithfulness_correlation", "random_logit", "road"], metric_options=LIGHT, sanity_images=0)
    whole = ce.evaluate(model, x, ["saliency", "gradient_x_input"], batch_size=6, **run)
    split = ce.evaluate(model, list(x), ["saliency", "gradient_x_input"], batch_size=4, **run)
    for key, values in whole.values.items():
        np.testing.assert_allclose(split.values[key], values, rtol=1e-5, atol=1e-6, err_msg=str(key))


def test_kendall_w_by_hand():
    assert kendall_w(np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3]])) == pytest.approx(1.0)
    assert kendall_w(np.array([[1, 2], [2, 1]])) == pytest.approx(0.0)
    # 3 raters, 3 items: rank sums 4, 6, 8 -> S = 8; W = 12 S / (9 · 24) = 0.444…
    assert kendall_w(np.array([[1, 2, 3], [2, 1, 3], [1, 3, 2]])) == pytest.approx(12 * 8 / (9 * 24))


def test_bad_requests_say_what_to_pass():
    model, x = checker_model()
    with pytest.raises(ValueError, match="unknown metric"):
        ce.evaluate(model, x, ["saliency"], ["faithfulness"])
    with pytest.raises(ValueError, match="need masks"):
        ce.evaluate(model, x, ["saliency"], ["pointing_game"])
    with pytest.raises(ValueError, match="Valid methods"):
        ce.evaluate(model, x, ["salency"])


def test_on_the_demo_with_masks_the_report_files_and_the_command(tmp_path):
    from cnn_exposed.cli import main

    loaded = ce.load_model("demo")
    images, labels, masks = ce.demo.load_images("trap")
    pool = np.flatnonzero(labels == ce.demo.CLASS_NAMES.index("pool"))[:6]  # the trap pools: rails in view
    ev = ce.evaluate(loaded, images[pool].astype(np.float32), ["gradcam", LeftHalf], masks=masks["rail"][pool],
                     metric_options=LIGHT, sanity_images=3, resamples=100)  # fmt: skip
    assert "relevance_rank_accuracy" in ev.metrics and ev.sanity["gradcam"]["passed"]
    assert ev.recommend().method == "gradcam" and not ev.sanity["left_half"]["passed"]
    page = ev.to_html(tmp_path / "api")
    assert "gradcam: the most faithful" in page.read_text() and (tmp_path / "api" / "evaluation.png").stat().st_size
    folder = ce.bundled.data_dir() / "demo" / "images" / "trap" / "pool"
    code = main(["evaluate", "demo", str(folder), "--method", "gradcam,saliency", "--metrics", "deletion,irof",
                 "--limit", "4", "--out", str(tmp_path / "cli")])  # fmt: skip
    assert code == 0
    saved = json.loads((tmp_path / "cli" / "evaluation.json").read_text())
    assert saved["methods"] == ["gradcam", "saliency"] and len(saved["results"]["gradcam"]["irof"]["values"]) == 4


def test_a_tf_data_pipeline_gives_the_array_result():
    import tensorflow as tf

    model, x = checker_model()
    run = dict(metrics=["deletion", "faithfulness_correlation", "sparseness"], metric_options=LIGHT, sanity_images=2,
               resamples=50)  # fmt: skip
    arrays = ce.evaluate(model, x, ["saliency"], **run)
    dataset = ce.evaluate(model, tf.data.Dataset.from_tensor_slices(x).batch(4), ["saliency"], **run)
    for key, values in arrays.values.items():
        np.testing.assert_allclose(dataset.values[key], values, rtol=1e-5, atol=1e-6, err_msg=str(key))
    assert dataset.sanity == arrays.sanity


def test_the_command_reports_a_broken_file_and_writes_the_rest(tmp_path, capsys):
    import shutil

    from cnn_exposed.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    for f in sorted((ce.bundled.data_dir() / "demo" / "images" / "trap" / "pool").glob("*.png"))[:3]:
        shutil.copy(f, folder / f.name)
    (folder / "broken.png").write_bytes(b"not a png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["evaluate", "demo", str(folder), "--method", "gradcam", "--metrics", "deletion",
                     "--out", str(tmp_path / "out")])  # fmt: skip
    assert not [w for w in caught if "broken.png" in str(w.message)]  # said once, by the command
    assert code == 0 and capsys.readouterr().out.count("broken.png: not an image") == 1
    saved = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert len(saved["results"]["gradcam"]["deletion"]["values"]) == 3
    assert saved["skipped"][0][0].endswith("broken.png")


def test_bootstrap_intervals_and_certainty_by_brute_force():
    rng = np.random.default_rng(3)
    n, methods, metrics = 30, ["a", "b", "c"], ["deletion", "insertion", "irof"]
    values = {(m, k): rng.normal(loc, 1.0, n) for m, loc in zip(methods, (0.0, 0.3, 0.35)) for k in metrics}
    ev = ce.Evaluation(methods, metrics, values, {}, confidence=0.9, resamples=400, seed=5)
    draws = np.random.default_rng(5).integers(0, n, (400, n))  # one chunk of resamples at this size
    means = {key: v[draws].mean(1) for key, v in values.items()}
    assert ev.interval("b", "irof") == pytest.approx(tuple(np.percentile(means["b", "irof"], [5, 95])))
    # deletion: lower is better; insertion and IROF: higher is better
    rank = {k: np.argsort(np.argsort(np.stack([means[m, k] for m in methods], 1) * (1 if k == "deletion" else -1),
                                     axis=1), axis=1) + 1 for k in metrics}  # fmt: skip
    mean_rank = np.mean([rank[k] for k in metrics], axis=0)
    first = mean_rank == mean_rank.min(1, keepdims=True)  # a tie for first counts for each in equal parts
    rec = ev.recommend()
    assert rec.certainty == pytest.approx(np.mean(first[:, methods.index(rec.method)] / first.sum(1)))
    assert 0 < rec.certainty < 1 and np.any(first.sum(1) > 1)  # the three are close; some resamples tie


def test_two_methods_alike_share_the_certainty_and_a_metric_alike_for_all_is_left_out():
    rng = np.random.default_rng(4)
    n = 40
    same = {k: rng.normal(0.0, 1.0, n) for k in ("deletion", "insertion")}
    values = {("a", k): v for k, v in same.items()} | {("b", k): v.copy() for k, v in same.items()}
    values |= {("c", "deletion"): same["deletion"] + 3.0, ("c", "insertion"): same["insertion"] - 3.0}
    flat = rng.uniform(0, 1, n)  # IROF: the model's score hardly followed what was hidden, alike for all
    values |= {(m, "irof"): flat + 1e-4 * i for i, m in enumerate("abc")}
    ev = ce.Evaluation(["a", "b", "c"], ["deletion", "insertion", "irof"], values, {}, resamples=200)
    rec = ev.recommend()
    assert rec.method == "a" and rec.certainty == pytest.approx(0.5)  # a and b tie in every resample
    assert rec.uninformative == ["irof"] and rec.faithfulness_metrics == ["deletion", "insertion"]
    assert "the model's score hardly follows what is hidden there): irof." in rec.text
    one = ce.Evaluation(["a", "b", "c"], ["deletion", "irof"], values, {}, resamples=50).recommend()
    assert one.method == "a" and "one metric, so no agreement between metrics to measure" in one.text


def test_no_recommendation_when_the_model_does_not_follow_what_is_hidden():
    """An untrained head whose weights are all zero: every probability is 1/3 whatever the image, so every
    method's deletion and insertion curves are flat and the same, and no method can be called most faithful."""
    model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(2, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax",
                                                                         kernel_initializer="zeros")])  # fmt: skip
    x = np.random.default_rng(0).uniform(0, 1, (4, 12, 12, 3)).astype(np.float32)
    ev = ce.evaluate(model, x, ["saliency", "gradcam"], ["deletion", "insertion"], sanity_images=0, resamples=50)
    rec = ev.recommend()
    assert rec.method is None and rec.uninformative == ["deletion", "insertion"]
    assert "no faithfulness metric tells the methods apart" in rec.text
