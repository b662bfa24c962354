"""FLOP counting: ``count_flops`` (torch's ``FlopCounterMode`` plus formulas for the CPU
attention kernels it lacks). ``fedrs bench flops`` profiles with it; a run under
``[system]`` counts one training step with it to put a client's work on the virtual clock."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class FlopCount:
    """FLOPs ``FlopCounterMode`` saw, split into forward and backward (inside autograd)."""

    total: int = 0
    backward: int = 0
    by_op: dict[str, int] = field(default_factory=dict)

    @property
    def forward(self) -> int:
        return self.total - self.backward


def _op_name(op: Any) -> str:
    """``aten.mm`` / ``aten.mm.default`` -> ``mm``."""
    name = str(op)
    name = name.split(".", 1)[1] if name.startswith("aten.") else name
    return name.split(".")[0]


def _native_mha_flops(
    query: tuple[int, ...],
    key: tuple[int, ...],
    value: tuple[int, ...],
    embed_dim: int,
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """FLOPs of ``aten._native_multi_head_attention``, the fused kernel
    ``nn.MultiheadAttention`` runs without autograd (``torch.no_grad`` + ``eval``: a frozen
    encoder's forward). ``FlopCounterMode`` has no formula for it and would count zero: the
    q / k / v and output projections plus ``Q K^T`` and ``A V``, as for the unfused path."""
    batch = math.prod(query[:-2]) if len(query) > 2 else 1
    length, source = query[-2], key[-2]
    e = embed_dim
    projections = 2 * batch * (length + 2 * source) * e * e + 2 * batch * length * e * e
    return projections + 4 * batch * length * source * e


def _sdpa_cpu_flops(
    query: tuple[int, ...], key: tuple[int, ...], value: tuple[int, ...], *args: Any, **kwargs: Any
) -> int:
    """FLOPs of the CPU fused attention kernel ``_scaled_dot_product_flash_attention_for_cpu``
    on ``(B, H, L, d)`` inputs: ``Q K^T`` and ``A V``, as torch counts its CUDA kernels."""
    batch_heads, length, source = math.prod(query[:-2]), query[-2], key[-2]
    return 2 * batch_heads * length * source * (query[-1] + value[-1])


def _sdpa_cpu_backward_flops(
    grad_out: tuple[int, ...],
    query: tuple[int, ...],
    key: tuple[int, ...],
    value: tuple[int, ...],
    *args: Any,
    **kwargs: Any,
) -> int:
    """Its backward: ``dV = A^T dO``, ``dA = dO V^T``, ``dQ = dS K``, ``dK = dS^T Q``."""
    return 2 * _sdpa_cpu_flops(query, key, value)


def _extra_formulas() -> dict[Any, Any]:
    """FLOP formulas for the attention kernels ``FlopCounterMode`` may have none for. Which
    ones it knows moves between torch releases (2.14 has none for the CPU fused kernel that
    ``scaled_dot_product_attention`` and ``nn.MultiheadAttention`` run), so each is added only
    where this torch has the op and lacks a formula: torch's own formula wins where it exists."""
    from torch.utils import flop_counter

    known = getattr(flop_counter, "flop_registry", {})
    formulas = {
        "_native_multi_head_attention": _native_mha_flops,
        "_scaled_dot_product_flash_attention_for_cpu": _sdpa_cpu_flops,
        "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_cpu_backward_flops,
    }
    out = {}
    for name, formula in formulas.items():
        try:
            op = getattr(torch.ops.aten, name)
        except (AttributeError, RuntimeError):  # not in this torch
            continue
        if op not in known:
            out[op] = formula
    return out


@contextlib.contextmanager
def count_flops() -> Iterator[FlopCount]:
    """Count the FLOPs of everything run inside (matmuls, convolutions, attention: the ops
    ``torch.utils.flop_counter`` knows, plus the fused no-grad ``nn.MultiheadAttention``
    kernel; elementwise ops count zero). The FLOPs executed while ``torch.autograd.backward``
    runs (``loss.backward()`` calls it) are the backward share."""
    from torch.utils.flop_counter import FlopCounterMode

    result = FlopCount()
    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    original = torch.autograd.backward

    def backward(*args: Any, **kwargs: Any) -> Any:
        before = counter.get_total_flops()
        try:
            return original(*args, **kwargs)
        finally:
            result.backward += counter.get_total_flops() - before

    torch.autograd.backward = backward  # type: ignore[assignment]
    try:
        with counter:
            yield result
    finally:
        torch.autograd.backward = original  # type: ignore[assignment]
        result.total = counter.get_total_flops()
        for op, flops in counter.get_flop_counts().get("Global", {}).items():
            name = _op_name(op)
            result.by_op[name] = result.by_op.get(name, 0) + int(flops)
