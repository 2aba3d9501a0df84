"""A checkpoint's scorers for benchmarks that score arrays, not slides (node-scale surfaces,
patch sets): the pipeline's prepared model for tiles, and the model's exact dense inference for
regions when it has one. One place, so every benchmark scores tiles as ``micromet infer`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from pipeline.models import ModelCard

__all__ = ["ArrayScorer", "checkpoint_scorers"]

# (n, h, w, 3) uint8 tiles -> (n,) tumor probabilities; or an (h, w, 3) region -> its dense grid
ArrayScorer = Callable[[NDArray[np.uint8]], NDArray[np.float32]]


def checkpoint_scorers(model_path: Path) -> tuple[ArrayScorer, ArrayScorer | None, ModelCard]:
    """(tile scorer, region scorer or None, card) of the checkpoint at ``model_path``: the
    pipeline's prepared model (default inference settings, but fp32) for tiles; the model's exact
    dense inference (fp32) for regions when it has one. A card's partner is not included.

    Precision is fixed at fp32: "auto" times a probe on CPUs with native bf16 and may choose
    differently from one run to the next, so benchmark figures would not repeat."""
    import torch

    from pipeline.config import InferenceConfig
    from pipeline.detection.inference import prepare_model
    from pipeline.models import load_checkpoint

    model, card = load_checkpoint(model_path)
    prepared = prepare_model(model, card, InferenceConfig(precision="fp32"))

    def score(tiles: NDArray[np.uint8]) -> NDArray[np.float32]:
        with torch.inference_mode():
            return np.asarray(prepared.scorer(torch.from_numpy(np.ascontiguousarray(tiles))).numpy())

    dense = getattr(model.eval(), "dense_logits", None)
    if dense is None:
        return score, None, card
    mean = torch.tensor(card.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(card.std, dtype=torch.float32).view(1, 3, 1, 1)

    def score_region(region: NDArray[np.uint8]) -> NDArray[np.float32]:
        x = torch.from_numpy(np.array(region)).permute(2, 0, 1)[None].float().div(255.0).sub(mean).div(std)
        with torch.inference_mode():
            logits = dense(x.contiguous(memory_format=torch.channels_last))
        return np.asarray(torch.softmax(logits.float(), dim=1)[0, 1].numpy())

    return score, score_region, card
