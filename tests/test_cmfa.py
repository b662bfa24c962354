"""CMFA's two readings: the literal diagonal InfoNCE (same-class rows are negatives) and the
class-masked one (`method.cmfa_positives="class"`), against the formula written by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fedrs.methods.fedrsclip import FedRSCLIPOptions, fedrsclip_loss
from fedrs.models.prompt import class_masked_info_nce, symmetric_info_nce


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def test_masked_positives_match_the_formula_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    a = _unit(torch.randn(5, 4, generator=g))
    classes = _unit(torch.randn(3, 4, generator=g))
    y = torch.tensor([0, 1, 0, 2, 1])
    b, s = classes[y], 2.5
    z = (s * a @ b.t()).tolist()
    same = [[y[i] == y[j] for j in range(5)] for i in range(5)]

    def side(m: list[list[float]]) -> float:
        out = 0.0
        for i in range(5):
            den = sum(math.exp(v) for v in m[i])
            num = sum(math.exp(m[i][j]) for j in range(5) if same[i][j])
            out -= math.log(num / den)
        return out / 5

    zt = [list(r) for r in zip(*z, strict=True)]
    want = 0.5 * (side(z) + side(zt))
    assert float(class_masked_info_nce(a, b, y, s)) == pytest.approx(want, rel=1e-5)
    # with repeated classes the diagonal reading differs (it pushes same-class pairs apart)
    assert float(symmetric_info_nce(a, b, s)) > want + 1e-3


def test_with_one_example_per_class_both_readings_agree() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = _unit(torch.randn(4, 8, generator=g)), _unit(torch.randn(4, 8, generator=g))
    y = torch.arange(4)
    assert float(class_masked_info_nce(a, b, y, 3.0)) == pytest.approx(
        float(symmetric_info_nce(a, b, 3.0)), rel=1e-6
    )


def test_the_option_selects_the_loss_and_is_validated() -> None:
    g = torch.Generator().manual_seed(2)
    img = _unit(torch.randn(6, 4, generator=g))
    ts, tp = _unit(torch.randn(3, 4, generator=g)), _unit(torch.randn(3, 4, generator=g))
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    inst = fedrsclip_loss(img, ts, tp, y, 2.0, 1.0, 0.5)
    cls = fedrsclip_loss(img, ts, tp, y, 2.0, 1.0, 0.5, cmfa_positives="class")
    assert float(inst["cmfa"]) == pytest.approx(float(symmetric_info_nce(img, ts[y], 2.0)))
    assert float(cls["cmfa"]) == pytest.approx(float(class_masked_info_nce(img, ts[y], y, 2.0)))
    assert float(inst["loss"] - cls["loss"]) == pytest.approx(
        0.5 * float(inst["cmfa"] - cls["cmfa"]), rel=1e-5
    )
    assert FedRSCLIPOptions(cmfa_positives="class").cmfa_positives == "class"
    with pytest.raises(Exception, match="cmfa_positives"):
        FedRSCLIPOptions(cmfa_positives="both")
