"""Which stored form is fastest to train from? Raw uint8 pixels vs re-encoded JPEG / PNG bytes.

Measures the cost of producing one training batch (random indices -> float32 NCHW tensor in
[0, 1]) from the same images stored three ways, side by side in one process:

* ``raw``  : fedrs's shard layout, a memory-mapped ``(N, H, W, 3)`` uint8 view (gather + cast);
* ``jpeg`` : JPEG bytes (quality 95) decoded with PIL per image, per batch;
* ``png``  : PNG bytes decoded with PIL per image, per batch.

Run: ``fedrs bench data-format [--data DIR] [--json OUT]`` (default: a synthetic build at 224 px).
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from typing import Any

import numpy as np
from PIL import Image

from fedrs.benchmarks.common import machine_info, print_table, write_result

log = logging.getLogger(__name__)


def _encode(images: np.ndarray, fmt: str) -> list[bytes]:
    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        out.append(buf.getvalue())
    return out


def _time_batches(make_batch: Any, n: int, batch: int, repeats: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    make_batch(rng.integers(0, n, batch))  # warm-up (page cache, allocator)
    t0 = time.perf_counter()
    for _ in range(repeats):
        make_batch(rng.integers(0, n, batch))
    return (time.perf_counter() - t0) / repeats


def run(
    data: str | None = None, batch: int = 64, repeats: int = 20, limit: int = 512
) -> dict[str, Any]:
    from fedrs.datasets.manifest import FedDataset

    tmp = None
    if data is None:
        from fedrs.datasets.partition import PartitionSpec
        from fedrs.datasets.synth import build_synthetic

        tmp = tempfile.TemporaryDirectory(prefix="fedrs-bench-")
        data = tmp.name
        build_synthetic(
            data,
            per_class=24,
            image_size=224,
            partition=PartitionSpec(scheme="iid", num_clients=1, min_examples=1),
        )
    shard = FedDataset(data).client(0)
    images = shard.images[: min(limit, len(shard))]
    n = len(images)
    jpeg, png = _encode(np.asarray(images), "JPEG"), _encode(np.asarray(images), "PNG")

    def raw_batch(idx: np.ndarray) -> np.ndarray:
        return images[np.sort(idx)].astype(np.float32).transpose(0, 3, 1, 2) / 255.0

    def decoded_batch(blobs: list[bytes]) -> Any:
        def make(idx: np.ndarray) -> np.ndarray:
            arr = np.stack(
                [np.asarray(Image.open(io.BytesIO(blobs[i])).convert("RGB")) for i in idx]
            )
            return arr.astype(np.float32).transpose(0, 3, 1, 2) / 255.0

        return make

    secs = {
        "raw": _time_batches(raw_batch, n, batch, repeats),
        "jpeg": _time_batches(decoded_batch(jpeg), n, batch, repeats),
        "png": _time_batches(decoded_batch(png), n, batch, repeats),
    }
    size = images.shape[1]
    bytes_per_image = {
        "raw": int(np.prod(images.shape[1:])),
        "jpeg": int(np.mean([len(b) for b in jpeg])),
        "png": int(np.mean([len(b) for b in png])),
    }
    rows = [
        {
            "format": k,
            "ms_per_batch": 1e3 * v,
            "images_per_s": batch / v,
            "bytes_per_image": bytes_per_image[k],
            "slowdown_vs_raw": v / secs["raw"],
        }
        for k, v in secs.items()
    ]
    if tmp is not None:
        tmp.cleanup()
    return {
        "benchmark": "data-format",
        "image_size": int(size),
        "batch": batch,
        "images": n,
        "rows": rows,
        "ratio": min(secs["jpeg"], secs["png"]) / secs["raw"],
        "ratio_meaning": "fastest encoded format's batch time / raw batch time (higher = raw wins)",
        "machine": machine_info(),
    }


def main(data: str | None = None, json_path: str | None = None) -> dict[str, Any]:
    result = run(data)
    print_table(
        f"data format: batch of {result['batch']} at {result['image_size']} px", result["rows"]
    )
    print(f"ratio (best encoded / raw): {result['ratio']:.1f}x")
    write_result(result, json_path)
    return result
