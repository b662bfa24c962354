"""vs-flower: fedrs against Flower's simulation engine, same client work, same resources.

    fedrs bench vs-flower --json vs_flower.json [--rounds 4] [--set clients=10 --set arch=...]

Both sides run the same client code (``Method.fit`` on the same Arrow partitions, same
``FitOptions``) on as many Ray workers of 1 CPU each and, with CUDA, the same GPU share
(``gpus_per_client``: 1/workers of GPU 0 by default), each in its own fresh process whose Ray
is started with the same arguments:

* **fedrs**: ``runner.run``: actors built once with the frozen backbone resident, the
  frozen-feature cache on (PromptFL; FedRSCLIP's visual prompts change the image features) and
  cold (round 1 embeds every shard), private state in the client-state store;
* **flower**: a ``ClientApp`` / ``ServerApp`` under ``run_simulation`` written as Flower's
  guides write one: every message loads the partition and builds the model; private prompts
  in ``context.state``; Flower's ``FedAvg``. ``flower-warm`` keeps the backbone cached in each
  Ray worker (the best a careful Flower user can do without a feature cache).

Round times: Flower's from one aggregated result to the next; fedrs's from one round line to
the next (round 1 from the line printed once its actors are up). Client updates per second,
fedrs over ``flower``, on the bases of ``BASIS_MEANING``; ``per_round`` of PromptFL is the
headline ``ratio``. ``ceilings`` bound each per-round ratio: an orchestrator costing nothing
but fedrs's ``Method.fit`` seconds spread evenly over the workers. Both sides train R + 1
rounds (the last untimed; fedrs's evaluates) and ``same_work_max_abs_diff`` compares their
final global tensors (``trained_max_abs``: how far training moved them).
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fedrs.benchmarks import plots
from fedrs.benchmarks.common import as_list, bench_result, print_table, save_outputs
from fedrs.benchmarks.flower_baseline import run_flower, start_ray
from fedrs.benchmarks.harness import build_data, max_abs_diff, run_fedrs, transpose_rows
from fedrs.benchmarks.harness_proc import child_main, run_child

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "arch": "fedrs-small",
    "image_size": 128,
    "per_class": 24,  # synthetic images per class of the largest sensor
    "clients": 10,  # partitions = clients per round (every client trains every round)
    "rounds": 8,
    "epochs": 1,
    "batch_size": 32,  # CoOp's and the prompt-FL repos' batch size
    "workers": 2,
    "methods": ["promptfl", "fedrsclip"],
    "systems": ["fedrs", "flower", "flower-warm"],
    # GPU share of each worker on both sides; None: 1/workers when CUDA is there, else 0
    "gpus_per_client": None,
}
TARGETS = {"promptfl": 10.0, "fedrsclip": 2.0}
STRATEGY = {"promptfl": "fedavg", "fedrsclip": "prompt_avg", "fullft": "fedavg"}


def _per_round(res: dict[str, Any]) -> float:
    """Client updates per second over rounds 2..R: after the warm-up of either side (Flower's
    workers importing and building on their first message; fedrs's feature-cache fill)."""
    first = 1 if len(res["round_s"]) > 1 else 0
    return sum(res["round_updates"][first:]) / sum(res["round_s"][first:])


def _compute_rate(res: dict[str, Any]) -> float:
    """Updates per second over rounds 2..R if a round took only its clients' ``Method.fit``
    time spread evenly over the workers: no orchestrator of this client code beats it."""
    first = 1 if len(res["round_train_s"]) > 1 else 0
    train_s = sum(sum(r) for r in res["round_train_s"][first:])
    return sum(res["round_updates"][first:]) / (train_s / res["workers"])


BASES: dict[str, Any] = {
    "per_round": _per_round,
    "rounds": lambda res: res["updates"] / sum(res["round_s"]),
    "from_ray_up": lambda res: res["updates"] / res["from_ray_s"],
    "end_to_end": lambda res: res["updates"] / res["total_s"],
}
BASIS_MEANING = {
    "per_round": "updates/s over rounds 2..R: steady throughput, both sides warm (headline)",
    "rounds": "updates/s over rounds 1..R: counts fedrs's cache fill and Flower's worker "
    "warm-up (its workers import and build on their first message), not fedrs's actor start",
    "from_ray_up": "updates/s from Ray up to round R done: both sides' worker start and warm-up, "
    "fedrs's cache fill, every round",
    "end_to_end": "updates/s over the whole child process's run: Ray start and shutdown too",
}


def _run_config(opts: dict[str, Any], method: str, data: str) -> dict[str, Any]:
    from fedrs.core.config import RunConfig

    cfg = RunConfig().replace(
        **{
            "model.arch": opts["arch"],
            "method.name": method,
            "strategy.name": STRATEGY.get(method, "fedavg"),
            "data.path": data,
            "client.local_epochs": opts["epochs"],
            "client.batch_size": opts["batch_size"],
            "client.lr": 0.002,
            "federation.clients_per_round": opts["clients"],
            # one extra round that evaluates; only rounds 1..R are timed (Flower does not eval)
            "federation.rounds": opts["rounds"] + 1,
            "federation.eval_every": opts["rounds"] + 1,
            "resources.num_actors": opts["workers"],
            "resources.num_cpus_per_client": 1,
            "resources.num_gpus_per_client": opts["gpus_per_client"],
        }
    )
    return cfg.to_dict()


def _gpus_per_client(opts: dict[str, Any]) -> float:
    """The option as given, else one equal share of GPU 0 per worker when CUDA is there."""
    import torch

    from fedrs.errors import ConfigError

    given = opts["gpus_per_client"]
    if given is None:
        return 1.0 / opts["workers"] if torch.cuda.is_available() else 0.0
    share = float(given)
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"vs-flower: gpus_per_client={given} must be a share in [0, 1]")
    if share > 0 and not torch.cuda.is_available():
        raise ConfigError(f"vs-flower: gpus_per_client={given} but this machine has no CUDA GPU")
    return share


def _fedrs(cfg_dict: dict[str, Any], out: str) -> dict[str, Any]:
    """``runner.run`` as ``fedrs run`` calls it, timed from its console lines."""
    import ray

    from fedrs.core.config import from_dict

    t0 = time.perf_counter()
    cfg = from_dict(cfg_dict)
    ray_up = start_ray(cfg_dict)
    res = run_fedrs(cfg, Path(out))
    ray.shutdown()  # as run_simulation shuts its Ray down inside Flower's total
    total = time.perf_counter() - t0
    rounds = cfg.federation.rounds - 1  # the extra last round (it also evaluates) is untimed
    timed = res["records"][:rounds]
    round_s = res["periods"][:rounds]
    return {
        "params": res["params"],  # global tensors after all R + 1 rounds
        "round_s": round_s,
        "client_fit_s": [c["fit_s"] for r in timed for c in r["clients"].values()],
        # Method.fit alone (no data open, no state load / save) per client, per round
        "round_train_s": [[c["phases"]["train_s"] for c in r["clients"].values()] for r in timed],
        "updates": sum(r["clients_ok"] for r in timed),
        "round_updates": [r["clients_ok"] for r in timed],
        "total_s": total,
        "startup_s": total - sum(round_s),  # as Flower's: all but the timed rounds
        # Ray up -> last training round done: driver and actors start, every timed round
        "from_ray_s": res["spawn_s"] + sum(round_s),
        "ray_s": ray_up - t0,
        "bytes_up": sum(r["bytes_up"] for r in timed),
        "workers": cfg.resources.num_actors,
    }


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement, in its own fresh process (``run_child``)."""
    if spec["system"] == "fedrs":
        return _fedrs(spec["cfg"], spec["out"])
    return run_flower(spec["cfg"], spec["data"], spec["system"] == "flower-warm", spec["rounds"])


def _measure(system: str, cfg: dict[str, Any], data: str, rounds: int, work: Path) -> dict:
    name = f"{system}-{cfg['method']['name']}"
    if system == "fedrs":  # the cache starts cold: its cost is part of the measured rounds
        for stale in Path(data).glob("shards-*/features-*"):
            shutil.rmtree(stale)
    spec = {"system": system, "cfg": cfg, "data": data, "rounds": rounds, "out": str(work / name)}
    return run_child("fedrs.benchmarks.vs_flower", spec, work, name)


def _options(given: dict[str, Any]) -> dict[str, Any]:
    """``DEFAULTS`` with the options given, checked (methods and systems as lists)."""
    from fedrs.errors import ConfigError

    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
    opts = {**DEFAULTS, **given}
    opts["gpus_per_client"] = _gpus_per_client(opts)
    known = {"systems": DEFAULTS["systems"], "methods": list(STRATEGY)}
    for key, allowed in known.items():
        opts[key] = as_list(opts[key])
        bad = [x for x in opts[key] if x not in allowed]
        if bad:
            raise ConfigError(
                f"vs-flower: unknown {key[:-1]} {bad[0]!r} (one of {', '.join(allowed)}; "
                f"several as --set {key}=a,b)"
            )
    return opts


def _row(method: str, system: str, res: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": method,
        "system": system,
        "updates": res["updates"],
        "round1 s": res["round_s"][0],
        "round s": statistics.median(res["round_s"][1:] or res["round_s"]),
        "fit s": sum(res["client_fit_s"]) / max(len(res["client_fit_s"]), 1),
        "upd/s": res["updates_per_s"]["per_round"],
        "upd/s R rounds": res["updates_per_s"]["rounds"],
        "from Ray s": res["from_ray_s"],
        "total s": res["total_s"],
    }


def compare(raw: dict[str, dict[str, Any]], opts: dict[str, Any]) -> tuple[dict, dict, dict]:
    """Per method with a fedrs result, against each baseline measured: the ratios on every
    basis, the ceilings and the largest difference between final global tensors."""
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    ceilings: dict[str, dict[str, float]] = {}
    same_work: dict[str, dict[str, float]] = {}
    for method in opts["methods"]:
        mine = raw.get(f"fedrs/{method}")
        if mine is None:
            continue
        theirs = {
            f"vs {s}": raw[f"{s}/{method}"]
            for s in opts["systems"]
            if s != "fedrs" and f"{s}/{method}" in raw
        }
        same_work[method] = {
            vs: max_abs_diff(mine["params"], r["params"]) for vs, r in theirs.items()
        }
        ratios[method] = {
            vs: {k: mine["updates_per_s"][k] / r["updates_per_s"][k] for k in BASES}
            for vs, r in theirs.items()
        }
        ceilings[method] = {
            vs: _compute_rate(mine) / r["updates_per_s"]["per_round"] for vs, r in theirs.items()
        }
    return ratios, ceilings, same_work


def main(json_path: str | None = None, data: str | None = None, **options: Any) -> dict:
    opts = _options(options)
    work = Path(tempfile.mkdtemp(prefix="fedrs-vs-flower-"))
    try:
        if data is None:
            size, per_class = opts["image_size"], opts["per_class"]
            data = build_data(work / "data", "iid", opts["clients"], per_class, size, 0, None, 10)
        rows: list[dict[str, Any]] = []
        raw: dict[str, dict[str, Any]] = {}
        for method in opts["methods"]:
            cfg = _run_config(opts, method, data)
            for system in opts["systems"]:
                log.info("vs-flower: %s / %s", system, method)
                res = raw[f"{system}/{method}"] = _measure(system, cfg, data, opts["rounds"], work)
                res["updates_per_s"] = {k: f(res) for k, f in BASES.items()}
                rows.append(_row(method, system, res))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios, ceilings, same_work = compare(raw, opts)
    for method in opts["methods"]:
        print_table(
            f"{method}: fedrs vs Flower simulation, one column per system",
            transpose_rows([r for r in rows if r["method"] == method], "system", ("method",)),
        )
    print_table(
        "ratio: fedrs updates/s over the baseline's (headline: per_round vs flower)",
        [
            {"method": m, "baseline": b[3:], **v, "ceiling": ceilings[m][b]}
            for m, vs in ratios.items()
            for b, v in vs.items()
        ],
    )
    for method, diffs in same_work.items():
        for vs, diff in diffs.items():
            log.info(
                "vs-flower: %s, final global tensors fedrs %s: max |diff| %.3g", method, vs, diff
            )
    for res in raw.values():
        res.pop("params")
    head = opts["methods"][0]
    result = bench_result(
        "vs-flower",
        ratios.get(head, {}).get("vs flower", {}).get("per_round"),
        ratio_method=head,
        ratio_basis=BASIS_MEANING["per_round"],
        bases=BASIS_MEANING,
        target=TARGETS.get(head),
        ratios=ratios,
        ceilings=ceilings,  # fedrs's Method.fit seconds of rounds 2..R spread over the workers
        # the largest difference between the final global tensors of fedrs and of each
        # baseline after R + 1 rounds (float rounding only; inf: not comparable)
        same_work_max_abs_diff=same_work,
        targets=TARGETS,
        options=opts,
        rows=rows,
        raw=raw,
    )
    return save_outputs(result, json_path, "vs_flower", plots.vs_flower)


if __name__ == "__main__":
    child_main(_child)
