"""A checkpoint's partner: a second model whose tumor probabilities are averaged with the first's.

Two models trained on the same data make different mistakes: on the node-scale dev surfaces of
real tissue (docs/benchmarks.md, "Node scale") the average of pcamnet and a dense96 model found
more ITC-size deposits than pcamnet alone at the same rate of false deposits (on 84 small real
deposits in a CAMELYON17 node it found fewer: docs/benchmarks.md, "Cascade").
A card names its partner (``ModelCard.partner``: a file beside the checkpoint and its SHA-256);
the partner must read the same tiles (tile size, µm/px, stride, stain handling) and names no
partner of its own. A missing or changed partner file is an error, never a silent fall
back to one model: the card's thresholds and size calibration were measured on the average.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.models.card import ModelCard

__all__ = ["SAME_TILES_FIELDS", "load_partner", "partner_path", "with_partner"]

# Card fields two partners must share: they score the same tiles of the same grid.
SAME_TILES_FIELDS = ("tile_size_px", "mpp", "stride_px", "stain_normalization", "class_names")


def partner_path(model_path: Path, card: ModelCard) -> Path | None:
    """Where the card's partner checkpoint must be (beside ``model_path``), or None."""
    return model_path.parent / card.partner["file"] if card.partner else None


def _check_same_tiles(model_path: Path, card: ModelCard, path: Path, other: ModelCard) -> None:
    for name in SAME_TILES_FIELDS:
        mine, theirs = getattr(card, name), getattr(other, name)
        if mine != theirs:
            raise CheckpointError(
                f"{path}: the partner of {model_path} has {name}={theirs!r}, the model {mine!r}; "
                "partners must score the same tiles (retrain the partner or remove it from the card)"
            )
    if other.partner:
        raise CheckpointError(f"{path}: a partner model cannot name a partner of its own ({other.partner})")


def load_partner(
    model_path: Path, card: ModelCard, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard, str] | None:
    """(model, card, sha256) of the partner ``card`` names, or None when it names none.

    Raises CheckpointError when the file is missing, its SHA-256 differs from the card's, or it
    does not score the same tiles.
    """
    from pipeline.models.checkpoint import file_sha256, load_checkpoint

    path = partner_path(model_path, card)
    if path is None:
        return None
    if not path.is_file():
        raise CheckpointError(
            f"{model_path}: its card averages it with the partner model {path.name}, which is missing; "
            f"put {path.name} beside it (the default model's partner ships in models/)"
        )
    digest = file_sha256(path)
    if digest != card.partner["sha256"]:
        raise CheckpointError(
            f"{path}: SHA-256 {digest[:12]}... is not the {card.partner['sha256'][:12]}... that "
            f"{model_path.name}'s card names; restore the partner file that came with the model"
        )
    model, other = load_checkpoint(path, device=device)
    _check_same_tiles(model_path, card, path, other)
    return model, other, digest


def with_partner(card: ModelCard, partner_file: Path) -> ModelCard:
    """``card`` naming ``partner_file`` (its file name and SHA-256) as its partner."""
    import dataclasses

    from pipeline.models.checkpoint import file_sha256

    return dataclasses.replace(card, partner={"file": partner_file.name, "sha256": file_sha256(partner_file)})
