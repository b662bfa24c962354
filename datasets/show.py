"""``fedrs data show``: per-client class histograms in the terminal and a PNG heatmap."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fedrs.datasets.manifest import FedDataset
from fedrs.io import write_bytes

_BLOCKS = " ▁▂▃▄▅▆▇█"
HEATMAP = "partition.png"


def class_matrix(ds: FedDataset) -> np.ndarray:
    """``(clients, classes)`` training counts from the manifest."""
    if not ds.classes:
        return np.zeros((ds.num_clients, 0), dtype=np.int64)
    return np.array([c.train.class_counts for c in ds.clients], dtype=np.int64)


def sparkline(counts: np.ndarray) -> str:
    """One block character per class, height proportional to the client's count."""
    top = counts.max() if counts.size and counts.max() > 0 else 1
    return "".join(_BLOCKS[int(np.ceil(c / top * (len(_BLOCKS) - 1)))] for c in counts)


def render_table(ds: FedDataset, console: Console) -> None:
    m = class_matrix(ds)
    part = ds.manifest["partition"]
    title = (
        f"{ds.root}: {ds.num_clients} clients, {len(ds.classes)} classes, "
        f"partition={part['scheme']}" + (f" alpha={part['alpha']}" if part.get("alpha") else "")
    )
    console.print(title)
    table = Table(show_lines=False)
    for col, just in (
        ("client", "right"),
        ("train", "right"),
        ("local test", "right"),
        ("classes", "right"),
        ("class histogram", "left"),
        ("domains", "left"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for c, row in zip(ds.clients, m if m.size else [np.zeros(0)] * ds.num_clients, strict=True):
        doms = ", ".join(f"{k}:{v}" for k, v in c.domain_counts.items())
        table.add_row(
            str(c.id),
            str(c.train.num_examples),
            str(c.local_test.num_examples),
            str(int((row > 0).sum())),
            sparkline(row),
            doms,
        )
    console.print(table)
    console.print(
        f"global test: {ds.test.num_examples} examples; classes (histogram order): "
        + ", ".join(ds.classes)
    )


def heatmap_png(ds: FedDataset) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = class_matrix(ds)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * m.shape[1] + 2), max(3, 0.3 * m.shape[0] + 1.5)))
    im = ax.imshow(m, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(ds.classes)), ds.classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(ds.num_clients), [str(c.id) for c in ds.clients], fontsize=7)
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_title(f"training examples per client and class ({ds.manifest['partition']['scheme']})")
    fig.colorbar(im, ax=ax, label="examples")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def show(root: str, console: Console | None = None) -> Path:
    """Print the histogram table and write the heatmap beside the manifest; return its path."""
    ds = FedDataset(root, verify=False)
    render_table(ds, console or Console())
    out = Path(root) / HEATMAP
    write_bytes(out, heatmap_png(ds))
    return out
