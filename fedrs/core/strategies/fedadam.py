"""FedAdam (Reddi et al., 2021): an adaptive server step on FedAvg's pseudo-gradient,
Adam's second moment."""

from __future__ import annotations

from fedrs.core.strategies.fedopt import Adaptive


class FedAdam(Adaptive):
    name = "fedadam"
    summary = "server adam step on the FedAvg delta (moments checkpointed)"
    kind = "adam"
