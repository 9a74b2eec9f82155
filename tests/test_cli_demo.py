"""The README's main job: ``cnn-exposed demo`` on the bundled model and images."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

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
    # the audit names the cue without the masks, and proves it: hiding it undoes mistakes, a control does not
    audit = re.search(r"candidate 1: pool -> bathroom \(mistake, (\d+) images\): hiding the attended region "
                      r"flips (\d+)% of \d+ tested, a region of the same size elsewhere (\d+)% \(p = ([0-9.e-]+)\); "
                      r"as a concept \(TCAV\).*significant\)", text)  # fmt: skip
    assert audit, text
    assert int(audit.group(2)) >= 80 and int(audit.group(3)) <= 10 and float(audit.group(4)) < 0.001
    assert "not significant)" not in audit.group(0)
    masks = re.search(r"a rail is in the attended region of (\d+) of its (\d+)", text)
    assert masks and int(masks.group(1)) >= 0.9 * int(masks.group(2)) == 0.9 * int(audit.group(1))
    assert "demo-fair, trained with rails in every class): 0 significant candidate(s) on the rails" in text
    assert json.loads((out / "audit" / "audit.json").read_text())["candidates"][0]["kind"] == "mistake"


def test_installed_command_runs_the_demo_from_any_folder(tmp_path):
    """The console script of the installed package, run outside the repository: the demo model, images and
    masks come with the package (no clone, no CNN_EXPOSED_DATA)."""
    script = Path(sys.executable).with_name("cnn-exposed")
    assert script.is_file(), f"no console script next to {sys.executable}: is the package installed?"
    env = {k: v for k, v in os.environ.items() if k not in ("CNN_EXPOSED_DATA", "TF_CPP_MIN_LOG_LEVEL")}
    done = subprocess.run(
        [str(script), "demo", "--method", "gradcam", "--out", "report"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"finding: \d+ of 8 trap pools .* rails in \d+ of those \d+", done.stdout), done.stdout
    assert (tmp_path / "report" / "index.html").is_file()
    assert not re.search(r"oneDNN|cuda|^[IWE]\d{4} ", done.stderr, re.M), done.stderr[:2000]  # TensorFlow quiet
