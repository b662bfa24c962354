"""A scene's classification map: predictions on the test pixels beside their ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedrs.io import save_figure


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
