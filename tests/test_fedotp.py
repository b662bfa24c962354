"""FedOTP: the unbalanced transport plan and its marginals, logits whose gradient sees the plan
as a constant, patch features on the encoder's own path, and the global / local split of the
prompts (only the global one travels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import small_run
from fedrs.datasets.manifest import FedDataset
from fedrs.methods.base import FitOptions
from fedrs.methods.fedotp import (
    GLOBAL,
    LOCAL,
    FedOTP,
    FedOTPOptions,
    ot_logits,
    patch_tokens,
    transport_plan,
)


def _sim(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((3, 4, 9, 2), generator=gen) * 1.2 - 0.4  # (B, C, M, N) in [-0.4, 0.8)


def test_cot_moves_gamma_of_the_mass_and_no_patch_sends_more_than_its_own() -> None:
    o = FedOTPOptions(top_percent=0.8, thresh=1e-9, max_iter=500)
    plan = transport_plan(_sim(), o)
    m, n = plan.shape[-2:]
    assert torch.allclose(plan.sum(dim=-2), torch.full((3, 4, n), 0.8 / n), atol=1e-6)
    assert float(plan.sum(dim=-1).max()) <= 1 / m + 1e-7
    assert float(plan.sum(dim=-1).min()) < 0.9 / m  # some patches keep part of their mass
    balanced = transport_plan(_sim(), FedOTPOptions(ot="sinkhorn", thresh=1e-9, max_iter=500))
    assert torch.allclose(balanced.sum(dim=-1), torch.full((3, 4, m), 1 / m), atol=1e-5)
    assert torch.allclose(balanced.sum(dim=-2), torch.full((3, 4, n), 1 / n), atol=1e-6)


def test_partial_transport_leaves_the_unlike_patches_out() -> None:
    """Two patches like the prompt, two opposite: with gamma = 1/2 and a small eps the plan
    takes the whole mass of the like ones and nearly nothing from the others (a balanced plan
    must take every patch's mass)."""
    sim = torch.tensor([0.9, 0.9, -0.9, -0.9]).reshape(1, 4, 1)
    o = FedOTPOptions(top_percent=0.5, eps=0.05, thresh=1e-9, max_iter=1000)
    rows = transport_plan(sim, o).sum(dim=-1)[0]
    assert torch.allclose(rows[:2], torch.full((2,), 0.25), atol=1e-4)
    assert float(rows[2:].max()) < 1e-6
    rows = transport_plan(sim, FedOTPOptions(ot="sinkhorn", eps=0.05)).sum(dim=-1)[0]
    assert torch.allclose(rows, torch.full((4,), 0.25), atol=1e-4)


def test_logits_are_the_plan_weighted_similarity_and_the_plan_is_a_constant() -> None:
    gen = torch.Generator().manual_seed(1)
    patches = torch.nn.functional.normalize(torch.randn((2, 9, 8), generator=gen), dim=-1)
    text = torch.nn.functional.normalize(torch.randn((2, 3, 8), generator=gen), dim=-1)
    text.requires_grad_(True)
    o = FedOTPOptions()
    logits = ot_logits(patches, text, 10.0, o)
    sim = torch.einsum("bmd,ncd->bcmn", patches, text.detach())
    plan = transport_plan(sim, o)
    assert torch.allclose(logits, 10.0 * (plan * sim).sum(dim=(-1, -2)), atol=1e-6)
    # d logit[b, c] / d sim = 10 * plan: the gradient to the text is the plan-weighted patches
    logits[0, 1].backward()
    want = 10.0 * torch.einsum("mn,md->nd", plan[0, 1], patches[0])
    assert torch.allclose(text.grad[:, 1], want, atol=1e-5)
    assert not text.grad[:, [0, 2]].any()


def test_patch_tokens_follow_the_encoders_own_path(synth_data: Path) -> None:
    """The tokens come from the same forward as ``encode_image`` (its pooled output is the
    CLS of this path), one per patch, unit length."""
    ds = FedDataset(synth_data)
    method = FedOTP(small_run(synth_data, **{"method.name": "fedotp"}), ds.classes)
    bb = method.backbone
    pixels = bb.preprocess(ds.test_shard().images[:3])
    visual = bb.model.visual
    pooled, _ = visual._pool(visual.transformer(visual._embeds(pixels)))
    assert torch.allclose(pooled @ visual.proj, bb.model.encode_image(pixels), atol=1e-5)
    tokens = patch_tokens(bb, pixels)
    side = bb.image_size // visual.patch_size[0]
    assert tokens.shape == (3, side * side, bb.embed_dim)
    assert torch.allclose(tokens.norm(dim=-1), torch.ones(3, side * side), atol=1e-5)
    # the cache's flattened rows give back the same features
    flat = method.encode_images(ds.test_shard().images[:3])
    assert torch.allclose(method.patches(flat), tokens, atol=1e-6)


def test_only_the_global_prompt_travels_and_the_local_one_personalises(
    synth_data: Path,
) -> None:
    ds = FedDataset(synth_data)
    method = FedOTP(small_run(synth_data, **{"method.name": "fedotp"}), ds.classes)
    g = method.init_global(0)
    priv = [method.init_private(c, 0) for c in (0, 1)]
    assert np.array_equal(priv[0][LOCAL], priv[1][LOCAL])  # one start for every client
    assert not np.array_equal(priv[0][LOCAL], g[GLOBAL])
    opts = FitOptions(round=1, client_id=1, seed=0, epochs=2, batch_size=16, lr=0.05)
    out = method.fit(g, priv[1], ds.client(1), opts)
    assert list(out.params) == [GLOBAL] and list(out.private) == [LOCAL]
    assert not np.array_equal(out.private[LOCAL], priv[1][LOCAL])  # the local prompt learned
    assert not np.array_equal(out.params[GLOBAL], g[GLOBAL])
    local = ds.client_test(1)
    alone = method.evaluate(out.params, {}, local.images, local.labels)
    both = method.evaluate(out.params, out.private, local.images, local.labels)
    assert alone["loss_sum"] != pytest.approx(both["loss_sum"], rel=1e-6)  # N = 1 vs N = 2


def test_options_are_checked() -> None:
    from fedrs.errors import ConfigError

    for bad in ({"ot": "emd"}, {"eps": 0.0}, {"top_percent": 1.5}, {"max_iter": 0}):
        with pytest.raises(ConfigError):
            FedOTPOptions(**bad)
