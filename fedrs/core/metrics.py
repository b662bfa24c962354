"""Evaluation metrics computed from gathered results (pure numpy; no Ray, no torch).

Long-tailed classification: classes are grouped by their training examples (many-shot above
``many_above``, few-shot below ``few_below``, medium-shot in between: OLTR's 100 / 20 by
default) and each group's accuracy is the mean of its classes' accuracies.

Image-text retrieval, the standard protocol of RSICD / RSITMD / UCM-Captions (5 captions per
image): an image query is correct at K when ANY of its captions ranks in the top K captions; a
caption query when its one image ranks in the top K images. Ties count against the query: a
candidate scoring the same as the best correct one ranks ahead of it (no credit for a
constant similarity matrix). R@K and mR are in percent, as the papers report them.
"""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def retrieval_ranks(sim: np.ndarray, caption_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the best correct answer: ``(n_images,)`` image->text and
    ``(n_captions,)`` text->image, from the ``(n_images, n_captions)`` similarity matrix and
    the image index of each caption."""
    sim = np.asarray(sim, dtype=np.float64)
    caption_image = np.asarray(caption_image)
    n_img, n_txt = sim.shape
    if caption_image.shape != (n_txt,):
        raise ValueError(f"caption_image must be ({n_txt},), got {caption_image.shape}")
    if n_img and (caption_image.min() < 0 or caption_image.max() >= n_img):
        raise ValueError("caption_image holds an index outside the images")
    own = np.zeros((n_img, n_txt), dtype=bool)
    own[caption_image, np.arange(n_txt)] = True
    if not own.any(axis=1).all():
        raise ValueError("every image needs at least one caption")
    best = np.where(own, sim, -np.inf).max(axis=1)  # each image's best correct caption
    i2t = ((sim >= best[:, None]) & ~own).sum(axis=1)
    correct = sim[caption_image, np.arange(n_txt)]  # each caption against its image
    t2i = (sim >= correct[None, :]).sum(axis=0) - 1  # minus the image itself
    return i2t, t2i


def recall_at_k(
    sim: np.ndarray, caption_image: np.ndarray, ks: tuple[int, ...] = KS
) -> dict[str, float]:
    """``i2t_r{K}``, ``t2i_r{K}`` for each K and ``mR`` (their mean), in percent."""
    i2t, t2i = retrieval_ranks(sim, caption_image)
    out = {f"i2t_r{k}": 100.0 * float(np.mean(i2t < k)) for k in ks}
    out |= {f"t2i_r{k}": 100.0 * float(np.mean(t2i < k)) for k in ks}
    out["mR"] = float(np.mean(list(out.values())))
    return out


def shot_groups(train_counts: list[int], many_above: int, few_below: int) -> list[str]:
    """Each class's group by its training examples: "many", "medium" or "few"."""
    return [
        "many" if n > many_above else "few" if n < few_below else "medium" for n in train_counts
    ]


def shot_accuracy(
    per_class: list[float | None], train_counts: list[int], many_above: int, few_below: int
) -> dict[str, float | None]:
    """``many_shot_accuracy``, ``medium_shot_accuracy``, ``few_shot_accuracy``: the mean
    per-class accuracy of each group (None when the group has no class with test examples)."""
    if len(per_class) != len(train_counts):
        raise ValueError(f"{len(per_class)} per-class accuracies for {len(train_counts)} classes")
    groups = shot_groups(train_counts, many_above, few_below)
    out: dict[str, float | None] = {}
    for group in ("many", "medium", "few"):
        accs = [a for a, g in zip(per_class, groups, strict=True) if g == group and a is not None]
        out[f"{group}_shot_accuracy"] = float(np.mean(accs)) if accs else None
    return out


KAPPA_CHANCE = 0.05  # |kappa| below this: agreement no better than chance


def collapse(record: dict) -> str | None:
    """Why a round's global predictions collapsed, or None. Rule: with two classes or more in
    the test split, at most one class recognised at all (per-class accuracy above 0 for one
    class: the model predicts one class), or Cohen's kappa within ``KAPPA_CHANCE`` of 0 (an
    accuracy that only the class frequencies explain)."""
    per = [a for a in record.get("per_class_accuracy") or [] if a is not None]
    if len(per) >= 2 and sum(a > 0 for a in per) <= 1:
        return f"one class predicted: {sum(a > 0 for a in per)} of {len(per)} classes recognised"
    kappa = record.get("kappa")
    if kappa is not None and abs(kappa) < KAPPA_CHANCE:
        return f"kappa {kappa:.3f}: agreement no better than chance"
    return None


def global_change(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, float]:
    """How far a round moved the global tensors: ``global_change`` = ||new - old|| over all of
    them, and ``global_change_rel`` = that / ||old|| (0 when nothing travels)."""
    keys = [k for k in new if k in old and np.shape(old[k]) == np.shape(new[k])]
    diff = sum(float(np.sum((new[k].astype(np.float64) - old[k]) ** 2)) for k in keys)
    norm = sum(float(np.sum(old[k].astype(np.float64) ** 2)) for k in keys)
    return {
        "global_change": diff**0.5,
        "global_change_rel": (diff / norm) ** 0.5 if norm > 0 else 0.0,
    }
