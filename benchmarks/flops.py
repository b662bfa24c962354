"""How close does local training get to the machine's matmul peak? Achieved fp32 GFLOP/s of a
client's ``method.fit`` against ``torch.mm`` on the same CPU with the same torch thread count.

    fedrs bench flops [--data DIR] [--set name=value ...] --json out.json

1. **Peak**: fp32 ``torch.mm`` of square ``n x n`` matrices (``sizes``, default 512, 1024, 2048;
   ``2 n^3`` FLOPs each) with ``torch.set_num_threads(t)`` for every thread count the rows use.
   One warm-up call, then timed calls (at least ``peak_repeats``, and ``peak_min_s`` per size);
   per size the *median* call time (``stat=best``: the fastest); the peak is the best size's.
   The peak is measured before the rows and again right before each row; a row's peak is the
   highest of the run's measurements at its thread count. Process CPU time is recorded beside
   wall time: a row, or a peak, timed while other processes took the cores (CPU share < 0.9)
   is flagged ``busy`` (a warning; re-run on an idle machine).
2. **Achieved**: the method is built exactly as a client actor builds it
   (``method_class(name)(cfg, classes)`` with a ``RunConfig``, ``torch.set_num_threads`` =
   ``resources.num_cpus_per_client``), and ``method.fit`` runs on a real ``Shard`` cut from a
   client shard (``FedDataset(path).client(i)``; the first ``steps x batch`` rows written as a
   shard file of their own, so every step is a full batch). FLOPs of one local step are counted
   with ``torch.utils.flop_counter.FlopCounterMode`` around a one-step ``fit`` (forward and
   backward: the FLOPs the counter sees while ``torch.autograd.backward`` runs are the backward
   share, which must be non-zero); that counted call is also the warm-up. Then ``repeats``
   timed ``fit`` calls over ``steps`` steps; the *median* time (``stat=best``: the fastest) gives
   ``gflops = flops_per_step x steps / seconds``, against the peak at the row's thread count.
   The timed span is the whole ``fit`` call (parameter load, optimizer, the SGD steps, the
   returned arrays): what a client actor spends on local training.
3. **Profile** of the headline row: one step under ``torch.profiler`` (self CPU time per aten op,
   grouped: matmul, attention, convolution, norm / activation, copies, other elementwise,
   preprocessing), with the counted FLOPs per group, so the shortfall splits into "time not in
   matmuls" and "matmuls below peak".
4. **Experiments** (before / after, interleaved on the headline row): ``attention``:
   open_clip's blocks call ``nn.MultiheadAttention(batch_first=True)``, which transposes its
   input to ``(L, N, E)``; the packed in-projection on that non-contiguous view runs as ``bmm``
   against an expanded weight instead of one ``addmm``. fedrs's backbones compute the same
   attention batch-first (``models.backbone.use_batch_first_attention``: in-projection
   ``F.linear`` -> ``scaled_dot_product_attention`` -> out-projection, the same weights); the
   experiment times open_clip's own path ("before", the model switched back for those calls
   only) against it ("after"), trained tensors checked equal to ``1e-4``.
   ``batch``: the headline at ``batch x 2``. ``fullft_text`` (on the first fullft row):
   ``FullFedAvg`` runs open_clip's ``encode_text`` over all 77 (40) positions; with the causal
   mask the positions after the last EOT cannot change the pooled features, so the text tower
   can stop there (as fedrs's prompt ``TextEncoder`` already does): fewer FLOPs, less time.

Headline ``ratio``: ``fedrsclip`` (shared + private text prompts and visual prompts: forward and
backward through both towers every step) on ``ViT-B-32`` (random init, built offline; 224 px),
batch 32, one torch thread (a client actor's default). Rows: every method in ``methods`` on every
arch in ``archs`` at ``threads[0]``; the first method also at the other thread counts.

Options (``--set``): ``methods`` (fedrsclip,fullft,promptfl: PromptFL runs uncached, pixels
through the frozen encoder each step), ``archs`` (ViT-B-32,fedrs-rs), ``batch`` (32),
``threads`` (1,all), ``sizes`` (512,1024,2048), ``peak_repeats`` (5), ``peak_min_s`` (0.5),
``repeats`` (3), ``min_steps`` (1), ``min_fit_s`` (3.0: more steps for fast rows), ``profile``
(true),
``experiments`` (attention; also ``batch``, ``fullft_text``), ``per_class`` (16, synthetic
images per class),
``stat`` (median | best: the same statistic for the peak and the fits), ``seed`` (0).
``--data DIR``: a built dataset instead of the synthetic one (its image size may differ from
the model's; then the bicubic resize in ``Backbone.preprocess`` is part of every step).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrs.benchmarks import plots
from fedrs.benchmarks.common import machine_info, plot_path, print_table, write_result
from fedrs.benchmarks.flopcount import (
    BUSY_CPU_SHARE,
    FlopCount,
    Peaks,
    count_flops,
    flop_category,
    op_category,
    summarize,
)

log = logging.getLogger(__name__)

TARGET = 0.6


# ---------------------------------------------------------------------------------------------
# FLOP counting


# ---------------------------------------------------------------------------------------------
# peak


# ---------------------------------------------------------------------------------------------
# data


def _synthetic(root: Path, image_size: int, per_class: int, seed: int) -> str:
    from fedrs.datasets.manifest import MANIFEST
    from fedrs.datasets.partition import PartitionSpec
    from fedrs.datasets.synth import build_synthetic

    out = root / f"synth-{image_size}"
    if not (out / MANIFEST).is_file():
        log.info("building synthetic scenes at %d px in %s", image_size, out)
        spec = PartitionSpec(scheme="iid", num_clients=1, seed=seed, min_examples=1)
        build_synthetic(out, per_class=per_class, image_size=image_size, partition=spec)
    return str(out)


class ClientData:
    """A client's shard of a built dataset, and real shard files cut from its first rows."""

    def __init__(self, path: str, scratch: Path) -> None:
        from fedrs.datasets.manifest import FedDataset

        self.dataset = FedDataset(path)
        sizes = [c.train.num_examples for c in self.dataset.clients]
        self.client_id = int(np.argmax(sizes))
        self.shard = self.dataset.client(self.client_id)
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        self._cuts: dict[int, Any] = {}

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    def rows(self, n: int) -> Any:
        """A ``Shard`` of the client's first ``n`` rows (its own Arrow file)."""
        from fedrs.datasets.shards import Shard, write_shard

        if n > len(self.shard):
            raise ValueError(f"client shard has {len(self.shard)} rows, {n} asked")
        if n not in self._cuts:
            s = self.shard
            path = self.scratch / f"client{self.client_id}-{s.image_shape[0]}px-{n}.arrow"
            write_shard(path, s.images[:n], s.ids[:n], s.labels[:n], s.domains[:n], s.paths[:n])
            self._cuts[n] = Shard(path)
        return self._cuts[n]


# ---------------------------------------------------------------------------------------------
# local training


@dataclass(frozen=True)
class RowSpec:
    method: str
    arch: str
    batch: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.method} / {self.arch} / b{self.batch} / {self.threads}t"


class Client:
    """One method built as a client actor builds it, with its initial global / private state."""

    def __init__(self, spec: RowSpec, classes: list[str], seed: int) -> None:
        from fedrs.actors.allocator import retain_freed_memory
        from fedrs.methods import method_class
        from fedrs.orchestrator.config import RunConfig

        self.spec = spec
        self.cfg = RunConfig().replace(
            **{
                "method.name": spec.method,
                "model.arch": spec.arch,
                "client.batch_size": spec.batch,
                "resources.num_cpus_per_client": float(spec.threads),
                "data.feature_cache": False,
                "federation.seed": seed,
            }
        )
        torch.set_num_threads(max(1, round(self.cfg.resources.num_cpus_per_client)))
        if self.cfg.resources.retain_freed_memory:  # as the actor does (process-wide, once)
            retain_freed_memory()
        self.method = method_class(spec.method)(self.cfg, classes)
        self.global_params = self.method.init_global(seed)
        self.private = self.method.init_private(0, seed)
        self.seed = seed

    def options(self, batch: int | None = None) -> Any:
        from fedrs.methods.base import FitOptions

        c = self.cfg.client
        return FitOptions(
            round=0,
            client_id=0,
            seed=self.seed,
            epochs=1,
            batch_size=batch or self.spec.batch,
            lr=c.lr,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
        )

    def fit(self, shard: Any, batch: int | None = None) -> Any:
        return self.method.fit(self.global_params, self.private, shard, self.options(batch))

    def timed_fit(self, shard: Any, batch: int | None = None) -> tuple[float, float]:
        """Wall seconds and process CPU seconds of one ``fit`` call."""
        c0, t0 = time.process_time(), time.perf_counter()
        self.fit(shard, batch)
        return time.perf_counter() - t0, time.process_time() - c0


def count_step(client: Client, data: ClientData, batch: int) -> tuple[FlopCount, Any]:
    """FLOPs of one local step (a one-step ``fit``, checked to include a backward pass) and
    that ``fit``'s output."""
    with count_flops() as count:
        out = client.fit(data.rows(batch), batch)
    if count.total <= 0 or count.backward <= 0:
        raise RuntimeError(
            f"{client.spec.label}: FlopCounterMode saw {count.total} FLOPs, "
            f"{count.backward} in backward; expected both > 0"
        )
    return count, out


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
    """Achieved GFLOP/s of ``fit`` (``peak_gflops`` / ``ratio`` are filled in by the caller),
    the FLOPs of one step and the one-step ``fit`` output. The counted one-step ``fit`` is also
    the warm-up (first-call costs: allocator growth, oneDNN primitives)."""
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
    row = {
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
        # CPU seconds the process got per wall second per thread: ~1 on a quiet machine
        # (1 thread); well below 1 means other processes took the cores during the timing.
        "cpu_share": sum(cpu) / sum(times) / spec.threads,
        "busy": sum(cpu) / sum(times) / spec.threads < BUSY_CPU_SHARE,
        "gflops": count.total * steps / seconds / 1e9,
        "median_gflops": count.total * steps / statistics.median(times) / 1e9,
        "best_gflops": count.total * steps / min(times) / 1e9,
    }
    return row, count, out


# ---------------------------------------------------------------------------------------------
# profile


@contextlib.contextmanager
def _labelled_preprocess(client: Client) -> Iterator[None]:
    """Mark ``Backbone.preprocess`` calls in the profile (this instance, for this block only)."""
    backbone = getattr(client.method, "backbone", None)
    if backbone is None:
        yield
        return
    original = backbone.preprocess

    def preprocess(images: Any) -> torch.Tensor:
        with torch.profiler.record_function("fedrs.preprocess"):
            return original(images)

    backbone.preprocess = preprocess  # type: ignore[method-assign]
    try:
        yield
    finally:
        del backbone.preprocess  # back to the class's method


def profile_step(client: Client, data: ClientData, count: FlopCount) -> dict[str, Any]:
    """One local step under ``torch.profiler``: self CPU time per op group, with FLOPs."""
    from torch.profiler import ProfilerActivity, profile

    spec = client.spec
    torch.set_num_threads(spec.threads)
    shard = data.rows(spec.batch)  # the row has warmed the method up
    with _labelled_preprocess(client), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        client.fit(shard)
        wall = time.perf_counter() - t0
    groups: dict[str, float] = {}
    ops: list[tuple[str, float, int]] = []
    preprocess_s = 0.0
    for ev in prof.key_averages():
        if ev.key == "fedrs.preprocess":
            preprocess_s = ev.cpu_time_total / 1e6
            continue
        if not ev.key.startswith("aten::"):
            continue
        s = ev.self_cpu_time_total / 1e6
        groups[op_category(ev.key)] = groups.get(op_category(ev.key), 0.0) + s
        ops.append((ev.key, s, ev.count))
    flops: dict[str, int] = {}
    for op, f in count.by_op.items():
        flops[flop_category(op)] = flops.get(flop_category(op), 0) + f
    aten_s = sum(groups.values())
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
    table.append(
        {
            "group": "outside aten ops",
            "seconds": wall - aten_s,
            "share": (wall - aten_s) / wall,
            "gflop": 0.0,
            "gflops": 0.0,
        }
    )
    ops.sort(key=lambda o: -o[1])
    return {
        **_preprocess_cost(client, spec.batch),
        "row": spec.label,
        "wall_s": wall,
        "flops": count.total,
        "gflops_under_profiler": count.total / wall / 1e9,
        "groups": table,
        "preprocess_s": preprocess_s,
        "top_ops": [{"op": k, "seconds": s, "calls": c} for k, s, c in ops[:12]],
    }


def _preprocess_cost(client: Client, batch: int, repeats: int = 5) -> dict[str, Any]:
    """Seconds ``Backbone.preprocess`` takes for one batch stored at the model's size and for
    one stored at half of it (bicubic upsampling: a dataset built smaller than the model)."""
    backbone = getattr(client.method, "backbone", None)
    if backbone is None:
        return {}
    size = backbone.image_size
    rng = np.random.default_rng(0)
    out = {}
    for stored in (size, size // 2):
        images = rng.integers(0, 256, (batch, stored, stored, 3), dtype=np.uint8)
        backbone.preprocess(images)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            backbone.preprocess(images)
            times.append(time.perf_counter() - t0)
        key = "at_model_size" if stored == size else f"from_{stored}px"
        out[key] = statistics.median(times)
    return {"preprocess_batch_s": out}


# ---------------------------------------------------------------------------------------------
# experiments


@contextlib.contextmanager
def open_clip_attention(client: Client) -> Iterator[None]:
    """Inside the block the client's models compute attention through open_clip's own
    ``nn.MultiheadAttention`` (what ``models.backbone.use_batch_first_attention`` replaces)."""
    from fedrs.models.backbone import use_batch_first_attention

    method = client.method
    models = [v for v in vars(method).values() if isinstance(v, torch.nn.Module)]
    if getattr(method, "backbone", None) is not None:
        models.append(method.backbone.model)
    for model in models:
        use_batch_first_attention(model, enable=False)
    try:
        yield
    finally:
        for model in models:
            use_batch_first_attention(model)


def _max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a) if a else 0.0


def _encode_text_to_eot(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip ``encode_text`` over the first ``max(EOT) + 1`` positions only: the causal
    mask keeps later (padding) positions from reaching the EOT features, so the result is the
    same while the text tower runs ~10 of 77 positions."""
    eot = tokens.argmax(dim=-1)
    n = int(eot.max()) + 1
    x = model.token_embedding(tokens[:, :n]) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)[torch.arange(tokens.shape[0], device=tokens.device), eot]
    proj = model.text_projection
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


@contextlib.contextmanager
def fullft_text_to_eot(client: Client) -> Iterator[None]:
    """Inside the block ``FullFedAvg`` encodes its class prompts with ``_encode_text_to_eot``."""
    from torch import nn

    from fedrs.methods.fullft import FullFedAvg

    original = FullFedAvg._logits

    def logits(self: Any, images: np.ndarray) -> torch.Tensor:
        img = self.model.encode_image(self.backbone.preprocess(images))
        txt = _encode_text_to_eot(self.model, self.tokens)
        img, txt = nn.functional.normalize(img, dim=-1), nn.functional.normalize(txt, dim=-1)
        return self.model.logit_scale.exp().clamp(max=100) * img @ txt.t()

    FullFedAvg._logits = logits  # type: ignore[method-assign]
    try:
        yield
    finally:
        FullFedAvg._logits = original  # type: ignore[method-assign]


# name -> (context manager given the client, what changes, whether the block holds the code
# as it was before the change: fedrs's code is then the "after")
PATCHES: dict[
    str, tuple[Callable[[Client], contextlib.AbstractContextManager[None]], str, bool]
] = {
    "attention": (
        open_clip_attention,
        "attention computed batch-first (before: open_clip's MultiheadAttention)",
        True,
    ),
    "fullft_text": (fullft_text_to_eot, "fullft text tower stopped at the last EOT", False),
}


def patch_experiment(
    name: str,
    client: Client,
    data: ClientData,
    base_count: FlopCount,
    base_out: Any,
    repeats: int,
    steps: int,
    stat: str,
) -> dict[str, Any]:
    """Before / after a code change (``PATCHES[name]``): the one-step ``fit`` outputs compared
    (the code as it runs now is the row's counted step), FLOPs recounted inside the block, timed
    calls interleaved (before, after, before, ...). The block holds the "after" code, or, for a
    change fedrs already made (``reverts``), the "before" code."""
    patch, what, reverts = PATCHES[name]
    spec = client.spec
    torch.set_num_threads(spec.threads)
    shard = data.rows(steps * spec.batch)
    with patch(client):
        new_count, new_out = count_step(client, data, spec.batch)
    diff = max(
        _max_abs_diff(base_out.params, new_out.params),
        _max_abs_diff(base_out.private, new_out.private),
    )
    if diff > 1e-4:
        raise RuntimeError(f"experiment {name} changed the trained tensors by {diff:.2e}")
    outside, inside = [], []
    for _ in range(repeats):
        outside.append(client.timed_fit(shard))
        with patch(client):
            inside.append(client.timed_fit(shard))
    before, after = (inside, outside) if reverts else (outside, inside)
    count_before, count_after = (new_count, base_count) if reverts else (base_count, new_count)
    out: dict[str, Any] = {"name": name, "change": what, "row": spec.label, "steps": steps}
    for key, timed, count in (("before", before, count_before), ("after", after, count_after)):
        times = [w for w, _ in timed]
        s = summarize(times, stat)
        out[key] = {
            "threads": spec.threads,
            "seconds": s,
            "seconds_all": times,
            "cpu_seconds_all": [c for _, c in timed],
            "flops_per_step": count.total,
            "flops_by_op": count.by_op,
            "gflops": count.total * steps / s / 1e9,
        }
    out["speedup"] = out["before"]["seconds"] / out["after"]["seconds"]
    # process CPU seconds (1 thread: immune to other processes taking the core)
    out["cpu_speedup"] = summarize(out["before"]["cpu_seconds_all"], stat) / summarize(
        out["after"]["cpu_seconds_all"], stat
    )
    out["max_abs_param_diff"] = diff
    return out


def batch_experiment(
    client: Client, data: ClientData, repeats: int, min_fit_s: float, stat: str
) -> dict[str, Any]:
    """The headline at twice its batch size (fewer, larger steps)."""
    big = 2 * client.spec.batch
    if len(data.shard) < 2 * big:
        return {"name": "batch", "skipped": f"client shard has {len(data.shard)} rows"}
    row, _, _ = measure_row(client, data, repeats, 1, min_fit_s, stat, batch=big)
    return {"name": "batch", "row": client.spec.label, "batch": big, "result": row}


# ---------------------------------------------------------------------------------------------
# driver


def _as_tuple(value: Any) -> tuple[Any, ...]:
    if value is None or value == "":
        return ()
    return tuple(value) if isinstance(value, list | tuple) else (value,)


def _threads(value: Any) -> tuple[int, ...]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = []
    for t in _as_tuple(value):
        n = int(cores or 1) if str(t).lower() == "all" else int(t)
        if n < 1:
            raise ValueError(f"threads must be >= 1 or 'all', got {t!r}")
        if n not in out:
            out.append(n)
    return tuple(out)


def image_size(arch: str) -> int:
    """The architecture's input size (the synthetic data is built at it: no resize)."""
    from fedrs.models.backbone import model_config

    return int(model_config(arch)["vision_cfg"]["image_size"])


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
    t_start = time.perf_counter()
    methods, archs = _as_tuple(methods), _as_tuple(archs)
    thread_counts, sizes = _threads(threads), tuple(int(n) for n in _as_tuple(sizes))
    experiments = _as_tuple(experiments)
    known = {*PATCHES, "batch"}
    unknown = set(experiments) - known
    if unknown:
        raise ValueError(f"unknown experiments {sorted(unknown)}; choose from {sorted(known)}")
    specs = [
        RowSpec(m, a, int(batch), t)
        for a in archs
        for i, m in enumerate(methods)
        for t in (thread_counts if i == 0 else thread_counts[:1])
    ]
    headline = specs[0]
    saved_threads = torch.get_num_threads()
    scratch = tempfile.TemporaryDirectory(prefix="fedrs-flops-")
    try:
        peaks = Peaks(sizes, peak_repeats, stat, peak_min_s)
        for t in thread_counts:
            log.info("torch.mm peak, %d thread(s): %.1f GFLOP/s", t, peaks.measure(t))
        rows: list[dict[str, Any]] = []
        extra: dict[str, Any] = {}
        found: list[dict[str, Any]] = []
        root = Path(scratch.name)
        by_path: dict[str, ClientData] = {}
        for spec in specs:
            path = data or _synthetic(root, image_size(spec.arch), per_class, seed)
            if path not in by_path:
                by_path[path] = ClientData(path, root / f"cuts{len(by_path)}")
            cdata = by_path[path]
            client = Client(spec, cdata.classes, seed)
            # the peak right before the row too: the row's peak is the run's best at its threads
            row = {"adjacent_peak_gflops": peaks.measure(spec.threads)}
            measured, count, one_step = measure_row(
                client, cdata, repeats, min_steps, min_fit_s, stat
            )
            row.update(measured)
            log.info(
                "%s: %.1f GFLOP/s (adjacent peak %.1f)",
                spec.label,
                row["gflops"],
                row["adjacent_peak_gflops"],
            )
            rows.append(row)
            if spec == headline and profile:
                extra["profile"] = profile_step(client, cdata, count)
            # experiments: on the headline row; fullft_text on the first fullft row
            for name in experiments:
                if name == "fullft_text":
                    wanted = spec.method == "fullft" and not any(e["name"] == name for e in found)
                else:
                    wanted = spec == headline
                if not wanted:
                    continue
                if name == "batch":
                    exp = batch_experiment(client, cdata, repeats, min_fit_s, stat)
                else:
                    exp = patch_experiment(
                        name, client, cdata, count, one_step, repeats, row["steps"], stat
                    )
                found.append({**exp, "row_index": len(rows) - 1})
            del client
    finally:
        torch.set_num_threads(saved_threads)
        scratch.cleanup()
    for row in rows:
        row["busy"] = row["busy"] or peaks.busy(row["threads"])
        row["peak_gflops"] = peaks.peak(row["threads"])
        row["ratio"] = row["gflops"] / row["peak_gflops"]
    peak = peaks.peak(headline.threads)
    for exp in found:
        for part in (exp.get("before"), exp.get("after"), exp.get("result")):
            if part:
                part["peak_gflops"] = peaks.peak(part["threads"])
                part["ratio"] = part["gflops"] / part["peak_gflops"]
    if experiments:
        extra["experiments"] = found
    if "profile" in extra:
        for group in extra["profile"]["groups"]:
            group["of_peak"] = group["gflops"] / peak
    head = rows[0]
    return {
        "benchmark": "flops",
        "ratio": head["ratio"],
        "target": TARGET,
        "headline": headline.label,
        "statistic": f"{stat} (peak: the best size's {stat} mm call, the highest of the run's "
        f"peak measurements at the thread count; achieved: the {stat} of the timed fit calls)",
        "device": "cpu",
        "peaks": peaks.summary(),
        "rows": rows,
        **extra,
        "data": data or f"synthetic, {per_class} images per class per sensor, model image size",
        "wall_s": time.perf_counter() - t_start,
        "machine": machine_info(),
    }


def main(json_path: str | None = None, data: str | None = None, **options: Any) -> dict[str, Any]:
    result = run(data=data, **options)
    print_table(
        "torch.mm peak (best size; highest of the run's measurements)",
        [
            {
                "threads": p["threads"],
                "GFLOP/s": p["peak_gflops"],
                "measurements": " ".join(f"{g:.0f}" for g in p["measurements"]),
                "busy": p["busy"],
            }
            for p in result["peaks"].values()
        ],
    )
    rows = result["rows"]
    print_table(
        f"local training (batch {rows[0]['batch']}): achieved fp32 GFLOP/s vs torch.mm peak",
        [
            {
                "method": r["method"],
                "arch": r["arch"],
                "t": r["threads"],
                "GF/step": r["flops_per_step"] / 1e9,
                "s/fit": r["seconds"],
                "cpu": r["cpu_share"],
                "GF/s": r["gflops"],
                "peak": r["peak_gflops"],
                "ratio": r["ratio"],
            }
            for r in rows
        ],
    )
    if "profile" in result:
        prof = result["profile"]
        print_table(
            f"profile, one step of {prof['row']} ({prof['wall_s']:.2f} s under the profiler)",
            [
                {
                    "group": g["group"],
                    "s": g["seconds"],
                    "share": g["share"],
                    "GFLOP": g["gflop"],
                    "GFLOP/s": g["gflops"],
                    "of peak": g.get("of_peak", 0.0),
                }
                for g in prof["groups"]
            ],
        )
        pre = prof.get("preprocess_batch_s", {})
        log.info(
            "preprocess in the profiled step: %.3f s; one batch: %s",
            prof["preprocess_s"],
            ", ".join(f"{k} {v:.3f} s" for k, v in pre.items()),
        )
    for exp in result.get("experiments", []):
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
    busy = [f"{r['method']}/{r['arch']}/{r['threads']}t" for r in result["rows"] if r["busy"]]
    if busy:
        log.warning(
            "timed while other processes took the CPU (cpu share < %.1f): %s; re-run on an "
            "idle machine",
            BUSY_CPU_SHARE,
            ", ".join(busy),
        )
    print(f"headline {result['headline']}: ratio {result['ratio']:.3f} (target {TARGET})")
    png = plot_path(json_path, "flops")
    plots.flops(result, png)
    result["plot"] = png
    write_result(result, json_path)
    return result
