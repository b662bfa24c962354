"""Tables in a markdown file regenerated from stored results: ``fedrs sweep tables``.

A table in benchmarks/README.md is never typed: it sits between two markers that name the
command producing it from a study's stored ``results.csv`` (kept beside its sweep file) or from
a benchmark's stored JSON (``benchmarks/results/``)::

    <!-- table: fedrs sweep report benchmarks/sweeps/NAME.results.csv --compare arm=a:b -->
    ...what that command prints...
    <!-- /table -->

    <!-- table: fedrs bench table benchmarks/results/NAME.json --rows rows --columns a,b -->
    ...
    <!-- /table -->

(each marker at the start of its own line).

``fedrs sweep tables FILE.md`` rewrites every such block from its command (atomically);
``--check`` changes nothing and fails, naming the blocks, when any differs: a number edited by
hand, or results changed without the text. Paths in a command are relative to the repository
root (the folder holding ``pyproject.toml`` above the file), else to the file's folder.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

from fedrs.io import atomic_open
from fedrs.orchestrator.sweep.spec import SweepError

BLOCK = re.compile(
    r"^(<!-- table: (?P<cmd>[^\n]+?) -->\n)(?P<body>.*?)^(<!-- /table -->)", re.S | re.M
)
REPORT = ["fedrs", "sweep", "report"]
BENCH_TABLE = ["fedrs", "bench", "table"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedrs sweep report", add_help=False, exit_on_error=False)
    p.add_argument("paths", nargs="+")
    p.add_argument("--metric", default=None)
    p.add_argument("--also", action="append", default=[])
    p.add_argument("--compare", action="append", default=[])
    p.add_argument("--scale", type=float, default=None)
    return p


def _root(doc: Path) -> Path:
    for folder in doc.resolve().parents:
        if (folder / "pyproject.toml").is_file():
            return folder
    return doc.resolve().parent


def _resolve(name: str, doc: Path) -> Path:
    path = Path(name)
    if not path.is_absolute():
        path = _root(doc) / path if (_root(doc) / path).exists() else doc.parent / path
    return path


def _parse(p: argparse.ArgumentParser, words: list[str], command: str, doc: Path) -> Any:
    try:
        return p.parse_args(words)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise SweepError(f"{doc}: cannot read the table command {command!r}: {exc}") from None


def render(command: str, doc: Path) -> str:
    """What ``command`` (``fedrs sweep report FILE.results.csv ...`` or ``fedrs bench table
    FILE.json ...``) prints."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise SweepError(f"{doc}: cannot read the table command {command!r}: {exc}") from None
    if words[:3] == BENCH_TABLE:
        from fedrs.benchmarks import table

        args = _parse(table.parser(), words[3:], command, doc)
        args.files = [_resolve(f, doc) for f in args.files]
        return table.render(args)
    if words[:3] != REPORT:
        raise SweepError(
            f"{doc}: a table's command must start with 'fedrs sweep report' or "
            f"'fedrs bench table': {command}"
        )
    from fedrs.orchestrator.sweep.report import stored_report

    args = _parse(_parser(), words[3:], command, doc)
    paths = [_resolve(p, doc) for p in args.paths]
    return stored_report(paths, args.metric, args.also, args.compare, args.scale)


def regenerate(doc: str | Path, check: bool = False) -> list[str]:
    """Rewrite (or with ``check`` only compare) every table block of ``doc``; return the
    commands of the blocks that differed."""
    doc = Path(doc)
    if not doc.is_file():
        raise SweepError(f"{doc}: missing (no such file)")
    text = doc.read_text()
    stale: list[str] = []

    def fill(m: re.Match[str]) -> str:
        body = render(m["cmd"], doc)
        body = body if body.endswith("\n") else body + "\n"
        if body != m["body"]:
            stale.append(m["cmd"])
        return m.group(1) + body + m.group(4)

    new = BLOCK.sub(fill, text)
    if not check and new != text:
        with atomic_open(doc, "w") as fh:
            fh.write(new)
    return stale


def blocks(doc: str | Path) -> list[str]:
    """The commands of ``doc``'s table blocks."""
    return [m["cmd"] for m in BLOCK.finditer(Path(doc).read_text())]
