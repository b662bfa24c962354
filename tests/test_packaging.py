"""The wheel holds every package: a package missing from pyproject's list still imports in an
editable install (through the source tree) but is silently left out of `pip install .`."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _listed() -> tuple[set[str], dict[str, str]]:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(setup["packages"]), setup["package-dir"]


def test_every_source_package_is_listed_for_the_wheel() -> None:
    packages, dirs = _listed()
    found = set()
    for top, folder in dirs.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((top, *rel)))
    assert found, "no packages found under pyproject's package-dir"
    missing = sorted(found - packages)
    assert not missing, f"packages left out of the wheel: {missing}"


def test_every_folder_with_modules_is_a_package() -> None:
    """A folder of .py files without __init__.py would also be left out of the wheel."""
    _, dirs = _listed()
    loose = []
    for folder in dirs.values():
        for py in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in py.parts and not (py.parent / "__init__.py").exists():
                loose.append(str(py.relative_to(ROOT)))
    assert not loose, f"modules outside any package: {sorted(set(loose))}"
