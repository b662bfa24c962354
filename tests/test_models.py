"""Backbones (open_clip by name, tags, local checkpoints), the CoOp prompt learner, PromptFL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrs.core.config import RunConfig
from fedrs.datasets.manifest import FedDataset
from fedrs.errors import ConfigError
from fedrs.methods.base import FitOptions
from fedrs.methods.promptfl import CTX, PromptFL
from fedrs.models.backbone import load_backbone, model_config, save_checkpoint
from fedrs.models.prompt import PromptLearner

CHECKSUM = (
    "from fedrs.models.backbone import load_backbone; "
    "m = load_backbone('fedrs-tiny').model; "
    "print(repr(float(sum(p.double().sum() for p in m.parameters()))))"
)


def test_random_init_is_identical_in_every_process() -> None:
    here = float(sum(p.double().sum() for p in load_backbone("fedrs-tiny").model.parameters()))
    there = (
        subprocess.run([sys.executable, "-c", CHECKSUM], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    assert float(there) == here


def test_local_checkpoint_round_trip(tmp_path: Path) -> None:
    import open_clip

    model = open_clip.create_model("fedrs-tiny")
    with torch.no_grad():
        model.logit_scale.fill_(1.2345)
        model.text_projection.add_(0.5)
    path = tmp_path / "ckpt" / "tiny.pt"
    save_checkpoint(model, path)
    loaded = load_backbone("fedrs-tiny", str(path)).model
    assert float(loaded.logit_scale) == pytest.approx(1.2345)
    assert torch.equal(loaded.text_projection, model.text_projection)
    assert not any(p.requires_grad for p in loaded.parameters())  # frozen


def test_backbone_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown model\.arch 'ViT-Nope'"):
        model_config("ViT-Nope")
    with pytest.raises(ConfigError, match="checkpoint not found"):
        load_backbone("fedrs-tiny", str(tmp_path / "missing.pt"))
    with pytest.raises(
        ConfigError, match=r"neither a local checkpoint nor an open_clip tag.*openai"
    ):
        load_backbone("ViT-B-32", "not-a-tag")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot load fedrs-tiny weights"):
        load_backbone("fedrs-tiny", str(bad))
    assert model_config("ViT-B-16")["text_cfg"]["width"] == 512  # real configs, no weights


def test_prompt_learner_shapes() -> None:
    bb = load_backbone("fedrs-tiny")
    pl = PromptLearner(bb, ["forest", "parking lot", "river"], n_ctx=4)
    assert pl.ctx.shape == (4, bb.text_width)
    prompts = pl()
    assert prompts.shape == (3, 32, bb.text_width)  # fedrs-tiny context length 32
    # EOT sits after SOS + 4 context tokens + the class tokens + "."
    tokens = [len(bb.tokenizer.encode(c)) for c in ["forest", "parking lot", "river"]]
    assert pl.eot_index.tolist() == [1 + 4 + t + 1 for t in tokens]
    assert torch.equal(prompts[:, 1:5], pl.ctx.unsqueeze(0).expand(3, -1, -1))


def test_promptfl_sends_only_the_context_and_fedprox_pulls_back(synth_data: Path) -> None:
    ds = FedDataset(synth_data)
    method = PromptFL(RunConfig(), ds.classes)
    start = method.init_global(seed=0)
    assert list(start) == [CTX] and start[CTX].shape == (4, 64)

    def fit(mu: float) -> np.ndarray:
        opts = FitOptions(
            round=1, client_id=0, seed=0, epochs=3, batch_size=8, lr=0.05, proximal_mu=mu
        )
        out = method.fit(start, {}, ds.client(0), opts)
        assert list(out.params) == [CTX] and out.num_examples == len(ds.client(0))
        return out.params[CTX]

    free, prox = fit(0.0), fit(50.0)
    assert not np.allclose(free, start[CTX])
    assert np.linalg.norm(prox - start[CTX]) < 0.5 * np.linalg.norm(free - start[CTX])
    assert np.array_equal(fit(0.0), free)  # deterministic in (seed, round, client)
    ev = method.evaluate({CTX: free}, {}, ds.test_shard().images, ds.test_shard().labels)
    assert ev["n"] == len(ds.test_shard()) and 0 <= ev["correct"] <= ev["n"]


def test_text_tower_stops_at_the_last_eot_and_matches_the_full_sequence() -> None:
    from fedrs.models.prompt import PromptedCLIP

    backbone = load_backbone("fedrs-tiny")
    model = PromptedCLIP(backbone, PromptLearner(backbone, ["a", "bb b", "ccc c c c"], n_ctx=4))
    assert model.text_encoder.causal
    seen: list[int] = []
    hook = backbone.model.transformer.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].shape[1])
    )
    try:
        short = model.text_features()
        model.text_encoder.causal = False
        full = model.text_features()
    finally:
        hook.remove()
    context = backbone.model.positional_embedding.shape[0]
    assert seen == [int(model.prompt_learner.eot_index.max()) + 1, context]
    assert seen[0] < context
    torch.testing.assert_close(short, full, atol=1e-5, rtol=0)
    # tokens after a prompt's EOT are padding: the masked sequence equals CLIP's own encode_text
    tokens = backbone.tokenizer(["a satellite photo of a forest."])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(backbone.model.encode_text(tokens), dim=-1)
        emb = backbone.model.token_embedding(tokens)
        mine = model.text_encoder(emb, tokens.argmax(dim=-1))
    torch.testing.assert_close(torch.nn.functional.normalize(mine, dim=-1), ref, atol=1e-5, rtol=0)


def test_batch_first_attention_computes_open_clip_attention() -> None:
    """The backbone's blocks compute attention batch-first; forward outputs and the gradient
    that reaches FedRSCLIP's visual prompts equal open_clip's own MultiheadAttention path."""
    import copy

    from fedrs.models.backbone import use_batch_first_attention
    from fedrs.models.prompt import encode_image_prompted

    backbone = load_backbone("fedrs-tiny")
    blocks = [*backbone.model.visual.transformer.resblocks, *backbone.model.transformer.resblocks]
    assert all("attention" in vars(b) for b in blocks)  # load_backbone switched every block
    reference = copy.deepcopy(backbone.model)
    assert use_batch_first_attention(reference, enable=False) == 0
    assert not any("attention" in vars(b) for b in reference.modules())
    # deepcopy binds the copy's attention to the copy's own blocks
    clone = copy.deepcopy(backbone.model)
    assert clone.transformer.resblocks[0].attention.__self__ is clone.transformer.resblocks[0]

    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, backbone.image_size, backbone.image_size, generator=gen)
    tokens = backbone.tokenizer(["a satellite photo of a forest.", "an airport"])
    width = backbone.model.visual.transformer.width
    grads = []
    for model in (backbone.model, reference):
        with torch.no_grad():
            img, txt = model.encode_image(pixels), model.encode_text(tokens)
        prompts = torch.zeros(2, width).normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
        prompts.requires_grad_(True)
        view = type(backbone)(**{**vars(backbone), "model": model})
        encode_image_prompted(view, pixels, prompts).square().sum().backward()
        grads.append((img, txt, prompts.grad))
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_a_checkpoint_rewritten_in_place_is_loaded_again(tmp_path) -> None:
    """The per-process backbone cache (what warm actors keep between sweep trials) is keyed by
    the checkpoint's size and mtime too: ``fedrs pretrain`` writing the same path again gives
    the new weights, an unchanged file the cached model."""
    import os

    import open_clip
    import torch

    from fedrs.models.backbone import load_backbone, register_configs, save_checkpoint

    register_configs()
    path = tmp_path / "w.pt"
    torch.manual_seed(1)
    save_checkpoint(open_clip.create_model("fedrs-tiny"), path)
    first = load_backbone("fedrs-tiny", str(path))
    assert load_backbone("fedrs-tiny", str(path)) is first
    torch.manual_seed(2)
    save_checkpoint(open_clip.create_model("fedrs-tiny"), path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse clock: a new mtime
    second = load_backbone("fedrs-tiny", str(path))
    assert second is not first
    a, b = (next(x.model.parameters()) for x in (first, second))
    assert not torch.equal(a, b)
