"""The notebooks' saved outputs: no errors, no stack traces, small files, the promised structure.

(nbval executes them in the same test command; this checks what is stored in the repository.)
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
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
    assert "google.colab" in sources[0] and "ce.notebook.setup(" in sources[0]
    # Colab installs the package like any user would: not editable, no sys.path games.
    assert "cnn-exposed @ git+https://github.com/" in sources[0]
    assert "sys.path" not in sources[0] and " -e" not in sources[0]
    assert sum("CONFIGURATION" in s for s in sources) == 1
    assert any("# NBVAL_CHECK_OUTPUT" in s for s in sources)


def gray_model(path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((40, 40, 1))
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c1")(inp)
    h = keras.layers.SeparableConv2D(6, 3, activation="relu", name="s1")(h)
    keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))).save(path)
    return "['a', 'b', 'c']"


def binary_model(path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((40, 40, 3))
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c1")(inp)
    keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(h))).save(path)
    return "['no', 'yes']"


@pytest.mark.parametrize(
    ("name", "build"),
    [("attribution.ipynb", gray_model), ("visualisation.ipynb", binary_model)],
    ids=["gray", "binary"],
)
def test_the_configuration_cell_takes_the_users_own_model(name, build, tmp_path, monkeypatch, capsys):
    """The promise of the configuration cell: set MODEL (and CLASS_NAMES) and every cell runs, here with a
    grayscale model (RGB photos converted) and a one-unit sigmoid model (two classes)."""
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    model_path = str(tmp_path / "mine.keras")
    class_names = build(model_path)
    nb = json.loads((NOTEBOOKS[0].parent / name).read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    config = [i for i, s in enumerate(cells) if "CONFIGURATION" in s]
    assert len(config) == 1
    cells[config[0]] = cells[config[0]].replace('MODEL = "demo"', f"MODEL = {model_path!r}", 1)
    cells[config[0]] = cells[config[0]].replace("CLASS_NAMES = None", f"CLASS_NAMES = {class_names}", 1)
    assert model_path in cells[config[0]]
    namespace: dict = {}
    for i, source in enumerate(cells):
        try:
            exec(compile(source, f"{name} cell {i}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{name} cell {i} failed with the user's model: {err!r}\n{source[:400]}") from err
    assert namespace["MODEL"] == model_path


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_matches_its_paired_python_source(path):
    """The .py (jupytext percent format) is what is reviewed and linted; the .ipynb is what Colab opens."""
    import jupytext

    nb = json.loads(path.read_text())
    assert nb["metadata"]["jupytext"]["formats"] == "ipynb,py:percent"
    source = jupytext.read(path.with_suffix(".py"))
    ours = [(c["cell_type"], "".join(c["source"]).rstrip()) for c in nb["cells"]]
    theirs = [(c.cell_type, c.source.rstrip()) for c in source.cells]
    assert len(ours) == len(theirs), f"{len(ours)} cells in {path.name}, {len(theirs)} in its .py"
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"cell {i} of {path.name} differs from its .py source: run jupytext --sync notebooks/*.py"


def test_the_notebooks_share_their_setup_through_the_package():
    sources = {p.name: p.with_suffix(".py").read_text() for p in NOTEBOOKS}
    for name, text in sources.items():
        assert "ce.notebook.setup(" in text and "ce.notebook.load(" in text, name
        assert "def load(" not in text and "set_matplotlib_formats" not in text, name  # not copied in


def test_the_notebook_setup_reports_the_runtime_and_seeds(capsys):
    from importlib.metadata import version

    import numpy as np

    import cnn_exposed as ce

    ce.notebook.setup(seed=3)
    after_setup = np.random.rand()
    keras.utils.set_random_seed(3)
    assert np.random.rand() == after_setup
    out = capsys.readouterr().out
    assert "GPU: " in out and f"keras {keras.__version__} |" in out and f"cnn-exposed {version('cnn-exposed')}" in out


def test_the_notebook_loader_says_why_a_model_cannot_be_loaded(capsys, tmp_path):
    import cnn_exposed as ce

    assert ce.notebook.load(str(tmp_path / "nope.keras")) is None
    out = capsys.readouterr().out
    assert out.startswith(f"cannot load {tmp_path / 'nope.keras'} -> ") and "No model named or found" in out
    assert ce.notebook.load("demo").class_names == list(ce.load_model("demo").class_names)
