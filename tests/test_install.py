"""What a non-editable install contains: every package under src/ and every bundled file under data/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def listed_packages() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return re.findall(r'"([\w.]+)"', re.search(r"^packages = \[(.*?)\]", text, re.M | re.S).group(1))


def test_every_package_under_src_is_listed_for_installation():
    found = sorted(".".join(p.parent.relative_to(ROOT / "src").parts) for p in (ROOT / "src").rglob("__init__.py"))
    assert sorted(p for p in listed_packages() if p != "cnn_exposed.data") == found
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    modules = re.findall(r'"([\w.]+)"', re.search(r"^py-modules = \[(.*?)\]", text, re.M).group(1))
    assert modules == sorted(p.stem for p in (ROOT / "src").glob("*.py"))  # the console script's module


def test_every_bundled_file_is_covered_by_the_package_data_globs():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    globs = re.findall(r'"([^"]+)"', re.search(r'^"cnn_exposed\.data" = \[(.*?)\]', text, re.M).group(1))
    data = ROOT / "data"
    files = {p for p in data.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py"}
    covered = {p for g in globs for p in data.glob(g)}
    assert files and files == covered, sorted(str(p.relative_to(data)) for p in files ^ covered)


def test_the_readme_api_table_lists_every_registered_method_in_order():

    import cnn_exposed as ce

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("| method | what it computes | options (defaults) |")[1].split("\n\n")[0]
    assert re.findall(r"^\| `([^`]+)` \|", table, flags=re.M) == list(ce.METHODS)
