"""Frozen-feature cache: image embeddings computed once per shard and stored beside it.

A method may compute an array once per shard and keep it (``Method.input_cache``: an
``InputCache`` with the identity it depends on and the function of the pixels). The CLIP
methods whose image encoder never changes (``ClipMethod.frozen_image_encoder``: PromptFL, CoOp,
zero-shot) see the same image embedding for an image in every epoch, round and client; a
distilling method sees the same frozen teacher outputs. The cache computes such arrays once
per shard and stores them next to the shard (in place of the pixels as ``inputs``, or beside
them as ``cached``)::

    OUT/shards-<build>/client-00003.arrow
    OUT/shards-<build>/features-<key>/client-00003.arrow   # (N, D) float32, L2-normalised

``key`` hashes everything the embedding depends on besides the pixels: the architecture and
its open_clip config, the weights' identity (open_clip tag + open_clip version, or checkpoint
path + size + mtime, or the random-init seed), and the preprocessing (input size, mean, std,
interpolation). Change any of them and the key changes, so stale features are never read; the
pixels are covered by the shard's sha256, recorded in the feature file and checked on open (a
rebuilt shard lives in a new ``shards-<build>`` directory anyway). A feature file that is
missing, truncated or does not match is recomputed and rewritten atomically (temp + rename),
so concurrent actors computing the same shard are safe. If the dataset directory is read-only
the features are kept in the actor's memory instead (logged once).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from fedrs.datasets.manifest import FedDataset, ShardEntry
from fedrs.datasets.shards import Shard
from fedrs.io import atomic_open

log = logging.getLogger(__name__)

FORMAT = "fedrs.features/1"
KEY_META = b"fedrs.features.key"
SHARD_META = b"fedrs.features.shard_sha256"
ENCODE_BATCH = 256


def feature_key(identity: dict[str, object]) -> str:
    """A short stable hash of what the embeddings depend on (besides the pixels)."""
    blob = json.dumps({"format": FORMAT, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class FeatureShard:
    """A shard seen through the cache: ``inputs`` are ``(N, D)`` float32 embeddings."""

    features: np.ndarray
    labels: np.ndarray

    @property
    def inputs(self) -> np.ndarray:
        return self.features

    def __len__(self) -> int:
        return len(self.labels)


class CachedShard:
    """A shard with a cached per-image array beside its pixels (``cached``): everything else
    (``images``, ``labels``, ``captions``, ...) is the shard's own."""

    def __init__(self, shard: Shard, cached: np.ndarray) -> None:
        self.shard = shard
        self.cached = cached

    def __getattr__(self, name: str) -> object:
        return getattr(self.__dict__["shard"], name)

    def __len__(self) -> int:
        return len(self.shard)


def feature_path(root: Path, entry: ShardEntry, key: str) -> Path:
    shard = Path(entry.shard)
    return root / shard.parent / f"features-{key}" / shard.name


def write_features(path: Path, features: np.ndarray, key: str, shard_sha256: str) -> None:
    """One record batch with a ``fixed_size_list<float32>[D]`` column, written atomically."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    dim = features.shape[1]
    # from the buffer: pa.array / to_numpy import pandas (0.5 s) in a fresh worker process
    values = pa.Array.from_buffers(pa.float32(), features.size, [None, pa.py_buffer(features)])
    column = pa.FixedSizeListArray.from_arrays(values, dim)
    schema = pa.schema(
        [pa.field("embedding", column.type, nullable=False)],
        metadata={KEY_META: key.encode(), SHARD_META: shard_sha256.encode()},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh, pa.ipc.new_file(fh, schema) as writer:
        writer.write_batch(pa.RecordBatch.from_arrays([column], schema=schema))


def read_features(path: Path, key: str, shard_sha256: str, rows: int) -> np.ndarray | None:
    """The memory-mapped ``(rows, D)`` embeddings, or None if the file is absent or does not
    match (wrong key / shard / row count, truncated, not Arrow)."""
    if not path.is_file():
        return None
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        meta = table.schema.metadata or {}
        if meta.get(KEY_META) != key.encode() or meta.get(SHARD_META) != shard_sha256.encode():
            return None
        col = table.column("embedding").combine_chunks()
        if len(col) != rows or col.null_count:
            return None
        dim = col.type.list_size
        values = col.values
        if values.type != pa.float32() or values.null_count:
            return None
        flat = np.frombuffer(values.buffers()[1], dtype=np.float32)[values.offset :]
        return flat[col.offset * dim : (col.offset + rows) * dim].reshape(rows, dim)
    except (pa.ArrowInvalid, OSError, KeyError, ValueError, AttributeError, TypeError):
        return None


class FeatureCache:
    """Per-actor access to cached embeddings of a dataset's shards.

    Args:
        data: the dataset whose shards are embedded.
        key: ``feature_key(...)`` of the encoder (``Method.feature_identity()``).
        encode: ``uint8 (n, H, W, 3) -> float32 (n, D)``, the frozen encoder.
        max_open: feature files kept mapped in this process (least recently used dropped).
    """

    def __init__(
        self,
        data: FedDataset,
        key: str,
        encode: Callable[[np.ndarray], np.ndarray],
        max_open: int = 256,
    ) -> None:
        self.data = data
        self.key = key
        self.encode = encode
        self.max_open = max_open
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()
        self._writable = True
        self.computed = 0  # shards embedded by this process (the rest were read from disk)
        self.recomputed = 0  # of which a stale / damaged feature file was replaced

    def view(self, entry: ShardEntry, replace_inputs: bool = True) -> FeatureShard | CachedShard:
        """The shard with its cached array as ``inputs`` (``replace_inputs``) or beside the
        pixels as ``cached``."""
        shard = self.data.open_shard(entry)
        if replace_inputs:
            return FeatureShard(self.features(entry, shard), shard.labels)
        return CachedShard(shard, self.features(entry, shard))

    def features(self, entry: ShardEntry, shard: Shard) -> np.ndarray:
        feats = self._open.get(entry.shard)
        if feats is not None:
            self._open.move_to_end(entry.shard)
            return feats
        path = feature_path(self.data.root, entry, self.key)
        feats = read_features(path, self.key, entry.sha256, len(shard))
        if feats is None:
            if path.exists():
                self.recomputed += 1
                log.warning("feature file %s is stale or damaged: recomputing", path)
            feats = self._compute(shard)
            self.computed += 1
            if self._writable and len(feats):
                try:
                    write_features(path, feats, self.key, entry.sha256)
                    mapped = read_features(path, self.key, entry.sha256, len(shard))
                    feats = mapped if mapped is not None else feats
                except OSError as exc:
                    self._writable = False
                    log.warning(
                        "cannot write the feature cache beside %s (%s): keeping features in memory",
                        entry.shard,
                        exc.strerror or exc,
                    )
        self._open[entry.shard] = feats
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return feats

    def _compute(self, shard: Shard) -> np.ndarray:
        parts = [
            self.encode(shard.images[start : start + ENCODE_BATCH])
            for start in range(0, len(shard), ENCODE_BATCH)
        ]
        if not parts:  # an empty shard (a client without local test examples)
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)
