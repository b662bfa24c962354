"""Shared benchmark plumbing: options given as lists, machine description, the result dict,
tables, JSON and figure output, cached inputs."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from fedrs.io import write_json


def machine_info() -> dict[str, Any]:
    import numpy as np

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return info


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    table = Table(title=title)
    for key in rows[0] if rows else []:
        table.add_column(key, justify="right")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row.values()))
    Console().print(table)


def write_result(result: dict[str, Any], json_path: str | None) -> None:
    if json_path:
        write_json(json_path, result)


def plot_path(json_path: str | None, default_stem: str) -> str:
    """Where a benchmark's PNG goes: beside its JSON (``x.json`` -> ``x.png``), else the cwd."""
    if json_path:
        base, _ = os.path.splitext(json_path)
        return base + ".png"
    return default_stem + ".png"


def as_list(value: Any, cast: Callable[[Any], Any] | None = None) -> list[Any]:
    """A list option as ``--set`` gives it: ``a,b`` arrives as a list, ``a`` as a scalar;
    None, ``""`` and ``none`` are the empty list. ``cast`` converts every item."""
    if value is None or value in ("", "none"):
        return []
    items = list(value) if isinstance(value, list | tuple) else [value]
    return [cast(v) for v in items] if cast else items


def bench_result(name: str, ratio: Any, **fields: Any) -> dict[str, Any]:
    """A benchmark's top-level result: its name, its headline ``ratio``, ``fields`` and the
    machine it ran on."""
    return {"benchmark": name, "ratio": ratio, **fields, "machine": machine_info()}


def save_outputs(
    result: dict[str, Any],
    json_path: str | None,
    stem: str,
    draw: Callable[[dict[str, Any], str], None],
) -> dict[str, Any]:
    """Draw ``result``'s figure (beside the JSON, else ``stem.png``), record its path under
    ``plot`` and write the JSON."""
    path = plot_path(json_path, stem)
    draw(result, path)
    result["plot"] = path
    write_result(result, json_path)
    return result


# ---------------------------------------------------------------------------------------------
# cached inputs of the quality studies (builds and pretrained backbones, keyed by their settings)


def cache_key(*parts: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def cached_build(out: Any, **spec: Any) -> str:
    """The dataset ``BuildSpec(out=out, **spec)`` describes, built once (kept in ``out``)."""
    from pathlib import Path

    from fedrs.datasets.builder import BuildSpec, build
    from fedrs.datasets.manifest import MANIFEST

    if not (Path(out) / MANIFEST).is_file():
        build(BuildSpec(out=str(out), **spec))
    return str(out)


def cached_pretrain(
    shards: str, cache: Any, arch: str, epochs: int, seed: int, *tag: str
) -> tuple[str, dict[str, Any]]:
    """``fedrs pretrain`` of ``arch`` on ``shards``, once: (checkpoint, its report)."""
    import json
    from pathlib import Path

    from fedrs.models.pretrain import PretrainConfig, pretrain

    ckpt = Path(cache) / f"{arch}-{cache_key(shards, epochs, seed, *tag)}.pt"
    if ckpt.is_file():
        return str(ckpt), json.loads(ckpt.with_suffix(".json").read_text())
    config = PretrainConfig(data=shards, out=str(ckpt), arch=arch, epochs=epochs, seed=seed)
    return str(ckpt), pretrain(config)
