"""Partition schemes: pure functions from labels / domains to per-client index arrays.

IID, Dirichlet and pathological splits reuse flwr-datasets' partitioners (run over a tiny
in-memory table of labels and row ids); domain-as-client and the CLIP2FL long-tailed profile
are built on top of them. Every function is deterministic in its seed.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from fedrs.core.partition import SCHEMES, PartitionSpec  # noqa: F401  (the one declaration)
from fedrs.errors import PartitionError

log = logging.getLogger(__name__)


def _flwr_split(partitioner: object, labels: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Run a flwr-datasets partitioner over ``labels`` and return row indices per partition."""
    import datasets  # Hugging Face datasets, as flwr-datasets expects

    table = datasets.Dataset.from_dict(
        {"label": labels.astype(np.int64), "row": np.arange(len(labels))}
    )
    partitioner.dataset = table  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # retries and unused-class notices; we check results
        return [
            np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64)  # type: ignore[attr-defined]
            for i in range(num_clients)
        ]


def iid(n: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle then cut into ``num_clients`` near-equal parts (flwr IidPartitioner)."""
    from flwr_datasets.partitioner import IidPartitioner

    perm = np.random.default_rng(seed).permutation(n)
    parts = _flwr_split(IidPartitioner(num_partitions=num_clients), np.zeros(n), num_clients)
    return [np.sort(perm[p]) for p in parts]


def dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_examples: int
) -> list[np.ndarray]:
    """Label skew: each class's examples split over clients by proportions ~ Dir(alpha)."""
    from flwr_datasets.partitioner import DirichletPartitioner

    part = DirichletPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        alpha=float(alpha),
        min_partition_size=min_examples,
        self_balancing=False,
        shuffle=False,
        seed=seed,
    )
    try:
        parts = _flwr_split(part, labels, num_clients)
    except ValueError:
        raise PartitionError(
            f"Dirichlet(alpha={alpha}) could not give each of {num_clients} clients at least "
            f"{min_examples} of {len(labels)} examples in 10 draws: use fewer clients, a larger "
            f"--alpha, or a lower --min-examples"
        ) from None
    return [np.sort(p) for p in parts]


def pathological(labels: np.ndarray, num_clients: int, k: int, seed: int) -> list[np.ndarray]:
    """Exactly ``k`` classes per client (flwr PathologicalPartitioner, first class in turn)."""
    from flwr_datasets.partitioner import PathologicalPartitioner

    num_classes = len(np.unique(labels))
    if k > num_classes:
        raise PartitionError(f"--classes-per-client {k} exceeds the {num_classes} classes present")
    part = PathologicalPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        num_classes_per_partition=k,
        class_assignment_mode="first-deterministic",
        shuffle=False,
        seed=seed,
    )
    parts = [np.sort(p) for p in _flwr_split(part, labels, num_clients)]
    for cid, p in enumerate(parts):
        got = len(np.unique(labels[p]))
        if got != k:
            raise PartitionError(
                f"pathological: client {cid} would hold {got} classes, not {k}: a class has "
                f"fewer examples than the clients sharing it; use fewer clients or a larger K"
            )
    return parts


def longtail_keep(labels: np.ndarray, imbalance_factor: float, seed: int) -> np.ndarray:
    """Indices kept under the profile n_c = n_max * IF^(-c / (C - 1)) (CLIP2FL / CReFF).

    Class c is the c-th class in label order; a class with fewer examples than its quota keeps
    all of them. The subsample inside each class is random in ``seed``.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    counts = np.array([(labels == c).sum() for c in classes])
    n_max = counts.max()
    denom = max(len(classes) - 1, 1)
    keep: list[np.ndarray] = []
    for rank, c in enumerate(classes):
        quota = max(1, int(n_max * imbalance_factor ** (-rank / denom)))
        idx = np.flatnonzero(labels == c)
        keep.append(np.sort(rng.choice(idx, size=min(quota, len(idx)), replace=False)))
    return np.sort(np.concatenate(keep))


def _cuts(values: np.ndarray, parts: int) -> np.ndarray:
    """Group index (0..parts-1) of each value: contiguous value ranges with near-equal counts
    (equal values always share a group, so the ranges are disjoint)."""
    order = np.sort(values)
    bounds = order[(np.arange(1, parts) * len(values)) // parts] if len(values) else []
    return np.searchsorted(np.asarray(bounds), values, side="right")


def spatial(coords: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Disjoint rectangular regions of a scene as clients: columns cut into ``gx`` strips, each
    strip's rows into ``gy`` (``gx * gy = num_clients``, as square as the number allows), every
    cut at a quantile so the regions hold near-equal numbers of pixels. ``coords`` is
    ``(n, 2)`` (row, column)."""
    gx = max(d for d in range(1, int(num_clients**0.5) + 1) if num_clients % d == 0)
    gy = num_clients // gx
    strip = _cuts(coords[:, 1], gx)
    parts: list[np.ndarray] = []
    for s in range(gx):
        idx = np.flatnonzero(strip == s)
        band = _cuts(coords[idx, 0], gy)
        parts.extend(np.sort(idx[band == b]) for b in range(gy))
    return parts


def _allocate(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` clients over groups proportionally to ``sizes`` (>= 1 each)."""
    if total < len(sizes):
        raise PartitionError(
            f"--partition domain needs at least one client per source: {len(sizes)} sources, "
            f"{total} clients"
        )
    share = sizes / sizes.sum() * (total - len(sizes))
    alloc = 1 + np.floor(share).astype(int)
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    alloc[order[: total - alloc.sum()]] += 1
    return alloc


def partition(
    spec: PartitionSpec,
    labels: np.ndarray | None,
    domains: np.ndarray,
    coords: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Split rows ``0..len(domains)-1`` into ``spec.num_clients`` index arrays.

    Rows in no array were dropped on purpose (long-tail subsampling, classes a pathological
    split assigns to nobody). ``labels`` is None for caption data (only iid / domain apply);
    ``coords`` ``(n, 2)`` pixel positions of a scene (``spatial`` needs them).
    Raises PartitionError when a client would get fewer than ``spec.min_examples`` rows.
    """
    n = len(domains)
    if spec.needs_labels and labels is None:
        raise PartitionError(f"--partition {spec.scheme} needs class labels; caption data has none")
    if spec.num_clients * spec.min_examples > n:
        raise PartitionError(
            f"too many clients: {spec.num_clients} clients x --min-examples {spec.min_examples} "
            f"needs {spec.num_clients * spec.min_examples} training examples, only {n} available"
        )
    alpha = spec.effective_alpha
    if spec.scheme == "spatial":
        if coords is None:
            raise PartitionError(
                "--partition spatial needs pixel positions: a scene (.mat rasters or "
                "`fedrs data synth --multimodal`), not images or a pixel table"
            )
        parts = spatial(coords, spec.num_clients)
    elif spec.scheme == "iid":
        parts = iid(n, spec.num_clients, spec.seed)
    elif spec.scheme == "dirichlet":
        assert labels is not None and alpha is not None
        parts = dirichlet(labels, spec.num_clients, alpha, spec.seed, spec.min_examples)
    elif spec.scheme == "pathological":
        assert labels is not None
        parts = pathological(labels, spec.num_clients, spec.classes_per_client, spec.seed)
    elif spec.scheme == "longtail":
        assert labels is not None and alpha is not None
        keep = longtail_keep(labels, spec.imbalance_factor, spec.seed)
        if spec.num_clients * spec.min_examples > len(keep):
            raise PartitionError(
                f"too many clients: the long-tailed profile (IF={spec.imbalance_factor}) keeps "
                f"{len(keep)} examples, fewer than {spec.num_clients} x {spec.min_examples}"
            )
        sub = dirichlet(labels[keep], spec.num_clients, alpha, spec.seed, spec.min_examples)
        parts = [keep[s] for s in sub]
    else:  # domain: each source split over its own clients
        names, inverse = np.unique(domains, return_inverse=True)
        alloc = _allocate(np.bincount(inverse).astype(float), spec.num_clients)
        parts = []
        for d, n_clients in enumerate(alloc):
            rows = np.flatnonzero(inverse == d)
            if alpha is None or labels is None:
                sub = iid(len(rows), int(n_clients), spec.seed + d)
            else:
                sub = dirichlet(
                    labels[rows], int(n_clients), alpha, spec.seed + d, spec.min_examples
                )
            parts.extend(rows[s] for s in sub)
        log.info("domain partition: %s", dict(zip(names.tolist(), alloc.tolist(), strict=True)))
    for cid, p in enumerate(parts):
        if len(p) < spec.min_examples:
            raise PartitionError(
                f"client {cid} would get {len(p)} training examples, fewer than --min-examples "
                f"{spec.min_examples} ({spec.scheme}, {spec.num_clients} clients over {n}): use "
                f"fewer clients or lower --min-examples"
            )
    return parts
