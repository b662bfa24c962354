"""Personalised baselines on CoOp prompts, for asking whether a method's private parts win:

* ``local_coop``: each client learns its own CoOp context on its own data, alone; nothing is
  ever sent. What a client gets without federation (it also learns its own label prior, which
  alone is worth a lot under strong label skew).
* ``promptfl_ft``: PromptFL, then local fine-tuning: the shared context is trained and averaged
  exactly as PromptFL's; each client's model is the current global context fine-tuned on its
  own training data for ``method.ft_epochs`` epochs (at the client's learning rate) before it
  is evaluated. The global split's ``accuracy`` is PromptFL's own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedrs.methods.base import (
    FitOptions,
    FitOutput,
    Params,
    check,
    cross_entropy_step,
    local_sgd,
)
from fedrs.methods.promptfl import CTX, PromptFL, PromptOptions

if TYPE_CHECKING:
    from fedrs.core.config import RunConfig
    from fedrs.datasets.shards import Shard


def _train_ctx(method: PromptFL, start: np.ndarray, shard: Shard, options: FitOptions) -> Any:
    """CoOp's local training of the context from ``start``; (context, metrics)."""
    ctx = method._load({CTX: start})
    step = cross_entropy_step(
        lambda x: method.model.logits(method.image_features(x)), shard.inputs, shard.labels
    )
    metrics = local_sgd({CTX: ctx}, step, len(shard), options, ())
    return ctx.detach().cpu().numpy().copy(), metrics


class LocalCoOp(PromptFL):
    name = "local_coop"
    summary = "each client trains its own CoOp context alone; nothing is sent"
    global_keys = ()
    prompt_keys = ()
    global_model = False

    @classmethod
    def tensor_shapes(
        cls, cfg: RunConfig, model_cfg: dict[str, Any], num_classes: int
    ) -> dict[str, dict[str, tuple[int, ...]]]:
        return {
            "global": {},
            "private": {CTX: (cfg.method.options.n_ctx, model_cfg["text_cfg"]["width"])},
        }

    def init_global(self, seed: int) -> Params:
        return {}

    def init_private(self, client_id: int, seed: int) -> Params:
        return super().init_global(seed)  # every client starts where PromptFL's context does

    def fit(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> FitOutput:
        ctx, metrics = _train_ctx(self, private[CTX], shard, options)
        return FitOutput(params={}, num_examples=len(shard), metrics=metrics, private={CTX: ctx})

    def evaluate(
        self, global_params: Params, private: Params, images: np.ndarray, labels: np.ndarray
    ) -> dict[str, float]:
        if CTX not in private:  # no global model: the driver does not ask
            return {"correct": 0.0, "loss_sum": 0.0, "n": 0.0}
        return super().evaluate(private, {}, images, labels)


@dataclass(frozen=True)
class FineTuneOptions(PromptOptions):
    ft_epochs: int = 1  # local fine-tuning epochs before a client's model is evaluated

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.ft_epochs >= 1, f"method.ft_epochs must be >= 1, got {self.ft_epochs}")


class PromptFLFineTune(PromptFL):
    name = "promptfl_ft"
    summary = "PromptFL, each client's model fine-tuned locally from the global context"
    Options = FineTuneOptions
    personalizes = True

    def personalize(
        self, global_params: Params, private: Params, shard: Shard, options: FitOptions
    ) -> Params:
        with torch.enable_grad():
            ctx, _ = _train_ctx(
                self,
                global_params[CTX],
                shard,
                dataclasses.replace(options, epochs=self.cfg.method.options.ft_epochs),
            )
        return {CTX: ctx}

    def evaluate(
        self, global_params: Params, private: Params, images: np.ndarray, labels: np.ndarray
    ) -> dict[str, float]:
        return super().evaluate(private if CTX in private else global_params, {}, images, labels)
