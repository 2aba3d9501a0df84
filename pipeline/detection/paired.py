"""A model and its card's partner (``pipeline.models.partner``) scored as one model, in one pass.

Two partners that both have exact dense inference are wrapped in ``DensePairedModel``, whose
logits are the log of the mean of both models' class probabilities: their softmax is the
average ``infer`` takes, and the pair reads each region of the slide once instead of twice.
``pipeline.batch.scoring`` uses it where ``prepare_pair`` gives one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pipeline.config import InferenceConfig
from pipeline.detection.inference import PreparedModel, prepare_model
from pipeline.models import ModelCard

__all__ = ["DensePairedModel", "PairedModel", "prepare_pair"]


def _log_mean_softmax(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    mean = (torch.softmax(first.float(), dim=1) + torch.softmax(second.float(), dim=1)) / 2
    return torch.log(mean)


class PairedModel(nn.Module):
    """A model and its card's partner (``pipeline.models.partner``) as one classifier: its logits
    are the log of the mean of both models' class probabilities, so their softmax is that mean,
    the average ``infer`` takes (to float rounding). Scored as one model, the pair reads each
    tile or region once. ``DensePairedModel`` adds the dense form where both models have one."""

    def __init__(self, model: nn.Module, partner: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.partner = partner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _log_mean_softmax(self.model(x), self.partner(x))


class DensePairedModel(PairedModel):
    """``PairedModel`` of two models with exact dense inference, itself exact."""

    def dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per cell, the log of the mean of both models' dense class probabilities."""
        first: Callable[[torch.Tensor], torch.Tensor] = self.model.dense_logits  # type: ignore[assignment]
        second: Callable[[torch.Tensor], torch.Tensor] = self.partner.dense_logits  # type: ignore[assignment]
        return _log_mean_softmax(first(x), second(x))


def prepare_pair(
    model: nn.Module, partner: nn.Module, card: ModelCard, config: InferenceConfig
) -> PreparedModel | None:
    """The model and its partner prepared as one (``DensePairedModel``) when both score densely
    under ``config``, else None: with one tile-by-tile model, scoring the pair in one pass would
    give up the other's dense scoring, and two passes cost less."""
    if not config.dense or not all(callable(getattr(m, "dense_logits", None)) for m in (model, partner)):
        return None
    prepared = prepare_model(DensePairedModel(model, partner), card, config)  # checks the dense form
    return prepared if prepared.dense is not None else None
