"""FedYogi (Reddi et al., 2021): an adaptive server step on FedAvg's pseudo-gradient,
Yogi's sign-controlled second moment."""

from __future__ import annotations

from fedrs.core.strategies.fedopt import Adaptive


class FedYogi(Adaptive):
    name = "fedyogi"
    summary = "server yogi step on the FedAvg delta (moments checkpointed)"
    kind = "yogi"
