"""How a dataset is split over clients: the one declaration of the partition options and their
defaults. ``data.*`` in the run config (the synthetic default and a sweep's builds), the
``fedrs data build`` / ``synth`` flags, a sweep's ``[build]`` keys and the builder all take their
defaults from ``PartitionSpec``; the schemes themselves are in ``datasets/partition.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedrs.errors import PartitionError

SCHEMES = ("iid", "dirichlet", "pathological", "domain", "longtail", "spatial")
DIRICHLET_ALPHA = 0.5  # dirichlet / longtail when no alpha is given


@dataclass(frozen=True)
class PartitionSpec:
    """Validated partition parameters (the ``--partition`` family of build flags)."""

    scheme: str = "dirichlet"
    num_clients: int = 8
    seed: int = 0
    alpha: float | None = None  # dirichlet / longtail: DIRICHLET_ALPHA; domain: Dirichlet inside
    classes_per_client: int = 2  # pathological
    imbalance_factor: float = 10.0  # longtail (n_max / n_min)
    min_examples: int = 5  # the smallest training shard a client may get

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise PartitionError(f"unknown partition {self.scheme!r}; choose from {SCHEMES}")
        if self.num_clients < 1:
            raise PartitionError(f"--num-clients must be >= 1, got {self.num_clients}")
        if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise PartitionError(f"--alpha must be a positive number, got {self.alpha}")
        if self.classes_per_client < 1:
            raise PartitionError(
                f"--classes-per-client must be >= 1, got {self.classes_per_client}"
            )
        if not self.imbalance_factor >= 1:
            raise PartitionError(f"--imbalance-factor must be >= 1, got {self.imbalance_factor}")
        if self.min_examples < 1:
            raise PartitionError(f"--min-examples must be >= 1, got {self.min_examples}")

    @property
    def needs_labels(self) -> bool:
        return self.scheme in ("dirichlet", "pathological", "longtail")

    def as_dict(self) -> dict[str, object]:
        """What a manifest records: each option the scheme uses (None for the others)."""
        return {
            "scheme": self.scheme,
            "num_clients": self.num_clients,
            "alpha": self.effective_alpha,
            "classes_per_client": self.classes_per_client
            if self.scheme == "pathological"
            else None,
            "imbalance_factor": self.imbalance_factor if self.scheme == "longtail" else None,
            "min_examples": self.min_examples,
        }

    @property
    def effective_alpha(self) -> float | None:
        if self.scheme in ("dirichlet", "longtail"):
            return DIRICHLET_ALPHA if self.alpha is None else self.alpha
        return self.alpha if self.scheme == "domain" else None
