"""A run's figures: the headline metric per round (``accuracy.png``, PE-RSITR's ``mR.png``),
final per-class accuracy by training frequency (``per_class.png``) and a scene's classification
map (``map.png``: predictions on the test pixels beside their ground truth). Each is written
atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedrs.io import new_figure, save_figure


def scene_image(shape: tuple[int, int], coords: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``H x W`` float image: ``values`` + 1 at ``coords`` (row, column), NaN elsewhere."""
    img = np.full(shape, np.nan)
    img[coords[:, 0].astype(int), coords[:, 1].astype(int)] = values + 1
    return img


def plot_scene_map(
    scene: dict[str, Any],
    coords: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    classes: list[str],
    path: Path,
) -> None:
    """Ground truth | prediction | errors, one colour per class, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = (int(scene["height"]), int(scene["width"]))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
    cmap = matplotlib.colormaps["tab20"].resampled(max(len(classes), 2))
    wrong = (pred != truth).astype(float)
    panels = (
        ("ground truth (test pixels)", scene_image(shape, coords, truth), cmap, len(classes)),
        (
            f"prediction (OA {1 - wrong.mean():.3f})",
            scene_image(shape, coords, pred),
            cmap,
            len(classes),
        ),
        ("errors", scene_image(shape, coords, wrong), matplotlib.colormaps["Reds"], 2),
    )
    for ax, (title, img, cm, top) in zip(axes, panels, strict=True):
        ax.imshow(img, cmap=cm, vmin=0.5, vmax=top + 0.5, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        matplotlib.patches.Patch(color=cmap(i), label=name) for i, name in enumerate(classes)
    ]
    axes[-1].legend(handles=handles, bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=7)
    save_figure(fig, path)


def plot_curve(records: list[dict[str, Any]], path: Path, head: str = "accuracy") -> None:
    """The headline metric per round: on the global test split and averaged over clients."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = new_figure(6, 3.5)
    evaluated = [r for r in records if head in r]
    rounds = [r["round"] for r in evaluated]
    for key, label in (
        (head, "global (held-out split)"),
        (f"personalized_{head}", "personalised (local splits)"),
    ):
        ax.plot(
            rounds,
            [np.nan if r.get(key) is None else r[key] for r in evaluated],
            marker="o",
            label=label,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(head)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_classes(long_tail: dict[str, Any], classes: list[str], path: Path) -> None:
    """Final per-class accuracy on the global split, classes by training examples (most
    first), coloured by long-tail group."""
    from matplotlib.patches import Patch

    order = np.argsort(long_tail["train_counts"], kind="stable")[::-1]
    colours = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
    fig, ax = new_figure(max(6.0, 0.3 * len(classes)), 3.5)
    accs = long_tail["per_class_accuracy"]
    ax.bar(
        range(len(order)),
        [np.nan if accs[i] is None else accs[i] for i in order],
        color=[colours[long_tail["groups"][i]] for i in order],
    )
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(
        [f"{classes[i]} ({long_tail['train_counts'][i]})" for i in order], rotation=90, fontsize=7
    )
    ax.set_ylabel("accuracy (global split)")
    ax.set_ylim(0, 1)
    present = [g for g in colours if g in long_tail["groups"]]
    ax.legend(handles=[Patch(color=colours[g], label=f"{g}-shot") for g in present], fontsize=7)
    save_figure(fig, path)
