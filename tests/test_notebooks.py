"""The notebooks' saved outputs: no errors, no stack traces, small files, the promised structure.

(nbval executes them in the same test command; this checks what is stored in the repository.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_both_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["attribution.ipynb", "visualisation.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_saved_outputs_hold_no_error_and_real_pictures(path):
    assert path.stat().st_size < 5_000_000
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert all(c.get("execution_count") for c in code), "every code cell has been run"
    assert not [o for o in outputs if o["output_type"] == "error"]
    text = "".join("".join(o.get("text", "")) for o in outputs if o["output_type"] == "stream")
    assert "Traceback" not in text and "Error:" not in text.replace("CnnExposedError", "")
    pictures = [o for o in outputs if "data" in o and ({"image/png", "image/jpeg"} & set(o["data"]))]
    assert len(pictures) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_badge_setup_and_one_configuration_cell(path):
    nb = json.loads(path.read_text())
    first = "".join(nb["cells"][0]["source"])
    assert "colab.research.google.com/github/" in first and f"notebooks/{path.name}" in first
    sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert "google.colab" in sources[0] and "list_physical_devices" in sources[0]
    # Colab installs the package like any user would: not editable, no sys.path games.
    assert "cnn-exposed @ git+https://github.com/" in sources[0]
    assert "sys.path" not in sources[0] and " -e" not in sources[0]
    assert sum("CONFIGURATION" in s for s in sources) == 1
    assert any("# NBVAL_CHECK_OUTPUT" in s for s in sources)
