"""fedrs on Flower's deployment runtime: the site codec, the sites as the driver's client pool
(in process, over a stand-in for Flower's Grid that answers with the sites' own code), and on
loopback with a real SuperLink and SuperNodes, TLS and registered site keys."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from conftest import small_run
from fedrs.actors.client import EvalTask, FitTask
from fedrs.actors.sites import SiteError, pack, serve, unpack
from fedrs.methods.base import FitOptions
from fedrs.orchestrator import checkpoint

QUIET = Console(file=io.StringIO())


def test_the_codec_round_trips_tasks_arrays_and_types_without_pickle() -> None:
    opts = FitOptions(3, 7, 0, 1, 8, 0.01, upload_keys=("a", "b"), partners={1: {"f": None}})
    body = {
        "task": FitTask(7, opts),
        "eval": EvalTask("client", 2, client_id=4, start=1, stop=None),
        "params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.arange(3)},
        "by_index": {0: "x", 5: (1, 2.5)},
        "scalar": np.float32(0.1),
        "nan": float("nan"),
        "nested": [{"k": None, "__odd": True}],
    }
    back = unpack(pack(body))
    assert back["task"] == body["task"] and back["task"].options.partners == {1: {"f": None}}
    assert back["eval"] == body["eval"]
    for k, v in body["params"].items():
        assert back["params"][k].dtype == v.dtype and np.array_equal(back["params"][k], v)
    assert back["by_index"] == {0: "x", 5: (1, 2.5)}
    assert type(back["scalar"]) is np.float32 and back["scalar"] == np.float32(0.1)
    assert np.isnan(back["nan"]) and back["nested"] == [{"k": None, "__odd": True}]
    # nothing but the listed task classes is rebuilt from a message
    evil = pack({"x": 1})
    evil["body"]["json"] = json.dumps({"__dc__": "Popen", "f": {"args": "true"}})
    with pytest.raises(ValueError, match="unknown class 'Popen'"):
        unpack(evil)
    with pytest.raises(TypeError, match="cannot send a object"):
        pack({"x": object()})


@dataclass
class _Reply:
    """What ``SitePool`` reads of a Flower reply message."""

    mid: str
    content: Any = None
    reason: str | None = None

    @property
    def metadata(self) -> Any:
        return type("M", (), {"reply_to_message_id": self.mid})()

    def has_error(self) -> bool:
        return self.reason is not None

    @property
    def error(self) -> Any:
        return type("E", (), {"reason": self.reason})()


@dataclass
class _Msg:
    """A message to a node, as ``SitePool`` makes them (Flower's needs a Flower run)."""

    content: Any
    node: int
    kind: str
    ttl: float = 0.0

    @property
    def metadata(self) -> Any:
        return type("M", (), {"dst_node_id": self.node})()


class FakeGrid:
    """Flower's Grid, in process: each message is answered by ``serve`` with its node's
    config (the code a SuperNode's ClientApp runs); ``tamper(node, body, out)`` may change an
    answer, nodes in ``silent`` never answer."""

    def __init__(self, nodes: dict[int, dict], tamper: Any = None, silent: tuple = ()) -> None:
        self.nodes, self.tamper, self.silent = nodes, tamper, silent
        self.replies: dict[str, _Reply] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, msgs: list[Any]) -> list[str]:
        ids = []
        for m in msgs:
            mid, node = uuid.uuid4().hex, m.metadata.dst_node_id
            ids.append(mid)
            if node in self.silent:
                continue
            body = unpack(m.content)
            try:
                out = serve(self.nodes[node], body)
            except Exception as exc:
                self.replies[mid] = _Reply(mid, reason=str(exc))
                continue
            if self.tamper is not None:
                out = self.tamper(node, body, out)
            self.replies[mid] = _Reply(mid, content=pack(out))
        return ids

    def pull_messages(self, ids: list[str]) -> list[_Reply]:
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]


def _sites(data: Path, state: Path, per_site: int, n: int) -> dict[int, dict]:
    """Node configs of ``n`` sites sharing ``data``, ``per_site`` partitions each, listed
    in an order unlike their site numbers (the federation orders them by ``site``)."""
    return {
        100 + (n - i): {
            "data-path": str(data),
            "site": i,
            "clients": ",".join(str(i * per_site + j) for j in range(per_site)),
            "test-split": i == 0,
            "state-dir": str(state / f"site-{i}"),
        }
        for i in range(n)
    }


def _tensors(run_dir: Path) -> dict[str, np.ndarray]:
    return checkpoint.load(run_dir)[1]


@pytest.mark.parametrize("method", ["promptfl", "fedrsclip"])
def test_sites_as_the_client_pool_compute_what_the_simulation_computes(
    method: str, synth_data: Path, tmp_path: Path, ray_cluster: Any
) -> None:
    from fedrs.orchestrator.flower_app import run_on_sites
    from fedrs.orchestrator.runner import run

    sets = {"method.name": method, "federation.clients_per_round": 4, "federation.rounds": 3}
    cfg = small_run(synth_data, **sets)
    run(cfg, out=str(tmp_path / "sim"), console=QUIET)
    grid = FakeGrid(_sites(synth_data, tmp_path, 2, 3))
    summary = run_on_sites(grid, cfg, tmp_path / "dep", 3, wait_s=5, message=_Msg)
    sim, dep = _tensors(tmp_path / "sim"), _tensors(tmp_path / "dep")
    assert sim.keys() == dep.keys()
    for k in sim:
        assert np.array_equal(sim[k], dep[k]), k  # bit-identical: same sampling, same order
    rows = [
        [json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        for r in ("sim", "dep")
    ]
    for a, b in zip(*rows, strict=True):
        assert a["accuracy"] == b["accuracy"] and a["bytes_up"] == b["bytes_up"]
        assert a["personalized_accuracy"] == b["personalized_accuracy"]
    assert summary["rounds_completed"] == 3
    manifest = (tmp_path / "dep" / "federation" / "manifest.json").read_text()
    assert str(synth_data) not in manifest and ".arrow" not in manifest  # no path, no file
    if method == "fedrsclip":  # private prompts live on the sites only
        assert list((tmp_path / "site-1").rglob("*")), "site 1 kept no private state"
        assert not (tmp_path / "dep" / "client_state").exists() or not list(
            (tmp_path / "dep" / "client_state").rglob("*.safetensors")
        )


def test_the_server_app_resumes_where_its_checkpoint_ends(synth_data: Path, tmp_path: Path) -> None:
    """Stopped after 2 rounds (a SuperLink restart ends the server app) and resumed: the
    tensors of 3 rounds straight; FedRSCLIP's private prompts found again on the sites (the
    run's key is kept), the wire bytes recorded per round."""
    from fedrs.orchestrator.flower_app import run_on_sites

    sets = {"method.name": "fedrsclip", "federation.clients_per_round": 4}
    nodes = _sites(synth_data, tmp_path, 2, 3)
    three = small_run(synth_data, **sets, **{"federation.rounds": 3})
    two = small_run(synth_data, **sets, **{"federation.rounds": 2})
    run_on_sites(FakeGrid(nodes), three, tmp_path / "straight", 3, 5, message=_Msg)
    run_on_sites(FakeGrid(nodes), two, tmp_path / "cut", 3, 5, message=_Msg)
    run_on_sites(FakeGrid(nodes), three, tmp_path / "cut", 3, 5, resume=True, message=_Msg)
    a, b = _tensors(tmp_path / "straight"), _tensors(tmp_path / "cut")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    wire = [json.loads(x) for x in (tmp_path / "cut" / "wire.jsonl").read_text().splitlines()]
    assert [w["round"] for w in wire] == [1, 2, 3] and all(w["sent"] > 0 for w in wire)


def test_a_tampered_or_silent_site_is_rejected_or_dropped_and_counted(
    synth_data: Path, tmp_path: Path
) -> None:
    from fedrs.orchestrator.flower_app import run_on_sites

    def poison(node: int, body: dict, out: Any) -> Any:
        if body["call"] == "fit" and node == 103:  # site 0: its clients' updates
            for r in out["results"]:
                r["params"] = {k: np.full_like(v, np.nan) for k, v in r["params"].items()}
        return out

    cfg = small_run(
        synth_data,
        **{"federation.clients_per_round": 6, "federation.round_timeout_s": 3.0},
    )
    nodes = _sites(synth_data, tmp_path, 2, 3)
    run_on_sites(FakeGrid(nodes, tamper=poison), cfg, tmp_path / "bad", 3, 5, message=_Msg)
    recs = [json.loads(x) for x in (tmp_path / "bad" / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_rejected"] for r in recs] == [2, 2]  # site 0's two clients
    assert all("non-finite" in " ".join(r["failures"].values()) for r in recs)
    assert np.isfinite(_tensors(tmp_path / "bad")["prompt.ctx"]).all()

    # site 2 answers the describe call, then never again: its clients drop out, counted
    class Mute(FakeGrid):
        def push_messages(self, msgs: list[Any]) -> list[str]:
            body = unpack(msgs[0].content)
            self.silent = (101,) if body["call"] == "fit" else ()
            return super().push_messages(msgs)

    run_on_sites(Mute(nodes), cfg, tmp_path / "mute", 3, wait_s=5, message=_Msg)
    recs = [json.loads(x) for x in (tmp_path / "mute" / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_failed"] for r in recs] == [2, 2]
    assert all("did not answer within 3 s" in " ".join(r["failures"].values()) for r in recs)


def test_a_site_config_is_checked_in_one_line(synth_data: Path, tmp_path: Path) -> None:
    with pytest.raises(SiteError, match="data-path"):
        serve({}, {"call": "describe"})
    with pytest.raises(SiteError, match=r"clients \[9\] are not partitions"):
        serve({"data-path": str(synth_data), "clients": "0,9"}, {"call": "describe"})
    cfg = small_run(synth_data).to_dict()
    with pytest.raises(SiteError, match="bad run key"):
        serve({"data-path": str(synth_data)}, {"call": "fit", "config": cfg, "run": "../x"})
    # a site sends counts and histograms, never where its files are
    described = serve({"data-path": str(synth_data), "clients": "1"}, {"call": "describe"})
    assert [c["partition"] for c in described["clients"]] == [1]
    text = json.dumps(described)
    assert str(synth_data) not in text and ".arrow" not in text and "sha256" not in text


# ---------------------------------------------------------------------------- on loopback
def _ours(root: Path) -> list[int]:
    """Processes whose command line names ``root`` (what a rehearsal there started)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if str(root) in (p / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(p.name))
            except OSError:
                pass
    return [p for p in pids if p != os.getpid()]


def _left(root: Path, wait_s: float = 15.0) -> list[str]:
    """The command lines of processes naming ``root`` still alive after ``wait_s`` (ones
    already told to stop get that long to exit)."""
    end = time.monotonic() + wait_s
    while _ours(root) and time.monotonic() < end:
        time.sleep(0.5)
    out = []
    for pid in _ours(root):
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return out


@pytest.mark.slow
def test_deploy_local_with_tls_equals_fedrs_run_and_leaves_no_process(
    synth_data: Path, tmp_path: Path, ray_cluster: Any
) -> None:
    from fedrs.orchestrator.deploy import local
    from fedrs.orchestrator.runner import run

    two = small_run(synth_data, **{"federation.clients_per_round": 2})
    # two sites of three partitions each; clients_per_round 2 of the 6
    summary = local(two, 2, out=str(tmp_path / "dep"), console=QUIET, timeout_s=600)
    run(two, out=str(tmp_path / "sim"), console=QUIET)
    sim, dep = _tensors(tmp_path / "sim"), _tensors(tmp_path / "dep")
    assert all(np.array_equal(sim[k], dep[k]) for k in sim)
    assert summary["rounds_completed"] == 2
    for name in ("config.json", "metrics.jsonl", "summary.json", "accuracy.png"):
        assert (tmp_path / "dep" / name).is_file(), name
    assert (tmp_path / "dep" / "deploy" / "certs" / "ca.crt").is_file()  # TLS was on
    assert _left(tmp_path / "dep") == []


@pytest.mark.slow
def test_an_unregistered_site_is_refused(synth_data: Path, tmp_path: Path) -> None:
    from fedrs.orchestrator.deploy import Rehearsal, make_node_key

    r = Rehearsal(tmp_path / "link")
    try:
        r.start_superlink()
        stranger = make_node_key(tmp_path / "stranger")  # never registered
        r.start_site(0, {"data-path": str(synth_data)}, stranger)
        end = time.monotonic() + 60
        while "site-0" not in r.procs.dead() and time.monotonic() < end:
            time.sleep(0.5)
        assert r.procs.dead().get("site-0") not in (None, 0)
        log = (r.procs.logs / "site-0.log").read_text()
        assert "Failed to activate SuperNode" in log or "not registered" in log.lower(), log[-500:]
    finally:
        r.stop()
    assert _left(tmp_path / "link") == []


@pytest.mark.slow
def test_a_site_killed_mid_run_is_dropped_then_rejoins(synth_data: Path, tmp_path: Path) -> None:
    """Loopback, TLS, registered keys: site 1's SuperNode killed after round 1 (its round-2
    work never answers: its clients drop out, counted), started again with its key (by the
    last round everyone is back); every process gone at the end."""
    from fedrs.orchestrator.deploy import Rehearsal, write_app
    from fedrs.orchestrator.flower_app import STATUS

    cfg = small_run(
        synth_data,
        **{
            "federation.rounds": 4,
            "federation.clients_per_round": 6,
            "federation.round_timeout_s": 60.0,
        },
    )
    run_dir = tmp_path / "run"
    metrics = run_dir / "metrics.jsonl"

    def rounds() -> list[dict]:
        return [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []

    def wait_for(n: int, limit: float = 300) -> None:
        end = time.monotonic() + limit
        while len(rounds()) < n and time.monotonic() < end:
            state = (
                json.loads((run_dir / STATUS).read_text()) if (run_dir / STATUS).exists() else {}
            )
            assert state.get("state") != "failed", state
            time.sleep(0.5)
        assert len(rounds()) >= n, f"{len(rounds())} rounds after {limit} s"

    r = Rehearsal(tmp_path / "link")
    try:
        r.start_superlink()
        r.start_sites(str(synth_data), [[0, 1, 2], [3, 4, 5]])
        r.submit(write_app(tmp_path / "app", cfg, run_dir, 2))
        wait_for(1)
        r.procs.stop("site-1")  # gone before round 2's work reaches it
        wait_for(2)
        r.restart_site(1)
        wait_for(4)
    finally:
        r.stop()
    recs = rounds()
    assert recs[0]["clients_ok"] == 6
    assert recs[1]["clients_failed"] == 3 and recs[1]["clients_ok"] == 3
    assert all(int(c) >= 3 for c in recs[1]["failures"])  # site 1 serves clients 3, 4, 5
    assert recs[-1]["clients_ok"] == 6  # back, under the same registered key
    assert _left(tmp_path / "link") == [] and _left(tmp_path / "run") == []


@pytest.mark.slow
def test_the_server_app_resumes_after_a_superlink_restart(
    synth_data: Path, tmp_path: Path, ray_cluster: Any
) -> None:
    """Loopback, TLS: the SuperLink stopped after round 1 (its server app goes with it),
    started again on its database (the sites' registrations kept; the SuperNodes reconnect),
    the App started with ``resume``: rounds 2 and 3 run, and the final tensors are those of
    ``fedrs run`` straight through."""
    from fedrs.orchestrator.deploy import Rehearsal, write_app
    from fedrs.orchestrator.flower_app import STATUS
    from fedrs.orchestrator.runner import run

    cfg = small_run(synth_data, **{"federation.rounds": 3, "federation.clients_per_round": 2})
    run_dir = tmp_path / "run"

    def status() -> dict:
        return json.loads((run_dir / STATUS).read_text()) if (run_dir / STATUS).exists() else {}

    def until(done: Any, limit: float = 300) -> None:
        end = time.monotonic() + limit
        while not done() and time.monotonic() < end:
            time.sleep(0.5)
        assert done(), status()

    r = Rehearsal(tmp_path / "link")
    try:
        r.start_superlink()
        r.start_sites(str(synth_data), [[0, 1, 2], [3, 4, 5]])
        r.submit(write_app(tmp_path / "app", cfg, run_dir, 2))
        until(lambda: status().get("round") == 1)
        first = (run_dir / "metrics.jsonl").read_text().splitlines()[0]
        r.procs.stop("superlink")
        r.start_superlink()
        again = r.submit(write_app(tmp_path / "app2", cfg, run_dir, 2, resume=True))
        until(
            lambda: str(status().get("flower_run_id")) == again and status()["state"] == "finished"
        )
    finally:
        r.stop()
    assert [
        json.loads(x)["round"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
    ] == [
        1,
        2,
        3,
    ]
    # resumed, not run again: round 1's record is the one written before the restart
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[0] == first
    run(cfg, out=str(tmp_path / "sim"), console=QUIET)
    sim, dep = _tensors(tmp_path / "sim"), _tensors(run_dir)
    assert all(np.array_equal(sim[k], dep[k]) for k in sim)
    assert _left(tmp_path / "link") == []
