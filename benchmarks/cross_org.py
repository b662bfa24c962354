"""Cross-organisation FedDiff: what the partner exchange costs a round.

    fedrs bench cross-org [--set name=value ...] --json out.json

Workload: FedDiff on the generated HSI + LiDAR scene (``size`` x ``size`` pixels) split across
partner organisations (``--client-modalities 'hsi|lidar'``, ``regions`` spatial regions, so
2 x ``regions`` organisations, all every round), ``diffusion_rounds`` diffusion rounds then
``rounds`` classifier rounds, 2 client actors. Two arms on the same build and seed:

- exchange: each organisation sends its partner its branch features, rank ``rank`` factors
  per block of ``client.batch_size`` rows (``method.feature_rank``), before training;
- alone: ``method.exchange = false``: the same organisations train without the exchange.

The arms run alternately, ``repeats`` times each, in one process and one Ray instance. The
figure is the ratio of the median wall time of the classifier rounds (the rounds with an
exchange)::

    overhead = median round wall (exchange) / median round wall (alone)   (target <= 1.25)

Both arms do the same work besides the exchange (checked: the same clients train the same
number of examples in every round); the exchange arm's ``partner_bytes`` per round and each
arm's phases (median share, local training, aggregation and evaluation seconds; a round
evaluates every ``eval_every`` rounds) and one organisation's median local fit (what
training the fusion heads the exchange makes possible adds) are reported beside the ratio.

Options (``--set``): ``regions`` (4), ``size`` (64), ``rounds`` (4), ``diffusion_rounds`` (1),
``rank`` (8), ``local_epochs`` (2), ``repeats`` (2), ``eval_every`` (1).
"""

from __future__ import annotations

import io
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fedrs.benchmarks.common import machine_info, print_table, write_result

log = logging.getLogger(__name__)
TARGET = 1.25


def _rounds(run_dir: Path, after: int) -> list[dict[str, Any]]:
    """The records of the classifier rounds (after the diffusion stage)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["round"] > after]


def main(json_path: str | None = None, data: str | None = None, **options: Any) -> dict[str, Any]:
    import ray
    from rich.console import Console

    from fedrs.core.config import from_dict
    from fedrs.datasets.multimodal import ModalBuildSpec, build_synthetic_scene
    from fedrs.datasets.partition import PartitionSpec
    from fedrs.orchestrator.runner import run

    o = {
        "regions": 4,
        "size": 64,
        "rounds": 4,
        "diffusion_rounds": 1,
        "rank": 8,
        "local_epochs": 2,
        "repeats": 2,
        "eval_every": 1,
    }
    unknown = set(options) - set(o)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(o)}")
    o.update({k: int(v) for k, v in options.items()})
    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="fedrs-xorg-")
    root = Path(tmp.name)
    build = data or str(root / "scene")
    if data is None:
        spec = ModalBuildSpec(
            out=build,
            partition=PartitionSpec("spatial", o["regions"], 0, min_examples=5),
            patch={"*": 7},
            client_modalities=(("hsi",), ("lidar",)),
            partners=True,
        )
        build_synthetic_scene(spec, height=o["size"], width=o["size"])
    stage1 = o["diffusion_rounds"]
    sets = {
        "method.name": "feddiff",
        "data.path": build,
        "method.diffusion_rounds": stage1,
        "method.feature_rank": o["rank"],
        "federation.rounds": stage1 + o["rounds"],
        "federation.clients_per_round": o["regions"],
        "client.local_epochs": o["local_epochs"],
        "federation.eval_every": o["eval_every"],
        "resources.num_actors": 2,
    }
    arms = {"exchange": {}, "alone": {"method.exchange": "false"}}
    walls: dict[str, list[float]] = {a: [] for a in arms}
    fits: dict[str, list[float]] = {a: [] for a in arms}  # share + local training
    shares: dict[str, list[float]] = {a: [] for a in arms}  # the share phase alone
    evals: dict[str, list[float]] = {a: [] for a in arms}  # evaluation (joint / alone)
    servers: dict[str, list[float]] = {a: [] for a in arms}  # aggregation
    clients: dict[str, list[float]] = {a: [] for a in arms}  # one organisation's local fit
    work: dict[str, list[Any]] = {a: [] for a in arms}
    extra: dict[str, Any] = {}
    quiet = Console(file=io.StringIO())
    ray.init(include_dashboard=False)
    try:
        for rep in range(o["repeats"]):
            for arm, more in arms.items():
                cfg = from_dict({}, [f"{k}={v}" for k, v in {**sets, **more}.items()])
                out = root / f"{arm}-{rep}"
                run(cfg, out=str(out), console=quiet)
                recs = _rounds(out, stage1)
                walls[arm] += [r["wall_s"] for r in recs]
                fits[arm] += [r["fit_s"] for r in recs]
                shares[arm] += [r.get("share_s", 0.0) for r in recs]
                evals[arm] += [r.get("eval_s", 0.0) for r in recs]
                servers[arm] += [r["server_s"] for r in recs]
                clients[arm] += [c["fit_s"] for r in recs for c in r["clients"].values()]
                work[arm].append(
                    [{c: v.get("num_examples") for c, v in r["clients"].items()} for r in recs]
                )
                if arm == "exchange":
                    extra["partner_bytes_per_round"] = [r["partner_bytes"] for r in recs]
                log.info("%s %d: %s", arm, rep, [round(r["wall_s"], 2) for r in recs])
    finally:
        ray.shutdown()
        tmp.cleanup()
    same = all(w == work["alone"][0] for arm in arms for w in work[arm])
    medians = {a: statistics.median(w) for a, w in walls.items()}
    ratio = medians["exchange"] / medians["alone"]
    med = statistics.median
    rows = [
        {
            "arm": a,
            "median_round_s": medians[a],
            "median_share_s": med(shares[a]),
            "median_train_s": med(f - sh for f, sh in zip(fits[a], shares[a], strict=True)),
            "median_client_fit_s": med(clients[a]),
            "median_server_s": med(servers[a]),
            "median_eval_s": med(evals[a]),
            "rounds": len(walls[a]),
        }
        for a in arms
    ]
    print_table(f"cross-organisation FedDiff: exchange overhead {ratio:.3f}", rows)
    result = {
        "benchmark": "cross-org",
        "overhead": ratio,
        "target": TARGET,
        "meets_target": ratio <= TARGET,
        "same_work": same,
        "median_round_s": medians,
        "phases": rows,
        "round_walls_s": walls,
        **extra,
        "setup": o,
        "wall_s": time.perf_counter() - t0,
        "machine": machine_info(),
    }
    write_result(result, json_path)
    return result
