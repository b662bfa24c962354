"""``manifest.json``: what a build wrote, and the reader trainers open a build through.

Shape (``format`` = ``fedrs.shards/1``)::

    {
      "format": "fedrs.shards/1", "kind": "classification" | "captions",
      "classes": ["agricultural", ...],
      "image": {"size": 224, "channels": 3, "layout": "HWC", "dtype": "uint8"},
      "partition": {"scheme", "num_clients", "alpha", "classes_per_client",
                    "imbalance_factor", "min_examples"},
      "seed": 0, "test_fraction": 0.2,
      "sources": [{"name", "path", "kind", "num_examples"}],
      "counts": {"found", "skipped_bad", "test", "train", "dropped"},
      "clients": [{"id", "shard", "num_examples", "class_counts", "domain_counts",
                   "bytes", "sha256", "local_test": {"shard", "num_examples", "class_counts",
                                                     "bytes", "sha256"}}],
      "test": {"shard", "num_examples", "class_counts", "bytes", "sha256"},
      ...
    }
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from fedrs.datasets.shards import Shard
from fedrs.errors import ShardIntegrityError

MANIFEST = "manifest.json"
VERIFIED = ".verified.json"  # shards whose sha256 matched, with the size and mtime it held for
MAX_OPEN_SHARDS = 256  # shards a FedDataset keeps memory-mapped (least recently used dropped)
FORMAT = "fedrs.shards/1"
_ENTRY_KEYS = ("shard", "num_examples", "bytes", "sha256")


@dataclass(frozen=True)
class ShardEntry:
    """One shard file as the manifest records it."""

    shard: str
    num_examples: int
    bytes: int
    sha256: str
    class_counts: tuple[int, ...] = ()

    @classmethod
    def from_json(cls, obj: Any, where: str) -> ShardEntry:
        if not isinstance(obj, dict) or any(k not in obj for k in _ENTRY_KEYS):
            raise ShardIntegrityError(f"manifest: {where} needs keys {_ENTRY_KEYS}")
        return cls(
            shard=str(obj["shard"]),
            num_examples=int(obj["num_examples"]),
            bytes=int(obj["bytes"]),
            sha256=str(obj["sha256"]),
            class_counts=tuple(int(c) for c in obj.get("class_counts", ())),
        )


@dataclass(frozen=True)
class ClientEntry:
    """A client: its training shard and its local test shard (its own label distribution)."""

    id: int
    train: ShardEntry
    local_test: ShardEntry
    domain_counts: dict[str, int]


class FedDataset:
    """A built federated dataset: manifest plus lazily opened, verified, memory-mapped shards.

    At most ``max_open`` shards stay mapped (least recently used first out), so an actor that
    serves many clients in turn does not accumulate maps; a dropped shard is unmapped once no
    array view of it is left, and reopening it checks its size only (its sha256 was checked on
    first open).
    """

    def __init__(
        self, root: str | os.PathLike[str], verify: bool = True, max_open: int = MAX_OPEN_SHARDS
    ) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.root = Path(root)
        self.verify = verify
        self.max_open = max_open
        path = self.root / MANIFEST
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise ShardIntegrityError(
                f"no {MANIFEST} in {self.root}: build one with `fedrs data build` or "
                f"`fedrs data synth`"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ShardIntegrityError(f"cannot read {path}: {exc}") from None
        if self.manifest.get("format") != FORMAT:
            raise ShardIntegrityError(
                f"{path}: format {self.manifest.get('format')!r} is not {FORMAT!r}"
            )
        try:
            self.classes: list[str] = list(self.manifest["classes"])
            self.kind: str = self.manifest["kind"]
            self.image_size: int = int(self.manifest["image"]["size"])
            self.test = ShardEntry.from_json(self.manifest["test"], "test")
            self.clients = [
                ClientEntry(
                    id=int(c["id"]),
                    train=ShardEntry.from_json(c, f"client {c.get('id')}"),
                    local_test=ShardEntry.from_json(
                        c["local_test"], f"client {c['id']} local_test"
                    ),
                    domain_counts=dict(c.get("domain_counts", {})),
                )
                for c in self.manifest["clients"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise ShardIntegrityError(f"{path} is malformed: missing or bad {exc}") from None
        self._open: OrderedDict[str, Shard] = OrderedDict()
        self._verified: set[str] = set()  # shards whose sha256 matched once

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    @cached_property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def open_shards(self) -> int:
        """How many shards are mapped (through this dataset) right now."""
        return len(self._open)

    def open_shard(self, entry: ShardEntry) -> Shard:
        """Memory-map a shard (verified against its manifest entry on first open)."""
        shard = self._open.get(entry.shard)
        if shard is not None:
            self._open.move_to_end(entry.shard)
            return shard
        shard = Shard(
            self.root / entry.shard,
            sha256=None if entry.shard in self._verified else entry.sha256,
            nbytes=entry.bytes,
            verify=self.verify,
        )
        if len(shard) != entry.num_examples:
            raise ShardIntegrityError(
                f"shard {entry.shard} holds {len(shard)} rows, the manifest says "
                f"{entry.num_examples}"
            )
        if self.verify:
            self._verified.add(entry.shard)
        self._open[entry.shard] = shard
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return shard

    def client(self, cid: int) -> Shard:
        return self.open_shard(self.clients[cid].train)

    def client_test(self, cid: int) -> Shard:
        return self.open_shard(self.clients[cid].local_test)

    def test_shard(self) -> Shard:
        return self.open_shard(self.test)

    def entries(self) -> list[ShardEntry]:
        """Every shard the manifest names: the global test shard, then each client's two."""
        return [self.test] + [e for c in self.clients for e in (c.train, c.local_test)]

    def check_shards(self) -> dict[str, str]:
        """Damaged shards, ``{shard: why}``, without opening any: sizes always, sha256 once per
        build. A shard whose hash matched is recorded in ``.verified.json`` beside the
        manifest with its size and mtime, and is hashed again only when either changes (a
        read-only dataset is hashed every time)."""
        from fedrs.datasets.shards import file_sha256
        from fedrs.io import write_json

        cache_path = self.root / VERIFIED
        try:
            cache = json.loads(cache_path.read_text())
            if not isinstance(cache, dict):
                cache = {}
        except (OSError, ValueError):
            cache = {}
        damaged: dict[str, str] = {}
        fresh: dict[str, list[Any]] = {}
        for entry in self.entries():
            path = self.root / entry.shard
            try:
                st = path.stat()
            except OSError:
                damaged[entry.shard] = f"{entry.shard} is missing"
                continue
            if st.st_size != entry.bytes:
                kind = "truncated" if st.st_size < entry.bytes else "larger than recorded"
                damaged[entry.shard] = (
                    f"{entry.shard} is {kind}: {st.st_size} bytes, the manifest says {entry.bytes}"
                )
                continue
            stamp = [entry.sha256, st.st_size, st.st_mtime_ns]
            if cache.get(entry.shard) != stamp and file_sha256(path) != entry.sha256:
                damaged[entry.shard] = f"{entry.shard} fails its sha256 check (tampered?)"
                continue
            fresh[entry.shard] = stamp
        if fresh != cache:
            with contextlib.suppress(OSError):  # a read-only dataset: hash again next time
                write_json(cache_path, fresh)
        return damaged

    def verify_all(self) -> None:
        """Open (and so check) every shard the manifest names."""
        self.test_shard()
        for c in self.clients:
            self.open_shard(c.train)
            self.open_shard(c.local_test)
