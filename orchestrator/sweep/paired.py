"""Paired comparisons of sweep trials: ``fedrs sweep report DIR --compare AXIS=A:B``.

Two arms of one axis are compared by the differences ``A - B`` of a metric between trials that
agree on every other axis, seeds included: a seed's data, partition and initialisation are
shared by both arms, so the paired difference removes what the seeds share. Per group (the
values of the other non-seed axes) the report gives the mean difference, its 95 % Student-t
half-width (``t(0.975, n - 1) * sd / sqrt(n)``, ``n`` pairs), n, each pair's difference and how
many are positive. A trial with no partner (a seed missing, failed or unfinished on one side)
is named under ``unpaired``, never dropped silently. A conclusion needs the interval to exclude
0 (``excludes_zero``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrs.errors import FedrsError

PM_PAIRED = (
    "± = 95 % Student-t half-width of the mean paired difference (n - 1 degrees of freedom); "
    "n = pairs"
)


class CompareError(FedrsError):
    """A ``--compare`` that cannot be made (one line)."""


@dataclass(frozen=True)
class Comparison:
    """``axis=a:b``: the differences ``a - b`` along ``axis``; ``axis=*:b``: every other value
    of the axis against ``b`` (each arm against one baseline)."""

    axis: str
    a: str
    b: str

    @classmethod
    def parse(cls, text: str) -> Comparison:
        axis, sep, arms = str(text).partition("=")
        # the first colon not followed by whitespace: labels such as "split: feddiff" keep theirs
        parts = re.split(r":(?!\s)", arms, maxsplit=1)
        a, b = (parts[0], parts[1]) if len(parts) == 2 else (arms, "")
        axis, a, b = axis.strip(), a.strip(), b.strip()
        if not (sep and axis and a and b) or a == b:
            raise CompareError(
                f"--compare {text!r}: expected AXIS=A:B with two different values of AXIS "
                "(e.g. arm=creff:fedavg)"
            )
        return cls(axis, a, b)

    def __str__(self) -> str:
        return f"{self.axis}={self.a}:{self.b}"


def value_text(v: Any) -> str:
    """How an axis value is written on the command line (``0.1``, ``fedavg``, ``""``)."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if v == "":
        return '""'
    return str(v)


def t_half_width(values: list[float], level: float = 0.95) -> float | None:
    """The Student-t half-width of the mean of ``values`` (None for fewer than 2)."""
    from scipy.stats import t

    n = len(values)
    if n < 2:
        return None
    sd = float(np.std(np.asarray(values, dtype=float), ddof=1))
    return float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def paired_differences(
    rows: list[dict[str, Any]],
    axes: list[str],
    comparison: Comparison,
    metrics: list[str],
    is_seed: Any,
) -> list[dict[str, Any]]:
    """Per group of the other non-seed axes and per metric: the paired differences ``a - b``.

    ``rows``: trial rows (axis values, ``status``, metric columns); ``axes``: the sweep's axes;
    ``is_seed``: axis name -> whether it is a seed axis. Each result holds ``group`` (axis ->
    value), ``metric``, ``n``, ``mean``, ``ci95``, ``std``, ``positive``, ``pairs`` (each
    ``{"key": other-axes text, "a": .., "b": .., "diff": ..}``) and ``unpaired`` (texts)."""
    c = comparison
    if c.axis not in axes:
        raise CompareError(f"--compare {c}: {c.axis!r} is not an axis of this sweep ({axes})")
    present = {value_text(r.get(c.axis)) for r in rows}
    if c.a == "*":  # each value against the baseline, in the rows' order
        if c.b not in present:
            raise CompareError(f"--compare {c}: {c.axis} has no value {c.b!r}")
        values = dict.fromkeys(value_text(r.get(c.axis)) for r in rows)
        return [
            result
            for v in values
            if v != c.b
            for result in paired_differences(
                rows, axes, Comparison(c.axis, v, c.b), metrics, is_seed
            )
        ]
    for arm in (c.a, c.b):
        if arm not in present:
            raise CompareError(
                f"--compare {c}: {c.axis} has no value {arm!r} (it has "
                f"{', '.join(sorted(present))})"
            )
    others = [a for a in axes if a != c.axis]
    group_axes = [a for a in others if not is_seed(a)]
    cells: dict[tuple, dict[str, dict[tuple, dict[str, Any]]]] = {}
    for r in rows:
        side = value_text(r.get(c.axis))
        if side not in (c.a, c.b):
            continue
        group = tuple(value_text(r.get(a)) for a in group_axes)
        key = tuple(value_text(r.get(a)) for a in others)
        cells.setdefault(group, {c.a: {}, c.b: {}})[side][key] = r
    out = []
    for group, sides in cells.items():
        if not (sides[c.a] and sides[c.b]):  # this group does not hold the comparison
            continue
        for metric in metrics:
            has = [
                any(_finite(r.get(metric)) is not None for r in sides[x].values()) for x in sides
            ]
            if not all(has):  # an arm without the metric at all (epsilon of a run without DP)
                continue
            pairs, unpaired = _pair(c, sides, others, metric)
            out.append(
                {
                    "compare": str(c),
                    "group": dict(zip(group_axes, group, strict=True)),
                    "metric": metric,
                    **_summary([p["diff"] for p in pairs]),
                    "pairs": pairs,
                    "unpaired": unpaired,
                }
            )
    return out


def _pair(
    c: Comparison, sides: dict[str, dict[tuple, dict[str, Any]]], others: list[str], metric: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """The pairs (same values of every other axis, seeds included) where both arms finished
    with a finite ``metric``, and each key that is not a pair, with why."""
    pairs, unpaired = [], []
    for key in sorted(set(sides[c.a]) | set(sides[c.b])):
        ra, rb = sides[c.a].get(key), sides[c.b].get(key)
        label = ", ".join(f"{a}={v}" for a, v in zip(others, key, strict=True)) or "-"
        va, vb = (
            _finite(r.get(metric)) if r and r.get("status") == "finished" else None
            for r in (ra, rb)
        )
        if va is None or vb is None:
            missing = [
                f"{arm} absent"
                if r is None
                else f"{arm} {r.get('status') or 'not finished'}"
                if r.get("status") != "finished"
                else f"{arm} has no {metric}"
                for arm, r, v in ((c.a, ra, va), (c.b, rb, vb))
                if v is None
            ]
            unpaired.append(f"{label} ({'; '.join(missing)})")
            continue
        pairs.append({"key": label, "a": va, "b": vb, "diff": va - vb})
    return pairs, unpaired


def _summary(diffs: list[float]) -> dict[str, Any]:
    """n, mean, the 95 % Student-t half-width, sample std, how many are positive, and whether
    the interval excludes 0."""
    n = len(diffs)
    mean = float(np.mean(diffs)) if n else None
    ci = t_half_width(diffs)
    return {
        "n": n,
        "mean": mean,
        "ci95": ci,
        "std": float(np.std(diffs, ddof=1)) if n > 1 else None,
        "positive": sum(d > 0 for d in diffs),
        "excludes_zero": ci is not None and abs(mean) > ci,
    }


def md_cell(text: Any) -> str:
    """A markdown table cell: a ``|`` in a label would split it."""
    return str(text).replace("|", "\\|")


def _num(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:+.{digits}f}"


def paired_markdown(results: list[dict[str, Any]], scale: float = 1.0, digits: int = 4) -> str:
    """The comparisons as one markdown table, its meaning in the line above it. ``scale``
    multiplies the differences of fractions (100: accuracy in points); a metric with a value
    outside [-1, 1] (bytes, seconds) is shown unscaled."""
    if not results:
        return ""
    group_axes = list(dict.fromkeys(k for r in results for k in r["group"]))
    unit = " (x100: points)" if scale == 100 else "" if scale == 1 else f" (x{scale:g})"
    counts = any(abs(v) > 1.0 for r in results for p in r["pairs"] for v in (p["a"], p["b"]))
    if unit and counts:
        unit = unit[:-1] + "; bytes and counts as they are)"
    head = ["A - B", *group_axes, "metric", f"mean ± 95% CI{unit}", "n", "> 0", "per pair"]
    lines = [
        f"Paired differences A - B, matched on every other axis, seeds included. {PM_PAIRED}; "
        "`> 0`: pairs where A - B > 0. **Bold**: the interval excludes 0.\n",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in results:
        # ``scale`` is for fractions (accuracy in points); a count such as bytes stays as is
        values = [v for p in r["pairs"] for v in (p["a"], p["b"])]
        k = scale if all(-1.0 <= v <= 1.0 for v in values) else 1.0
        mean = None if r["mean"] is None else r["mean"] * k
        ci = None if r["ci95"] is None else r["ci95"] * k
        cell = _num(mean, digits) + ("" if ci is None else f" ± {ci:.{digits}f}")
        if r["excludes_zero"]:
            cell = f"**{cell}**"
        per = " / ".join(_num(p["diff"] * k, digits) for p in r["pairs"]) or "-"
        parsed = Comparison.parse(r["compare"])
        a, b = parsed.a, parsed.b
        lines.append(
            "| "
            + " | ".join(
                [
                    md_cell(f"{a} - {b}"),
                    *(md_cell(r["group"].get(k, "")) for k in group_axes),
                    r["metric"],
                    cell,
                    str(r["n"]),
                    f"{r['positive']}/{r['n']}",
                    per,
                ]
            )
            + " |"
        )
    unpaired = [(r["compare"], r["metric"], u) for r in results for u in r["unpaired"]]
    if unpaired:
        lines.append("\nUnpaired trials (left out of the differences above):\n")
        lines += [f"- {md_cell(c)}, {m}: {md_cell(u)}" for c, m, u in unpaired]
    return "\n".join(lines) + "\n"
