"""FedAdagrad (Reddi et al., 2021): an adaptive server step on FedAvg's pseudo-gradient,
Adagrad's summed squares."""

from __future__ import annotations

from fedrs.core.strategies.fedopt import Adaptive


class FedAdagrad(Adaptive):
    name = "fedadagrad"
    summary = "server adagrad step on the FedAvg delta (moments checkpointed)"
    kind = "adagrad"
