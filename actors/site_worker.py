"""A site's resident worker: one long-lived process per SuperNode that keeps the site's
``ClientWorker`` (and so its backbone) loaded between Flower messages.

Flower 1.42 runs the ClientApp in a new process for every message (subprocess isolation), so
a ClientApp that built the model itself would import torch and open_clip and build the
backbone once per message. fedrs's ClientApp instead forwards each message's content, as it
came (the JSON text and the arrays, no pickle), to this worker over a Unix socket in the site's
``state-dir`` (authenticated with a key only the site's user can read) and returns its answer.
The first message starts the worker; it exits after ``IDLE_S`` without a message, and with the
SuperNode's process group.

    python -m fedrs.actors.site_worker SOCKET NODE_CONFIG_JSON
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

import numpy as np

from fedrs.io import contiguous

log = logging.getLogger(__name__)
IDLE_S = 900.0  # the worker exits after this long without a message
START_S = 300.0  # how long a message waits for a starting worker


class _Arr:
    """An array as ``unpack`` reads one (``.numpy()``)."""

    def __init__(self, value: np.ndarray) -> None:
        self.value = value

    def numpy(self) -> np.ndarray:
        return self.value


def _to_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, contiguous(a), allow_pickle=False)
    return buf.getvalue()


def _from_bytes(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


class WorkerError(RuntimeError):
    """The site worker could not answer a message (its reason, one line)."""


def send(conn: Any, text: str, arrays: dict[str, np.ndarray], error: str | None = None) -> None:
    """One message: a header (the JSON text, the array names, or an error), then each
    array's bytes."""
    head = {"json": text, "arrays": list(arrays), "error": error}
    conn.send_bytes(json.dumps(head).encode())
    for name in arrays:
        conn.send_bytes(_to_bytes(arrays[name]))


def receive(conn: Any) -> tuple[str, dict[str, np.ndarray]]:
    head = json.loads(conn.recv_bytes())
    arrays = {name: _from_bytes(conn.recv_bytes()) for name in head["arrays"]}
    if head.get("error"):
        raise WorkerError(head["error"])
    return head["json"], arrays


def state_dir_of(node_config: dict[str, Any]) -> Path:
    """A site's state directory: ``state-dir``, else beside its data build."""
    given = node_config.get("state-dir")
    if given:
        return Path(str(given))
    data = Path(str(node_config.get("data-path", "."))).resolve()
    return data.parent / f"fedrs-site-{int(node_config.get('site', 0))}-state"


def _paths(node_config: dict[str, Any]) -> tuple[Path, Path, Path]:
    """(socket, key file, lock file) of the worker for this node config. The socket lives in
    a short private directory (a Unix socket's path is limited to ~100 bytes), the key and
    the lock in the site's state directory."""
    digest = hashlib.sha256(json.dumps(node_config, sort_keys=True).encode()).hexdigest()[:12]
    state = state_dir_of(node_config)
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    sockets = Path(tempfile.gettempdir()) / f"fedrs-sites-{os.getuid()}"
    sockets.mkdir(mode=0o700, exist_ok=True)
    if sockets.stat().st_uid != os.getuid() or sockets.stat().st_mode & 0o077:
        raise WorkerError(f"{sockets} is not private to this user")
    base = state / f"worker-{digest}"
    return sockets / f"{digest}.sock", base.with_suffix(".key"), base.with_suffix(".lock")


def forward(node_config: dict[str, Any], text: str, arrays: dict[str, np.ndarray]) -> Any:
    """Send one message's content to this site's worker (started if none answers) and return
    its answer as ``(text, arrays)``."""
    sock, key_file, lock = _paths(node_config)
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # one message at a time starts or talks to it
        conn = _connect(sock, key_file)
        if conn is None:
            proc = _start(sock, key_file, node_config)
            end = time.monotonic() + START_S
            while conn is None and time.monotonic() < end:
                if proc.poll() is not None:  # it died starting: say why, do not wait
                    tail = key_file.with_suffix(".log").read_text(errors="replace")[-300:]
                    raise WorkerError(f"the site worker exited ({proc.returncode}): {tail}")
                time.sleep(0.2)
                conn = _connect(sock, key_file)
            if conn is None:
                raise WorkerError(f"the site worker did not start in {START_S:.0f} s")
        with conn:
            send(conn, text, arrays)
            return receive(conn)


def _connect(sock: Path, key_file: Path) -> Any:
    if not sock.exists() or not key_file.exists():
        return None
    try:
        return Client(str(sock), family="AF_UNIX", authkey=key_file.read_bytes())
    except (OSError, EOFError):
        return None


def _start(sock: Path, key_file: Path, node_config: dict[str, Any]) -> subprocess.Popen:
    sock.unlink(missing_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    with open(key_file.with_suffix(".log"), "ab") as out:
        return subprocess.Popen(  # the SuperNode's process group: it goes with the SuperNode
            [sys.executable, "-m", "fedrs.actors.site_worker", str(sock), json.dumps(node_config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def main(sock: str, node_config_json: str) -> None:
    """Serve messages on ``sock`` one at a time; exit after ``IDLE_S`` without one."""
    import threading

    from fedrs.actors.sites import SiteError, pack, serve, unpack

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    node_config = json.loads(node_config_json)
    key = _paths(node_config)[1].read_bytes()
    last = [time.monotonic()]
    busy = threading.Lock()

    def watchdog() -> None:
        while True:
            time.sleep(5.0)
            with busy:
                if time.monotonic() - last[0] > IDLE_S:
                    log.info("idle for %.0f s: exiting", IDLE_S)
                    Path(sock).unlink(missing_ok=True)
                    os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    with Listener(sock, family="AF_UNIX", authkey=key) as listener:
        Path(sock).chmod(0o600)
        log.info("site worker up on %s", sock)
        while True:
            try:
                conn = listener.accept()
            except (OSError, EOFError):  # a client that failed the key check
                continue
            with busy, conn, contextlib.suppress(EOFError, OSError):
                text, arrays = receive(conn)
                content = {
                    "body": {"json": text},
                    "arrays": {k: _Arr(v) for k, v in arrays.items()},
                }
                try:
                    out = pack(serve(node_config, unpack(content)))
                except Exception as exc:  # the message fails, the worker stays
                    log.warning("message failed", exc_info=True)
                    why = str(exc) if isinstance(exc, SiteError) else f"{type(exc).__name__}: {exc}"
                    send(conn, "", {}, error=why)
                else:
                    reply = {k: out["arrays"][k].numpy() for k in out["arrays"]}
                    send(conn, out["body"]["json"], reply)
                last[0] = time.monotonic()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
