"""Markdown tables from benchmarks' stored JSON results: ``fedrs bench table``.

A benchmark run with ``--json FILE`` records its figures; stored under
``benchmarks/results/``, such a file is the source of the README's speed tables, which sit
between ``<!-- table: fedrs bench table ... -->`` and ``<!-- /table -->`` markers and are
regenerated (and checked) by ``fedrs sweep tables``, like the study tables. Two forms:

- rows: ``fedrs bench table A.json [B.json ...] --rows KEY --columns a,b,c`` prints the list of
  records at ``KEY`` (a dotted path) as a table; with several files, a first column names the
  file each row came from (its stem). ``KEY`` may also hold records by name (an object of
  objects): a first column gives each name. A column ``label=path`` heads ``path`` with
  ``label`` (``median=defences.median.drop_points``);
- targets: ``fedrs bench table A.json --target 'ratios.warm_start_vs_floor<=1.5' ...`` prints,
  per target, the value stored at the path, the target and whether the value meets it;
- values: ``fedrs bench table A.json [B.json ...] --values ratio,speedup_alone`` prints the
  value stored at each path (a figure without a target), one column per file.
"""

from __future__ import annotations

import argparse
import json
import operator
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedrs.errors import ConfigError

_TARGET = re.compile(r"^(?P<path>[\w.\-/ ]+?)\s*(?P<op><=|>=|<|>)\s*(?P<value>[-+0-9.eE]+)$")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def load(path: str | Path) -> dict[str, Any]:
    """A stored benchmark result; a clear error when it is missing or not a JSON object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing (no such benchmark result)") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not a benchmark result: {exc}") from None
    if not isinstance(data, dict) or "benchmark" not in data:
        raise ConfigError(f"{path}: not a benchmark result (no 'benchmark' key)")
    return data


def lookup(data: Any, path: str, source: str = "") -> Any:
    """The value at a dotted path (``run.startup.ray_s``; list items by index)."""
    value = data
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise ConfigError(f"{source}: no value at {path!r} (stopped at {part!r})")
    return value


def cell(value: Any) -> str:
    """One table cell: floats to 4 significant digits (numbers from 10,000: whole, with
    thousands separators), lists joined, booleans as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if value is None:
        return ""
    return str(value)


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _records(value: Any, source: str, key: str) -> tuple[list[str] | None, list[dict]]:
    """A list of records (no names), or records by name (their names, in stored order)."""
    if isinstance(value, list) and all(isinstance(r, dict) for r in value):
        return None, value
    if isinstance(value, dict) and value and all(isinstance(r, dict) for r in value.values()):
        return list(value), list(value.values())
    raise ConfigError(f"{source}: {key!r} is not a list of records nor records by name")


def rows_table(files: Sequence[str | Path], key: str, columns: Sequence[str]) -> str:
    """The records at ``key`` of each file, ``columns`` of each (a dotted path inside a record,
    or ``label=path``); records stored by name get a first column of their names."""
    if not columns:
        raise ConfigError("bench table --rows needs --columns a,b,c")
    pairs = [c.split("=", 1) if "=" in c else (c, c) for c in columns]
    heads, paths = [h.strip() for h, _ in pairs], [c.strip() for _, c in pairs]
    body, named = [], False
    for f in files:
        names, records = _records(lookup(load(f), key, str(f)), str(f), key)
        named = named or names is not None
        for i, r in enumerate(records):
            row = [cell(lookup(r, c, f"{f} {key}")) for c in paths]
            name = [] if names is None else [names[i]]
            body.append(([Path(f).stem] if len(files) > 1 else []) + name + row)
    first = (["result"] if len(files) > 1 else []) + ([key.rsplit(".", 1)[-1]] if named else [])
    return markdown(first + heads, body)


def targets_table(file: str | Path, targets: Sequence[str]) -> str:
    """One row per ``PATH<=VALUE`` (or >=, <, >): the stored value, the target, met or not."""
    data = load(file)
    body = []
    for text in targets:
        m = _TARGET.match(text.strip())
        if not m:
            raise ConfigError(f"bench table --target {text!r}: expected PATH<=VALUE (or >=, <, >)")
        measured = lookup(data, m["path"], str(file))
        if not isinstance(measured, (int, float)) or isinstance(measured, bool):
            raise ConfigError(f"{file}: {m['path']!r} is not a number: {measured!r}")
        met = _OPS[m["op"]](measured, float(m["value"]))
        body.append([m["path"], cell(float(measured)), f"{m['op']} {m['value']}", cell(met)])
    return markdown(["figure", "measured", "target", "met?"], body)


def values_table(files: Sequence[str | Path], paths: Sequence[str]) -> str:
    """One row per dotted path, one column per file: the value stored there."""
    data = [load(f) for f in files]
    body = [
        [path] + [cell(lookup(d, path, str(f))) for d, f in zip(data, files, strict=True)]
        for path in paths
    ]
    header = ["figure"] + ([Path(f).stem for f in files] if len(files) > 1 else ["value"])
    return markdown(header, body)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The command's arguments (``fedrs bench table`` and the README's table markers)."""
    p.add_argument("files", nargs="+", help="benchmark result JSON files")
    p.add_argument("--rows", default=None, help="dotted path of a list of records, e.g. rows")
    p.add_argument(
        "--columns",
        default="",
        help="comma-separated fields of each record (label=path: headed label)",
    )
    p.add_argument(
        "--target", action="append", default=[], metavar="PATH<=VALUE", help="repeatable"
    )
    p.add_argument("--values", default="", help="comma-separated dotted paths of figures")
    return p


def parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="fedrs bench table", exit_on_error=False))


def render(args: argparse.Namespace) -> str:
    if sum(map(bool, (args.rows, args.target, args.values))) != 1:
        raise ConfigError(
            "bench table: give one of --rows KEY --columns ..., --target ... or --values ..."
        )
    if args.values:
        return values_table(args.files, [v.strip() for v in args.values.split(",") if v.strip()])
    if args.target:
        if len(args.files) != 1:
            raise ConfigError("bench table --target reads one result file")
        return targets_table(args.files[0], args.target)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    return rows_table(args.files, args.rows, columns)
