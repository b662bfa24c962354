"""Arrow IPC shards: one uncompressed file per client, memory-mapped zero-copy by trainers.

Layout of a shard (one record batch, so the pixel buffer is one contiguous region of the file):

=========  ==============================  ===========================================
column     Arrow type                      meaning
=========  ==============================  ===========================================
id         int32                           example id, unique within the build
image      fixed_size_binary(H*W*3)        decoded, resized RGB pixels, HWC uint8
label      int16 (null for caption data)   index into the manifest's ``classes``
domain     string                          source (domain) name
path       string                          image path relative to its source root
captions   list<string> (caption data)     the image's captions
array:<m>  fixed_size_binary(prod(shape))  per-example arrays of modality m (optional)
=========  ==============================  ===========================================

Modality arrays (``arrays={"hsi": (N, 144, 7, 7) float16, "lidar": (N, 21) float32, ...}``):
multi-band rasters, per-pixel patches or feature vectors of any shape and of dtype float16,
float32, uint8, uint16 or int16, one column each, stored raw like the pixels; their shapes and
dtypes are in the schema metadata and ``Shard.arrays[m]`` is a zero-copy ``(N, *shape)`` view.
A client that holds one modality and not another simply has no column for it
(``Shard.modalities``).

The image shape is stored in the schema metadata. Because the file is uncompressed IPC,
``Shard.images`` is a read-only ``(N, H, W, 3)`` numpy view straight onto the mapped file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from fedrs.errors import ShardIntegrityError
from fedrs.io import atomic_open

SHAPE_KEY = b"fedrs.image_shape"
ARRAYS_KEY = b"fedrs.arrays"  # {modality: {"shape": [...], "dtype": "float16"}}
ARRAY_PREFIX = "array:"
ARRAY_DTYPES = ("float16", "float32", "uint8", "uint16", "int16")


def shard_schema(
    image_shape: tuple[int, int, int],
    with_captions: bool,
    arrays: dict[str, np.ndarray] | None = None,
) -> pa.Schema:
    fields = [
        pa.field("id", pa.int32(), nullable=False),
        pa.field("image", pa.binary(int(np.prod(image_shape))), nullable=False),
        pa.field("label", pa.int16()),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
    ]
    if with_captions:
        fields.append(pa.field("captions", pa.list_(pa.string()), nullable=False))
    layout = {}
    for name, arr in (arrays or {}).items():
        if str(arr.dtype) not in ARRAY_DTYPES:
            raise ValueError(f"modality {name!r}: dtype {arr.dtype} is not one of {ARRAY_DTYPES}")
        layout[name] = {"shape": list(arr.shape[1:]), "dtype": str(arr.dtype)}
        width = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
        fields.append(pa.field(ARRAY_PREFIX + name, pa.binary(width), nullable=False))
    meta = {SHAPE_KEY: json.dumps(list(image_shape)).encode()}
    if layout:
        meta[ARRAYS_KEY] = json.dumps(layout).encode()
    return pa.schema(fields, metadata=meta)


def write_shard(
    path: str | os.PathLike[str],
    images: np.ndarray,
    ids: np.ndarray,
    labels: np.ndarray | None,
    domains: Sequence[str],
    paths: Sequence[str],
    captions: Sequence[Sequence[str]] | None = None,
    arrays: dict[str, np.ndarray] | None = None,
) -> dict[str, object]:
    """Write one shard atomically; return ``{"num_examples", "bytes", "sha256"}``.

    ``images`` is ``(N, H, W, 3)`` uint8 and may be a ``np.memmap``: its buffer is handed to
    Arrow without a copy, so writing a large shard does not need its size in RAM.
    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    n = images.shape[0]
    arrays = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
    for name, arr in arrays.items():
        if arr.shape[0] != n:
            raise ValueError(f"modality {name!r} has {arr.shape[0]} rows, the images {n}")
    schema = shard_schema(tuple(images.shape[1:]), captions is not None, arrays)  # type: ignore[arg-type]
    image_arr = pa.FixedSizeBinaryArray.from_buffers(
        schema.field("image").type, n, [None, pa.py_buffer(images)]
    )
    columns = [
        pa.array(np.asarray(ids, dtype=np.int32)),
        image_arr,
        pa.nulls(n, pa.int16()) if labels is None else pa.array(np.asarray(labels, np.int16)),
        pa.array(list(domains), type=pa.string()),
        pa.array(list(paths), type=pa.string()),
    ]
    if captions is not None:
        columns.append(pa.array([list(c) for c in captions], type=pa.list_(pa.string())))
    for name, arr in arrays.items():
        typ = schema.field(ARRAY_PREFIX + name).type
        columns.append(pa.FixedSizeBinaryArray.from_buffers(typ, n, [None, pa.py_buffer(arr)]))
    batch = pa.RecordBatch.from_arrays(columns, schema=schema)
    with atomic_open(path, "wb") as fh, pa.ipc.new_file(fh, schema) as writer:
        writer.write_batch(batch)
    return {"num_examples": n, "bytes": os.path.getsize(path), "sha256": file_sha256(path)}


def _int_column(table: pa.Table, name: str, path: Path) -> np.ndarray:
    """A null-free integer column as numpy, read from its buffer (pyarrow's ``to_numpy`` imports
    pandas on first use: half a second in every fresh worker process)."""
    col = table.column(name)
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    if not pa.types.is_integer(arr.type) or arr.null_count:
        raise ShardIntegrityError(f"shard {path}: column {name!r} ({arr.type}) is not integer")
    dtype = np.dtype(str(arr.type))
    if len(arr) == 0:
        return np.empty(0, dtype=dtype)
    return np.frombuffer(
        arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize
    )


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


class Shard:
    """A memory-mapped shard. Columns are zero-copy views; nothing is decoded at read time.

    Args:
        path: the ``.arrow`` file.
        sha256 / nbytes: what the manifest recorded; when given (and ``verify``), a truncated or
            tampered file raises ShardIntegrityError before any of it is used.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        sha256: str | None = None,
        nbytes: int | None = None,
        verify: bool = True,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ShardIntegrityError(f"shard {self.path} is missing")
        size = self.path.stat().st_size
        if verify and nbytes is not None and size != nbytes:
            kind = "truncated" if size < nbytes else "larger than recorded"
            raise ShardIntegrityError(
                f"shard {self.path} is {kind}: {size} bytes, the manifest says {nbytes}"
            )
        if verify and sha256 is not None and file_sha256(self.path) != sha256:
            raise ShardIntegrityError(f"shard {self.path} fails its sha256 check (tampered?)")
        try:
            self._mmap = pa.memory_map(str(self.path), "r")
            self.table = pa.ipc.open_file(self._mmap).read_all()
            shape = tuple(json.loads(self.table.schema.metadata[SHAPE_KEY]))
        except (pa.ArrowInvalid, OSError, KeyError, TypeError, ValueError) as exc:
            raise ShardIntegrityError(
                f"shard {self.path} is not a valid fedrs Arrow shard: {exc}"
            ) from None
        self.image_shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.images = self._image_view()
        label_col = self.table.column("label")
        self.has_labels = label_col.null_count == 0 and len(label_col) > 0
        self.labels = (
            _int_column(self.table, "label", self.path).astype(np.int64)
            if self.has_labels
            else np.full(len(self.table), -1, dtype=np.int64)
        )
        self.ids = _int_column(self.table, "id", self.path)
        self.arrays = self._array_views()

    def _array_views(self) -> dict[str, np.ndarray]:
        """Zero-copy ``(N, *shape)`` views of the modality columns."""
        meta = self.table.schema.metadata or {}
        try:
            layout = json.loads(meta[ARRAYS_KEY]) if ARRAYS_KEY in meta else {}
        except (ValueError, TypeError):
            raise ShardIntegrityError(f"shard {self.path}: unreadable modality layout") from None
        views = {}
        for name, spec in layout.items():
            col = self.table.column(ARRAY_PREFIX + name)
            arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
            dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
            width = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            n = len(arr)
            if arr.type.byte_width != width or arr.null_count:
                raise ShardIntegrityError(f"shard {self.path}: modality {name} does not match")
            if n == 0:
                views[name] = np.empty((0, *shape), dtype=dtype)
                continue
            data = np.frombuffer(
                arr.buffers()[1], dtype=np.uint8, count=n * width, offset=arr.offset * width
            )
            views[name] = data.view(dtype).reshape(n, *shape)
        return views

    @property
    def modalities(self) -> list[str]:
        """The modality arrays this shard holds (beside its pixels)."""
        return sorted(self.arrays)

    def _image_view(self) -> np.ndarray:
        col = self.table.column("image")
        n = len(col)
        if n == 0:
            return np.empty((0, *self.image_shape), dtype=np.uint8)
        if col.num_chunks != 1:  # fedrs writes one batch; foreign multi-batch files still load
            col = pa.chunked_array([col.combine_chunks()])
        arr = col.chunk(0)
        width = arr.type.byte_width
        if width != int(np.prod(self.image_shape)) or arr.null_count:
            raise ShardIntegrityError(f"shard {self.path}: image column does not match its shape")
        data = np.frombuffer(
            arr.buffers()[1], dtype=np.uint8, count=n * width, offset=arr.offset * width
        )
        return data.reshape(n, *self.image_shape)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def inputs(self) -> np.ndarray:
        """What a method trains on: the pixels (``FeatureShard.inputs`` are embeddings)."""
        return self.images

    @property
    def domains(self) -> list[str]:
        return self.table.column("domain").to_pylist()

    @property
    def paths(self) -> list[str]:
        return self.table.column("path").to_pylist()

    @property
    def captions(self) -> list[list[str]]:
        if "captions" not in self.table.schema.names:
            return []
        return self.table.column("captions").to_pylist()

    def class_counts(self, num_classes: int) -> np.ndarray:
        if not self.has_labels:
            return np.zeros(num_classes, dtype=np.int64)
        return np.bincount(self.labels, minlength=num_classes)

    def __repr__(self) -> str:
        return f"Shard({self.path.name!r}, n={len(self)}, image_shape={self.image_shape})"
