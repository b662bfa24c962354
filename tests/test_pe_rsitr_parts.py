"""PE-RSITR's parts (METHODS.md section 2): MRS-Adapter size and placement, HMMC, R@K."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedrs.core.metrics import recall_at_k, retrieval_ranks
from fedrs.models.adapter import AdaptedCLIP, MRSAdapter, hmmc_loss, mrs_adapter_params


def test_adapter_size_from_the_vit_b_32_config() -> None:
    from fedrs.models.backbone import model_config

    cfg = model_config("ViT-B-32")  # no weights built
    text, vision = cfg["text_cfg"]["width"], cfg["vision_cfg"]["width"]
    assert (text, vision) == (512, 768)
    assert mrs_adapter_params(text, vision) == 161_088
    adapter = MRSAdapter(text, vision)
    assert sum(p.numel() for p in adapter.parameters()) == 161_088


def test_adapter_initialisation() -> None:
    gen = torch.Generator().manual_seed(0)
    adapter = MRSAdapter(96, 128)
    adapter.reset_parameters(gen)
    for m in ("text", "vision"):
        down = adapter.down[m].weight
        bound = 1 / math.sqrt(down.shape[1])
        assert down.abs().max() <= bound and down.abs().max() > 0.5 * bound
        assert not adapter.down[m].bias.any() and not adapter.up[m].weight.any()
    assert not adapter.shared.weight.any()
    x = torch.randn(3, 5, 96)
    out = adapter(x, "text")
    assert out.shape == (3, 5, 96) and not out.any()  # a fresh adapter adds exactly zero


@pytest.fixture(scope="module")
def tiny_clip() -> torch.nn.Module:
    from fedrs.models.backbone import load_backbone

    return load_backbone("fedrs-tiny").model


def _inputs(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    import open_clip

    gen = torch.Generator().manual_seed(1)
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    pixels = torch.randn(2, 3, size, size, generator=gen)
    tokens = open_clip.get_tokenizer("fedrs-tiny")(["a river", "dense residential area"])
    return pixels, tokens


def test_zero_adapter_gives_the_frozen_embeddings(tiny_clip: torch.nn.Module) -> None:
    pixels, tokens = _inputs(tiny_clip)
    text_w = tiny_clip.ln_final.weight.shape[0]
    vision_w = tiny_clip.visual.ln_pre.weight.shape[0]
    adapted = AdaptedCLIP(tiny_clip, MRSAdapter(text_w, vision_w, bottleneck=16)).eval()
    with torch.no_grad():
        ref_i, ref_t = tiny_clip.encode_image(pixels), tiny_clip.encode_text(tokens)
        torch.testing.assert_close(adapted.encode_image(pixels), ref_i, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(adapted.encode_text(tokens), ref_t, atol=1e-5, rtol=1e-5)
    # a trained adapter moves both embeddings; the resident model is untouched
    with torch.no_grad():
        for p in adapted.adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
        assert not torch.allclose(adapted.encode_image(pixels), ref_i, atol=1e-4)
        assert not torch.allclose(adapted.encode_text(tokens), ref_t, atol=1e-4)
        torch.testing.assert_close(tiny_clip.encode_image(pixels), ref_i)
        torch.testing.assert_close(tiny_clip.encode_text(tokens), ref_t)


def test_views_differ_and_only_the_adapter_gets_gradients(tiny_clip: torch.nn.Module) -> None:
    pixels, tokens = _inputs(tiny_clip)
    text_w = tiny_clip.ln_final.weight.shape[0]
    vision_w = tiny_clip.visual.ln_pre.weight.shape[0]
    adapter = MRSAdapter(text_w, vision_w, bottleneck=16)
    for p in adapter.up.parameters():  # as after some training: up-projections not zero
        torch.nn.init.normal_(p, std=0.02)
    adapted = AdaptedCLIP(tiny_clip.requires_grad_(False), adapter).train()
    torch.manual_seed(0)
    img, txt, img_aug, txt_aug = adapted.embeddings(pixels, tokens, views=True)
    assert not torch.allclose(img, img_aug) and not torch.allclose(txt, txt_aug)
    loss, terms = hmmc_loss(img, txt, img_aug, txt_aug, scale=10.0, lam=0.5)
    loss.backward()
    assert set(terms) == {"l_cm", "l_v", "l_t"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.down.parameters())
    assert all(p.grad is None for p in tiny_clip.parameters())


def test_hmmc_against_hand_computed_values() -> None:
    e = torch.eye(2)
    rot = torch.tensor([[0.6, 0.8], [0.8, 0.6]])  # unit rows
    # L_cm: logits = s I; each CE = log(1 + e^-s)
    s = 2.0
    l_cm = math.log(1 + math.exp(-s))
    # L_v = L_t: logits = s * e @ rot.T = s * [[.6, .8], [.8, .6]], CE per row =
    # -log(e^{.6 s} / (e^{.6 s} + e^{.8 s})) = log(1 + e^{.2 s}); the transpose is the same
    l_view = math.log(1 + math.exp(0.2 * s))
    loss, terms = hmmc_loss(e, e, rot, rot, scale=s, lam=0.5)
    assert terms["l_cm"] == pytest.approx(l_cm, rel=1e-6)
    assert terms["l_v"] == pytest.approx(l_view, rel=1e-6) == terms["l_t"]
    assert float(loss) == pytest.approx(l_cm + 0.5 * 2 * l_view, rel=1e-6)
    only, terms = hmmc_loss(e, e, rot, rot, scale=s, lam=0.0)  # the ablation: L_cm alone
    assert float(only) == pytest.approx(l_cm, rel=1e-6) and set(terms) == {"l_cm"}


def test_recall_at_k_five_captions_per_image_with_ties() -> None:
    n_img, per = 4, 5
    caption_image = np.repeat(np.arange(n_img), per)
    sim = np.zeros((n_img, n_img * per))
    # image 0: its caption 3 is the best of all -> i2t rank 0
    sim[0, 3] = 1.0
    # image 1: its best caption (0.5) is beaten by two foreign ones (0.9, 0.7) -> rank 2
    sim[1, 5:10] = [0.1, 0.5, 0.2, 0.0, 0.0]
    sim[1, [0, 12]] = [0.9, 0.7]
    # image 2: a foreign caption TIES its best (0.4): ties count against -> rank 1
    sim[2, 10] = 0.4
    sim[2, 19] = 0.4
    # image 3: all zeros, 15 foreign captions tie at 0 -> rank 15
    i2t, t2i = retrieval_ranks(sim, caption_image)
    assert i2t.tolist() == [0, 2, 1, 15]
    # caption 3 (image 0) scores 1.0 on image 0, 0 elsewhere -> t2i rank 0
    # caption 6 (image 1) scores 0.5 on image 1 and 0 elsewhere -> rank 0
    # caption 0 (image 0) scores 0 on image 0 but 0.9 on image 1 (+ ties at 0) -> rank 3
    assert t2i[3] == 0 and t2i[6] == 0 and t2i[0] == 3
    r = recall_at_k(sim, caption_image)
    assert r["i2t_r1"] == 25.0 and r["i2t_r5"] == 75.0 and r["i2t_r10"] == 75.0
    assert r["t2i_r1"] == pytest.approx(100 * np.mean(t2i < 1))
    assert r["mR"] == pytest.approx(np.mean([r[k] for k in r if k != "mR"]))
    # a perfect matrix is 100 everywhere; a constant one earns nothing at K=1
    perfect = np.where(caption_image[None, :] == np.arange(n_img)[:, None], 1.0, 0.0)
    assert recall_at_k(perfect, caption_image)["mR"] == 100.0
    assert recall_at_k(np.ones_like(sim), caption_image)["i2t_r1"] == 0.0
    with pytest.raises(ValueError, match="every image needs"):
        retrieval_ranks(np.zeros((5, 20)), caption_image)
