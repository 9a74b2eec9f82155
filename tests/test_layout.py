"""The house rules a newcomer relies on: no import circles, a light ``import cnn_exposed`` that leaves the
environment alone."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cnn_exposed"


def _modules() -> dict:
    """``module name -> (path, is package)`` for every module of the package's source."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _type_checking_only(tree) -> set:
    """The import nodes under ``if TYPE_CHECKING:``, which never run."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def import_graph() -> dict:
    """``module -> the package's modules it imports``, at module level or inside functions."""
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_only(tree)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    dep = f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                    if dep in modules and dep != name:
                        graph[name].add(dep)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules and a.name != name)
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    graph = import_graph()
    assert len(graph) > 30 and "cnn_exposed.visualisation.render" in graph["cnn_exposed.visualisation"]
    assert cycles(graph) == []


def test_import_cnn_exposed_is_light_and_leaves_the_environment_alone():
    code = (  # the dependencies first: TensorFlow sets variables of its own when imported
        "import json, os, sys; import cv2, keras, matplotlib, numpy, tensorflow, tqdm; "
        "before = dict(os.environ); import cnn_exposed; "
        "print(json.dumps({'changed': sorted(k for k in set(before) | set(os.environ) "
        "if before.get(k) != os.environ.get(k)), 'demo': 'cnn_exposed.demo' in sys.modules}))"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"changed": [], "demo": False}


def reachable(graph: dict, start: str) -> set:
    seen, todo = set(), [m for m in graph if m == start or m.startswith(start + ".")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    return seen


def test_the_rules_serve_attribution_and_visualisation_and_depend_on_neither():
    graph = import_graph()
    rules = reachable(graph, "cnn_exposed.rules")
    assert "cnn_exposed.rules.ruleset" in rules and "cnn_exposed.backend" in rules
    assert not {m for m in rules if m.startswith(("cnn_exposed.attribution", "cnn_exposed.visualisation"))}
    assert not {m for m in reachable(graph, "cnn_exposed.visualisation") if m.startswith("cnn_exposed.attribution")}
    assert "cnn_exposed.rules" in graph["cnn_exposed.attribution.rule_based"]


def test_mypy_finds_no_error_in_the_package():
    import os

    import pytest

    if os.environ.get("CNN_EXPOSED_STACK"):  # colab-gpu.txt or floor.txt: a pinned stage of .ci/run
        pytest.skip("the types are checked once, on the latest stack (the libraries' stubs differ by release)")
    root = PACKAGE.parents[1]
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
    assert "Success: no issues found" in done.stdout
