"""How close does local training get to the machine's matmul peak? Achieved fp32 GFLOP/s of a
client's ``method.fit`` against ``torch.mm`` on the same CPU with the same torch thread count.

    fedrs bench flops [--data DIR] [--set name=value ...] --json out.json

1. **Peak**: fp32 ``torch.mm`` of ``n x n`` matrices (``sizes``) per thread count, one warm-up
   call, then at least ``peak_repeats`` calls and ``peak_min_s``; the best size's ``stat``
   call. Measured before the rows and again right before each; a row's peak is the highest at
   its thread count. A row or peak timed with under 0.9 of the cores (process CPU time / wall)
   is flagged ``busy``.
2. **Achieved**: the method built as a client actor builds it (``torch.set_num_threads`` =
   ``resources.num_cpus_per_client``), ``fit`` on a real shard file cut from a client's first
   ``steps x batch`` rows. One step's FLOPs are counted (``FlopCounterMode`` around a one-step
   ``fit``, also the warm-up; the backward share must be non-zero); ``repeats`` timed ``fit``
   calls over ``steps`` steps (the whole call: what an actor spends) give
   ``gflops = flops_per_step x steps / seconds``.
3. **Profile** of the headline row: one step under ``torch.profiler``, self CPU time and FLOPs
   per op group: "time not in matmuls" vs "matmuls below peak".
4. **Experiments**, before / after interleaved on the headline row, trained tensors checked
   equal: ``attention`` (open_clip's ``nn.MultiheadAttention`` vs fedrs's batch-first
   attention), ``batch`` (the headline at batch x 2), ``fullft_text`` (first fullft row: the text
   tower stopped at the last EOT, as fedrs's prompt ``TextEncoder`` does).

Headline ``ratio``: ``fedrsclip`` on ``ViT-B-32`` (random init; 224 px), batch 32, one torch
thread. Rows: every method on every arch at ``threads[0]``; the first method at every count.

Options (``--set``): ``methods`` (fedrsclip,fullft,promptfl; PromptFL uncached), ``archs``
(ViT-B-32,fedrs-rs), ``batch`` (32), ``threads`` (1,all), ``sizes`` (512,1024,2048),
``peak_repeats`` (5), ``peak_min_s`` (0.5), ``repeats`` (3), ``min_steps`` (1), ``min_fit_s``
(3.0), ``profile`` (true), ``experiments`` (attention; also batch, fullft_text),
``per_class`` (16), ``stat`` (median | best), ``seed`` (0). ``--data DIR``: a built dataset
(an image size other than the model's adds the resize to every step).
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fedrs.benchmarks import plots
from fedrs.benchmarks.common import as_list, bench_result, print_table, save_outputs
from fedrs.benchmarks.flopcount import (
    BUSY_CPU_SHARE,
    FlopCount,
    Peaks,
    preprocess_cost,
    profile_fit,
    summarize,
)
from fedrs.benchmarks.flops_client import (
    PATCHES,
    Client,
    ClientData,
    RowSpec,
    count_step,
    patch_experiment,
)
from fedrs.benchmarks.harness import build_data

log = logging.getLogger(__name__)
TARGET = 0.6


def choose_steps(step_s: float, max_steps: int, min_steps: int, min_fit_s: float) -> int:
    """Steps per timed ``fit``: at least ``min_steps`` and ~``min_fit_s`` seconds, at most
    what the shard holds."""
    want = max(min_steps, math.ceil(min_fit_s / max(step_s, 1e-6)))
    return max(1, min(want, max_steps))


def measure_row(
    client: Client,
    data: ClientData,
    repeats: int,
    min_steps: int,
    min_fit_s: float,
    stat: str = "median",
    batch: int | None = None,
) -> tuple[dict[str, Any], FlopCount, Any]:
    """Achieved GFLOP/s of ``fit`` (the caller adds the peak and ``ratio``), the FLOPs of one
    step and the one-step ``fit`` output. The counted one-step ``fit`` is the warm-up too."""
    spec = client.spec
    batch = batch or spec.batch
    torch.set_num_threads(spec.threads)
    t0 = time.perf_counter()
    count, out = count_step(client, data, batch)
    step_s = time.perf_counter() - t0  # an over-estimate (counter overhead): fewer steps
    steps = choose_steps(step_s, len(data.shard) // batch, min_steps, min_fit_s)
    shard = data.rows(steps * batch)
    timed = [client.timed_fit(shard, batch) for _ in range(repeats)]
    times, cpu = [w for w, _ in timed], [c for _, c in timed]
    seconds = summarize(times, stat)
    return (
        {
            "method": spec.method,
            "arch": spec.arch,
            "batch": batch,
            "threads": spec.threads,
            "flops_per_step": count.total,
            "forward_flops_per_step": count.forward,
            "backward_flops_per_step": count.backward,
            "flops_by_op": dict(sorted(count.by_op.items(), key=lambda kv: -kv[1])),
            "steps": steps,
            "seconds": seconds,
            "seconds_all": times,
            # CPU seconds per wall second per thread: ~1 on a quiet machine
            "cpu_share": sum(cpu) / sum(times) / spec.threads,
            "busy": sum(cpu) / sum(times) / spec.threads < BUSY_CPU_SHARE,
            "gflops": count.total * steps / seconds / 1e9,
            "median_gflops": count.total * steps / statistics.median(times) / 1e9,
            "best_gflops": count.total * steps / min(times) / 1e9,
        },
        count,
        out,
    )


def profile_step(client: Client, data: ClientData, count: FlopCount) -> dict[str, Any]:
    """One local step under ``torch.profiler`` (the row has warmed the method up), then the
    cost of ``Backbone.preprocess`` alone."""
    torch.set_num_threads(client.spec.threads)
    shard = data.rows(client.spec.batch)
    backbone = getattr(client.method, "backbone", None)
    prof = profile_fit(lambda: client.fit(shard), backbone, count)
    return {**preprocess_cost(backbone, client.spec.batch), "row": client.spec.label, **prof}


def batch_experiment(
    client: Client, data: ClientData, repeats: int, min_fit_s: float, stat: str
) -> dict[str, Any]:
    """The headline at twice its batch size (fewer, larger steps)."""
    big = 2 * client.spec.batch
    if len(data.shard) < 2 * big:
        return {"name": "batch", "skipped": f"client shard has {len(data.shard)} rows"}
    row, _, _ = measure_row(client, data, repeats, 1, min_fit_s, stat, batch=big)
    return {"name": "batch", "row": client.spec.label, "batch": big, "result": row}


def thread_counts(value: Any) -> tuple[int, ...]:
    """The ``threads`` option: counts >= 1 or ``all`` (the cores this process may use)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = [int(cores or 1) if str(t).lower() == "all" else int(t) for t in as_list(value)]
    if any(n < 1 for n in counts):
        raise ValueError(f"threads must be >= 1 or 'all', got {value!r}")
    return tuple(dict.fromkeys(counts))


def synthetic(root: Path, arch: str, per_class: int, seed: int) -> str:
    """One client's synthetic scenes at the architecture's input size (no resize), built once."""
    from fedrs.models.backbone import model_config

    size = int(model_config(arch)["vision_cfg"]["image_size"])
    return build_data(root / f"synth-{size}", "iid", 1, per_class, size, seed, None, 1)


def run(
    data: str | None = None,
    methods: Any = ("fedrsclip", "fullft", "promptfl"),
    archs: Any = ("ViT-B-32", "fedrs-rs"),
    batch: int = 32,
    threads: Any = (1, "all"),
    sizes: Any = (512, 1024, 2048),
    peak_repeats: int = 5,
    peak_min_s: float = 0.5,
    repeats: int = 3,
    min_steps: int = 1,
    min_fit_s: float = 3.0,
    profile: bool = True,
    experiments: Any = ("attention",),
    per_class: int = 16,
    stat: str = "median",
    seed: int = 0,
) -> dict[str, Any]:
    if stat not in ("median", "best"):
        raise ValueError(f"stat must be median or best, got {stat!r}")
    t_start, counts, experiments = time.perf_counter(), thread_counts(threads), as_list(experiments)
    unknown = set(experiments) - {*PATCHES, "batch"}
    if unknown:
        known = sorted({*PATCHES, "batch"})
        raise ValueError(f"unknown experiments {sorted(unknown)}; choose from {known}")
    specs = [
        RowSpec(m, a, int(batch), t)
        for a in as_list(archs)
        for i, m in enumerate(as_list(methods))
        for t in (counts if i == 0 else counts[:1])
    ]
    headline, saved_threads = specs[0], torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    found: list[dict[str, Any]] = []
    peaks = Peaks(tuple(as_list(sizes, int)), peak_repeats, stat, peak_min_s)
    with tempfile.TemporaryDirectory(prefix="fedrs-flops-") as scratch:
        root, by_path = Path(scratch), dict[str, ClientData]()
        try:
            for t in counts:
                log.info("torch.mm peak, %d thread(s): %.1f GFLOP/s", t, peaks.measure(t))
            for spec in specs:
                path = data or synthetic(root, spec.arch, per_class, seed)
                if path not in by_path:
                    by_path[path] = ClientData(path, root / f"cuts{len(by_path)}")
                cdata = by_path[path]
                client = Client(spec, cdata.classes, seed)
                # the peak right before the row too: the row's peak is the run's best
                adjacent = peaks.measure(spec.threads)
                measured, count, one_step = measure_row(
                    client, cdata, repeats, min_steps, min_fit_s, stat
                )
                row = {"adjacent_peak_gflops": adjacent, **measured}
                rows.append(row)
                log.info(
                    "%s: %.1f GFLOP/s (adjacent peak %.1f)", spec.label, row["gflops"], adjacent
                )
                if spec == headline and profile:
                    extra["profile"] = profile_step(client, cdata, count)
                for name in experiments:  # on the headline row; fullft_text: first fullft row
                    if name == "fullft_text":
                        done = any(e["name"] == name for e in found)
                        if spec.method != "fullft" or done:
                            continue
                    elif spec != headline:
                        continue
                    if name == "batch":
                        exp = batch_experiment(client, cdata, repeats, min_fit_s, stat)
                    else:
                        args = (count, one_step, repeats, row["steps"], stat)
                        exp = patch_experiment(name, client, cdata, *args)
                    found.append({**exp, "row_index": len(rows) - 1})
                del client
        finally:
            torch.set_num_threads(saved_threads)
    for part in [*rows, *(e.get(k) for e in found for k in ("before", "after", "result"))]:
        if part:
            part["peak_gflops"] = peaks.peak(part["threads"])
            part["ratio"] = part["gflops"] / part["peak_gflops"]
    for row in rows:
        row["busy"] = row["busy"] or peaks.busy(row["threads"])
    if experiments:
        extra["experiments"] = found
    for group in extra.get("profile", {}).get("groups", []):
        group["of_peak"] = group["gflops"] / peaks.peak(headline.threads)
    return bench_result(
        "flops",
        rows[0]["ratio"],
        target=TARGET,
        headline=headline.label,
        statistic=f"{stat} (peak: the best size's {stat} mm call, the highest of the run's "
        f"peak measurements at the thread count; achieved: the {stat} of the timed fit calls)",
        device="cpu",
        peaks=peaks.summary(),
        rows=rows,
        **extra,
        data=data or f"synthetic, {per_class} images per class per sensor, model image size",
        wall_s=time.perf_counter() - t_start,
    )


def log_experiment(exp: dict[str, Any]) -> None:
    if "after" in exp:
        b, a = exp["before"], exp["after"]
        log.info(
            "experiment %s (%s) on %s: %.1f -> %.1f GFLOP/step, %.2f s -> %.2f s per fit "
            "(x%.2f wall, x%.2f CPU), ratio %.3f -> %.3f",
            exp["name"],
            exp["change"],
            exp["row"],
            b["flops_per_step"] / 1e9,
            a["flops_per_step"] / 1e9,
            b["seconds"],
            a["seconds"],
            exp["speedup"],
            exp["cpu_speedup"],
            b["ratio"],
            a["ratio"],
        )
    elif "result" in exp:
        r = exp["result"]
        log.info("batch %d: %.1f GFLOP/s, ratio %.3f", r["batch"], r["gflops"], r["ratio"])


def main(json_path: str | None = None, data: str | None = None, **options: Any) -> dict[str, Any]:
    result = run(data=data, **options)
    print_table(
        "torch.mm peak (best size; highest of the run's measurements)",
        [
            {"threads": p["threads"], "GFLOP/s": p["peak_gflops"]}
            | {"measurements": " ".join(f"{g:.0f}" for g in p["measurements"]), "busy": p["busy"]}
            for p in result["peaks"].values()
        ],
    )
    rows = result["rows"]
    print_table(
        f"local training (batch {rows[0]['batch']}): achieved fp32 GFLOP/s vs torch.mm peak",
        [
            {"method": r["method"], "arch": r["arch"], "t": r["threads"]}
            | {"GF/step": r["flops_per_step"] / 1e9, "s/fit": r["seconds"], "cpu": r["cpu_share"]}
            | {"GF/s": r["gflops"], "peak": r["peak_gflops"], "ratio": r["ratio"]}
            for r in rows
        ],
    )
    if "profile" in result:
        prof = result["profile"]
        print_table(
            f"profile, one step of {prof['row']} ({prof['wall_s']:.2f} s under the profiler)",
            [
                {"group": g["group"], "s": g["seconds"], "share": g["share"]}
                | {"GFLOP": g["gflop"], "GFLOP/s": g["gflops"], "of peak": g.get("of_peak", 0.0)}
                for g in prof["groups"]
            ],
        )
        pre = ", ".join(f"{k} {v:.3f} s" for k, v in prof.get("preprocess_batch_s", {}).items())
        log.info(
            "preprocess in the profiled step: %.3f s; one batch: %s", prof["preprocess_s"], pre
        )
    for exp in result.get("experiments", []):
        log_experiment(exp)
    busy = [f"{r['method']}/{r['arch']}/{r['threads']}t" for r in rows if r["busy"]]
    if busy:
        log.warning(
            "timed while other processes took the CPU (cpu share < %.1f): %s; re-run on an "
            "idle machine",
            BUSY_CPU_SHARE,
            ", ".join(busy),
        )
    log.info("headline %s: ratio %.3f (target %s)", result["headline"], result["ratio"], TARGET)
    return save_outputs(result, json_path, "flops", plots.flops)
