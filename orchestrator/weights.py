"""Preflight of a run's weights: a checkpoint path exists, is readable and not cut short; an
open_clip tag is in the local cache, or is fetched once here (never by every actor at once), or
the host it comes from cannot be reached and the run stops with one line."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fedrs.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar")
PROBE_TIMEOUT_S = 5.0


def _run_bounded(fn: Callable[[], Any], timeout_s: float) -> Any:
    """``fn()`` in a daemon thread; TimeoutError if it has not returned by ``timeout_s``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _check_checkpoint(path: Path) -> str:
    if not path.exists():
        raise ConfigError(f"model.pretrained checkpoint {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"model.pretrained {path} is not a file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ConfigError(
            f"model.pretrained {path} cannot be read: {exc.strerror or exc}"
        ) from None
    size = path.stat().st_size
    if size == 0:
        raise ConfigError(f"model.pretrained {path} is empty")
    if head.startswith(b"PK"):  # torch's zip format: its central directory sits at the end
        try:
            with zipfile.ZipFile(path) as zf:
                zf.infolist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise ConfigError(
                f"model.pretrained {path} is damaged or cut short ({exc}); {size:,} B on disk"
            ) from None
    elif path.suffix == ".safetensors":
        header = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            with open(path, "rb") as fh:
                fh.seek(8)
                meta = json.loads(fh.read(header)) if 0 < header < size else None
            end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"))
        except (ValueError, TypeError, KeyError, OSError):
            meta, end = None, -1
        if meta is None or 8 + header + end > size:
            raise ConfigError(f"model.pretrained {path} is not a complete safetensors file")
    return f"checkpoint {path} ({size:,} B)"


def _cached_weights(pcfg: dict[str, Any]) -> str | None:
    """Where open_clip would find these pretrained weights without the network, or None."""
    hub = pcfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else []
        names += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in dict.fromkeys(names):
            found = try_to_load_from_cache(repo_id=repo, filename=name)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        return None
    url = pcfg.get("url", "")
    if url:
        target = Path("~/.cache/clip").expanduser() / os.path.basename(urlparse(url).path)
        return str(target) if target.is_file() else None
    return None


def _weights_host(pcfg: dict[str, Any]) -> str:
    if pcfg.get("hf_hub"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return urlparse(endpoint).hostname or "huggingface.co"
    return urlparse(pcfg.get("url", "")).hostname or "?"


def _resolves(host: str) -> str | None:
    """None when ``host`` resolves within the probe time, else why not."""
    try:
        _run_bounded(lambda: socket.getaddrinfo(host, 443), PROBE_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    return None


def check_weights(arch: str, pretrained: str, fetch: bool = True) -> str:
    """Check ``model.pretrained`` for ``arch``; return a short description of the weights.

    A path must be a readable, complete checkpoint. An open_clip tag must be known for the arch
    and be cached locally; otherwise it is downloaded here, once (``fetch``), unless the hub is
    unreachable or ``HF_HUB_OFFLINE`` is set: then one line says so."""
    if not pretrained:
        return "random init"
    import open_clip

    from fedrs.models.backbone import register_configs

    register_configs()
    if (
        os.sep in pretrained
        or os.path.exists(pretrained)
        or pretrained.endswith(CHECKPOINT_SUFFIXES)
    ):
        return _check_checkpoint(Path(pretrained))
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        raise ConfigError(
            f"model.pretrained {pretrained!r} is neither a local checkpoint nor an open_clip "
            f"tag of {arch} (tags: {', '.join(tags) or 'none'})"
        )
    from open_clip import pretrained as oc_pretrained

    pcfg = oc_pretrained.get_pretrained_cfg(arch, pretrained)
    found = _cached_weights(pcfg)
    if found:
        return f"open_clip {arch} {pretrained} (cached: {found})"
    how = (
        "fetch them once where there is network (open_clip caches them under ~/.cache) or give "
        "model.pretrained a checkpoint path"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ConfigError(
            f"model.pretrained {pretrained!r}: the {arch} weights are not in the local cache "
            f"and HF_HUB_OFFLINE is set; {how}"
        )
    host = _weights_host(pcfg)
    why = _resolves(host)
    if why is not None:
        raise ConfigError(
            f"model.pretrained {pretrained!r}: the {arch} weights are not in the local cache "
            f"and {host} cannot be reached ({why}); {how}"
        )
    if not fetch:
        return f"open_clip {arch} {pretrained} (not cached; downloaded at start)"
    log.info("downloading the %s %s weights once, before the actors start", arch, pretrained)
    try:
        path = oc_pretrained.download_pretrained(pcfg)
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"model.pretrained {pretrained!r}: download failed: {first}") from None
    return f"open_clip {arch} {pretrained} ({path})"
