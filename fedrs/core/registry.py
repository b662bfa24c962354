"""The method registry: methods register themselves (``register``) and the rest of fedrs looks
them up by name, so the config layer never imports a method. The built-in methods register
when ``fedrs.methods`` is imported; a method of another package registers through the entry
point group ``fedrs.methods`` (``name = "package.module:Class"``), loaded on first lookup.

Also here: option validation for methods' ``Options`` dataclasses (``check``), which reports
every failed check of one config at once inside ``all_checks``.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

from fedrs.errors import ConfigError

METHODS: dict[str, Any] = {}  # name -> Method subclass
BUILTIN = "fedrs.methods"  # the package whose import registers the built-in methods
_loaded = threading.Event()


def register(cls: Any) -> Any:
    """Add a Method subclass under its ``name`` (a class decorator); a second class under a
    name already taken is an error."""
    name = cls.name
    if METHODS.get(name, cls) is not cls:
        raise ConfigError(f"two methods are named {name!r}: {METHODS[name]} and {cls}")
    METHODS[name] = cls
    return cls


def known(cls: Any) -> Any:
    """``cls`` registered under its name unless a method of that name is known already: a
    class handed to another process explicitly (a Ray worker given a method defined outside
    any installed package) can then be named by the configs that process reads."""
    if cls.name not in methods():
        register(cls)
    return cls


def methods() -> dict[str, Any]:
    """Every registered method by name (built-in and entry points, loaded once)."""
    if not _loaded.is_set():
        importlib.import_module(BUILTIN)
        for point in entry_points(group="fedrs.methods"):
            register(point.load())
        _loaded.set()
    return METHODS


def method_class(name: str) -> Any:
    """The method registered as ``name``; a one-line ConfigError naming the choices if none."""
    found = methods()
    if name not in found:
        raise ConfigError(
            f"unknown method.name {name!r}; choose from {sorted(found)} (`fedrs methods`)"
        )
    return found[name]


_gathered = threading.local()


def check(cond: bool, msg: str) -> None:
    """A method option's validation: a one-line ConfigError when ``cond`` is false (inside
    ``all_checks``: recorded, so that every problem is reported at once)."""
    if not cond:
        bucket = getattr(_gathered, "errors", None)
        if bucket is not None:
            bucket.append(msg)
            return
        raise ConfigError(msg)


@contextlib.contextmanager
def all_checks() -> Iterator[list[str]]:
    """Within: failed ``check``s are collected in the yielded list instead of raised."""
    outer = getattr(_gathered, "errors", None)
    _gathered.errors = []
    try:
        yield _gathered.errors
    finally:
        _gathered.errors = outer
