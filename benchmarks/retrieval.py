"""Retrieval quality: PE-RSITR against the baselines of its table on UCM-Captions, centralized
and federated, over seeds, with a backbone that never saw UCM-Captions images.

    fedrs bench retrieval --data ../shared/data/ucm-captions \\
        --set pretrain_data=../shared/data/rsscn7 --set class_folder=../shared/data/ucm \\
        --json retrieval.json

1. Pretrain ``fedrs-rs`` with the CLIP loss on RSSCN7 (another archive, another sensor), its
   images captioned by templates from their class names (cached under ``--cache``).
2. Build UCM-Captions at 96 px, its own 1,680 / 210 split: one IID client (centralized) and
   ``num_clients`` clients by Dirichlet(``alpha``) over the images' scene classes
   (``--caption-classes folder:class_folder``: UCM-Captions image k is the k-th file of
   ``class_folder`` in sorted (class, file) order).
3. Every method x setting x seed, each run resumable: a finished run (its ``summary.json``) is
   read back, not run again. The federated runs train every client every round, so both
   settings see the same epochs over the data (``rounds x local_epochs``).
4. Report the six R@K and mR (percent) as mean and standard deviation over the seeds, the
   parameters each client trains and sends, and the paper's UCM-Captions mR beside ours.

Options (``--set``): ``pretrain_data``, ``class_folder``, ``seeds`` (0,1,2), ``rounds`` (5),
``local_epochs`` (2), ``num_clients`` (10), ``alpha`` (0.5), ``pretrain_epochs`` (30),
``methods`` (all labels below, comma-separated keys), ``settings`` (centralized,federated),
``lr`` (0.01: SGD for adapters and prompts), ``fullft_lr`` (0.001), ``arch`` (fedrs-rs; any
other is used with random weights, no pretraining: tests), ``bottleneck`` (64).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import statistics
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
ARCH = "fedrs-rs"  # the small remote-sensing CLIP `fedrs pretrain` makes
IMAGE_SIZE = 96

# key: (label, config overrides, the paper's UCM-Captions mR or None)
METHODS: dict[str, tuple[str, dict[str, Any], float | None]] = {
    "zeroshot": ("zero-shot CLIP", {"method.name": "retrieval_zeroshot"}, 33.08),
    "coop": ("CoOp (text context)", {"method.name": "retrieval_coop"}, 44.95),
    "adaptformer": ("AdaptFormer", {"method.name": "retrieval_adaptformer"}, None),
    "mrs_hmmc": ("MRS-Adapter + HMMC (PE-RSITR)", {"method.name": "pe_rsitr"}, 55.71),
    "mrs_lcm": (
        "MRS-Adapter, L_cm only",
        {"method.name": "pe_rsitr", "method.lambda_views": 0.0},
        None,
    ),
    "fullft": ("full fine-tuning", {"method.name": "retrieval_fullft"}, 52.43),
}
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")
PAPER_ORDER = ("zeroshot", "coop", "fullft", "mrs_hmmc")  # the paper's mR, rising


def builds(
    captions: str, class_folder: str, cache: Path, num_clients: int, alpha: float, seed: int
) -> dict[str, str]:
    from fedrs.datasets.partition import PartitionSpec

    parts = {
        "centralized": PartitionSpec(scheme="iid", num_clients=1, seed=seed, min_examples=1),
        "federated": PartitionSpec(
            scheme="dirichlet", num_clients=num_clients, alpha=alpha, seed=seed, min_examples=5
        ),
    }
    return {
        setting: cached_build(
            cache / f"captions-{cache_key(str(Path(captions).resolve()), setting, part.__dict__)}",
            sources=(("ucmcap", captions),),
            image_size=IMAGE_SIZE,
            partition=part,
            caption_classes=f"folder:{Path(class_folder).resolve()}",
        )
        for setting, part in parts.items()
    }


def backbone(pretrain_data: str, cache: Path, epochs: int, seed: int) -> tuple[str, dict]:
    """``fedrs-rs`` pretrained on a classification archive, captioned by templates."""
    from fedrs.datasets.partition import PartitionSpec

    shards = cached_build(
        cache / f"pretrain-{cache_key(str(Path(pretrain_data).resolve()), IMAGE_SIZE)}",
        sources=(("pretrain", pretrain_data),),
        image_size=IMAGE_SIZE,
        partition=PartitionSpec(scheme="iid", num_clients=1, seed=seed, min_examples=1),
    )
    return cached_pretrain(shards, cache, ARCH, epochs, seed, "templates")


def one_run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """A finished run's summary, run now unless it finished before (resumable study)."""
    from fedrs.orchestrator.runner import run as run_federation

    summary = run_dir / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    if (run_dir / "config.json").is_file():  # interrupted: continue it
        return run_federation(resume=str(run_dir), console=Console(file=io.StringIO()))
    return run_federation(cfg, out=str(run_dir), console=Console(file=io.StringIO()))


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run(
    data: str,
    pretrain_data: str,
    class_folder: str,
    cache: str | None = None,
    seeds: tuple[int, ...] | list[int] = (0, 1, 2),
    rounds: int = 5,
    local_epochs: int = 2,
    num_clients: int = 10,
    alpha: float = 0.5,
    pretrain_epochs: int = 30,
    methods: tuple[str, ...] | list[str] | str = tuple(METHODS),
    settings: tuple[str, ...] | list[str] | str = ("centralized", "federated"),
    lr: float = 0.01,
    fullft_lr: float = 0.001,
    arch: str = ARCH,
    bottleneck: int = 64,
) -> dict[str, Any]:
    from fedrs.core.config import RunConfig
    from fedrs.orchestrator.plan import plan

    seeds = [int(s) for s in (seeds if isinstance(seeds, list | tuple) else [seeds])]
    methods = [methods] if isinstance(methods, str) else list(methods)
    settings = [settings] if isinstance(settings, str) else list(settings)
    t_start = time.perf_counter()
    cache_dir = Path(cache or Path.home() / ".cache" / "fedrs" / "retrieval")
    cache_dir.mkdir(parents=True, exist_ok=True)
    ckpt, pre = backbone(pretrain_data, cache_dir, pretrain_epochs, 0) if arch == ARCH else ("", {})
    data_paths = builds(data, class_folder, cache_dir, num_clients, alpha, 0)
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for key in methods:
        label, overrides, paper = METHODS[key]
        for setting in settings:
            per_seed = []
            for seed in seeds:
                sets = {
                    "model.arch": arch,
                    "model.pretrained": ckpt,
                    "data.path": data_paths[setting],
                    "client.lr": fullft_lr if key == "fullft" else lr,
                    "client.local_epochs": local_epochs,
                    "client.batch_size": 32,
                    "federation.rounds": rounds,
                    "federation.seed": seed,
                    "federation.clients_per_round": num_clients if setting == "federated" else 1,
                    "resources.num_actors": 2 if setting == "federated" else 1,
                    **overrides,
                }
                if overrides["method.name"] in ("pe_rsitr", "retrieval_adaptformer"):
                    sets["method.bottleneck"] = bottleneck
                cfg = RunConfig().replace(**sets)
                t0 = time.perf_counter()
                summary = one_run(cfg, cache_dir / "runs" / cache_key(key, setting, seed, sets))
                final = summary["final"]
                per_seed.append(final)
                runs.append(
                    {
                        "method": key,
                        "setting": setting,
                        "seed": seed,
                        "wall_s": time.perf_counter() - t0,
                    }
                    | {m: final.get(m) for m in METRICS}
                )
                log.info("%s %s seed %d: mR %.2f", label, setting, seed, final.get("mR") or 0)
            p = plan(cfg)
            row: dict[str, Any] = {"key": key, "method": label, "setting": setting}
            for m in METRICS:
                mean, std = _mean_std([float(f[m]) for f in per_seed])
                row[m] = round(mean, 2)
                row[f"{m}_std"] = round(std, 2)
            row |= {
                "seeds": len(per_seed),
                "trainable_params": p["trainable_params"],
                "params_sent_per_client": p["params_sent_per_client"],
                "paper_mR": paper,
            }
            rows.append(row)
    result = {
        "benchmark": "retrieval",
        "rows": rows,
        "runs": runs,
        "pretrain": {
            "arch": arch,
            "data": pretrain_data,
            "epochs": pretrain_epochs,
            "checkpoint": ckpt,
            "report_test": pre.get("test"),
        },
        "setup": {
            "data": data,
            "seeds": seeds,
            "rounds": rounds,
            "local_epochs": local_epochs,
            "num_clients": num_clients,
            "alpha": alpha,
            "lr": lr,
            "fullft_lr": fullft_lr,
            "image_size": IMAGE_SIZE,
        },
        "ordering": ordering(rows),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "machine": machine_info(),
    }
    return result


def ordering(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting: our methods ranked by mean mR, and whether the paper's four keep its order
    (zero-shot < CoOp < full fine-tuning < MRS-Adapter)."""
    out = {}
    for setting in sorted({r["setting"] for r in rows}):
        ours = {r["key"]: r["mR"] for r in rows if r["setting"] == setting}
        common = [k for k in PAPER_ORDER if k in ours]
        out[setting] = {
            "ranked": sorted(ours, key=lambda k: -ours[k]),
            "paper_order_holds": all(ours[a] < ours[b] for a, b in itertools.pairwise(common)),
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    head = (
        "| method | setting | I->T R@1 | R@5 | R@10 | T->I R@1 | R@5 | R@10 | mR (mean +- std) "
        "| paper mR | trains / sends per client |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = ""
    for r in result["rows"]:
        cells = " | ".join(f"{r[m]:.1f}" for m in METRICS[:-1])
        paper = "" if r["paper_mR"] is None else f"{r['paper_mR']:.2f}"
        body += (
            f"| {r['method']} | {r['setting']} | {cells} | {r['mR']:.2f} +- {r['mR_std']:.2f} "
            f"(n={r['seeds']}) | {paper} | {r['trainable_params']:,} / "
            f"{r['params_sent_per_client']:,} |\n"
        )
    return head + body


def main(
    data: str | None = None,
    json_path: str | None = None,
    cache: str | None = None,
    pretrain_data: str | None = None,
    class_folder: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    if not data or not pretrain_data or not class_folder:
        from fedrs.errors import ConfigError

        raise ConfigError(
            "bench retrieval needs --data CAPTION_DATASET, --set pretrain_data=IMAGEFOLDER and "
            "--set class_folder=IMAGEFOLDER (the caption images' class order)"
        )
    result = run(data, pretrain_data, class_folder, cache, **kwargs)
    print_table(
        "retrieval (UCM-Captions)",
        [
            {k: r[k] for k in ("method", "setting", "mR", "mR_std", "seeds", "paper_mR")}
            for r in result["rows"]
        ],
    )
    print(markdown(result))
    print(f"ordering: {result['ordering']}; total {result['wall_s']:.0f}s")
    write_result(result, json_path)
    return result
