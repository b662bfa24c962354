"""The FLOP-counting helpers of ``fedrs bench flops`` (no Ray, no timing assertions)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedrs.benchmarks.flopcount import FlopCount, count_flops, matmul_flops, summarize
from fedrs.benchmarks.flops import choose_steps


def test_matmul_flops() -> None:
    assert matmul_flops(2) == 16
    assert matmul_flops(1024) == 2 * 1024**3


def test_count_flops_splits_forward_and_backward() -> None:
    layer = nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64, requires_grad=True)
    with count_flops() as count:
        layer(x).sum().backward()
    mm = 2 * 8 * 64 * 32
    assert count.forward == mm
    assert count.backward == 2 * mm  # grad of the weight and grad of the input
    assert count.total == 3 * mm
    assert count.by_op == {"mm": 3 * mm}
    assert torch.autograd.backward.__name__ == "backward"  # restored
    assert torch.autograd.backward.__module__ == "torch.autograd"


def test_count_flops_frozen_weights_count_only_what_runs() -> None:
    """A frozen layer with a trainable input: the backward computes the input grad only."""
    layer = nn.Linear(16, 16, bias=True).requires_grad_(False)
    x = torch.randn(4, 16, requires_grad=True)
    with count_flops() as count:
        layer(x).sum().backward()
    mm = 2 * 4 * 16 * 16
    assert (count.forward, count.backward) == (mm, mm)
    with count_flops() as count, torch.no_grad():
        layer(x)
    assert isinstance(count, FlopCount)
    assert (count.forward, count.backward) == (mm, 0)


def test_choose_steps_and_summarize() -> None:
    assert choose_steps(step_s=0.1, max_steps=100, min_steps=2, min_fit_s=3.0) == 30
    assert choose_steps(step_s=10.0, max_steps=100, min_steps=2, min_fit_s=3.0) == 2
    assert choose_steps(step_s=0.1, max_steps=4, min_steps=2, min_fit_s=3.0) == 4
    assert summarize([3.0, 1.0, 2.0], "median") == 2.0
    assert summarize([3.0, 1.0, 2.0], "best") == 1.0


def test_batch_first_attention_matches_open_clip() -> None:
    """fedrs's attention is open_clip's (same weights, causal mask too), with the same FLOPs
    and no ``bmm`` against an expanded in-projection weight."""
    from open_clip.transformer import ResidualAttentionBlock

    from fedrs.models.backbone import use_batch_first_attention

    torch.manual_seed(0)
    block = ResidualAttentionBlock(32, 4).eval()
    x = torch.randn(3, 7, 32)
    mask = torch.full((7, 7), float("-inf")).triu_(1)
    for m in (None, mask):
        ref = block(x, attn_mask=m)
        assert use_batch_first_attention(block) == 1
        got = block(x, attn_mask=m)
        assert use_batch_first_attention(block, enable=False) == 0
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    with count_flops() as before:
        block(x)
    use_batch_first_attention(block)
    with count_flops() as after:
        block(x)
    assert after.total == before.total
    assert "bmm" not in after.by_op
    # dropout in the attention: not the same computation in training, so left to open_clip
    with_dropout = ResidualAttentionBlock(32, 4)
    with_dropout.attn.dropout = 0.1
    assert use_batch_first_attention(with_dropout) == 0


@pytest.mark.parametrize("threads", [1])
def test_measure_peak_shape(threads: int) -> None:
    from fedrs.benchmarks.flopcount import measure_peak

    saved = torch.get_num_threads()
    try:
        p = measure_peak(threads, (32, 64), repeats=2, min_s=0.0)
    finally:
        torch.set_num_threads(saved)
    assert p["threads"] == threads
    assert [s["n"] for s in p["sizes"]] == [32, 64]
    assert p["best_gflops"] >= p["median_gflops"] > 0


def test_count_flops_sees_the_fused_no_grad_attention() -> None:
    """``nn.MultiheadAttention`` in eval under no_grad runs one fused kernel (no FLOP formula in
    torch); its FLOPs must equal the unfused path's forward."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(3, 7, 32)
    with count_flops() as slow:  # grad enabled: the unfused path
        mha(x, x, x, need_weights=False)
    with count_flops() as fused, torch.no_grad():
        mha(x, x, x, need_weights=False)
    assert "_native_multi_head_attention" in fused.by_op
    assert "_native_multi_head_attention" not in slow.by_op
    assert fused.total == slow.forward > 0


def test_text_to_eot_matches_open_clip_encode_text() -> None:
    """The fullft_text experiment's text encoding equals open_clip's full-length one."""
    from fedrs.benchmarks.flops_client import _encode_text_to_eot, fullft_text_to_eot
    from fedrs.methods.fullft import FullFedAvg
    from fedrs.models.backbone import load_backbone
    from fedrs.models.prompt import class_prompts

    backbone = load_backbone("fedrs-tiny")
    tokens = class_prompts(backbone, ["forest", "dense residential"], "a photo of a {}.")
    with torch.no_grad():
        ref = backbone.model.encode_text(tokens)
        got = _encode_text_to_eot(backbone.model, tokens)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    original = FullFedAvg._logits
    with fullft_text_to_eot(None):
        assert FullFedAvg._logits is not original
    assert FullFedAvg._logits is original


def test_count_flops_attention_forward_and_backward_any_kernel() -> None:
    """``scaled_dot_product_attention`` counts ``Q K^T`` + ``A V`` forward and twice that
    backward, whichever kernel this torch picks on CPU (fused, or the math path of bmms)."""
    torch.manual_seed(0)
    b, h, length, source, d = 2, 3, 5, 6, 8
    q = torch.randn(b, h, length, d, requires_grad=True)
    k = torch.randn(b, h, source, d, requires_grad=True)
    v = torch.randn(b, h, source, d, requires_grad=True)
    with count_flops() as count:
        nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
    forward = 2 * b * h * length * source * (d + d)
    assert count.forward == forward
    assert count.backward == 2 * forward
