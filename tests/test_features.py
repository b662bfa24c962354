"""The frozen-feature cache: stored beside the shard, keyed, invalidated, same results."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fedrs.core.config import RunConfig
from fedrs.datasets import features as feat
from fedrs.datasets.features import FeatureCache, FeatureShard, feature_key, feature_path
from fedrs.datasets.manifest import FedDataset
from fedrs.methods.base import FitOptions
from fedrs.methods.promptfl import PromptFL
from fedrs.methods.zeroshot import ZeroShot
from fedrs.models.backbone import load_backbone, save_checkpoint

QUIET = Console(file=io.StringIO())


@pytest.fixture
def data(synth_data: Path, tmp_path: Path) -> FedDataset:
    """A private copy of the session's synthetic build (these tests write features into it)."""
    shutil.copytree(synth_data, tmp_path / "d", ignore=shutil.ignore_patterns("features-*"))
    return FedDataset(tmp_path / "d")


def _method(data: FedDataset, **sets: object) -> PromptFL:
    return PromptFL(RunConfig().replace(**sets), data.classes)


def _opts(**kw: object) -> FitOptions:
    base = dict(round=1, client_id=0, seed=0, epochs=2, batch_size=4, lr=0.01)
    return FitOptions(**{**base, **kw})  # type: ignore[arg-type]


def test_features_are_stored_beside_the_shard_and_read_back(data: FedDataset) -> None:
    method = _method(data)
    key = feature_key(method.feature_identity())
    entry = data.clients[0].train
    cache = FeatureCache(data, key, method.encode_images)
    view = cache.view(entry)
    path = feature_path(data.root, entry, key)
    assert path.parent.parent == (data.root / entry.shard).parent  # beside the shard
    assert path.is_file() and cache.computed == 1
    direct = method.encode_images(np.array(data.client(0).images))
    np.testing.assert_allclose(view.features, direct, atol=1e-5)
    np.testing.assert_array_equal(view.labels, data.client(0).labels)
    np.testing.assert_allclose(np.linalg.norm(view.features, axis=1), 1.0, atol=1e-5)
    # another process (a fresh cache object) reads the file instead of encoding again
    again = FeatureCache(FedDataset(data.root), key, method.encode_images)
    np.testing.assert_array_equal(again.view(entry).features, view.features)
    assert again.computed == 0


def test_damaged_or_foreign_feature_files_are_recomputed(data: FedDataset) -> None:
    method = _method(data)
    key = feature_key(method.feature_identity())
    entry = data.clients[1].train
    FeatureCache(data, key, method.encode_images).view(entry)
    path = feature_path(data.root, entry, key)
    good = path.read_bytes()

    path.write_bytes(good[: len(good) // 2])  # truncated
    cache = FeatureCache(FedDataset(data.root), key, method.encode_images)
    view = cache.view(entry)
    assert (cache.computed, cache.recomputed) == (1, 1)
    assert path.read_bytes() == good and view.features.shape[0] == entry.num_examples

    # a file written for another shard's content (sha256 recorded in it) is not trusted
    feat.write_features(path, np.ones((entry.num_examples, 64), np.float32), key, "0" * 64)
    cache = FeatureCache(FedDataset(data.root), key, method.encode_images)
    assert not np.allclose(cache.view(entry).features, 1.0)
    assert cache.recomputed == 1


def test_key_changes_with_weights_and_preprocessing(data: FedDataset, tmp_path: Path) -> None:
    random_init = load_backbone("fedrs-tiny").identity()
    ckpt = tmp_path / "w.pt"
    save_checkpoint(load_backbone("fedrs-tiny").model, ckpt)
    from_ckpt = load_backbone("fedrs-tiny", str(ckpt)).identity()
    assert feature_key(random_init) != feature_key(from_ckpt)
    os.utime(ckpt, ns=(1, 1))  # the checkpoint file changed
    assert feature_key(load_backbone("fedrs-tiny", str(ckpt)).identity()) != feature_key(from_ckpt)
    resized = json.loads(json.dumps(random_init))
    resized["preprocess"]["size"] = 32
    assert feature_key(resized) != feature_key(random_init)
    assert feature_key(load_backbone("fedrs-small").identity()) != feature_key(random_init)


def test_unwritable_dataset_keeps_features_in_memory(
    data: FedDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kw: object) -> None:
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(feat, "write_features", refuse)
    method = _method(data)
    cache = FeatureCache(data, feature_key(method.feature_identity()), method.encode_images)
    assert cache.view(data.clients[0].train).features.shape[0] == data.clients[0].train.num_examples
    cache.view(data.clients[0].train)
    assert cache.computed == 1  # computed once, then kept in memory
    assert cache.view(data.clients[2].train).features.shape[0] > 0 and not cache._writable


def test_cached_training_and_evaluation_match_uncached(data: FedDataset) -> None:
    method = _method(data)
    cache = FeatureCache(data, feature_key(method.feature_identity()), method.encode_images)
    glob = method.init_global(0)
    shard = data.client(2)
    plain = method.fit(glob, {}, shard, _opts())
    cached = method.fit(glob, {}, cache.view(data.clients[2].train), _opts())
    np.testing.assert_allclose(cached.params["prompt.ctx"], plain.params["prompt.ctx"], atol=1e-5)
    assert cached.metrics["train_accuracy"] == plain.metrics["train_accuracy"]
    test = cache.view(data.test)
    a = method.evaluate(plain.params, {}, data.test_shard().images, data.test_shard().labels)
    b = method.evaluate(plain.params, {}, test.inputs, test.labels)
    assert a["correct"] == b["correct"] and a["loss_sum"] == pytest.approx(b["loss_sum"], rel=1e-5)
    zs = ZeroShot(RunConfig().replace(**{"method.name": "zeroshot"}), data.classes)
    assert (
        zs.evaluate({}, {}, test.inputs, test.labels)["correct"]
        == zs.evaluate({}, {}, data.test_shard().images, data.test_shard().labels)["correct"]
    )


def test_empty_shard_views_as_empty(data: FedDataset) -> None:
    from fedrs.datasets.manifest import ShardEntry
    from fedrs.datasets.shards import write_shard

    meta = write_shard(
        data.root / "empty.arrow",
        np.zeros((0, 32, 32, 3), np.uint8),
        np.zeros(0),
        np.zeros(0),
        [],
        [],
    )
    entry = ShardEntry("empty.arrow", 0, int(meta["bytes"]), str(meta["sha256"]))
    method = _method(data)
    cache = FeatureCache(data, "k", method.encode_images)
    view = cache.view(entry)
    assert len(view) == 0 and len(view.inputs) == 0
    assert method.evaluate(method.init_global(0), {}, view.inputs, view.labels)["n"] == 0


@pytest.mark.usefixtures("ray_cluster")
def test_federated_run_with_cache_matches_run_without(synth_data: Path, tmp_path: Path) -> None:
    from fedrs.orchestrator import checkpoint
    from fedrs.orchestrator.runner import run

    root = tmp_path / "d"
    shutil.copytree(synth_data, root, ignore=shutil.ignore_patterns("features-*"))
    cfg = RunConfig().replace(
        **{
            "data.path": str(root),
            "federation.rounds": 2,
            "federation.clients_per_round": 4,
            "client.local_epochs": 1,
        }
    )
    on = run(cfg, out=str(tmp_path / "on"), console=QUIET)
    off = run(
        cfg.replace(**{"data.feature_cache": False}), out=str(tmp_path / "off"), console=QUIET
    )
    assert list(root.glob("shards-*/features-*/*.arrow"))  # the cache was used
    assert on["final"]["accuracy"] == off["final"]["accuracy"]
    assert on["final"]["personalized_accuracy"] == pytest.approx(
        off["final"]["personalized_accuracy"], abs=1e-9
    )
    ctx_on = checkpoint.load(tmp_path / "on")[1]["prompt.ctx"]
    ctx_off = checkpoint.load(tmp_path / "off")[1]["prompt.ctx"]
    np.testing.assert_allclose(ctx_on, ctx_off, atol=1e-5)
    feats, labels = np.ones((3, 4), np.float32), np.arange(3)
    shard = FeatureShard(feats, labels)
    assert shard.inputs is feats and len(shard) == 3  # embeddings stand in for pixels as they are


def test_worker_data_path_does_not_import_pandas(data: FedDataset) -> None:
    """Opening shards and writing / reading feature files stays off pyarrow's pandas shims
    (importing pandas costs ~0.5 s in every fresh actor, inside its first round)."""
    import subprocess
    import sys

    code = f"""
import sys
import numpy as np
from fedrs.datasets.features import FeatureCache
from fedrs.datasets.manifest import FedDataset
data = FedDataset({str(data.root)!r})
encode = lambda images: np.ones((len(images), 8), dtype=np.float32)
cache = FeatureCache(data, "k", encode)
for c in data.clients:
    shard = data.open_shard(c.train)
    assert shard.labels.dtype == np.int64 and len(shard.ids) == len(shard)
    assert cache.view(c.train).features.shape == (len(shard), 8)
again = FeatureCache(FedDataset({str(data.root)!r}), "k", encode)
again.view(data.clients[0].train)
assert cache.computed == len(data.clients) and again.computed == 0
assert "pandas" not in sys.modules, "pandas was imported"
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_cached_array_can_sit_beside_the_pixels(synth_data: Path, tmp_path: Path) -> None:
    """``InputCache(replaces_inputs=False)`` (a distilling method's teacher outputs): the
    shard keeps its pixels and labels and gains ``cached``, computed once and then read back."""
    import shutil

    from fedrs.datasets.features import CachedShard
    from fedrs.methods.base import InputCache

    data_dir = tmp_path / "d"
    shutil.copytree(synth_data, data_dir)
    data = FedDataset(data_dir)
    calls = []

    def teacher(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return images.reshape(len(images), -1)[:, :3].astype(np.float32)

    spec = InputCache({"teacher": "toy"}, teacher, replaces_inputs=False)
    cache = FeatureCache(data, feature_key(spec.identity), spec.compute)
    view = cache.view(data.clients[1].train, replace_inputs=spec.replaces_inputs)
    assert isinstance(view, CachedShard) and len(view) == data.clients[1].train.num_examples
    assert view.images.shape[0] == view.cached.shape[0] and view.cached.shape[1] == 3
    np.testing.assert_array_equal(view.labels, data.client(1).labels)
    np.testing.assert_array_equal(view.cached, teacher(np.asarray(view.images)))
    again = FeatureCache(FedDataset(data_dir), feature_key(spec.identity), spec.compute)
    n = len(calls)
    np.testing.assert_array_equal(again.view(data.clients[1].train, False).cached, view.cached)
    assert len(calls) == n and again.computed == 0  # read from the file, not recomputed
