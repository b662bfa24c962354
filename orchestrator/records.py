"""A run's records: one ``metrics.jsonl`` line per round (strict JSON: a value that is not
finite is written as null, with its reason) and ``summary.json`` at the end. The driver gathers
the figures; these functions shape them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.core.metrics import shot_groups
from fedrs.core.strategies import ClientUpdate
from fedrs.io import dumps, json_safe, process_memory, write_bytes

METRICS = "metrics.jsonl"
TOTALS = ("bytes_up", "bytes_down", "wall_s", "clients_failed", "clients_rejected", "clients_ok")


def train_means(updates: list[ClientUpdate]) -> dict[str, float]:
    """The clients' training loss and accuracy, weighted by their examples (NaN in an empty
    round: Poisson sampling under DP)."""
    weights = np.array([u.num_examples for u in updates], dtype=float)
    return {
        key: float(np.average([u.metrics.get(name, np.nan) for u in updates], weights=weights))
        if updates
        else float("nan")
        for key, name in (("loss", "train_loss"), ("train_accuracy", "train_accuracy"))
    }


def worker_counters(results: dict[int, Any], steals: int, attacked: bool) -> dict[str, int]:
    """What the client actors reported beside their updates, counted (a key only when it
    happened): private states reset from corrupt files, tasks stolen from a straggler's queue,
    resting tensors fetched or already resident, simulated attackers, per-shard cache hits."""
    replies = list(results.values())
    out: dict[str, int] = {}
    resets = sum(bool(r.get("state_reset")) for r in replies)
    if resets:
        out["state_resets"] = resets
    if steals:
        out["tasks_stolen"] = steals
    resting = [r.get("resting") for r in replies if r.get("resting")]
    if resting:
        out |= {f"resting_{w}": resting.count(w) for w in ("fetched", "resident")}
    if attacked:
        out["attackers"] = sum(bool(r.get("attack")) for r in replies)
    cache = [r.get("cache") for r in replies if r.get("cache") is not None]
    if cache:
        out |= {"cache_hits": cache.count("hit"), "cache_misses": cache.count("miss")}
    return out


def tally(
    sampled: list[int],
    updates: list[ClientUpdate],
    dropped: dict[int, str],
    rejected: dict[int, str],
    results: dict[int, Any],
) -> dict[str, Any]:
    """Who took part in the round and how: counts, each failure's reason, each client's row."""
    return {
        "clients_sampled": len(sampled),
        "clients_ok": len(updates),
        "clients_failed": len(dropped),
        "clients_rejected": len(rejected),
        "failures": {str(k): v for k, v in {**dropped, **rejected}.items()},
        "clients": {
            str(sampled[ti]): {
                "worker": r.get("worker"),
                "cache": r.get("cache"),
                "num_examples": r.get("num_examples"),
                "fit_s": r.get("fit_s"),
                "phases": r.get("phases"),
                **(r.get("metrics") or {}),
            }
            for ti, r in sorted(results.items())
        },
    }


def append(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one strict-JSON line; ``record`` is updated in place to what was written."""
    reasons = dict(record.get("null_reasons", {}))
    safe = json_safe({k: v for k, v in record.items() if k != "null_reasons"}, reasons)
    for key, why in reasons.items():
        if why == "not finite":
            reasons[key] = "not finite (no client reported it, or it diverged)"
    if reasons:
        safe["null_reasons"] = reasons
    record.clear()
    record.update(safe)
    with open(run_dir / METRICS, "a") as fh:
        fh.write(dumps(record) + "\n")
        fh.flush()


def truncate(run_dir: Path, last_round: int) -> None:
    """Keep the lines up to ``last_round`` (a resume drops rounds after its checkpoint, and a
    line cut short by the interruption)."""
    path = run_dir / METRICS
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("round", 0) <= last_round:
            keep.append(line)
    write_bytes(path, ("\n".join(keep) + "\n").encode() if keep else b"")


def read(run_dir: Path) -> list[dict[str, Any]]:
    """Every round's record, in order (none before round 1 is written: a run stopped then)."""
    path = run_dir / METRICS
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def summarize(records: list[dict[str, Any]], head: str, **fields: Any) -> dict[str, Any]:
    """``summary.json``'s body: ``fields`` (method, strategy, rounds, clients, ...), the final
    record, the best headline value and the run's totals."""
    accs = [r[head] for r in records if r.get(head) is not None]
    final = records[-1] if records else {}
    first = ("method", "strategy", "strategy_in_effect", "rounds_completed")
    return {
        **{k: fields[k] for k in first},
        "final": final,
        "collapsed": final.get("collapsed") if records else None,
        "headline": head,
        f"best_{head}": max(accs) if accs else None,
        "totals": {key: float(sum(r.get(key, 0) for r in records)) for key in TOTALS},
        **{k: v for k, v in fields.items() if k not in first},
        "driver_memory": process_memory(),
    }


def long_tail(
    records: list[dict[str, Any]], counts: list[int], many_above: int, few_below: int
) -> dict[str, Any] | None:
    """Per-class accuracy of the last evaluated round beside each class's training examples
    and its long-tail group; None when no round reported per-class accuracy."""
    final = next(
        (r["per_class_accuracy"] for r in reversed(records) if r.get("per_class_accuracy")),
        None,
    )
    if not final:
        return None
    return {
        "train_counts": counts,
        "groups": shot_groups(counts, many_above, few_below),
        "many_shot_above": many_above,
        "few_shot_below": few_below,
        "per_class_accuracy": final,
    }


def untrained(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The one record of a method that does not train (zero-shot): round 0, nothing sent."""
    nothing = ("clients_ok", "clients_failed", "clients_rejected", "bytes_up", "bytes_down")
    return {"round": 0, **evaluation, **dict.fromkeys(nothing, 0), "wall_s": 0.0}
