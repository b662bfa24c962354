"""``fedrs bench allocator`` at a tiny size: four trainer processes, every condition timed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from fedrs.benchmarks import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_allocator_benchmark_times_every_condition(tmp_path: Path) -> None:
    out = tmp_path / "alloc.json"
    result = allocator.main(
        json_path=str(out),
        arch="fedrs-tiny",
        image_size=64,
        per_class=6,
        cycles=2,
        block=1,
    )
    assert result["tuning_applied"] == {"d1": False, "d2": False, "t1": True, "t2": True}
    fits = {r["condition"]: r["fits"] for r in result["rows"]}
    # 2 cycles x 1 fit per process: one process alone, both processes of a pair
    assert fits == {"default alone": 2, "tuned alone": 2, "default pair": 4, "tuned pair": 4}
    med = {r["condition"]: r["fit_ms_median"] for r in result["rows"]}
    assert result["ratio"] == pytest.approx(med["default pair"] / med["tuned pair"], abs=1e-3)
    assert all(math.isfinite(v) and v > 0 for v in med.values())
    assert json.loads(out.read_text())["ratio"] == result["ratio"]
    assert Path(result["plot"]).is_file() and Path(result["plot"]).suffix == ".png"


def test_allocator_benchmark_rejects_empty_plans() -> None:
    with pytest.raises(ValueError, match="cycles and block"):
        allocator.run(cycles=0)
