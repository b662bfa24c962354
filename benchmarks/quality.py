"""Quality benchmark: FedRSCLIP against its baselines on real RS data, with a backbone fedrs
pretrains itself (no pretrained CLIP can be downloaded here).

    fedrs bench quality --data ../shared/data/rsscn7 --captions ../shared/data/ucm-captions \\
        --json quality.json

1. Build UCM-Captions into caption shards and pretrain ``fedrs-rs`` with the CLIP loss
   (cached under ``--cache``, keyed by its settings).
2. Build RSSCN7 (never seen in pretraining) for each alpha: 10 clients, Dirichlet(alpha); and
   one IID client for centralized CoOp. The held-out test split is the same in every build
   (it is drawn before partitioning, from the seed).
3. Run each method; report global accuracy (held-out split), personalised accuracy (mean over
   clients of each client's accuracy on its own local split) and parameters each client sends
   per round. One row per (method, alpha); centralized CoOp (one IID client, the union of the
   clients' data) does not depend on alpha: it runs once and is reported for each alpha.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from fedrs.benchmarks.common import (
    cache_key,
    cached_build,
    cached_pretrain,
    machine_info,
    print_table,
    write_result,
)

log = logging.getLogger(__name__)

ARCH = "fedrs-rs"
IMAGE_SIZE = 96
PROMPT_LR = 0.002  # CoOp's SGD learning rate
METHODS: list[tuple[str, dict[str, Any], bool]] = [
    # (label, config overrides, depends on the federated partition)
    ("zero-shot CLIP", {"method.name": "zeroshot"}, True),  # per-client splits differ by alpha
    ("CoOp (centralized)", {"method.name": "promptfl"}, False),
    ("PromptFL", {"method.name": "promptfl"}, True),
    (
        "FedProx-PromptFL",
        {"method.name": "promptfl", "strategy.name": "fedprox", "strategy.mu": 0.01},
        True,
    ),
    ("full FedAvg", {"method.name": "fullft", "client.lr": 1e-3}, True),
    ("FedRSCLIP", {"method.name": "fedrsclip", "strategy.name": "prompt_avg"}, True),
    (
        "FedRSCLIP, l1=0 (no DPA)",
        {"method.name": "fedrsclip", "strategy.name": "prompt_avg", "method.lambda_dpa": 0.0},
        True,
    ),
    (
        "FedRSCLIP, l2=0 (no CMFA)",
        {"method.name": "fedrsclip", "strategy.name": "prompt_avg", "method.lambda_cmfa": 0.0},
        True,
    ),
]


def pretrained_backbone(captions: str, cache: Path, epochs: int, seed: int) -> tuple[str, dict]:
    from fedrs.datasets.partition import PartitionSpec

    shards = cached_build(
        cache / f"captions-{cache_key(str(Path(captions).resolve()), IMAGE_SIZE)}",
        sources=(("captions", captions),),
        image_size=IMAGE_SIZE,
        partition=PartitionSpec(scheme="iid", num_clients=1, seed=seed, min_examples=1),
    )
    return cached_pretrain(shards, cache, ARCH, epochs, seed)


def federated_build(
    data: str, cache: Path, alpha: float | None, num_clients: int, seed: int
) -> str:
    from fedrs.datasets.partition import PartitionSpec

    scheme = "dirichlet" if alpha is not None else "iid"
    n = num_clients if alpha is not None else 1
    key = cache_key(str(Path(data).resolve()), scheme, alpha, n, seed, IMAGE_SIZE)
    return cached_build(
        cache / f"rs-{key}",
        sources=(("rsscn7", data),),
        image_size=IMAGE_SIZE,
        partition=PartitionSpec(
            scheme=scheme, num_clients=n, seed=seed, alpha=alpha, min_examples=10
        ),
    )


def run(
    data: str,
    captions: str,
    cache: str | None = None,
    alphas: tuple[float, ...] = (0.1, 0.5),
    rounds: int = 10,
    num_clients: int = 10,
    clients_per_round: int = 5,
    local_epochs: int = 2,
    pretrain_epochs: int = 30,
    seed: int = 0,
) -> dict[str, Any]:
    from fedrs.orchestrator.config import RunConfig
    from fedrs.orchestrator.plan import plan
    from fedrs.orchestrator.runner import run as run_federation

    t_start = time.perf_counter()
    cache_dir = Path(cache or Path.home() / ".cache" / "fedrs" / "quality")
    cache_dir.mkdir(parents=True, exist_ok=True)
    ckpt, pre = pretrained_backbone(captions, cache_dir, pretrain_epochs, seed)
    central = federated_build(data, cache_dir, None, num_clients, seed)
    fed = {a: federated_build(data, cache_dir, a, num_clients, seed) for a in alphas}
    base = {
        "model.arch": ARCH,
        "model.pretrained": ckpt,
        "client.lr": PROMPT_LR,
        "client.local_epochs": local_epochs,
        "client.batch_size": 32,
        "federation.rounds": rounds,
        "federation.seed": seed,
        "resources.num_actors": 2,
        "resources.num_cpus_per_client": 1.0,
    }
    quiet = Console(file=io.StringIO())
    rows: list[dict[str, Any]] = []
    shared_rows: dict[str, dict[str, Any]] = {}
    runs_dir = cache_dir / "runs"
    for label, overrides, federated in METHODS:
        for alpha in alphas:
            if not federated and label in shared_rows:
                rows.append({**shared_rows[label], "alpha": alpha})
                continue
            sets = {
                **base,
                "data.path": fed[alpha] if federated else central,
                "federation.clients_per_round": clients_per_round if federated else 1,
                **overrides,
            }
            cfg = RunConfig().replace(**sets)
            t0 = time.perf_counter()
            summary = run_federation(
                cfg, out=str(runs_dir / cache_key(label, alpha, sets)), console=quiet
            )
            final = summary["final"]
            p = plan(cfg)
            row = {
                "method": label,
                "alpha": alpha,
                "accuracy": round(final.get("accuracy", float("nan")), 4),
                "personalized_accuracy": round(final.get("personalized_accuracy", float("nan")), 4),
                "params_sent_per_client_round": p["params_sent_per_client"],
                "rounds": summary["rounds_completed"],
                "wall_s": round(time.perf_counter() - t0, 1),
            }
            log.info("%s", row)
            rows.append(row)
            if not federated:
                shared_rows[label] = row
    result = {
        "benchmark": "quality",
        "rows": rows,
        "pretrain": {
            "arch": ARCH,
            "epochs": pretrain_epochs,
            "checkpoint": ckpt,
            "test_retrieval": pre.get("test"),
            "seconds": pre.get("seconds"),
        },
        "setup": {
            "data": data,
            "captions": captions,
            "alphas": list(alphas),
            "rounds": rounds,
            "num_clients": num_clients,
            "clients_per_round": clients_per_round,
            "local_epochs": local_epochs,
            "image_size": IMAGE_SIZE,
            "prompt_lr": PROMPT_LR,
            "seed": seed,
        },
        "wall_s": round(time.perf_counter() - t_start, 1),
        "machine": machine_info(),
    }
    by = {(r["method"], r["alpha"]): r for r in rows}
    result["ratio"] = {
        f"fedrsclip_over_promptfl_alpha_{a}": round(
            by[("FedRSCLIP", a)]["accuracy"] / max(by[("PromptFL", a)]["accuracy"], 1e-9), 3
        )
        for a in alphas
    }
    return result


def markdown(result: dict[str, Any]) -> str:
    head = (
        "| method | alpha | global acc | personalised acc | params sent / client / round |\n"
        "|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['method']} | {r['alpha']} | {r['accuracy']:.3f} | "
        f"{r['personalized_accuracy']:.3f} | {r['params_sent_per_client_round']:,} |\n"
        for r in result["rows"]
    )
    return head + body


def main(
    data: str | None = None,
    captions: str | None = None,
    json_path: str | None = None,
    cache: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    if not data or not captions:
        from fedrs.errors import ConfigError

        raise ConfigError("bench quality needs --data IMAGEFOLDER and --captions CAPTION_DATASET")
    result = run(data, captions, cache, **kwargs)
    print_table("quality (RSSCN7, fedrs-rs pretrained on UCM-Captions)", result["rows"])
    print(markdown(result))
    print(f"total {result['wall_s']:.0f}s; ratios {result['ratio']}")
    write_result(result, json_path)
    return result
