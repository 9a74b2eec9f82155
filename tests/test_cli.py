"""The command line over folders of images: outputs, labels, bad files, clear errors."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from PIL import Image

import cnn_exposed as ce
from cnn_exposed.cli import main
from cnn_exposed.savedmodel import LAYER_FREE_METHODS


def make_model(path):
    """A tiny 'red vs blue' classifier, trained for a few steps so it gets most images right."""
    keras.utils.set_random_seed(0)
    base = keras.Sequential(
        [keras.Input((24, 24, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="conv")], name="base"
    )
    model = keras.Sequential(
        [
            keras.Input((24, 24, 3)),
            base,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    x, y = colour_images(64, seed=1)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x.astype("float32") / 255.0, y, epochs=30, verbose=0)
    model.save(path)
    return model


def colour_images(n, seed=0, size=24):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
    for i in range(n):
        r0, c0 = rng.integers(0, size - 8, 2)
        x[i, r0 : r0 + 8, c0 : c0 + 8, 0 if y[i] == 0 else 2] = 250
    return x, y


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_model(root / "model.keras")
    (root / "classes.txt").write_text("red\nblue\n")
    x, y = colour_images(10, seed=5, size=40)  # another size: the CLI resizes
    for cls in ("red", "blue"):
        (root / "data" / cls).mkdir(parents=True)
    names = ["red", "blue"]
    for i in range(10):
        label = names[y[i]] if i != 0 else names[1 - y[i]]  # one deliberately mislabelled image
        Image.fromarray(x[i]).save(root / "data" / label / f"img {i}.png")
    Image.fromarray(x[1]).convert("L").save(root / "data" / "red" / "gray.png")
    (root / "data" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "data" / "blue" / "empty.jpg").write_bytes(b"")
    return root


def run(capsys, *args):
    code = main(list(map(str, args)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_explain_folder_of_class_folders(workspace, capsys, tmp_path):
    out = tmp_path / "report"
    code, stdout, stderr = run(
        capsys, "explain", workspace / "model.keras", workspace / "data", "--class-names",
        workspace / "classes.txt", "--method", "gradcam,saliency", "--out", out, "--batch-size", "4",
    )  # fmt: skip
    assert code == 0, stderr
    assert "Traceback" not in stdout + stderr
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["images"]) == 11  # 10 + the grayscale one; two broken files skipped
    skipped = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"broken.png", "empty.jpg"}
    assert "empty file" in skipped["empty.jpg"]
    assert "skipped" in stdout and "broken.png" in stdout
    row = summary["images"][0]
    assert {"file", "true_label", "prediction", "probability", "gradcam_target", "gradcam_peak_row"} <= set(row)
    assert all(r["true_label"] in ("red", "blue") for r in summary["images"])
    for r in summary["images"]:
        assert 0 <= r["gradcam_peak_row"] <= 1 and 0 <= r["saliency_peak_col"] <= 1
    wrong = [r for r in summary["images"] if r["true_label"] != r["prediction"]]
    assert summary["confusion_pairs"] and sum(p["count"] for p in summary["confusion_pairs"]) == len(wrong)
    html = (out / "index.html").read_text()
    assert "Mistakes by confusion pair" in html and "broken.png" in html and "gradcam" in html
    pngs = list((out / "images").glob("*.png"))
    assert len(pngs) >= 11 * 3
    csv_lines = (out / "summary.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 12


def test_target_true_and_by_name(workspace, capsys, tmp_path):
    code, _, err = run(
        capsys, "explain", workspace / "model.keras", workspace / "data", "--class-names", workspace / "classes.txt",
        "--method", "gradcam", "--target", "true", "--out", tmp_path / "a",
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads((tmp_path / "a" / "summary.json").read_text())["images"]
    assert all(r["gradcam_target"] == r["true_label"] for r in rows)
    code, _, err = run(
        capsys, "explain", workspace / "model.keras", workspace / "data" / "red", "--class-names",
        workspace / "classes.txt", "--method", "gradcam", "--target", "blue", "--out", tmp_path / "b",
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads((tmp_path / "b" / "summary.json").read_text())["images"]
    assert rows and all(r["gradcam_target"] == "blue" and r["true_label"] is None for r in rows)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "gradcam,magic"], "unknown method(s) magic; valid: saliency"),
        (["--layer", "nope"], "No layer 'nope'"),
        (["--target", "green"], "unknown target 'green'"),
        (["--target", "7"], "out of range"),
    ],
)
def test_bad_options_give_clear_errors(workspace, capsys, tmp_path, extra, message):
    code, stdout, stderr = run(
        capsys, "explain", workspace / "model.keras", workspace / "data", "--class-names",
        workspace / "classes.txt", "--out", tmp_path / "r", *extra,
    )  # fmt: skip
    assert code == 2
    assert message in stderr.replace("\n  ", " ")
    assert "Traceback" not in stderr


def test_layer_listing_and_missing_model(workspace, capsys):
    code, stdout, _ = run(capsys, "layers", workspace / "model.keras")
    assert code == 0 and stdout.split() == ["base", "base/conv"]
    code, _, stderr = run(capsys, "explain", workspace / "nope.keras", workspace / "data")
    assert code == 2 and "No model named or found" in stderr


def test_help_reads_like_documentation(capsys):
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    text = capsys.readouterr().out
    for needle in ("image_dataset_from_directory", "confusion pair", "--method", "--layer", "examples:"):
        assert needle in text
    listed = text.split("methods:")[1].split("examples:")[0]
    assert [m.strip() for m in listed.replace("\n", " ").split(",")] == list(ce.METHODS)  # every one, from the registry


def _chromium():
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        import os

        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run) to test the report in a browser")
        pytest.skip("no chromium on this machine: apt-get install chromium to run the browser test")
    return path


def test_report_in_a_real_headless_browser(workspace, capsys, tmp_path):
    """The page loads from disk with no console errors, every image loads, and a screenshot is taken."""
    browser_path = _chromium()
    from playwright.sync_api import sync_playwright

    out = tmp_path / "report"
    code, _, err = run(
        capsys, "explain", workspace / "model.keras", workspace / "data", "--class-names",
        workspace / "classes.txt", "--method", "gradcam,integrated_gradients", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    messages, failures = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=browser_path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: messages.append((m.type, m.text)))
        page.on("pageerror", lambda e: failures.append(str(e)))
        page.on("requestfailed", lambda r: failures.append(r.url))
        page.goto((out / "index.html").as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.src])")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=False)
        title = page.title()
        browser.close()
    assert not [m for m in messages if m[0] in ("error", "warning")], messages
    assert not failures, failures
    assert len(images) >= 11 * 3
    broken = [src for complete, width, src in images if not complete or width == 0]
    assert not broken, broken
    assert title.startswith("cnn-exposed report")
    assert shot.stat().st_size > 20_000  # a real rendered page, not a blank one
    import os
    import shutil

    if os.environ.get("CNN_EXPOSED_SCREENSHOT"):
        shutil.copy(shot, os.environ["CNN_EXPOSED_SCREENSHOT"])


def test_offline_imagenet_weights_give_a_clear_message(monkeypatch):
    import keras

    import cnn_exposed as ce

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] resolve")

    monkeypatch.setattr(keras.applications, "MobileNetV2", no_network)
    with pytest.raises(ce.models.OfflineError, match="Could not download the ImageNet weights of mobilenet_v2.*demo"):
        ce.load_model("mobilenet_v2")


def test_a_grayscale_model_explains_ordinary_rgb_photos(tmp_path, workspace, capsys):
    keras.utils.set_random_seed(0)
    inp = keras.Input((24, 24, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    keras.Model(inp, out).save(tmp_path / "gray.keras")
    report = tmp_path / "report"
    code = main(["explain", str(tmp_path / "gray.keras"), str(workspace / "data"), "--method", "gradcam",
                 "--out", str(report)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads((report / "summary.json").read_text())
    assert len(summary["images"]) == 11  # every readable photo, colour and gray alike
    assert "explained 11 image(s), skipped 2" in capsys.readouterr().out


def test_a_saved_model_directory_explains_as_its_keras_file(workspace, capsys, tmp_path):
    keras.models.load_model(workspace / "model.keras").export(tmp_path / "exported", verbose=False)
    common = ["--class-names", workspace / "classes.txt", "--method", "saliency", "--score", "probability"]
    code, _, err = run(
        capsys, "explain", workspace / "model.keras", workspace / "data", *common, "--out", tmp_path / "k"
    )
    assert code == 0, err
    code, _, err = run(capsys, "explain", tmp_path / "exported", workspace / "data", *common, "--out", tmp_path / "s")
    assert code == 0 and "Traceback" not in err, err
    keras_rows = json.loads((tmp_path / "k" / "summary.json").read_text())["images"]
    saved_rows = json.loads((tmp_path / "s" / "summary.json").read_text())["images"]
    assert len(saved_rows) == 11 and (tmp_path / "s" / "index.html").is_file()
    for k, s in zip(keras_rows, saved_rows):
        assert (s["file"], s["prediction"], s["saliency_peak_row"]) == (
            k["file"],
            k["prediction"],
            k["saliency_peak_row"],
        )
        assert s["saliency_score"] == pytest.approx(k["saliency_score"], rel=1e-5)
    # a CAM method: the clear error, naming what works; the audit (which needs a feature map) refuses too
    code, _, err = run(capsys, "explain", tmp_path / "exported", workspace / "data", "--method", "gradcam")
    flat = err.replace("\n  ", " ")
    assert code == 2 and ", ".join(LAYER_FREE_METHODS) in flat and "saliency, gradient_x_input" in flat
    code, _, err = run(capsys, "audit", tmp_path / "exported", workspace / "data", "--method", "saliency")
    assert code == 2 and "The audit" in err and ".keras" in err and "Traceback" not in err
    code, _, err = run(capsys, "explain", workspace / "data", workspace / "data")
    assert code == 2 and "without saved_model.pb" in err
    code, _, err = run(capsys, "explain", tmp_path / "exported", workspace / "data", "--input-size", "big")
    assert code == 2 and "HEIGHTxWIDTH" in err


def test_a_folder_whose_images_are_too_deep_names_the_folder_to_pass(workspace, capsys, tmp_path):
    """data/clean/red/*.png: the class folders are one level further down than the CLI and the API look. The error
    says where the images are and which folder to pass; passing it explains them with their classes."""
    nested = tmp_path / "photos"
    for split in ("clean", "trap"):
        for cls in ("red", "blue"):
            (nested / split / cls).mkdir(parents=True)
            for f in (workspace / "data" / cls).glob("img *.png"):
                (nested / split / cls / f.name).write_bytes(f.read_bytes())
    code, _, err = run(capsys, "explain", workspace / "model.keras", nested, "--method", "gradcam")
    assert code == 2 and "No image files found in" in err
    assert str(nested / "clean" / "blue") in err and f"(e.g. {nested / 'clean'})" in err
    model = keras.saving.load_model(workspace / "model.keras")
    with pytest.raises(ce.InputError, match="not further down.*clean"):
        ce.explain(model, str(nested), "gradcam", batch_size=4)
    code, stdout, err = run(capsys, "explain", workspace / "model.keras", nested / "clean", "--method", "gradcam",
                            "--class-names", workspace / "classes.txt", "--out", tmp_path / "out")  # fmt: skip
    assert code == 0, err
    assert "explained 10 image(s)" in stdout
