"""FLOP counting, the matmul peak and the step profile, for ``fedrs bench flops``:
``count_flops`` (torch's ``FlopCounterMode`` plus formulas for the CPU attention kernels it
lacks), ``measure_peak`` (fp32 ``torch.mm`` GFLOP/s per thread count) and ``profile_fit`` (self
CPU time and FLOPs per op group of one call under ``torch.profiler``).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from fedrs.models.flops import FlopCount, count_flops  # noqa: F401  (used here; re-exported)

BUSY_CPU_SHARE = 0.9  # a row whose process got less CPU than this was timed on a busy machine
MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm")
ATTENTION_OPS = ("_scaled_dot_product", "_flash_attention", "_efficient_attention", "softmax")
NORM_ACT_OPS = ("layer_norm", "gelu", "sigmoid", "silu", "tanh")
COPY_OPS = ("copy_", "clone", "cat", "contiguous", "_to_copy", "fill_", "zero_", "index", "stack")
CONV_OPS = ("conv",)


def matmul_flops(n: int) -> int:
    """FLOPs of one ``n x n`` by ``n x n`` matrix product (a multiply and an add per term)."""
    return 2 * n**3


def measure_peak(
    threads: int, sizes: tuple[int, ...], repeats: int = 5, min_s: float = 1.0
) -> dict[str, Any]:
    """fp32 ``torch.mm`` GFLOP/s with ``threads`` torch threads, after one warm-up call per size:
    ``median_gflops`` (``best_gflops``) is the best size's median (fastest) call."""
    torch.set_num_threads(threads)
    per_size = []
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        t0 = time.perf_counter()
        torch.mm(a, b)  # warm-up: MKL / oneDNN dispatch, page faults of the output
        est = max(time.perf_counter() - t0, 1e-6)
        reps = max(repeats, math.ceil(min_s / est))
        times = []
        c0 = time.process_time()
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
        cpu_share = (time.process_time() - c0) / sum(times) / threads
        flops = matmul_flops(n)
        per_size.append(
            {
                "n": n,
                "repeats": reps,
                "median_gflops": flops / statistics.median(times) / 1e9,
                "best_gflops": flops / min(times) / 1e9,
                "cpu_share": cpu_share,
            }
        )
    return {
        "threads": threads,
        "median_gflops": max(r["median_gflops"] for r in per_size),
        "best_gflops": max(r["best_gflops"] for r in per_size),
        "sizes": per_size,
    }


def summarize(times: list[float], stat: str) -> float:
    """The time a set of repeats stands for: their median, or their best (shortest)."""
    return statistics.median(times) if stat == "median" else min(times)


class Peaks:
    """Every peak measurement of a run, per thread count. A row's peak is the highest any
    measurement at its thread count reached (so machine noise can only lower the ratio)."""

    def __init__(self, sizes: tuple[int, ...], repeats: int, stat: str, min_s: float) -> None:
        self.sizes, self.repeats, self.stat, self.min_s = sizes, repeats, stat, min_s
        self.runs: dict[int, list[dict[str, Any]]] = {}

    def measure(self, threads: int) -> float:
        run = measure_peak(threads, self.sizes, self.repeats, self.min_s)
        self.runs.setdefault(threads, []).append(run)
        return float(run[f"{self.stat}_gflops"])

    def peak(self, threads: int) -> float:
        return max(float(r[f"{self.stat}_gflops"]) for r in self.runs[threads])

    def busy(self, threads: int) -> bool:
        """Whether even the best measurement ran with less CPU than ``BUSY_CPU_SHARE`` (median
        over its sizes): then the peak is too low and the ratios at that thread count too high."""
        best = max(self.runs[threads], key=lambda r: r[f"{self.stat}_gflops"])
        return statistics.median(s["cpu_share"] for s in best["sizes"]) < BUSY_CPU_SHARE

    def summary(self) -> dict[str, Any]:
        return {
            str(t): {
                "threads": t,
                "peak_gflops": self.peak(t),
                "busy": self.busy(t),
                "measurements": [r[f"{self.stat}_gflops"] for r in runs],
                "runs": runs,
            }
            for t, runs in self.runs.items()
        }


def op_category(op: str) -> str:
    name = op.removeprefix("aten::")
    if name in MATMUL_OPS:
        return "matmul"
    if any(k in name for k in ATTENTION_OPS):
        return "attention"
    if any(k in name for k in CONV_OPS):
        return "convolution"
    if any(k in name for k in NORM_ACT_OPS):
        return "norm / activation"
    if any(name == k or name.startswith(k) for k in COPY_OPS):
        return "copies / layout"
    return "other aten"


def flop_category(op: str) -> str:
    if op in MATMUL_OPS:
        return "matmul"
    if any(k in op for k in ATTENTION_OPS):
        return "attention"
    if "conv" in op:
        return "convolution"
    return "other aten"


@contextlib.contextmanager
def _labelled_preprocess(backbone: Any) -> Iterator[None]:
    """Mark ``backbone.preprocess`` calls in the profile (this instance, for this block only)."""
    if backbone is None:
        yield
        return
    original = backbone.preprocess

    def preprocess(images: Any) -> torch.Tensor:
        with torch.profiler.record_function("fedrs.preprocess"):
            return original(images)

    backbone.preprocess = preprocess
    try:
        yield
    finally:
        del backbone.preprocess  # back to the class's method


def profile_fit(fit: Callable[[], Any], backbone: Any, count: FlopCount) -> dict[str, Any]:
    """``fit()`` under ``torch.profiler``: self CPU time per op group with the FLOPs ``count``
    saw in it, the time in ``backbone.preprocess`` and the slowest aten ops."""
    from torch.profiler import ProfilerActivity, profile

    with _labelled_preprocess(backbone), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fit()
        wall = time.perf_counter() - t0
    groups: dict[str, float] = {}
    ops: list[tuple[str, float, int]] = []
    preprocess_s = 0.0
    for ev in prof.key_averages():
        if ev.key == "fedrs.preprocess":
            preprocess_s = ev.cpu_time_total / 1e6
        elif ev.key.startswith("aten::"):
            s = ev.self_cpu_time_total / 1e6
            groups[op_category(ev.key)] = groups.get(op_category(ev.key), 0.0) + s
            ops.append((ev.key, s, ev.count))
    flops: dict[str, int] = {}
    for op, f in count.by_op.items():
        flops[flop_category(op)] = flops.get(flop_category(op), 0) + f
    table = [
        {
            "group": g,
            "seconds": s,
            "share": s / wall,
            "gflop": flops.get(g, 0) / 1e9,
            "gflops": flops.get(g, 0) / s / 1e9 if s > 0 else 0.0,
        }
        for g, s in sorted(groups.items(), key=lambda kv: -kv[1])
    ]
    outside = wall - sum(groups.values())
    table.append(
        {"group": "outside aten ops", "seconds": outside, "share": outside / wall}
        | {"gflop": 0.0, "gflops": 0.0}
    )
    ops.sort(key=lambda o: -o[1])
    return {
        "wall_s": wall,
        "flops": count.total,
        "gflops_under_profiler": count.total / wall / 1e9,
        "groups": table,
        "preprocess_s": preprocess_s,
        "top_ops": [{"op": k, "seconds": s, "calls": c} for k, s, c in ops[:12]],
    }


def preprocess_cost(backbone: Any, batch: int, repeats: int = 5) -> dict[str, Any]:
    """Median seconds of ``backbone.preprocess`` (after a warm-up call) for one batch stored at
    the model's size and one stored at half of it (bicubic upsampling: data built smaller)."""
    if backbone is None:
        return {}
    size, out = backbone.image_size, {}
    rng = np.random.default_rng(0)
    for stored in (size, size // 2):
        images = rng.integers(0, 256, (batch, stored, stored, 3), dtype=np.uint8)
        backbone.preprocess(images)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            backbone.preprocess(images)
            times.append(time.perf_counter() - t0)
        out["at_model_size" if stored == size else f"from_{stored}px"] = statistics.median(times)
    return {"preprocess_batch_s": out}
