"""`fedrs pretrain` on a generated caption dataset, and loading its checkpoint back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_caption_dataset
from fedrs.datasets.builder import BuildSpec, build
from fedrs.datasets.partition import PartitionSpec
from fedrs.errors import DataError
from fedrs.models.backbone import load_backbone
from fedrs.models.pretrain import (
    PretrainConfig,
    clip_loss,
    image_captions,
    pretrain,
    retrieval_recall,
)


def _test_recall(cfg: PretrainConfig) -> dict[str, float]:
    """R@1 / R@5 of the saved checkpoint, loaded as a run loads it, on the test split."""
    from fedrs.datasets.manifest import FedDataset

    bb = load_backbone(cfg.arch, cfg.out)
    ds = FedDataset(cfg.data)
    test = ds.test_shard()
    caps = image_captions(ds, test, cfg.templates)
    return retrieval_recall(bb.model, bb.tokenizer, test.images, caps, bb.image_size)


def test_clip_loss_is_low_for_aligned_pairs() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 16)
    scale = torch.tensor(np.log(50.0))
    assert float(clip_loss(x, x, scale)) < 0.05
    assert float(clip_loss(x, torch.randn(6, 16), scale)) > 1.0


def test_pretrain_checkpoint_loads_as_model_pretrained(tmp_path: Path) -> None:
    caps = make_caption_dataset(tmp_path / "caps", n=30, n_test=12)
    build(
        BuildSpec(
            sources=(("caps", str(caps)),),
            out=str(tmp_path / "shards"),
            partition=PartitionSpec(scheme="iid", num_clients=1, min_examples=1),
            image_size=32,
            workers=1,
        )
    )
    out = tmp_path / "ckpt" / "tiny.pt"
    cfg = PretrainConfig(
        data=str(tmp_path / "shards"),
        out=str(out),
        arch="fedrs-tiny",
        epochs=3,
        batch_size=8,
        warmup_steps=1,
    )
    report = pretrain(cfg)
    assert len(report["history"]) == 3 and report["train_images"] == 18
    # the reported recall is the saved model's, on the 12 test images and their own captions
    assert report["test"] == _test_recall(cfg)
    assert json.loads(out.with_suffix(".json").read_text())["train_images"] == 18
    trained = torch.load(out, weights_only=True)["state_dict"]
    loaded = load_backbone("fedrs-tiny", str(out)).model.state_dict()
    random = load_backbone("fedrs-tiny").model.state_dict()
    for name in ("text_projection", "visual.proj", "logit_scale"):
        assert torch.equal(loaded[name], trained[name])
    assert not torch.equal(loaded["visual.proj"], random["visual.proj"])  # it did train


def test_pretrain_captions_a_classification_build_with_templates(
    tmp_path: Path, tiny_folder: Path
) -> None:
    """A scene-classification archive (here RSSCN7-like folders) pretrains through captions
    made from its class names; a template without '{}' is a one-line error."""
    from fedrs.datasets.manifest import FedDataset

    build(
        BuildSpec(
            sources=(("a", str(tiny_folder)),),
            out=str(tmp_path / "cls"),
            partition=PartitionSpec(scheme="iid", num_clients=1, min_examples=1),
            image_size=16,
            workers=1,
        )
    )
    ds = FedDataset(tmp_path / "cls")
    caps = image_captions(ds, ds.client(0), ("a photo of a {}.", "an aerial {}"))
    assert caps[0] == [
        f"a photo of a {ds.classes[ds.client(0).labels[0]]}.",
        f"an aerial {ds.classes[ds.client(0).labels[0]]}",
    ]
    cfg = PretrainConfig(
        data=str(tmp_path / "cls"),
        out=str(tmp_path / "x.pt"),
        arch="fedrs-tiny",
        epochs=1,
        batch_size=16,
        warmup_steps=1,
    )
    report = pretrain(cfg)
    assert report["train_images"] == ds.client(0).images.shape[0]
    assert report["test"] == _test_recall(cfg)  # with the templates' class captions
    with pytest.raises(DataError, match=r"needs a '\{\}'"):
        pretrain(
            PretrainConfig(
                data=str(tmp_path / "cls"), out=str(tmp_path / "y.pt"), templates=("no slot",)
            )
        )
