"""The dataset builder: layouts, partitions, splits, determinism, errors, atomicity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import REPO, make_caption_dataset, make_imagefolder, shared_dataset
from fedrs.datasets import builder as builder_mod
from fedrs.datasets.builder import BuildSpec, build
from fedrs.datasets.manifest import MANIFEST, FedDataset
from fedrs.datasets.partition import PartitionSpec
from fedrs.errors import DataError, PartitionError


def _spec(sources: dict[str, Path], out: Path, **part: object) -> BuildSpec:
    size = part.pop("image_size", 16)
    return BuildSpec(
        sources=tuple((k, str(v)) for k, v in sources.items()),
        out=str(out),
        partition=PartitionSpec(**{"min_examples": 2, **part}),  # type: ignore[arg-type]
        image_size=size,  # type: ignore[arg-type]
        workers=1,
    )


def test_import_datasets_from_repo_root_is_hugging_face() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import datasets, fedrs.datasets as f; print(datasets.__file__); "
            "print(f.__file__); print(hasattr(datasets, 'Dataset'))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not out[0].startswith(str(REPO / "datasets")), out
    assert "site-packages" in out[0]
    assert out[1].startswith(str(REPO / "datasets")) or "site-packages" in out[1]
    assert out[2] == "True"


def test_real_ucm_rsscn7_counts_and_merged_classes(tmp_path: Path) -> None:
    ucm, rsscn7 = shared_dataset("ucm"), shared_dataset("rsscn7")
    class_map = tmp_path / "map.json"
    class_map.write_text(json.dumps({"parking": "parkinglot", "riverlake": "river"}))
    spec = BuildSpec(
        sources=(("ucm", str(ucm)), ("rsscn7", str(rsscn7))),
        out=str(tmp_path / "out"),
        partition=PartitionSpec(scheme="iid", num_clients=5, seed=0),
        image_size=16,
        class_map=str(class_map),
    )
    ds = build(spec)
    m = ds.manifest
    assert m["counts"]["found"] == 4900
    assert sum(c.train.num_examples for c in ds.clients) + ds.test.num_examples == 4900
    assert m["counts"]["train"] + m["counts"]["test"] + m["counts"]["dropped"] == 4900
    # 21 UCM + 7 RSSCN7 classes, forest shared by name, parking and riverlake merged by the map
    assert len(ds.classes) == 21 + 7 - 1 - 2
    for cleaned in ("grass", "field", "industry", "resident", "parkinglot", "river", "forest"):
        assert cleaned in ds.classes
    assert not any(c[0].islower() and c[1:2].isupper() for c in ds.classes)
    assert "parking" not in ds.classes and "riverlake" not in ds.classes
    assert {s["name"]: s["num_examples"] for s in m["sources"]} == {"ucm": 2100, "rsscn7": 2800}
    forest = ds.classes.index("forest")
    per_class = sum(np.array(c.train.class_counts) for c in ds.clients) + np.array(
        ds.test.class_counts
    )
    assert per_class[forest] == 100 + 400
    assert per_class[ds.classes.index("parkinglot")] == 100 + 400
    shard = ds.client(0)
    assert set(shard.domains) == {"ucm", "rsscn7"}


def _tv_to_global(ds: FedDataset) -> float:
    m = np.array([c.train.class_counts for c in ds.clients], dtype=float)
    glob = m.sum(0) / m.sum()
    return float(np.mean(0.5 * np.abs(m / m.sum(1, keepdims=True) - glob).sum(1)))


def test_dirichlet_alpha_controls_skew(tmp_path: Path) -> None:
    src = make_imagefolder(tmp_path / "src", {f"c{i}": 40 for i in range(8)})
    skewed = build(_spec({"a": src}, tmp_path / "a", scheme="dirichlet", alpha=0.1, num_clients=5))
    flat = build(_spec({"a": src}, tmp_path / "b", scheme="dirichlet", alpha=100.0, num_clients=5))
    assert _tv_to_global(skewed) > 0.4
    assert _tv_to_global(flat) < 0.12
    assert skewed.manifest["partition"]["alpha"] == 0.1


def test_pathological_exactly_k_classes(tmp_path: Path) -> None:
    src = make_imagefolder(tmp_path / "src", {f"c{i}": 30 for i in range(6)})
    ds = build(
        _spec(
            {"a": src}, tmp_path / "o", scheme="pathological", classes_per_client=2, num_clients=6
        )
    )
    for c in ds.clients:
        assert sum(1 for n in c.train.class_counts if n > 0) == 2
        assert len(set(ds.client(c.id).labels.tolist())) == 2


def test_longtail_profile_then_dirichlet(tmp_path: Path) -> None:
    src = make_imagefolder(tmp_path / "src", {f"c{i}": 50 for i in range(5)})
    ds = build(
        _spec(
            {"a": src},
            tmp_path / "o",
            scheme="longtail",
            imbalance_factor=10.0,
            alpha=0.5,
            num_clients=3,
        )
    )
    totals = np.array([c.train.class_counts for c in ds.clients]).sum(0)
    n_max = totals[0]
    expected = [int(n_max * 10 ** (-c / 4)) for c in range(5)]
    assert totals.tolist() == expected
    counts = ds.manifest["counts"]
    assert counts["train"] + counts["test"] + counts["dropped"] == 250
    assert ds.test.class_counts == (10,) * 5  # the global test split stays balanced


def test_domain_partition_one_source_per_client(tmp_path: Path) -> None:
    a = make_imagefolder(tmp_path / "a", {f"c{i}": 20 for i in range(3)})
    b = make_imagefolder(tmp_path / "b", {f"c{i}": 10 for i in range(3)}, fmt="JPEG")
    ds = build(_spec({"big": a, "small": b}, tmp_path / "o", scheme="domain", num_clients=3))
    owners = [set(ds.client(c.id).domains) for c in ds.clients]
    assert all(len(o) == 1 for o in owners)
    assert sorted(next(iter(o)) for o in owners) == ["big", "big", "small"]
    for c in ds.clients:  # local test follows the client's source too
        assert set(ds.client_test(c.id).domains) == set(c.domain_counts)


def test_local_test_follows_client_label_distribution(tmp_path: Path) -> None:
    src = make_imagefolder(tmp_path / "src", {f"c{i}": 40 for i in range(6)})
    ds = build(
        _spec(
            {"a": src}, tmp_path / "o", scheme="pathological", classes_per_client=2, num_clients=4
        )
    )
    test_ids = set(ds.test_shard().ids.tolist())
    for c in ds.clients:
        local = ds.client_test(c.id)
        assert len(local) > 0
        assert set(local.labels.tolist()) <= {i for i, n in enumerate(c.train.class_counts) if n}
        assert set(local.ids.tolist()) <= test_ids  # drawn from the held-out split
        assert not set(local.ids.tolist()) & set(ds.client(c.id).ids.tolist())


def test_same_seed_same_shards_byte_for_byte(tmp_path: Path) -> None:
    src = make_imagefolder(tmp_path / "src", {f"c{i}": 15 for i in range(4)})
    runs = [
        build(
            _spec({"a": src}, tmp_path / name, scheme="dirichlet", alpha=0.5, num_clients=3, seed=s)
        )
        for name, s in (("x", 7), ("y", 7), ("z", 8))
    ]

    def blobs(ds: FedDataset) -> list[bytes]:
        entries = [ds.test] + [e for c in ds.clients for e in (c.train, c.local_test)]
        return [(ds.root / e.shard).read_bytes() for e in entries]

    assert blobs(runs[0]) == blobs(runs[1])
    assert blobs(runs[0]) != blobs(runs[2])


def test_all_image_formats_and_sizes(tmp_path: Path) -> None:
    root = tmp_path / "src"
    make_imagefolder(root, {"farm": 4}, fmt="TIFF", size=(300, 200))
    make_imagefolder(root, {"lake": 4}, fmt="JPEG", size=(513, 257))
    make_imagefolder(root, {"road": 4}, fmt="PNG", size=(17, 64))
    (root / "multi").mkdir()
    for i in range(4):  # 5-band uint16 GeoTIFF (channels first), which PIL cannot open
        tifffile.imwrite(
            root / "multi" / f"m{i}.tif",
            np.random.default_rng(i).integers(0, 4000, (5, 33, 35), dtype=np.uint16),
        )
    (root / "multi" / "notes.txt").write_text("not an image")
    ds = build(
        _spec(
            {"mix": root},
            tmp_path / "o",
            scheme="iid",
            num_clients=2,
            image_size=24,
            min_examples=1,
        )
    )
    assert ds.classes == ["farm", "lake", "multi", "road"]
    assert ds.manifest["counts"]["found"] == 16
    img = ds.client(0).images
    assert img.shape[1:] == (24, 24, 3) and img.dtype == np.uint8


def test_caption_dataset_shards(tmp_path: Path) -> None:
    root = make_caption_dataset(tmp_path / "caps", n=30, n_test=6)
    ds = build(_spec({"caps": root}, tmp_path / "o", scheme="iid", num_clients=2, image_size=20))
    assert ds.kind == "captions" and ds.classes == []
    assert ds.test.num_examples == 6  # the file's own test split
    shard = ds.client(0)
    assert all(len(c) == 5 for c in shard.captions)
    assert shard.captions[0][0].startswith("caption 0 of image")
    assert not shard.has_labels
    with pytest.raises(PartitionError, match="needs class labels"):
        build(_spec({"caps": root}, tmp_path / "p", scheme="dirichlet", num_clients=2))


def test_corrupt_image_is_a_one_line_error_or_skipped(tmp_path: Path, tiny_folder: Path) -> None:
    bad = tiny_folder / "class1" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DataError) as err:
        build(_spec({"a": tiny_folder}, tmp_path / "o", scheme="iid", num_clients=2))
    msg = str(err.value)
    assert "broken.jpg" in msg and "\n" not in msg and "--skip-bad" in msg
    assert not (tmp_path / "o" / MANIFEST).exists()
    assert not list((tmp_path / "o").glob(".staging-*"))
    spec = _spec({"a": tiny_folder}, tmp_path / "o", scheme="iid", num_clients=2)
    ds = build(BuildSpec(**{**spec.__dict__, "skip_bad": True}))
    assert ds.manifest["counts"]["skipped_bad"] == 1
    assert ds.manifest["counts"]["found"] == 121
    assert sum(c.train.num_examples for c in ds.clients) + ds.test.num_examples == 120


def test_unreadable_sources_are_one_line_errors(
    tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DataError, match="does not exist"):
        build(_spec({"a": tmp_path / "nope"}, tmp_path / "o"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        build(_spec({"a": tmp_path / "file"}, tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        build(_spec({"a": tmp_path / "empty"}, tmp_path / "o"))

    import os

    real_scandir = os.scandir

    def deny(path: object) -> object:
        if str(path).endswith("class2"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", deny)
    with pytest.raises(DataError, match=r"cannot read directory .*class2: permission denied"):
        build(_spec({"a": tiny_folder}, tmp_path / "o"))


def test_too_many_clients_fails_before_decoding(
    tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decode(*a: object, **k: object) -> None:
        raise AssertionError("decoded despite an impossible partition")

    monkeypatch.setattr(builder_mod, "_decode_all", no_decode)
    with pytest.raises(PartitionError, match="too many clients"):
        build(
            _spec({"a": tiny_folder}, tmp_path / "o", scheme="iid", num_clients=500, min_examples=1)
        )


def test_dirichlet_that_cannot_meet_minimum_is_clear(tmp_path: Path, tiny_folder: Path) -> None:
    with pytest.raises(PartitionError, match="Dirichlet"):
        build(
            _spec(
                {"a": tiny_folder},
                tmp_path / "o",
                scheme="dirichlet",
                alpha=0.01,
                num_clients=8,
                min_examples=10,
            )
        )


def test_interrupted_build_keeps_previous_manifest_valid(
    tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "o"
    first = build(_spec({"a": tiny_folder}, out, scheme="iid", num_clients=3))
    before = (out / MANIFEST).read_bytes()
    calls = {"n": 0}
    real = builder_mod.write_shard

    def dies_midway(*a: object, **k: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(builder_mod, "write_shard", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        build(_spec({"a": tiny_folder}, out, scheme="iid", num_clients=4, seed=3))
    assert (out / MANIFEST).read_bytes() == before
    FedDataset(out).verify_all()  # every shard the old manifest names is still there, intact
    assert not list(out.glob(".staging-*"))
    assert first.num_clients == 3


def test_cli_errors_are_single_lines(tmp_path: Path, tiny_folder: Path) -> None:
    from fedrs.cli import main

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fedrs.cli", *argv], capture_output=True, text=True
        )

    r = run(
        "data",
        "build",
        "--source",
        f"a={tiny_folder}",
        "--num-clients",
        "1000",
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2
    err = [line for line in r.stderr.splitlines() if line.startswith("fedrs: error:")]
    assert len(err) == 1 and "too many clients" in err[0]
    assert (
        main(["data", "build", "--source", f"a={tmp_path}/missing", "--out", str(tmp_path / "o")])
        == 2
    )


def test_caption_images_get_scene_classes_for_label_skew(tmp_path: Path) -> None:
    """``--caption-classes``: a file or a file-name rule gives caption images their classes,
    so image-caption pairs can be split over clients by scene class (Dirichlet)."""
    from fedrs.datasets.builder import BuildSpec, build
    from fedrs.datasets.sources import load_caption_classes
    from fedrs.errors import DataError

    src = make_caption_dataset(tmp_path / "cap", n=30, n_test=6)
    table = tmp_path / "classes.csv"
    table.write_text("".join(f"{i + 1}.jpg,{'forest' if i % 3 else 'river'}\n" for i in range(30)))
    spec = dict(
        partition=PartitionSpec(scheme="dirichlet", alpha=0.5, num_clients=2, min_examples=1),
        image_size=32,
    )
    ds = build(
        BuildSpec.from_args([f"c={src}"], str(tmp_path / "a"), caption_classes=str(table), **spec)
    )
    assert ds.kind == "captions" and ds.classes == ["forest", "river"]
    shard = ds.client(0)
    assert shard.has_labels and len(shard.captions[0]) == 5
    assert sum(sum(c["class_counts"]) for c in ds.manifest["clients"]) == 24
    # a rule on file names: here the digit before ".jpg" decides
    rule = r"re:(?P<class>[0-4])\.jpg$|(?P<other>[5-9])\.jpg$"
    with pytest.raises(DataError, match="gives no class for image"):
        build(BuildSpec.from_args([f"c={src}"], str(tmp_path / "b"), caption_classes=rule, **spec))
    assert not (tmp_path / "b").exists()
    ok = build(
        BuildSpec.from_args(
            [f"c={src}"], str(tmp_path / "c"), caption_classes=r"re:(\d)\.jpg$", **spec
        )
    )
    assert len(ok.classes) == 10
    with pytest.raises(DataError, match="needs a group"):
        build(
            BuildSpec.from_args([f"c={src}"], str(tmp_path / "d"), caption_classes="re:jpg", **spec)
        )
    # folder:DIR: image k is the k-th file of an ImageFolder in sorted (class, file) order
    folder = tmp_path / "ucm"
    for i in range(30):
        cls = ("river", "forest", "beach")[i // 10]  # 10 files each; sorted: beach, forest, river
        (folder / cls).mkdir(parents=True, exist_ok=True)
        (folder / cls / f"{cls}{i % 10:02d}.tif").write_bytes(b"")
    by_number = load_caption_classes(f"folder:{folder}")
    assert [by_number(f"{k}.jpg") for k in (1, 10, 11, 21, 30)] == [
        "beach",
        "beach",
        "forest",
        "river",
        "river",
    ]
    assert by_number("31.jpg") is None and by_number("x.jpg") is None
    numbered = build(
        BuildSpec.from_args(
            [f"c={src}"], str(tmp_path / "e"), caption_classes=f"folder:{folder}", **spec
        )
    )
    assert numbered.classes == ["beach", "forest", "river"]
    with pytest.raises(DataError, match="not a folder"):
        load_caption_classes(f"folder:{tmp_path / 'nowhere'}")


def test_exclude_near_leaves_out_another_builds_test_images(tmp_path: Path) -> None:
    """A pretraining build must not contain the evaluation build's test images, even
    re-encoded at another size and format; every other image stays."""
    from PIL import Image

    rng = np.random.default_rng(0)

    def textured() -> Image.Image:  # smooth random texture: no two alike
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        return Image.fromarray(small).resize((64, 64), Image.BICUBIC)

    originals = {}
    for c in ("a", "b"):
        (tmp_path / "eval" / c).mkdir(parents=True)
        for i in range(10):
            originals[f"{c}/{i}"] = textured()
            originals[f"{c}/{i}"].save(tmp_path / "eval" / c / f"{i}.jpg", quality=95)
    evaluation = build(
        _spec({"eval": tmp_path / "eval"}, tmp_path / "e", image_size=32, num_clients=2)
    )
    test_paths = {Path(p).parent.name + "/" + Path(p).stem for p in evaluation.test_shard().paths}
    assert len(test_paths) == 4
    for c in ("a", "b"):  # the pretraining source: copies of every image, plus new ones
        (tmp_path / "pre" / c).mkdir(parents=True)
        for i in range(10):
            originals[f"{c}/{i}"].resize((48, 48)).save(tmp_path / "pre" / c / f"copy{i}.png")
            textured().save(tmp_path / "pre" / c / f"new{i}.png")
    spec = _spec({"pre": tmp_path / "pre"}, tmp_path / "p", image_size=24, num_clients=2)
    kept = build(BuildSpec(**{**spec.__dict__, "exclude_near": str(tmp_path / "e")}))
    counts = kept.manifest["counts"]
    assert counts["found"] == 40 and counts["excluded_near_test"] == 4
    assert counts["train"] + counts["test"] + counts["dropped"] == 36
    names = {
        Path(p).parent.name + "/" + Path(p).stem.replace("copy", "")
        for shard in [kept.test_shard(), *(kept.client(c.id) for c in kept.clients)]
        for p in shard.paths
    }
    assert not names & test_paths and len(names) == 36
    with pytest.raises(DataError, match="no fedrs build"):
        BuildSpec(**{**spec.__dict__, "exclude_near": str(tmp_path / "nowhere")})
