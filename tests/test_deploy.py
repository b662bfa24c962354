"""fedrs on Flower's deployment runtime: the site codec, the sites as the driver's client pool
(in process, over a stand-in for Flower's Grid that answers with the sites' own code), and on
loopback with a real SuperLink and SuperNodes, TLS and registered site keys."""

from __future__ import annotations

import contextlib
import copy
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
from fedrs.actors import secagg
from fedrs.actors.client import EvalTask, FitTask
from fedrs.actors.sites import SiteError, pack, serve, unpack
from fedrs.methods.base import FitOptions
from fedrs.orchestrator import checkpoint

QUIET = Console(file=io.StringIO())


@pytest.fixture(autouse=True)
def _flower_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a Flower run the process knows its run (Flower's messages read it there)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


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

    def __init__(
        self, nodes: dict[int, dict], tamper: Any = None, silent: tuple = (), leave: Any = None
    ) -> None:
        self.nodes, self.tamper, self.silent, self.leave = nodes, tamper, silent, leave
        self.replies: dict[str, Any] = {}
        self.contexts: dict[int, Any] = {}  # each site's Flower context (SecAgg+ keeps keys)
        self.clear: list[int] = []  # arrays' bytes in each fit reply (secure: none)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, msgs: list[Any]) -> list[str]:
        ids = []
        for m in msgs:
            mid, node = uuid.uuid4().hex, m.metadata.dst_node_id
            ids.append(mid)
            if node in self.silent:
                continue
            if secagg.STAGES in getattr(m.content, "config_records", {}):
                self.replies[mid] = self._stage(m, mid, node)
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
            if body["call"] == "fit":
                self.clear.append(sum(a.nbytes for a in _arrays(out)))
        return ids

    def _stage(self, m: Any, mid: str, node: int) -> Any:
        """A SecAgg+ stage on a site, as its ClientApp answers it (``secagg.client_stage``
        with the site's sealed contribution from ``serve``); ``leave(node, stage)`` true:
        the site fails that stage."""
        from flwr.app import Context, Error, Message, RecordDict

        m = copy.deepcopy(m)  # a site gets its own copy (Flower's workflow reuses contents)
        m.metadata.__dict__["_message_id"] = mid  # what Flower's grid sets when it pushes
        cfg = self.nodes[node]
        stage = m.content.config_records[secagg.STAGES]["stage"]
        if self.leave is not None and self.leave(node, stage):
            return Message(Error(2, "the site left"), reply_to=m)
        ctx = self.contexts.setdefault(node, Context(1, node, cfg, RecordDict(), {}))

        def fetch(c: dict) -> tuple[list, int]:
            body = {"call": "sealed", "run": c["fedrs.run"], "round": int(c["fedrs.round"])}
            got = serve(cfg, {**body, "keys": str(c["fedrs.keys"]).split(",")})
            return got["mean"], got["weight"]

        return secagg.client_stage(m, ctx, fetch, int(cfg["site"]))

    def pull_messages(self, ids: list[str]) -> list[_Reply]:
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]


def _arrays(x: Any) -> list[np.ndarray]:
    """Every array in a reply, however nested."""
    if isinstance(x, np.ndarray):
        return [x]
    if isinstance(x, dict):
        return [a for v in x.values() for a in _arrays(v)]
    if isinstance(x, list | tuple):
        return [a for v in x for a in _arrays(v)]
    return []


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


def _manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "federation" / "manifest.json").read_text())


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


# ---------------------------------------------------------------------------- secure aggregation
def _round_one(run_dir: Path) -> dict[str, np.ndarray]:
    return checkpoint.load(run_dir)[1]


def test_secure_aggregation_gives_the_plain_mean_within_its_stated_tolerance(
    synth_data: Path, tmp_path: Path
) -> None:
    """3 sites x 2 clients, one round of PromptFL: with SecAgg+ the server receives no client
    tensor, and the new global context is the plain run's to within ``secagg.tolerance``
    (quantization), not exactly (it is quantized); seeded rounding makes it reproducible."""
    from fedrs.core.config import SecAggConfig
    from fedrs.orchestrator.flower_app import run_on_sites

    sets = {"federation.clients_per_round": 6, "federation.rounds": 1}
    plain_cfg = small_run(synth_data, **sets)
    secure_cfg = small_run(synth_data, **sets, **{"secagg.enabled": True})
    nodes = _sites(synth_data, tmp_path, 2, 3)
    plain_grid, grid = FakeGrid(nodes), FakeGrid(nodes)
    run_on_sites(plain_grid, plain_cfg, tmp_path / "plain", 3, 5, message=_Msg)
    run_on_sites(grid, secure_cfg, tmp_path / "secure", 3, 5, message=_Msg)
    run_on_sites(FakeGrid(nodes), secure_cfg, tmp_path / "again", 3, 5, message=_Msg)
    assert min(plain_grid.clear) > 0 and grid.clear == [0, 0, 0]  # no tensor in the clear
    plain, secure = _round_one(tmp_path / "plain"), _round_one(tmp_path / "secure")
    rec = json.loads((tmp_path / "secure" / "metrics.jsonl").read_text())
    sizes = [c["num_examples"] for c in _manifest(tmp_path / "secure")["clients"]]
    per_site = [sizes[0] + sizes[1], sizes[2] + sizes[3], sizes[4] + sizes[5]]
    tol = secagg.tolerance(SecAggConfig(), per_site) + 1e-7  # + float32's cast
    diff = np.abs(plain["prompt.ctx"].astype(np.float64) - secure["prompt.ctx"]).max()
    body = {"call": "init_global", "config": plain_cfg.to_dict(), "run": "init", "args": [0]}
    init = serve(next(iter(nodes.values())), body)["prompt.ctx"]
    moved = np.abs(plain["prompt.ctx"] - init).max()
    assert 0 < diff <= tol < moved / 100, (diff, tol, moved)  # quantized, and far below a step
    again = _round_one(tmp_path / "again")
    assert np.array_equal(again["prompt.ctx"], secure["prompt.ctx"])  # reproducible
    # every site's masked vector (int64 per value) at least, both ways counted
    assert rec["clients_ok"] == 6 and rec["secagg_bytes"] >= 3 * 8 * plain["prompt.ctx"].size


def test_a_site_leaving_during_secure_aggregation_is_recovered_and_counted(
    synth_data: Path, tmp_path: Path
) -> None:
    """Site 2 seals, then leaves before sending its masked vector: SecAgg+ recovers the sum
    of the two others (their keys' shares), its clients count as dropped, and the mean is
    the plain run's with that site gone (within the tolerance). With two sites nothing is
    left to hide among: the round's clients drop, and the quorum fails the run."""
    from fedrs.core.config import SecAggConfig
    from fedrs.orchestrator.aggregate import RoundFailedError
    from fedrs.orchestrator.flower_app import run_on_sites

    sets = {"federation.clients_per_round": 6, "federation.rounds": 1}
    sets["federation.min_clients"] = 2
    nodes = _sites(synth_data, tmp_path, 2, 3)
    site2 = next(n for n, c in nodes.items() if c["site"] == 2)
    stage = "collect_masked_vectors"
    grid = FakeGrid(nodes, leave=lambda n, s: n == site2 and s == stage)
    secure_cfg = small_run(synth_data, **sets, **{"secagg.enabled": True})
    run_on_sites(grid, secure_cfg, tmp_path / "secure", 3, 5, message=_Msg)
    rec = json.loads((tmp_path / "secure" / "metrics.jsonl").read_text())
    assert rec["clients_failed"] == 2 and rec["clients_ok"] == 4
    assert all("left during secure aggregation" in w for w in rec["failures"].values())

    class Gone(FakeGrid):  # site 2 does not answer its fit: the plain run without it
        def push_messages(self, msgs: list[Any]) -> list[str]:
            self.silent = (site2,) if unpack(msgs[0].content)["call"] == "fit" else ()
            return super().push_messages(msgs)

    plain_cfg = small_run(synth_data, **sets, **{"federation.round_timeout_s": 2.0})
    run_on_sites(Gone(nodes), plain_cfg, tmp_path / "plain", 3, 5, message=_Msg)
    sizes = [c["num_examples"] for c in _manifest(tmp_path / "secure")["clients"]]
    tol = secagg.tolerance(SecAggConfig(), [sizes[0] + sizes[1], sizes[2] + sizes[3]]) + 1e-7
    a, b = _round_one(tmp_path / "plain"), _round_one(tmp_path / "secure")
    assert np.abs(a["prompt.ctx"].astype(np.float64) - b["prompt.ctx"]).max() <= tol

    two = _sites(synth_data, tmp_path / "two", 3, 2)
    leaver = next(n for n, c in two.items() if c["site"] == 1)
    grid = FakeGrid(two, leave=lambda n, s: n == leaver and s == stage)
    with pytest.raises(RoundFailedError, match="secure aggregation halted"):
        run_on_sites(grid, secure_cfg, tmp_path / "two-run", 2, 5, message=_Msg)


def test_secure_aggregation_rejects_at_the_site_and_refuses_what_cannot_compose(
    synth_data: Path, tmp_path: Path
) -> None:
    """A client update outside ``[-clip, clip]`` is rejected by its site (counted), not
    clipped; SecAgg+ is refused in one line with a non-mean aggregator, with central DP, and
    in a Ray run."""
    from fedrs.errors import ConfigError
    from fedrs.orchestrator.aggregate import RoundFailedError
    from fedrs.orchestrator.flower_app import deploy_config, run_on_sites
    from fedrs.orchestrator.runner import run

    on = {"secagg.enabled": True, "federation.clients_per_round": 6, "federation.rounds": 1}
    tight = small_run(synth_data, **on, **{"secagg.clip": 1e-9})
    nodes = _sites(synth_data, tmp_path, 2, 3)
    with pytest.raises(RoundFailedError, match=r"rejected at its site: .* > secagg.clip=1e-09"):
        run_on_sites(FakeGrid(nodes), tight, tmp_path / "tight", 3, 5, message=_Msg)
    with pytest.raises(ConfigError, match=r"secagg.enabled: a secure sum .* strategy.name=median"):
        deploy_config(small_run(synth_data, **on, **{"strategy.name": "median"}))
    central = {"privacy.mode": "central", "privacy.noise_multiplier": 0.5}
    with pytest.raises(ConfigError, match=r"privacy.mode=central: central DP clips each"):
        deploy_config(small_run(synth_data, **on, **central))
    with pytest.raises(ConfigError, match="secure aggregation runs between sites"):
        run(small_run(synth_data, **on), out=str(tmp_path / "ray"), console=QUIET)


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

    # SecAgg+ through the real ClientApp (its keys in Flower's per-run context state) and the
    # sites' resident workers: the plain run's tensors to within the stated tolerance
    from fedrs.actors.secagg import tolerance

    one = two.replace(**{"federation.rounds": 1})
    secure = one.replace(**{"secagg.enabled": True})
    local(secure, 2, out=str(tmp_path / "sec"), console=QUIET, timeout_s=600)
    run(one, out=str(tmp_path / "sim1"), console=QUIET)
    rec = json.loads((tmp_path / "sec" / "metrics.jsonl").read_text())
    sizes = {int(c): v["num_examples"] for c, v in rec["clients"].items()}
    sites = [sum(n for c, n in sizes.items() if c < 3), sum(n for c, n in sizes.items() if c >= 3)]
    tol = tolerance(secure.secagg, [w for w in sites if w]) + 1e-7
    a, b = _tensors(tmp_path / "sim1"), _tensors(tmp_path / "sec")
    assert rec["clients_ok"] == 2 and rec["secagg_bytes"] >= 2 * 8 * a["prompt.ctx"].size
    assert all(np.abs(a[k].astype(np.float64) - b[k]).max() <= tol for k in a)
    assert _left(tmp_path / "sec") == []


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
