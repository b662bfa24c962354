"""The figures of the timing benchmarks, one function per benchmark (``fedrs bench NAME``
writes ``NAME.png`` beside its JSON): each draws from the result dict the benchmark returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrs.io import new_figure, save_figure


def vs_sequential(result: dict[str, Any], path: str) -> None:
    fig, ax = new_figure(9.0, 3.8)
    w = result["setup"]["workers"]
    first = [d for d in result["details"] if d.get("repeat", 1) == 1]
    for d, style in zip(first, ("-", ":"), strict=False):
        rounds = [r["round"] for r in d["seq_rounds"]]
        seq = [r["round_s"] for r in d["seq_rounds"]]
        ax.plot(rounds, seq, "s" + style, color="tab:gray", label=f"sequential ({d['partition']})")
        ax.plot(
            rounds,
            [s / w for s in seq],
            style,
            color="tab:gray",
            alpha=0.5,
            label=f"sequential / {w} ({d['partition']})",
        )
        ax.plot(
            rounds,
            d["fedrs_periods_s"],
            "o" + style,
            color="tab:blue",
            label=f"fedrs, {w} actors ({d['partition']})",
        )
    ax.set_xlabel("round (last: evaluation on both sides)")
    ax.set_ylabel("seconds per round")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(
        f"fedrs vs sequential loop: efficiency {result['ratio']:.2f} "
        f"(steady state, {result['rows'][0]['partition']}, median of repeats; repeat 1 shown)"
    )
    save_figure(fig, path)


def flops(result: dict[str, Any], path: str) -> None:
    """Achieved GFLOP/s of each row beside the matmul peak at its thread count, and each
    experiment's "after" (hatched) beside its row."""
    bars = [
        (f"{r['method']}\n{r['arch']}\nb{r['batch']} {r['threads']}t", r, "")
        + (("\n(busy)",) if r["busy"] else ("",))
        for r in result["rows"]
    ]
    for exp in result.get("experiments", []):
        if "after" in exp:
            label, row = bars[exp["row_index"]][:2]
            bars.append((f"{label}\n+{exp['name']}", {**row, **exp["after"]}, "//", ""))
    fig, ax = new_figure(max(6.0, 1.1 * len(bars) + 2), 4.2)
    x = np.arange(len(bars))
    ax.bar(x - 0.2, [b[1]["peak_gflops"] for b in bars], 0.4, label="torch.mm peak", color="#bbb")
    ax.bar(
        x + 0.2,
        [b[1]["gflops"] for b in bars],
        0.4,
        label="local training",
        color="#3a7",
        hatch=[b[2] for b in bars],
    )
    for i, (_, r, _, _) in enumerate(bars):
        ax.text(i + 0.2, r["gflops"], f"{r['ratio']:.2f}", ha="center", va="bottom", fontsize=8)
    labels = [label + busy for label, _, _, busy in bars]
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("fp32 GFLOP/s")
    ax.set_title(f"achieved / peak (headline {result['ratio']:.2f}, target {result['target']})")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def scale_clients(result: dict[str, Any], path: str) -> None:
    fig, _ = new_figure(10, 3.6)
    fig.clf()
    ax_t, ax_m = fig.subplots(1, 2)
    n = [r["registered"] for r in result["rows"]]
    ax_t.plot(n, [r["round_s"] for r in result["rows"]], marker="o", label="round (median)")
    ax_t.plot(n, [r["populate_s"] for r in result["rows"]], marker="s", label="store pre-fill")
    ax_t.set_xscale("log")
    ax_t.set_yscale("log")
    ax_t.set_xlabel("registered clients")
    ax_t.set_ylabel("seconds")
    ax_t.set_title(f"{result['setup']['clients_per_round']} clients / round")
    ax_t.legend()
    ax_t.grid(alpha=0.3, which="both")
    ax_m.plot(n, [r["driver_rss_mb"] for r in result["rows"]], marker="o", label="driver RSS")
    ax_m.plot(n, [r["driver_peak_rss_mb"] for r in result["rows"]], marker="^", label="peak")
    obj = [s for s in result["store"] if s["backend"] == "ray object store"]
    if obj:
        ax_m.plot(
            [s["n"] for s in obj],
            [s["holder_rss_growth_mb"] for s in obj],
            marker="x",
            label="object-store holder: growth",
        )
    ax_m.set_xscale("log")
    ax_m.set_ylim(bottom=0)
    ax_m.set_xlabel("registered clients")
    ax_m.set_ylabel("MiB")
    ax_m.set_title("driver memory")
    ax_m.legend()
    ax_m.grid(alpha=0.3, which="both")
    save_figure(fig, path)


def packing(result: dict[str, Any], path: str) -> None:
    fig, ax = new_figure(6.0, 3.5)
    rows = sorted(result["rows"], key=lambda r: -r["gpu_per_client"])
    labels = [f"{r['gpu_per_client']:g}\n({r['actors']} actors)" for r in rows]
    ax.bar(labels, [r["updates_per_s"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax.text(i, r["updates_per_s"], f"{r['actors_per_gpu']}/GPU", ha="center", va="bottom")
    kind = "real GPUs" if result["real_gpus"] else "logical GPUs, CPU-bound"
    ax.set_xlabel("GPU per client actor")
    ax.set_ylabel("client updates / s (steady state)")
    ax.set_title(f"fractional GPU packing ({result['gpus']} {kind})")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def allocator(result: dict[str, Any], path: str) -> None:
    fig, ax = new_figure()
    rows = result["rows"]
    ax.bar(
        [r["condition"] for r in rows],
        [r["fit_ms_median"] for r in rows],
        color=["tab:gray", "tab:blue"] * 2,
    )
    ax.set_ylabel("client fit, ms (median)")
    ax.set_title(f"allocator tuning: {result['setup']['arch']}, pair ratio {result['ratio']}")
    save_figure(fig, path)


def vs_flower(result: dict[str, Any], path: str) -> None:
    fig, ax = new_figure(7, 3.5)
    rows = result["rows"]
    labels = [f"{r['method']}\n{r['system']}" for r in rows]
    ax.bar(labels, [r["upd/s"] for r in rows], color=["C0", "C1", "C2"] * len(rows))
    ax.set_ylabel("client updates / s (rounds 2..R)")
    ax.set_title("fedrs vs Flower simulation, same client work")
    save_figure(fig, path)
