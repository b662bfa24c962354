"""``fedrs deploy``: fedrs on Flower's deployment runtime (a SuperLink, one SuperNode per site).

    fedrs deploy certs --host NAME --out DIR     a CA and a server certificate for NAME
    fedrs deploy key DIR/site                    a site's key pair (SuperNode authentication)
    fedrs deploy app [CONFIG] --sites N --out RUN_DIR --app APP_DIR
                                                 the Flower App directory for `flwr run`
    fedrs deploy local --sites N [CONFIG] [--set ...] [--out RUN_DIR] [--insecure]
                                                 a rehearsal on this machine: a SuperLink and N
                                                 SuperNodes on 127.0.0.1, the run, then every
                                                 process it started stopped

Security is on by default: TLS with the certificates above (or the user's own), SuperNodes
authenticated by registered public keys (``flwr supernode register``); ``--insecure`` turns
both off, and says so. The README's "Real sites" section gives the same sequence with
Flower's own commands for machines of different organisations.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrs.core.config import RunConfig
from fedrs.errors import FedrsError
from fedrs.io import atomic_open

log = logging.getLogger(__name__)
APP_NAME = "fedrs-app"
CONNECTION = "fedrs"
DEPLOY_DIR = "deploy"


class DeployError(FedrsError):
    """A deployment process did not start, a site was refused, or the run failed."""


# ---------------------------------------------------------------------------- keys and certs
@dataclass(frozen=True)
class Certs:
    ca: Path  # what SuperNodes and the CLI verify the SuperLink with
    cert: Path  # the SuperLink's certificate (signed by ``ca``)
    key: Path  # its private key


def _write(path: Path, data: bytes, private: bool = False) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)
    if private:
        path.chmod(0o600)


def make_certs(out: Path, host: str, days: int = 365) -> Certs:
    """A CA and a SuperLink certificate for ``host`` (a DNS name or an IP address), in ``out``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    pem = serialization.Encoding.PEM

    def key() -> Any:
        return ec.generate_private_key(ec.SECP384R1())

    def save_key(k: Any, path: Path) -> None:
        fmt, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        _write(path, k.private_bytes(pem, fmt, none), private=True)

    def name(cn: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fedrs deploy CA"))
        .issuer_name(name("fedrs deploy CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    try:
        alt: Any = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    names = [alt] + ([x509.DNSName("localhost")] if host in ("127.0.0.1", "::1") else [])
    server_key = key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(host))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    certs = Certs(out / "ca.crt", out / "server.pem", out / "server.key")
    save_key(ca_key, out / "ca.key")
    _write(certs.ca, ca.public_bytes(pem))
    _write(certs.cert, cert.public_bytes(pem))
    save_key(server_key, certs.key)
    return certs


def make_node_key(path: Path) -> Path:
    """A site's key pair for SuperNode authentication (EC P-384, OpenSSH format, as
    ``ssh-keygen -t ecdsa -b 384`` writes): ``path`` (private) and ``path.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path.parent.mkdir(parents=True, exist_ok=True)
    k = ec.generate_private_key(ec.SECP384R1())
    ssh = serialization.Encoding.OpenSSH
    private = k.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    _write(path, private, private=True)
    pub = k.public_key().public_bytes(ssh, serialization.PublicFormat.OpenSSH)
    _write(path.with_name(path.name + ".pub"), pub + b"\n")
    return path


# ---------------------------------------------------------------------------- the App
def write_app(
    app_dir: Path,
    cfg: RunConfig,
    out: Path,
    sites: int,
    wait_s: float = 300.0,
    resume: bool = False,
) -> Path:
    """The Flower App directory ``flwr run`` packs: a ``pyproject.toml`` naming fedrs's apps
    (``fedrs.orchestrator.flower_app``, installed beside Flower on every machine) and this
    run's config; no code of its own."""
    import tomli_w

    from fedrs import __version__

    doc = {
        "project": {
            "name": APP_NAME,
            "version": __version__,
            "description": "fedrs on Flower's deployment runtime (fedrs deploy app)",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedrs",
                    "components": {
                        "serverapp": "fedrs.orchestrator.flower_app:server_app",
                        "clientapp": "fedrs.orchestrator.flower_client:client_app",
                    },
                    "config": {
                        "config": json.dumps(cfg.to_dict()),
                        "out": str(out.resolve()),
                        "sites": int(sites),
                        "wait-s": float(wait_s),
                        "resume": bool(resume),
                    },
                }
            }
        },
    }
    app_dir.mkdir(parents=True, exist_ok=True)
    _write(app_dir / "pyproject.toml", tomli_w.dumps(doc).encode())
    return app_dir


def write_connection(home: Path, address: str, ca: Path | None) -> None:
    """``$FLWR_HOME/config.toml`` naming the SuperLink connection ``fedrs`` (the one
    ``flwr run APP fedrs`` uses)."""
    import tomli_w

    conn: dict[str, Any] = {"address": address}
    if ca is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(ca.resolve())
    home.mkdir(parents=True, exist_ok=True)
    doc = {"superlink": {"default": CONNECTION, CONNECTION: conn}}
    _write(home / "config.toml", tomli_w.dumps(doc).encode())


# ---------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Processes:
    """The processes a rehearsal starts, each in its own session; ``stop`` ends exactly
    these (their process groups: a SuperLink's or SuperNode's own ``flower-superexec`` and
    app processes go with it), politely first."""

    logs: Path
    started: dict[str, subprocess.Popen] = field(default_factory=dict)

    def env(self, home: Path) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)  # flower-superexec etc. are found by name
        return {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "NO_COLOR": "1",
        }

    def start(self, name: str, argv: list[str], home: Path) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        home.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log_file:
            proc = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env(home),
                start_new_session=True,
            )
        self.started[name] = proc
        return proc

    def run(
        self, argv: list[str], home: Path, timeout: float = 60.0
    ) -> subprocess.CompletedProcess:
        """A short ``flwr`` CLI command (its output captured)."""
        return subprocess.run(
            argv, env=self.env(home), capture_output=True, text=True, timeout=timeout, check=False
        )

    def dead(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.started.items() if p.poll() is not None}

    def stop(self, name: str | None = None, grace_s: float = 10.0) -> None:
        names = [name] if name else list(self.started)
        for n in names:
            self._signal(self.started[n], signal.SIGTERM)
        end = time.monotonic() + grace_s
        for n in names:
            proc = self.started[n]
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, end - time.monotonic()))
            self._signal(proc, signal.SIGKILL)  # its group: children it left behind too
            proc.wait()
            if name:
                del self.started[n]

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # the group this rehearsal created for it


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------- the rehearsal
@dataclass
class Rehearsal:
    """A SuperLink and N SuperNodes on 127.0.0.1, with TLS and registered site keys unless
    ``insecure``. ``site_config(i)`` gives site i's ``--node-config`` values."""

    root: Path
    insecure: bool = False
    procs: Processes = field(init=False)
    port: int = field(init=False)
    certs: Certs | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.site_configs: dict[int, dict[str, Any]] = {}
        self.procs = Processes(self.root / "logs")
        self.port = free_port()
        self.cli_home = self.root / "home" / "cli"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_superlink(self) -> None:
        argv = ["flower-superlink", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--disable-runtime-dependency-installation"]
        argv += ["--database", str(self.root / "superlink.db")]
        if self.insecure:
            argv.append("--insecure")
        else:
            if self.certs is None:
                self.certs = make_certs(self.root / "certs", "127.0.0.1")
            c = self.certs
            argv += ["--ssl-ca-certfile", str(c.ca), "--ssl-certfile", str(c.cert)]
            argv += ["--ssl-keyfile", str(c.key), "--enable-supernode-auth"]
        self.procs.start("superlink", argv, self.root / "home" / "superlink")
        write_connection(self.cli_home, self.address, None if self.insecure else self.certs.ca)
        self._wait_superlink()

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return self.procs.run(["flwr", *args], self.cli_home, timeout)

    def flwr_json(self, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        """A ``flwr`` command's JSON answer (``--format json``: its exit status is 0 even
        when it failed; ``success`` says)."""
        done = self.flwr(*args, "--format", "json", timeout=timeout)
        try:
            out = json.loads(done.stdout)
        except json.JSONDecodeError:
            return {"success": False, "error-message": (done.stderr or done.stdout)[-400:]}
        return out if isinstance(out, dict) else {"success": False, "error-message": str(out)}

    def _wait_superlink(self, timeout_s: float = 60.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if "superlink" in self.procs.dead():
                raise DeployError(
                    "the SuperLink exited: " + _log_tail(self.procs.logs / "superlink.log")
                )
            if self.flwr_json("supernode", "ls", CONNECTION).get("success"):
                return
            time.sleep(0.5)
        raise DeployError(f"the SuperLink did not answer on {self.address} in {timeout_s:.0f} s")

    def register(self, key: Path) -> None:
        """Register a site's public key (``flwr supernode register``)."""
        done = self.flwr_json("supernode", "register", str(key) + ".pub", CONNECTION)
        if not done.get("success"):
            raise DeployError(f"could not register {key}.pub: {done.get('error-message')}")

    def start_site(self, i: int, node_config: dict[str, Any], key: Path | None) -> None:
        argv = ["flower-supernode", "--superlink", self.address, "--port", str(free_port())]
        argv += ["--node-config", _node_config(node_config)]
        if self.insecure:
            argv.append("--insecure")
        else:
            argv += ["--root-certificates", str(self.certs.ca)]
            if key is not None:
                argv += ["--auth-supernode-private-key", str(key)]
        self.procs.start(f"site-{i}", argv, self.root / "home" / f"site-{i}")

    def start_sites(self, data: str, parts: list[list[int]]) -> None:
        """Site i serves ``parts[i]`` of the build ``data`` (site 0 also the test split), its
        key registered first unless insecure."""
        for i, p in enumerate(parts):
            self.site_configs[i] = {
                "data-path": data,
                "site": i,
                "clients": ",".join(map(str, p)),
                "test-split": i == 0,
                "state-dir": str(self.root / f"site-{i}-state"),
            }
            key = None
            if not self.insecure:
                key = make_node_key(self.root / "keys" / f"site-{i}")
                self.register(key)
            self.start_site(i, self.site_configs[i], key)

    def restart_site(self, i: int) -> None:
        """Site i again, as it was started (its registered key, its data and state)."""
        key = None if self.insecure else self.root / "keys" / f"site-{i}"
        self.start_site(i, self.site_configs[i], key)

    def submit(self, app: Path) -> str:
        """``flwr run APP fedrs``: the Flower run id."""
        started = self.flwr_json("run", str(app), CONNECTION, timeout=120)
        run_id = started.get("run-id")
        if not started.get("success") or run_id is None:
            raise DeployError(f"flwr run failed: {started.get('error-message')}")
        return str(run_id)

    def stop(self) -> None:
        self.procs.stop()


def _node_config(values: dict[str, Any]) -> str:
    """``--node-config``'s text: space-separated TOML ``key=value`` pairs."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def site_partitions(partitions: int, sites: int) -> list[list[int]]:
    """Site i's partitions of a shared build: contiguous blocks, so the federation numbers
    the clients as the build does (site order, then partition)."""
    if not 1 <= sites <= partitions:
        raise DeployError(
            f"--sites {sites}: the data has {partitions} partitions (1..{partitions})"
        )
    return [
        list(range(i * partitions // sites, (i + 1) * partitions // sites)) for i in range(sites)
    ]


def local(
    cfg: RunConfig,
    sites: int,
    out: str | None = None,
    insecure: bool = False,
    overwrite: bool = False,
    console: Any = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """``fedrs deploy local``: the run ``cfg`` on a SuperLink and ``sites`` SuperNodes of this
    machine; every process it started is stopped when it ends, however it ends."""
    from rich.console import Console

    from fedrs.datasets.manifest import FedDataset
    from fedrs.methods import method_class
    from fedrs.orchestrator.flower_app import STATUS, deploy_config
    from fedrs.orchestrator.runner import new_run_dir
    from fedrs.orchestrator.spawn import ensure_data
    from fedrs.runlock import locked

    console = console or Console()
    cfg = deploy_config(cfg)
    head = method_class(cfg.method.name).headline
    run_dir = new_run_dir(out, overwrite).resolve()
    with locked(run_dir, "--out"):
        data = ensure_data(cfg, run_dir)
        parts = site_partitions(FedDataset(data, verify=False).num_clients, sites)
        root = run_dir / DEPLOY_DIR
        r = Rehearsal(root, insecure)
        if insecure:
            console.print(
                "[bold red]--insecure: no TLS and no site authentication; for a rehearsal on "
                "this machine only[/]"
            )
        try:
            r.start_superlink()
            r.start_sites(data, parts)
            run_id = r.submit(write_app(root / "app", cfg, run_dir, sites))
            console.print(
                f"[bold]fedrs deploy[/] {cfg.method.name}: Flower run {run_id} on {sites} sites "
                f"({'insecure' if insecure else 'TLS, authenticated sites'}) -> {run_dir}"
            )
            limit = timeout_s or 300.0 + cfg.federation.rounds * cfg.federation.round_timeout_s
            _follow(r, run_dir / STATUS, run_dir / "metrics.jsonl", limit, console, head, cfg)
        finally:
            r.stop()
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["run_dir"] = str(run_dir)
        return summary


def _follow(
    r: Rehearsal,
    status: Path,
    metrics: Path,
    limit: float,
    console: Any,
    head: str,
    cfg: RunConfig,
) -> None:
    """Print each round as the server app records it; return when it finished, raise
    ``DeployError`` when it failed, a process it needs died, or ``limit`` seconds passed."""
    from fedrs.orchestrator.runner import _progress_line

    end, shown = time.monotonic() + limit, 0
    while time.monotonic() < end:
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        for line in lines[shown:]:
            console.print(_progress_line(json.loads(line), cfg.federation.rounds, head))
        shown = len(lines)
        state = json.loads(status.read_text()) if status.is_file() else {}
        if state.get("state") == "finished":
            return
        if state.get("state") == "failed":
            raise DeployError(f"the server app failed: {state.get('error')}")
        dead = r.procs.dead()
        if dead:
            name, code = next(iter(dead.items()))
            raise DeployError(f"{name} exited ({code}): " + _log_tail(r.procs.logs / f"{name}.log"))
        time.sleep(0.5)
    raise DeployError(f"the run did not finish in {limit:.0f} s (logs: {r.procs.logs})")
