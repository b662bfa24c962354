"""The layering contract (``[tool.importlinter]`` in pyproject.toml), checked by import-linter
on a copy of the source tree laid out as the installed package (the card's top-level folders
become ``fedrs.*``): each layer imports only the layers below it, so an import cycle between
layers fails here; and the contract does fail when an upward import is added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
FOLDERS = ("actors", "benchmarks", "datasets", "methods", "models", "orchestrator")


def _tree(dest: Path) -> Path:
    """``dest/fedrs`` holding the package as pip installs it, and the contract beside it."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "fedrs", dest / "fedrs", ignore=skip)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, dest / "fedrs" / folder, ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint(tree: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(lint), "pyproject.toml", "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_layers_hold_and_an_upward_import_breaks_them(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "ok")
    res = _lint(tree)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout and "KEPT" in res.stdout
    # the same tree with one upward import, as a careless edit would add it
    bad = _tree(tmp_path / "bad")
    metrics = bad / "fedrs" / "core" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\nfrom fedrs.orchestrator import driver  # noqa\n")
    res = _lint(bad)
    assert res.returncode != 0 and "fedrs layers" in res.stdout and "BROKEN" in res.stdout
    # a single run reaching up into the sweep package breaks the orchestrator's own contract
    side = _tree(tmp_path / "side")
    plan = side / "fedrs" / "orchestrator" / "plan.py"
    plan.write_text(plan.read_text() + "\nfrom fedrs.orchestrator.sweep import spec  # noqa\n")
    res = _lint(side)
    assert res.returncode != 0 and "sweeps sit above single runs" in res.stdout, res.stdout
