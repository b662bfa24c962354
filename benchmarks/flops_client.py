"""The client ``fedrs bench flops`` measures (a method built as a client actor builds it, on real
shard files cut from a client's rows) and the code changes its experiments time before /
after: open_clip's own attention (``attention``) and the fullft text tower stopped at the last
EOT (``fullft_text``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrs.benchmarks.flopcount import FlopCount, count_flops, summarize
from fedrs.benchmarks.harness import max_abs_diff


class ClientData:
    """The largest client's shard of a built dataset, and real shard files cut from its rows."""

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
        from fedrs.core.config import RunConfig
        from fedrs.methods import method_class

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

    def fit(self, shard: Any, batch: int | None = None) -> Any:
        """One local epoch on ``shard`` (client 0, round 0) from the initial state."""
        from fedrs.methods.base import FitOptions

        options = FitOptions.from_config(self.cfg, 0, 0)
        options = dataclasses.replace(options, epochs=1, batch_size=batch or self.spec.batch)
        return self.method.fit(self.global_params, self.private, shard, options)

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
    """Before / after a code change (``PATCHES[name]``): one-step outputs compared with the
    row's, FLOPs recounted inside the block, timed calls interleaved (outside, inside, ...)."""
    patch, what, reverts = PATCHES[name]
    spec = client.spec
    torch.set_num_threads(spec.threads)
    shard = data.rows(steps * spec.batch)
    with patch(client):
        new_count, new_out = count_step(client, data, spec.batch)
    diff = max(
        max_abs_diff(base_out.params, new_out.params),
        max_abs_diff(base_out.private, new_out.private),
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
    cpu = [summarize(out[k]["cpu_seconds_all"], stat) for k in ("before", "after")]
    out["cpu_speedup"] = cpu[0] / cpu[1]  # 1 thread: immune to other processes' load
    out["max_abs_param_diff"] = diff
    return out
