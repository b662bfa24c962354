"""Reading shards: zero-copy memory maps, integrity checks, synthetic data, `data show`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedrs.datasets.builder import BuildSpec, build
from fedrs.datasets.manifest import MANIFEST, FedDataset
from fedrs.datasets.partition import PartitionSpec
from fedrs.datasets.shards import Shard, write_shard
from fedrs.datasets.show import HEATMAP, show, sparkline
from fedrs.datasets.synth import DOMAINS, SCENES, build_synthetic
from fedrs.errors import ShardIntegrityError


@pytest.fixture
def built(tmp_path: Path, tiny_folder: Path) -> FedDataset:
    return build(
        BuildSpec(
            sources=(("a", str(tiny_folder)),),
            out=str(tmp_path / "o"),
            partition=PartitionSpec(scheme="iid", num_clients=3, min_examples=2),
            image_size=16,
            workers=1,
        )
    )


def test_images_are_zero_copy_views_of_the_mapped_file(tmp_path: Path) -> None:
    imgs = np.random.default_rng(0).integers(0, 255, (7, 5, 6, 3), dtype=np.uint8)
    info = write_shard(
        tmp_path / "s.arrow",
        imgs,
        np.arange(7),
        np.arange(7) % 2,
        ["d"] * 7,
        [f"p{i}" for i in range(7)],
    )
    shard = Shard(tmp_path / "s.arrow", sha256=str(info["sha256"]), nbytes=int(info["bytes"]))
    assert np.array_equal(shard.images, imgs)
    assert not shard.images.flags.writeable and not shard.images.flags.owndata
    # The view's memory lies inside the memory-mapped file's address range.
    mm = shard._mmap
    mm.seek(0)
    whole = mm.read_buffer()  # zero-copy slice of the mapping
    addr = shard.images.__array_interface__["data"][0]
    assert whole.address <= addr and addr + shard.images.nbytes <= whole.address + whole.size
    assert shard.labels.tolist() == [0, 1, 0, 1, 0, 1, 0]
    assert shard.image_shape == (5, 6, 3)


def test_modality_arrays_are_zero_copy_and_typed(tmp_path: Path) -> None:
    """Multi-band rasters, per-pixel patches and feature vectors ride beside the pixels (a
    client that lacks a modality has no column for it)."""
    rng = np.random.default_rng(1)
    n = 5
    hsi = rng.normal(size=(n, 144, 7, 7)).astype(np.float16)  # 144-band patches
    lidar = rng.integers(0, 60000, (n, 21)).astype(np.uint16)  # raw LiDAR features
    imgs = np.zeros((n, 4, 4, 3), np.uint8)
    info = write_shard(
        tmp_path / "m.arrow",
        imgs,
        np.arange(n),
        np.arange(n),
        ["houston"] * n,
        [f"px{i}" for i in range(n)],
        arrays={"hsi": hsi, "lidar": lidar},
    )
    shard = Shard(tmp_path / "m.arrow", sha256=str(info["sha256"]), nbytes=int(info["bytes"]))
    assert shard.modalities == ["hsi", "lidar"]
    assert shard.arrays["hsi"].dtype == np.float16 and shard.arrays["hsi"].shape == hsi.shape
    np.testing.assert_array_equal(shard.arrays["hsi"], hsi)
    np.testing.assert_array_equal(shard.arrays["lidar"], lidar)
    assert not shard.arrays["hsi"].flags.owndata and not shard.arrays["hsi"].flags.writeable
    only = write_shard(
        tmp_path / "l.arrow",
        imgs,
        np.arange(n),
        np.arange(n),
        ["h"] * n,
        ["p"] * n,
        arrays={"lidar": lidar},
    )
    assert Shard(tmp_path / "l.arrow", nbytes=int(only["bytes"])).modalities == ["lidar"]
    assert Shard(tmp_path / "m.arrow").arrays["hsi"][2, 100, 3, 3] == hsi[2, 100, 3, 3]
    with pytest.raises(ValueError, match="dtype float64 is not one of"):
        write_shard(
            tmp_path / "x.arrow",
            imgs,
            np.arange(n),
            None,
            ["h"] * n,
            ["p"] * n,
            arrays={"bad": np.zeros((n, 2))},
        )
    with pytest.raises(ValueError, match="has 4 rows, the images 5"):
        write_shard(
            tmp_path / "y.arrow",
            imgs,
            np.arange(n),
            None,
            ["h"] * n,
            ["p"] * n,
            arrays={"short": np.zeros((4, 2), np.float32)},
        )
    assert not (tmp_path / "x.arrow").exists() and not (tmp_path / "y.arrow").exists()


def test_truncated_and_tampered_shards_are_rejected(built: FedDataset) -> None:
    entry = built.clients[1].train
    path = built.root / entry.shard
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardIntegrityError, match="truncated"):
        FedDataset(built.root).client(1)
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(tampered))
    with pytest.raises(ShardIntegrityError, match="sha256"):
        FedDataset(built.root).client(1)
    path.write_bytes(data)
    assert len(FedDataset(built.root).client(1)) == entry.num_examples


def test_manifest_contract(built: FedDataset) -> None:
    m = json.loads((built.root / MANIFEST).read_text())
    assert m["classes"] == [f"class{i}" for i in range(6)]
    for key in ("partition", "seed", "sources", "test", "clients"):
        assert key in m
    for c in m["clients"]:
        assert {"id", "shard", "num_examples", "class_counts", "sha256"} <= set(c)
        assert sum(c["class_counts"]) == c["num_examples"]
        assert (built.root / c["shard"]).is_file()
    assert {"shard", "num_examples", "sha256"} <= set(m["test"])
    assert m["partition"]["scheme"] == "iid" and m["partition"]["num_clients"] == 3


def test_missing_or_malformed_manifest(tmp_path: Path) -> None:
    with pytest.raises(ShardIntegrityError, match="fedrs data build"):
        FedDataset(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ShardIntegrityError, match="cannot read"):
        FedDataset(tmp_path)


def test_synthetic_default_is_deterministic_and_rs_like(tmp_path: Path) -> None:
    part = PartitionSpec(scheme="domain", num_clients=3, min_examples=2)
    a = build_synthetic(tmp_path / "a", per_class=4, image_size=24, partition=part)
    b = build_synthetic(tmp_path / "b", per_class=4, image_size=24, partition=part)
    assert len(a.classes) >= 8 and {"farmland", "forest", "river", "residential"} <= set(a.classes)
    assert sorted(s["name"] for s in a.manifest["sources"]) == sorted(DOMAINS)
    assert np.array_equal(a.test_shard().images, b.test_shard().images)
    assert [c.train.sha256 for c in a.clients] == [c.train.sha256 for c in b.clients]
    # The three sensors differ in appearance statistics (mean brightness / contrast).
    t = a.test_shard()
    doms = np.array(t.domains)
    stats = {d: (t.images[doms == d].mean(), t.images[doms == d].std()) for d in DOMAINS}
    assert stats["hazy"][1] < stats["aerial"][1]  # haze lowers contrast
    assert abs(stats["satellite"][0] - stats["aerial"][0]) > 3
    assert len(SCENES) == len(a.classes)


def test_show_prints_histograms_and_writes_heatmap(built: FedDataset) -> None:
    from rich.console import Console

    console = Console(record=True, width=160)
    png = show(str(built.root), console)
    text = console.export_text()
    assert png == built.root / HEATMAP and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 clients, 6 classes, partition=iid" in text and "class5" in text
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert len(rows) == 3
    assert [int(r.split("│")[2]) for r in rows] == [c.train.num_examples for c in built.clients]
    assert sparkline(np.array([0, 5, 10])) == " ▄█"
