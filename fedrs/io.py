"""Atomic file writes (temp file in the same directory, fsync, rename over the target), strict
JSON (never a bare ``NaN``) and directories that a failed command leaves as it found them."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from fedrs.errors import FedrsError


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would, racing other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "wb", fsync: bool = True
) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on clean exit it replaces ``path`` atomically.

    On an exception the temp file is removed and ``path`` is left as it was. ``fsync=False``
    skips the per-file sync (bulk writers sync once at the end). The file gets the mode a plain
    ``open`` would give it (0666 less the umask), not ``mkstemp``'s private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def json_safe(obj: Any, reasons: dict[str, str] | None = None, where: str = "") -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by ``None``; when ``reasons``
    is given, each replaced value's dotted key is recorded there (``"not finite"``) unless a
    reason for it is already present."""
    if isinstance(obj, float) and not math.isfinite(obj):
        if reasons is not None:
            reasons.setdefault(where or "value", "not finite")
        return None
    if isinstance(obj, dict):
        return {
            k: json_safe(v, reasons, f"{where}.{k}" if where else str(k)) for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [json_safe(v, reasons, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON: non-finite floats become null (a bare ``NaN`` is not JSON)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented strict JSON, atomically."""
    text = dumps(obj, indent=2, sort_keys=False)
    with atomic_open(path, "w") as fh:
        fh.write(text + "\n")


def write_bytes(path: str | os.PathLike[str], data: bytes, fsync: bool = True) -> None:
    """Write ``data`` atomically."""
    with atomic_open(path, "wb", fsync) as fh:
        fh.write(data)


def first_missing(path: str | os.PathLike[str]) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet, or None."""
    path = Path(path).absolute()
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


@contextlib.contextmanager
def new_output_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Create ``path`` (and missing parents) for a command's output; if the command fails
    inside the block, remove what this created, so a failed command leaves no new empty or
    partial folder behind. A folder that already existed is left in place."""
    created = first_missing(path)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FedrsError(f"cannot create output directory {path}: {exc.strerror or exc}") from None
    try:
        yield Path(path)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def new_figure(width: float = 6.0, height: float = 3.5) -> tuple[Any, Any]:
    """A matplotlib figure and axes on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def process_memory(pid: int | None = None) -> dict[str, float]:
    """A process's resident memory in MiB, from /proc (Linux): ``rss_mb`` (VmRSS) now and
    ``peak_rss_mb`` (VmHWM) so far; this process by default."""
    out = {}
    with open(f"/proc/{pid or 'self'}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = int(value.split()[0]) / 1024
    return out


def fresh_path(parent: str | os.PathLike[str], stem: str = "") -> Path:
    """``parent/<stem-><timestamp>``, suffixed ``-2``, ``-3``, ... if that exists: a default
    output folder that never collides with an earlier one."""
    base = Path(parent) / f"{stem + '-' if stem else ''}{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def contiguous(a: Any) -> np.ndarray:
    """``a`` as a C-contiguous array of its own shape, for safetensors and ``np.save``
    (``np.ascontiguousarray`` returns at least 1-d: a scalar parameter, CLIP's logit scale,
    came back from a checkpoint as shape (1,) and failed the resumed run)."""
    arr = np.asarray(a)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(arr.shape)
