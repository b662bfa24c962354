"""Shared fixtures: tiny generated datasets (torchgeo-style) and the real ../shared/data."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDRS_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """A folder of ../shared/data, or skip the test cleanly when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data not available: {path}")
    return path


def write_image(path: Path, size: tuple[int, int], color: tuple[int, int, int], fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    arr = np.clip(
        np.array(color)[None, None, :] + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255
    )
    Image.fromarray(arr.astype(np.uint8)).save(path, format=fmt)


def make_imagefolder(
    root: Path, classes: dict[str, int], fmt: str = "PNG", size: tuple[int, int] = (40, 30)
) -> Path:
    """``root/<class>/<i>.<ext>`` with ``classes[name]`` images each, colour by class."""
    ext = {"PNG": "png", "JPEG": "jpg", "TIFF": "tif"}[fmt]
    for c, (name, count) in enumerate(classes.items()):
        for i in range(count):
            write_image(
                root / name / f"{name}{i:03d}.{ext}",
                size,
                (30 * c % 255, 80, 200 - 20 * c % 200),
                fmt,
            )
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """Six classes x 20 PNG images of 40x30 px."""
    return make_imagefolder(tmp_path / "src", {f"class{c}": 20 for c in range(6)})


def make_caption_dataset(root: Path, n: int = 30, n_test: int = 6) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n):
        write_image(root / "images" / f"{i + 1}.jpg", (48, 48), (10 * i % 255, 100, 50), "JPEG")
        images.append(
            {
                "imgid": i,
                "filename": f"{i + 1}.jpg",
                "split": "test" if i >= n - n_test else "train",
                "sentences": [
                    {"raw": f"caption {k} of image {i} .", "tokens": []} for k in range(5)
                ],
            }
        )
    (root / "dataset.json").write_text(json.dumps({"dataset": "tiny", "images": images}))
    return root


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray instance for the whole session: a 2-node local cluster with logical GPUs
    (head: 8 CPUs + 2 GPUs, worker: 8 CPUs + 2 GPUs), so scheduling tests see 4 GPUs and two
    nodes on a CPU-only machine."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 8,
            "num_gpus": 2,
            "object_store_memory": 200 * 2**20,
            "include_dashboard": False,
        },
    )
    cluster.add_node(num_cpus=8, num_gpus=2, object_store_memory=200 * 2**20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic federated dataset: 10 classes, 3 sensors, 6 clients, 32 px."""
    from fedrs.datasets.partition import PartitionSpec
    from fedrs.datasets.synth import build_synthetic

    out = tmp_path_factory.mktemp("synth")
    build_synthetic(
        out,
        per_class=8,
        image_size=32,
        partition=PartitionSpec(scheme="iid", num_clients=6, min_examples=2),
    )
    return out


def small_run(data: Path, **sets: object):
    """A short run config on ``data``: 2 rounds of 6 clients, 1 local epoch, 2 actors; read
    as a config file is (keys left out take the method's run defaults)."""
    from fedrs.core.config import from_dict

    base = {
        "data.path": str(data),
        "federation.rounds": 2,
        "federation.clients_per_round": 6,
        "client.local_epochs": 1,
        "resources.num_actors": 2,
    }
    table: dict = {}
    for key, value in {**base, **sets}.items():
        section, name = key.split(".", 1)
        table.setdefault(section, {})[name] = value
    return from_dict(table)
