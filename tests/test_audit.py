"""The dataset audit: attended regions, clusters by what is attended, and the causal flip test."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest

import cnn_exposed as ce
from cnn_exposed.audit import attended_box, audit, control_box, spectral_clusters


def test_the_attended_box_is_the_region_around_the_peak_grown_to_a_minimum_size():
    heat = np.zeros((32, 32), np.float32)
    heat[10:20, 4:9] = 0.5
    heat[14, 6] = 1.0  # the peak, inside the blob
    heat[25:30, 25:30] = 0.9  # a second blob, not connected to the peak
    np.testing.assert_array_equal(attended_box(heat, (32, 32)), [10, 4, 20, 9])
    dot = np.zeros((32, 32), np.float32)
    dot[0, 31] = 1.0  # a single pixel in the corner: grown to 4 x 4 (1/8 of 32), inside the image
    np.testing.assert_array_equal(attended_box(dot, (32, 32)), [0, 28, 4, 32])
    # a coarse map (a CAM) is read at the image's resolution
    coarse = np.zeros((4, 4), np.float32)
    coarse[1, 1] = 1.0
    y0, x0, y1, x1 = attended_box(coarse, (64, 64))
    assert y0 < 24 < y1 and x0 < 24 < x1 and (y1 - y0) < 48


def test_the_control_box_has_the_same_size_and_avoids_the_attended_one():
    rng = np.random.default_rng(0)
    box = np.array([8, 8, 20, 24])
    for _ in range(20):
        c = control_box(box, (64, 64), rng)
        assert (c[2] - c[0], c[3] - c[1]) == (12, 16)
        assert 0 <= c[0] and c[2] <= 64 and 0 <= c[1] and c[3] <= 64
        assert min(box[2], c[2]) <= max(box[0], c[0]) or min(box[3], c[3]) <= max(box[1], c[1])  # no overlap


def test_spectral_clustering_finds_the_number_of_groups_itself():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16)) * 5
    points = np.concatenate([c + rng.normal(size=(12, 16)) * 0.3 for c in centres])
    labels = spectral_clusters(points, seed=0)
    assert len(np.unique(labels)) == 3
    for g in range(3):  # each true group is one cluster
        assert len(np.unique(labels[g * 12 : (g + 1) * 12])) == 1
    one = spectral_clusters(rng.normal(size=(15, 16)) * 0.1 + centres[0], seed=0)
    assert len(np.unique(one)) == 1  # a single blob is not cut


@pytest.fixture(scope="module")
def demo_audit():
    loaded = ce.load_model("demo")
    clean, clean_labels, clean_masks = ce.demo.generate(90, "clean", seed=5)
    trap, trap_labels, trap_masks = ce.demo.generate(30, "trap", seed=5)
    images = np.concatenate([clean, trap])
    labels = np.concatenate([clean_labels, trap_labels])
    rails = np.concatenate([clean_masks["rail"], trap_masks["rail"]])
    result = audit(loaded, images, labels)  # what load_model returns: its preprocessing and class names apply
    return loaded, result, rails


def test_the_audit_finds_the_rails_and_proves_they_cause_the_mistakes(demo_audit):
    loaded, result, rails = demo_audit
    pool, bathroom = loaded.class_names.index("pool"), loaded.class_names.index("bathroom")
    top = result.candidates[0]
    assert (top.true_class, top.predicted_class, top.kind) == (pool, bathroom, "mistake")
    assert len(top.indices) >= 5 and top.boxes.shape == (len(top.indices), 4)
    on_rails = [rails[i][y0:y1, x0:x1].any() for i, (y0, x0, y1, x1) in zip(top.indices, top.boxes)]
    assert np.mean(on_rails) >= 0.9  # it found *what*: the rails
    assert top.flip_rate >= 0.8 and top.control_flip_rate <= 0.1  # and hiding them undoes the mistake
    assert top.crops.shape[1:] == (48, 48, 3) and top.crops.dtype == np.uint8
    assert top.thumbnails.shape == (len(top.indices), 64, 64, 3)
    assert (top.thumbnails[..., 0] == 255).any()  # the red outline of the attended region
    assert np.all(result.labels[top.indices] == pool) and np.all(result.predictions[top.indices] == bathroom)
    assert top.significant and top.p_value < 1e-3  # image by image, not only on average
    assert top.tcav is not None and top.tcav.significant and top.tcav.score > top.tcav.random_scores.mean()
    # significant candidates first, each part ranked by how much more hiding the region flips than the control
    flags = [c.significant for c in result.candidates]
    assert flags == sorted(flags, reverse=True)
    for part in (True, False):
        effects = [c.effect for c in result.candidates if c.significant == part]
        assert effects == sorted(effects, reverse=True)


def test_on_the_fair_model_no_candidate_is_a_rails_shortcut(demo_audit):
    """The negative control: trained where rails appear in every class, it must not be flagged."""
    _, biased, rails = demo_audit
    fair = ce.load_model("demo-fair")
    clean, clean_labels, _ = ce.demo.generate(90, "clean", seed=5)
    trap, trap_labels, _ = ce.demo.generate(30, "trap", seed=5)
    result = audit(
        fair.model, np.concatenate([clean, trap]), np.concatenate([clean_labels, trap_labels]),
        preprocess=fair.preprocess, class_names=fair.class_names, progress=False,
    )  # fmt: skip
    pool, bathroom = fair.class_names.index("pool"), fair.class_names.index("bathroom")
    assert int((result.predictions[90:] == bathroom).sum()) <= 5  # it calls trap pools pools (the biased: 29 of 30)
    for cand in result.candidates:
        on_rails = np.mean([rails[i][y0:y1, x0:x1].any() for i, (y0, x0, y1, x1) in zip(cand.indices, cand.boxes)])
        assert not (cand.significant and on_rails >= 0.5 and cand.effect >= 0.3), cand.to_dict()
        assert not ((cand.true_class, cand.predicted_class) == (pool, bathroom) and cand.significant)
    # the same audit on the biased model does flag it: the test can fail
    assert any(c.significant and c.effect >= 0.3 and c.predicted_class == bathroom for c in biased.candidates)


def test_the_flip_test_is_an_exact_mcnemar_test():
    from scipy.stats import binomtest

    from cnn_exposed.audit import flip_p_value

    box = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0], bool)
    control = np.array([0, 0, 0, 1, 0, 0, 0, 1, 1, 0], bool)
    # discordant pairs: 5 flip only with the region hidden, 1 only with the control
    assert flip_p_value(box, control) == pytest.approx(binomtest(5, 6, 0.5, alternative="greater").pvalue)
    assert flip_p_value(control, box) == pytest.approx(binomtest(1, 6, 0.5, alternative="greater").pvalue)
    assert flip_p_value(box & control, box & control) == 1.0  # no discordant pair: no evidence


def test_large_groups_are_clustered_on_a_sample_and_every_member_joins_its_cluster():
    from cnn_exposed.audit import MAX_SPECTRAL, sampled_clusters

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 32)) * 4
    points = np.concatenate([c + rng.normal(size=(250, 32)) * 0.3 for c in centres])
    assert len(points) > MAX_SPECTRAL
    labels = sampled_clusters(points, seed=0)
    assert len(np.unique(labels)) == 3
    for g in range(3):
        assert len(np.unique(labels[g * 250 : (g + 1) * 250])) == 1


def test_the_audit_clusters_large_groups_from_its_records_on_disk_as_from_features_in_memory(tmp_path, monkeypatch):
    """The driver keeps no image's features: a large group's sample is read from the records on disk, the others
    are assigned a batch of records at a time. The clusters equal sampled_clusters of every feature in memory."""
    import importlib

    audit_module = importlib.import_module("cnn_exposed.audit")  # (the package exports the function audit)

    monkeypatch.setattr(audit_module, "MAX_SPECTRAL", 12)  # so that the groups of ~20 images are "large"
    loaded = ce.load_model("demo")
    images, labels, _ = ce.demo.generate(60, "clean", seed=3)
    result = audit(loaded, images, labels, batch_size=8, progress=False, min_group=2, checkpoint=tmp_path / "rec")
    parts = [np.load(p) for p in sorted((tmp_path / "rec").glob("part-*.npz"))]
    rows = np.concatenate([p["rows"] for p in parts])
    features = np.concatenate([p["features"] for p in parts])[np.argsort(rows)]
    true, predicted = labels[np.sort(rows)], result.predictions
    expected = set()
    for t in np.unique(true):
        for q in np.unique(predicted[true == t]):
            members = np.nonzero((true == t) & (predicted == q))[0]
            if len(members) >= 2:
                clusters = audit_module.sampled_clusters(features[members], seed=0)
                expected |= {tuple(members[clusters == c]) for c in np.unique(clusters) if (clusters == c).sum() >= 2}
    assert {tuple(c.indices) for c in result.candidates} == expected
    assert max(len(c.indices) for c in result.candidates) > 12  # a large group's members joined from disk


class _CountingImages:
    """An array-like that records how many images each read asks for (as a memory map would serve them)."""

    def __init__(self, array):
        self.array, self.reads = array, []
        self.ndim, self.shape = array.ndim, array.shape

    def __len__(self):
        return len(self.array)

    def __getitem__(self, index):
        self.reads.append(len(np.atleast_1d(index)))
        return self.array[index]


def test_the_audit_streams_its_images_and_files_give_the_same_result(tmp_path, demo_audit, monkeypatch):
    import importlib

    from PIL import Image

    module = importlib.import_module("cnn_exposed.audit")  # (cnn_exposed.audit is the function)
    # the bounds on what a candidate reads again, made small, so that "bounded" is tested, not assumed
    for name, value in {"MAX_TESTED": 8, "LISTED": 16, "MAX_SET": 8, "TCAV_TARGETS": 12}.items():
        monkeypatch.setattr(module, name, value)
    loaded, _, _ = demo_audit
    clean, clean_labels, _ = ce.demo.generate(60, "clean", seed=8)
    trap, trap_labels, _ = ce.demo.generate(20, "trap", seed=8)
    images, labels = np.concatenate([clean, trap]), np.concatenate([clean_labels, trap_labels])
    counting = _CountingImages(images)
    from_array = audit(loaded.model, counting, labels, preprocess=loaded.preprocess, batch_size=16, progress=False)
    batches = -(-len(images) // 16)
    assert counting.reads[:batches] == [16] * batches  # the explaining pass: one batch at a time, each image once
    assert len(counting.reads) > batches  # then the candidates' images are read again ...
    assert max(counting.reads) <= 16  # ... never more than the bounds allow (2 x MAX_SET for TCAV's random pool)
    assert max(c.tested for c in from_array.candidates) == 8 and any(c.tcav for c in from_array.candidates)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i:03d}.png")
        Image.fromarray(img).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    files = paths[:30] + [tmp_path / "broken.png"] + paths[30:]
    file_labels = np.concatenate([labels[:30], [0], labels[30:]])
    from_files = audit(loaded.model, files, file_labels, preprocess=loaded.preprocess, batch_size=16, progress=False)
    assert [f for f, _ in from_files.skipped] == [str(tmp_path / "broken.png")]
    assert from_files.files == paths  # indices point into the files that were read
    assert len(from_files.candidates) == len(from_array.candidates)
    for a, b in zip(from_array.candidates, from_files.candidates):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert (a.flip_rate, a.control_flip_rate) == (b.flip_rate, b.control_flip_rate)
    assert from_files.to_json()["candidates"][0]["files"][0].endswith(".png")
    # the same folder listed in another order and read in other batches: the same answer (every draw is seeded
    # by the file's identity, and the files are audited in the order of their identities)
    order = np.random.default_rng(0).permutation(len(files))
    shuffled = audit(loaded.model, [files[i] for i in order], file_labels[order], preprocess=loaded.preprocess,
                     batch_size=7, progress=False)  # fmt: skip
    assert shuffled.files == paths and [f for f, _ in shuffled.skipped] == [str(tmp_path / "broken.png")]
    assert _answer(shuffled) == _answer(from_files) and len(_answer(shuffled)) >= 2


def _answer(result) -> list:
    """What an audit concludes: per candidate, its classes, its images, its flip counts and p-value, its TCAV."""
    return [
        (c.true_class, c.predicted_class, tuple(np.asarray(result.files or np.arange(len(result.labels)))[c.indices]),
         c.tested,
         round(c.flip_rate * c.tested), round(c.control_flip_rate * c.tested), c.p_value,
         None if c.tcav is None else round(c.tcav.score, 6))
        for c in result.candidates
    ]  # fmt: skip


def test_report_pages_stay_light_however_many_candidates(tmp_path):
    from cnn_exposed.audit import PAGE, Audit, Candidate

    rng = np.random.default_rng(0)
    cands = []
    for i in range(25):
        k = 200 if i == 0 else 4
        cands.append(
            Candidate(0, 1, "mistake", np.arange(k), np.tile([0, 0, 8, 8], (k, 1)),
                      rng.integers(0, 255, (min(k, 50), 48, 48, 3), dtype=np.uint8), 0.5, 0.1,
                      rng.integers(0, 255, (min(k, 100), 64, 64, 3), dtype=np.uint8), 0.01, k)
        )  # fmt: skip
    result = Audit(cands, np.ones(2000, np.int64), np.zeros(2000, np.int64), ["a", "b"], {"method": "gradcam"})
    result.to_html(tmp_path)
    pages = sorted(tmp_path.glob("index*.html"))
    assert [p.name for p in pages] == ["index.html", "index_2.html", "index_3.html"]
    for page in pages:
        text = page.read_text()
        assert text.count("<section>") <= PAGE and len(text) < 30_000
        assert 'href="index_3.html"' in text  # every page links to every page
    first = (tmp_path / "candidate_0.html").read_text()  # a big candidate gets its own page
    assert "all candidates" in first and (tmp_path / "crops" / "sheet_0.png").is_file()
    assert 'href="candidate_0.html"' in pages[0].read_text()


def test_the_audit_writes_a_report_and_machine_readable_json(demo_audit, tmp_path):
    _, result, _ = demo_audit
    page = result.to_html(tmp_path / "audit")
    data = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert data["images"] == 120 and data["candidates"][0]["true_class"] == "pool"
    assert set(data["candidates"][0]) >= {
        "predicted_class",
        "kind",
        "indices",
        "boxes",
        "flip_rate",
        "control_flip_rate",
    }
    text = page.read_text()
    assert "Candidate shortcuts" in text and "pool &rarr; bathroom" in text
    assert (tmp_path / "audit" / "crops" / "candidate_0.png").is_file()
    assert (tmp_path / "audit" / "crops" / "images_0.png").is_file() and "images_0.png" in text
    rows = list(csv.DictReader(open(tmp_path / "audit" / "images.csv", encoding="utf-8")))  # one row per image
    assert len(rows) == 120 and sum(r["mistake"] == "True" for r in rows) == data["mistakes"]
    for rank, cand in enumerate(result.candidates, start=1):
        members = [i for i, r in enumerate(rows) if r["candidate"] == str(rank)]
        assert members == cand.indices.tolist()
        boxes = [[int(rows[i][f"box_{s}"]) for s in ("y0", "x0", "y1", "x1")] for i in members]
        assert boxes == cand.boxes.tolist()
        flips = [(int(rows[i]["flipped"]), int(rows[i]["control_flipped"])) for i in members]
        assert sum(f != (-1, -1) for f in flips) == cand.tested and all(-1 not in f for f in flips if f != (-1, -1))
        assert sum(f[0] == 1 for f in flips) == round(cand.flip_rate * cand.tested)
        assert sum(f[1] == 1 for f in flips) == round(cand.control_flip_rate * cand.tested)
        assert {(rows[i]["true"], rows[i]["predicted"]) for i in members} == {
            (result.class_names[cand.true_class], result.class_names[cand.predicted_class])
        }
    for r in rows:  # the attended region is the one around the map's peak
        assert int(r["box_y0"]) <= int(r["peak_y"]) < int(r["box_y1"])
        assert int(r["box_x0"]) <= int(r["peak_x"]) < int(r["box_x1"])
    assert all(np.isfinite(float(r["score"])) for r in rows) and sum(r["flipped"] == "-1" for r in rows) > 0
    if importlib.util.find_spec("pyarrow") is not None:  # the same table as Parquet, with the ray extra
        import pyarrow.parquet as pq

        table = pq.read_table(tmp_path / "audit" / "images.parquet").to_pydict()
        assert [str(v) for v in table["candidate"]] == [r["candidate"] for r in rows]
        assert table["control_x1"] == [int(r["control_x1"]) for r in rows]


def test_the_audit_says_when_labels_do_not_fit():
    loaded = ce.load_model("demo")
    images, labels, _ = ce.demo.load_images("trap")
    with pytest.raises(ce.InputError, match="labels for"):
        audit(loaded.model, images, labels[:-1], preprocess=loaded.preprocess)


def test_the_audit_command_on_a_folder_of_class_sub_folders(tmp_path, capsys):
    from PIL import Image

    from cnn_exposed.cli import main

    names = ce.load_model("demo").class_names
    clean, clean_labels, _ = ce.demo.generate(45, "clean", seed=6)
    trap, trap_labels, _ = ce.demo.generate(20, "trap", seed=6)
    for i, (img, label) in enumerate(zip(np.concatenate([clean, trap]), np.concatenate([clean_labels, trap_labels]))):
        folder = tmp_path / "photos" / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    (tmp_path / "photos" / "pool" / "broken.png").write_bytes(b"not a png")
    code = main(["audit", "demo", str(tmp_path / "photos"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "candidate 1: pool -> bathroom (mistake" in out and "audited 65 image(s), skipped 1." in out
    data = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert data["skipped"][0]["file"].endswith("broken.png") and data["images"] == 65
    assert data["candidates"][0]["flip_rate"] > data["candidates"][0]["control_flip_rate"]
    assert "1 file(s) skipped" in (tmp_path / "out" / "index.html").read_text()
    assert not (tmp_path / "out" / ".checkpoint").exists()  # the records go once the report is written
    # the records of a run interrupted after its explaining pass: the command resumes from them
    loaded = ce.load_model("demo")
    records = tmp_path / "again" / ".checkpoint"
    api = audit(loaded, tmp_path / "photos", checkpoint=records, progress=False, batch_size=32)
    # a folder's classes numbered as the model numbers them (pool, bathroom, bedroom; not the sorted names)
    assert [c["files"] for c in data["candidates"]] == [[str(api.files[i]) for i in c.indices] for c in api.candidates]
    assert main(["audit", "demo", str(tmp_path / "photos"), "--out", str(tmp_path / "again")]) == 0
    assert "resumed an interrupted run: 66 of 66 image(s) read back" in capsys.readouterr().out
    assert json.loads((tmp_path / "again" / "audit.json").read_text())["candidates"] == data["candidates"]
    assert main(["audit", "demo", str(tmp_path / "photos" / "pool")]) == 2  # no class sub-folders: no labels
    assert "needs true labels" in capsys.readouterr().err


def test_the_audit_report_in_a_real_headless_browser_shows_the_rails_on_the_first_screen(demo_audit, tmp_path):
    from playwright.sync_api import sync_playwright
    from test_cli import _chromium

    browser_path = _chromium()
    _, result, _ = demo_audit
    page_path = result.to_html(tmp_path / "audit")
    messages, failures = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.on("console", lambda m: messages.append((m.type, m.text)))
        page.on("pageerror", lambda e: failures.append(str(e)))
        page.on("requestfailed", lambda r: failures.append(r.url))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        first = page.locator('img[src="crops/candidate_0.png"]')
        box = first.bounding_box()  # where it is on the first screen, without scrolling
        loaded = first.evaluate("e => e.complete && e.naturalWidth > 0")
        heading = page.locator("h2").first.inner_text()
        page.click('a[href="candidate_0.html"]')  # the candidate's own page opens, with its sheet of images
        page.wait_for_load_state("load")
        sheet = page.locator('img[src="crops/sheet_0.png"]').evaluate("e => e.complete && e.naturalWidth > 0")
        browser.close()
    assert not [m for m in messages if m[0] in ("error", "warning")], messages
    assert not failures, failures
    assert heading.startswith("1. pool → bathroom (mistake")
    assert loaded and box is not None and box["y"] + box["height"] <= 800  # the crops, without scrolling
    assert sheet


class _Interrupted(_CountingImages):
    """An array-like whose ``stop_at``-th read is interrupted (as Ctrl-C, or a machine going away, would)."""

    def __init__(self, array, stop_at: int):
        super().__init__(array)
        self.stop_at = stop_at

    def __getitem__(self, index):
        if len(self.reads) + 1 == self.stop_at:
            raise KeyboardInterrupt
        return super().__getitem__(index)


def test_an_interrupted_audit_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(tmp_path, demo_audit):
    loaded, _, _ = demo_audit
    clean, clean_labels, _ = ce.demo.generate(40, "clean", seed=9)
    trap, trap_labels, _ = ce.demo.generate(24, "trap", seed=9)
    images, labels = np.concatenate([clean, trap]), np.concatenate([clean_labels, trap_labels])
    options = dict(preprocess=loaded.preprocess, batch_size=16, progress=False, min_group=2)
    whole = audit(loaded.model, images, labels, **options)
    with pytest.raises(KeyboardInterrupt):  # two batches of 16 done, then the third read is interrupted
        audit(loaded.model, _Interrupted(images, 3), labels, checkpoint=tmp_path / "ck", **options)
    again = _CountingImages(images)
    resumed = audit(loaded.model, again, labels, checkpoint=tmp_path / "ck", **options)
    assert resumed.resumed == 32 and again.reads[:2] == [16, 16]  # only the last two batches are explained
    assert _answer(resumed) == _answer(whole) and len(_answer(whole)) >= 2
    np.testing.assert_array_equal(resumed.predictions, whole.predictions)
    with pytest.raises(ce.errors.InputError, match="holds the records of another run .*seed"):
        audit(loaded.model, images, labels, checkpoint=tmp_path / "ck", seed=1, **options)


def test_without_ray_the_audit_runs_here_and_engine_ray_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as where the ray extra is not installed: import ray fails
    loaded = ce.load_model("demo")
    images, labels, _ = ce.demo.load_images("trap")
    with pytest.raises(ce.InputError, match=r'pip install "cnn-exposed\[ray\]"'):
        audit(loaded, images, labels, engine="ray", progress=False)
    with pytest.raises(ce.InputError, match='engine must be None, "ray" or a cnn_exposed.RayEngine'):
        audit(loaded, images, labels, engine="spark", progress=False)
