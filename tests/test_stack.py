"""The versions the project declares, the stacks CI installs, and what installing the project changes.

``.ci/run`` tests three stacks (README, "Tested stacks"): the latest releases, a replica of Colab's GPU
runtime (``.ci/colab-gpu.txt``) and the declared floors (``.ci/floor.txt``). In the two pinned stages it sets
``CNN_EXPOSED_STACK`` to the pin file's name, and in the Colab stage it also saves ``pip freeze`` before and
after installing the project (``CNN_EXPOSED_FREEZE_BEFORE`` / ``_AFTER``), as the notebooks' setup cell
installs it in Colab.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

CI = Path(__file__).resolve().parents[1] / ".ci"
FLOOR_PYTHON = (3, 10)  # .ci/run's floor stage; Colab's Python is 3.13


def read_pins(path: Path) -> dict[str, str]:
    """``name -> version`` of the ``name==version`` lines of a pip requirements/constraints file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def read_freeze(path: Path) -> dict[str, str]:
    """``name -> version`` (or direct URL) from ``pip freeze`` output."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
        elif " @ " in line:
            name, version = line.split(" @ ", 1)
        else:
            continue
        out[canonicalize_name(name)] = version.strip()
    return out


def declared() -> list[Requirement]:
    """The installed distribution's runtime requirements (what pyproject.toml declares)."""
    reqs = [Requirement(r) for r in metadata.requires("cnn-exposed") or []]
    return [r for r in reqs if r.marker is None]


def test_floor_stack_pins_exactly_the_declared_lower_bounds():
    floors = {}
    for req in declared():
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{req}: declare one lower bound"
        floors[canonicalize_name(req.name)] = lower[0]
    assert {n: Version(v) for n, v in floors.items()} == {n: Version(v) for n, v in read_pins(CI / "floor.txt").items()}
    assert metadata.metadata("cnn-exposed")["Requires-Python"] == f">={FLOOR_PYTHON[0]}.{FLOOR_PYTHON[1]}"


def test_installed_dependencies_satisfy_the_declared_ranges():
    for req in declared():
        installed = metadata.version(req.name)
        assert req.specifier.contains(Version(installed), prereleases=True), f"{req.name} {installed} vs {req}"


def test_colab_pins_are_compatible_with_the_declared_ranges():
    # A Colab user must get the project without any of Colab's packages being replaced.
    pins = read_pins(CI / "colab-gpu.txt")
    for req in declared():
        name = canonicalize_name(req.name)
        if name in pins:
            assert req.specifier.contains(Version(pins[name])), f"Colab has {name} {pins[name]}; we ask {req}"


STACK = os.environ.get("CNN_EXPOSED_STACK")


@pytest.mark.skipif(not STACK, reason="only in CI's pinned stages (CNN_EXPOSED_STACK set by .ci/run)")
def test_this_stage_runs_its_pinned_versions():
    pins = read_pins(CI / STACK)
    installed = {name: metadata.version(name) for name in pins}
    assert installed == pins
    python = {"colab-gpu.txt": (3, 13), "floor.txt": FLOOR_PYTHON}[STACK]
    assert sys.version_info[:2] == python


BEFORE, AFTER = os.environ.get("CNN_EXPOSED_FREEZE_BEFORE"), os.environ.get("CNN_EXPOSED_FREEZE_AFTER")


@pytest.mark.skipif(not (BEFORE and AFTER), reason="only in CI's Colab stage, which records pip freeze")
def test_installing_the_project_changed_no_preinstalled_version():
    before, after = read_freeze(Path(BEFORE)), read_freeze(Path(AFTER))
    changed = {name: (v, after.get(name)) for name, v in before.items() if after.get(name) != v}
    assert not changed, f"installing cnn-exposed changed {changed}: Colab would ask for a runtime restart"
    added = set(after) - set(before)
    assert "cnn-exposed" in added
    assert len(before) > 50  # the pins and their dependencies really were installed first
