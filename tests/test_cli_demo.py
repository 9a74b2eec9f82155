"""The README's main job: ``cnn-exposed demo`` on the bundled model and images."""

from __future__ import annotations

import json
import re

from cnn_exposed import demo
from cnn_exposed.cli import main


def test_demo_command_writes_the_report_and_states_the_finding(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--method", "gradcam,integrated_gradients"]) == 0
    text = capsys.readouterr().out
    match = re.search(
        r"finding: (\d+) of (\d+) trap pools .* called bathroom; "
        r"Grad-CAM's peak falls on the rails in (\d+) of those (\d+)",
        text,
    )
    assert match, text
    called, total, hits, of = map(int, match.groups())
    trap_images, _, _ = demo.load_images("trap")
    assert total == len(trap_images) and of == called
    assert called >= total // 2 and hits >= called // 2  # the shortcut is there and Grad-CAM shows it
    summary = json.loads((out / "summary.json").read_text())
    clean, _, _ = demo.load_images("clean")
    assert len(summary["images"]) == len(clean) + len(trap_images)
    pairs = {(p["true"], p["predicted"]): p["count"] for p in summary["confusion_pairs"]}
    assert pairs.get(("pool", "bathroom")) == called
    assert "pool → bathroom" in (out / "index.html").read_text()
