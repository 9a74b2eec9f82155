"""The dataset audit: attended regions, clusters by what is attended, and the causal flip test."""

from __future__ import annotations

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
    result = audit(loaded.model, images, labels, preprocess=loaded.preprocess, class_names=loaded.class_names)
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
    effects = [c.effect for c in result.candidates]
    assert effects == sorted(effects, reverse=True)


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
    assert main(["audit", "demo", str(tmp_path / "photos" / "pool")]) == 2  # no class sub-folders: no labels
    assert "needs true labels" in capsys.readouterr().err
