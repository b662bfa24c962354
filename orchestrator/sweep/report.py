"""``fedrs sweep report``: finished trials grouped over the seed axes (n, mean, sample
standard deviation, 95 % Student-t interval of the mean), paired comparisons, a heatmap of
the group means over two axes and per-round curves (mean +- 1 std over seeds)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.io import atomic_open, new_figure, save_figure, write_json
from fedrs.orchestrator.sweep.paired import md_cell
from fedrs.orchestrator.sweep.results import as_number, columns, read_stored, write_results
from fedrs.orchestrator.sweep.spec import SweepError, is_seed_axis
from fedrs.orchestrator.sweep.store import load_trials


# ------------------------------------------------------------------------------ statistics
def t_quantile(n: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile for a mean of ``n`` values (n - 1 degrees of freedom)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1))


def describe(values: list[float]) -> dict[str, Any]:
    """n, mean, sample standard deviation (ddof 1) and the 95% CI half-width of the mean."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    std = float(x.std(ddof=1)) if n > 1 else None
    ci = t_quantile(n) * std / math.sqrt(n) if std is not None else None
    return {"n": n, "mean": float(x.mean()), "std": std, "ci95": ci}


def group_rows(
    rows: list[dict[str, Any]], axes: list[str], metrics: list[str]
) -> list[dict[str, Any]]:
    """Finished rows grouped over the seed axes: per group of the other axes, each metric's
    n / mean / std / ci95 (``describe``), plus how many of the group's trials failed."""
    keys = [a for a in axes if not is_seed_axis(a)]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for values, members in groups.items():
        done = [r for r in members if r.get("status") == "finished"]
        g: dict[str, Any] = dict(zip(keys, values, strict=True))
        g["trials"], g["failed"] = len(members), sum(r.get("status") == "failed" for r in members)
        for m in metrics:
            g[m] = describe([r.get(m) for r in done])
        out.append(g)
    return out


PM_GROUPS = (
    "Cells: mean ± sample std [± 95 % Student-t half-width of the mean] (n finished trials)."
)


def _fmt(d: dict[str, Any]) -> str:
    if d["mean"] is None:
        return "-"
    if d["std"] is None:
        return f"{d['mean']:.4f} (n=1)"
    return f"{d['mean']:.4f} ± {d['std']:.4f} [±{d['ci95']:.4f}] (n={d['n']})"


def markdown(groups: list[dict[str, Any]], keys: list[str], metrics: list[str]) -> str:
    head = [*keys, *metrics, "trials", "failed"]
    lines = [
        PM_GROUPS + "\n",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for g in groups:
        cells = [md_cell(g[k]) for k in keys] + [_fmt(g[m]) for m in metrics]
        lines.append("| " + " | ".join([*cells, str(g["trials"]), str(g["failed"])]) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ figures
def heatmap(rows: list[dict[str, Any]], x: str, y: str, metric: str, path: Path) -> None:
    """Mean of ``metric`` over finished trials for each (x, y) cell (other axes averaged)."""
    done = [r for r in rows if r.get("status") == "finished" and r.get(metric) is not None]
    xs = sorted({r[x] for r in done}, key=_sort_key)
    ys = sorted({r[y] for r in done}, key=_sort_key)
    grid = np.full((len(ys), len(xs)), np.nan)
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            cell = [r[metric] for r in done if r[x] == xv and r[y] == yv]
            if cell:
                grid[i, j] = float(np.mean(cell))
    fig, ax = new_figure(1.6 + 1.3 * len(xs), 1.2 + 0.6 * len(ys))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i in range(len(ys)):
        for j in range(len(xs)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(xs)), [str(v) for v in xs], fontsize=8)
    ax.set_yticks(range(len(ys)), [str(v) for v in ys], fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{metric} (mean over seeds and other axes)", fontsize=9)
    fig.colorbar(im, ax=ax)
    save_figure(fig, path)


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, int | float) else (1, str(v))


def line_styles(groups: list[tuple]) -> dict[tuple, dict[str, Any]]:
    """Group (its non-seed axis values) -> matplotlib line style: the colour follows the last
    axis's value, the dash and marker the other axes', so no two groups look alike (the default
    10-colour cycle repeats past 10) and one arm keeps its colour across the other axes."""
    from matplotlib import colormaps

    def order(t: tuple) -> list[tuple[int, Any]]:
        return [_sort_key(v) for v in t]

    last = sorted({g[-1:] for g in groups}, key=order)
    rest = sorted({g[:-1] for g in groups}, key=order)
    palette = list(colormaps["tab10" if len(last) <= 10 else "tab20"].colors)
    dashes, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D", "v", "P"]
    styles = {}
    for g in groups:
        c, r = last.index(g[-1:]), rest.index(g[:-1])
        styles[g] = {
            "color": palette[c % len(palette)],
            "linestyle": dashes[(r + c // len(palette)) % len(dashes)],
            "marker": markers[r % len(markers)],
        }
    return styles


def curves(
    sweep_dir: Path,
    rows: list[dict[str, Any]],
    keys: list[str],
    metric: str,
    path: Path,
) -> None:
    """Per group (non-seed axes), the metric per round: mean over seeds, band +-1 std."""
    fig, ax = new_figure(7.0, 4.0)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status") == "finished":
            groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    styles = line_styles(list(groups))
    for values, members in groups.items():
        series: dict[int, list[float]] = {}
        for r in members:
            metrics = Path(r["run_dir"]) / "metrics.jsonl"
            if not metrics.is_file():
                continue
            for line in metrics.read_text().splitlines():
                rec = json.loads(line) if line.strip() else {}
                if as_number(rec.get(metric)) is not None:
                    series.setdefault(int(rec["round"]), []).append(float(rec[metric]))
        if not series:
            continue
        rounds = sorted(series)
        mean = np.array([np.mean(series[r]) for r in rounds])
        std = np.array([np.std(series[r], ddof=1) if len(series[r]) > 1 else 0 for r in rounds])
        _band(ax, keys, values, styles[values], rounds, mean, std, ms=3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _finish(fig, ax, path, "round", metric, f"{metric} per round")


def _band(
    ax: Any, keys: list[str], values: tuple, style: dict, x: Any, mean: Any, std: Any, **kw: Any
) -> None:
    """One group's mean line, labelled by its axis values, and its +-1 std band."""
    label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(keys, values, strict=True))
    ax.plot(x, mean, label=label or "all", **{**style, **kw})
    ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.12)


def _finish(fig: Any, ax: Any, path: Path, xlabel: str, metric: str, what: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.set_title(f"{what}: mean over seeds, band ±1 std", fontsize=9)
    save_figure(fig, path)


def time_curves(
    rows: list[dict[str, Any]], keys: list[str], metric: str, path: Path, points: int = 60
) -> bool:
    """Per group, the metric against virtual time (runs on the virtual clock,
    ``fedrs/core/system.py``): each trial's curve as a step (a value holds until the next
    evaluation), on a common grid from where every run has a value to the group's shortest
    run; mean over seeds, band +-1 std. False (nothing drawn) when no trial kept a virtual clock."""
    groups: dict[tuple, list[list[tuple[float, float]]]] = {}
    for r in rows:
        metrics = Path(str(r.get("run_dir", ""))) / "metrics.jsonl"
        if r.get("status") != "finished" or not metrics.is_file():
            continue
        recs = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        steps = [
            (float(rec["virtual_time_s"]), float(rec[metric]))
            for rec in recs
            if "virtual_time_s" in rec and as_number(rec.get(metric)) is not None
        ]
        if steps:
            groups.setdefault(tuple(r.get(k) for k in keys), []).append(steps)
    if not groups:
        return False
    fig, ax = new_figure(7.0, 4.0)
    styles = line_styles(list(groups))
    for values, runs in groups.items():
        first, last = max(run[0][0] for run in runs), min(run[-1][0] for run in runs)
        grid = np.linspace(first, max(first, last), points)  # where every run has a value
        ys = np.array([[next(v for t, v in reversed(run) if t <= g) for g in grid] for run in runs])
        mean = ys.mean(axis=0)
        std = ys.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(points)
        _band(ax, keys, values, styles[values], grid, mean, std, marker=None)
    _finish(fig, ax, path, "virtual time (s)", metric, f"{metric} against virtual time")
    return True


# ------------------------------------------------------------------------------ the report
def _whole_cells(rows: list[dict[str, Any]], keys: list[str], column: str) -> bool:
    """True when, in every cell, all finished trials have ``column`` or none has: a figure only
    some seeds of a cell report (trials run by different versions) would mislead."""
    cells: dict[tuple, set[bool]] = {}
    for r in rows:
        if r["status"] == "finished":
            cell = tuple(str(r.get(k)) for k in keys)
            cells.setdefault(cell, set()).add(r.get(column) is not None)
    return all(len(v) == 1 for v in cells.values())


def with_defaults(
    opts: dict[str, Any],
    metric: str | None,
    also: list[str] | None,
    compare: list[str] | None,
    scale: float | None,
) -> dict[str, Any]:
    """``report_text``'s options: the command line's over the sweep file's ``[report]`` table
    (``opts``); ``also`` and ``compare`` add up."""
    return {
        "metric": metric or opts.get("metric"),
        "also": list(dict.fromkeys([*opts.get("also", []), *(also or [])])),
        "compare": list(dict.fromkeys([*opts.get("compare", []), *(compare or [])])),
        "scale": scale or opts.get("scale", 1.0),
        "compare_also": opts.get("compare_also"),
    }


def report_text(
    name: str,
    rows: list[dict[str, Any]],
    axes: list[str],
    head: str,
    metric: str | None = None,
    also: list[str] | None = None,
    compare: list[str] | None = None,
    scale: float = 1.0,
    title: bool = True,
    compare_also: list[str] | None = None,
) -> tuple[str, list[str], list[dict[str, Any]]]:
    """The report's markdown (groups over seeds, then the paired comparisons), the metric
    columns and the comparisons' results (``orchestrator/paired.py``). Comparisons pair the
    headline and ``compare_also`` (None: every metric of ``also``)."""
    from fedrs.orchestrator.sweep.paired import Comparison, paired_differences, paired_markdown

    keys = [a for a in axes if not is_seed_axis(a)]
    final = f"final_{metric or head}"
    # the final metric, its best round, and every other final figure of the same kind
    # (personalised, personalised on the global split, with the mean visual prompts, ...)
    related = sorted(
        c
        for c in columns(rows)
        if c.startswith("final_") and (metric or head) in c and "train" not in c
    )
    metrics = [
        m
        for m in dict.fromkeys(
            [final, f"best_{metric or head}", *related, *(f"final_{a}" for a in also or [])]
        )
        if any(r.get(m) is not None for r in rows)
        and (m in (final, f"best_{metric or head}") or _whole_cells(rows, keys, m))
    ]
    if not any(r.get(final) is not None for r in rows):
        raise SweepError(f"no finished trial has {final!r} (known: {columns(rows)})")
    groups = group_rows(rows, axes, metrics)
    status = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed")}
    text = [
        *([f"# Sweep {name}\n"] if title else []),
        f"{len(rows)} trials: {status['finished']} finished, {status['failed']} failed, "
        f"{len(rows) - sum(status.values())} not finished. Axes: {', '.join(axes) or '-'}; "
        f"seed axes averaged: {', '.join(a for a in axes if is_seed_axis(a)) or 'none'}.\n",
        markdown(groups, keys, metrics),
    ]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        text.append("\nFailed trials:\n")
        text += [f"- {r['trial']}: {r['error']}" for r in failed]
    results: list[dict[str, Any]] = []
    for spec in compare or []:
        more = also if compare_also is None else compare_also
        cmp_metrics = [final, *(f"final_{a}" for a in more or [])]
        cmp_metrics = [m for m in cmp_metrics if any(r.get(m) is not None for r in rows)]
        results += paired_differences(rows, axes, Comparison.parse(spec), cmp_metrics, is_seed_axis)
    if results:
        heading = "## Paired comparisons" if title else "**Paired comparisons.**"
        text += [f"\n{heading}\n", paired_markdown(results, scale)]
    return "\n".join(text), metrics, results


def report(
    sweep_dir: str | Path,
    x: str | None = None,
    y: str | None = None,
    metric: str | None = None,
    also: list[str] | None = None,
    compare: list[str] | None = None,
    scale: float | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``compare.json`` (with ``compare``), ``heatmap.png`` (two axes;
    needs two non-seed axes) and ``curves.png`` into the sweep directory; return their paths.
    ``also``: more final metrics as columns (``kappa``); ``compare``: ``AXIS=A:B`` paired
    comparisons. The sweep file's ``[report]`` table gives the defaults (lists add up)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.exists():
        raise SweepError(f"{sweep_dir}: missing (no such sweep directory)")
    sweep, trials = load_trials(sweep_dir)
    from fedrs.orchestrator.sweep.spec import headline

    opts = sweep.report
    x, y = x or opts.get("x"), y or opts.get("y")
    given = with_defaults(opts, metric, also, compare, scale)
    metric = given["metric"]
    head = sweep.options.metric or headline(trials[0].cfg)
    rows = write_results(sweep_dir, trials, head)  # fresh: also counts trials still running
    axes = sweep.axes
    keys = [a for a in axes if not is_seed_axis(a)]
    body, _, results = report_text(sweep_dir.name, rows, axes, head, **given)
    text = [body]
    out = {"report": sweep_dir / "report.md"}
    if results:
        out["compare"] = sweep_dir / "compare.json"
        write_json(out["compare"], results)
    x, y = x or (keys[0] if keys else None), y or (keys[1] if len(keys) > 1 else None)
    for name in (x, y):
        if name is not None and name not in axes:
            raise SweepError(f"{name!r} is not an axis of this sweep (axes: {axes})")
    final = f"final_{metric or head}"
    if x and y and x != y:
        out["heatmap"] = sweep_dir / "heatmap.png"
        heatmap(rows, x, y, final, out["heatmap"])
        text.append("\n![heatmap](heatmap.png)\n")
    out["curves"] = sweep_dir / "curves.png"
    curves(sweep_dir, rows, keys, metric or head, out["curves"])
    text.append("\n![curves](curves.png)\n")
    if time_curves(rows, keys, metric or head, sweep_dir / "time_curves.png"):
        out["time_curves"] = sweep_dir / "time_curves.png"
        text.append("\n![against virtual time](time_curves.png)\n")
    with atomic_open(out["report"], "w") as fh:
        fh.write("\n".join(text))
    return out


def stored_report(
    path: str | Path | list[str | Path],
    metric: str | None = None,
    also: list[str] | None = None,
    compare: list[str] | None = None,
    scale: float | None = None,
) -> str:
    """The report's markdown from stored ``results.csv`` files alone (no trial folders): the
    tables benchmarks/README.md holds, regenerated by ``fedrs sweep report FILE.csv ...``.
    Several files make one study (say an arm added later in its own sweep file): their rows
    are pooled, so comparisons pair across files on the shared axes; the files must have the
    same axes and no trial twice. The first file's sweep file gives the report's defaults."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    rows, axes, settings = read_stored(paths[0])
    for other in paths[1:]:
        more, more_axes, _ = read_stored(other)
        if more_axes != axes:
            raise SweepError(
                f"{other}: axes {', '.join(more_axes)} differ from {paths[0]}'s "
                f"({', '.join(axes)}); results pool only over the same axes"
            )
        rows += more
    seen: set[tuple[str, ...]] = set()
    for r in rows if len(paths) > 1 else []:  # pooled files must not hold the same trial
        key = tuple(str(r.get(a)) for a in axes)
        if key in seen:
            cell = ", ".join(f"{a}={v}" for a, v in zip(axes, key, strict=True))
            raise SweepError(f"{cell} is in the results twice: pool files of different arms")
        seen.add(key)
    given = with_defaults(settings.get("report", {}), metric, also, compare, scale)
    head = settings.get("sweep", {}).get("metric") or next(
        (c[len("best_") :] for c in columns(rows) if c.startswith("best_")), "accuracy"
    )
    name = " + ".join(Path(p).name.removesuffix(".csv").removesuffix(".results") for p in paths)
    text, _, _ = report_text(name, rows, axes, head, title=False, **given)
    return text
