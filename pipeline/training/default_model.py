"""The default model's training recipe: the ``micromet train`` settings that
``scripts/train_default_model.py`` runs, and the committed TOML files that reproduce them.

``models/default_train.toml`` (pcamnet, 16 epochs) and ``models/default_partner_train.toml``
(dense96, 16 epochs) are these settings for ``--work runs/default_model`` and
``runs/default_model_partner``: after ``python scripts/train_default_model.py --prepare-only``
has linked the split-by-place patch folders (and the CAMELYON17 crops) into the work folder,
``micromet train --config models/default_train.toml`` trains the same model the script does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.config import PCAM_MPP
from pipeline.training.augment import AugmentConfig
from pipeline.training.config import DataConfig, TrainConfig, TrainSettings

__all__ = [
    "AUGMENT",
    "DEFAULT_RECIPES",
    "MODEL_MPP",
    "TILE_SIZE_PX",
    "TrainRecipe",
    "default_model_settings",
]

TILE_SIZE_PX = 96
MODEL_MPP = PCAM_MPP  # PatchCamelyon: CAMELYON16 level 2
AUGMENT = AugmentConfig(
    hed_scale=0.1,
    hed_shift=0.025,
    brightness=0.1,
    contrast=0.2,
    blur_probability=0.2,
    blur_max_sigma_px=1.0,
    resample_probability=0.3,
    resample_min_scale=0.5,
)


@dataclasses.dataclass(frozen=True)
class TrainRecipe:
    """The choices of one default-model training run (the script's flags)."""

    architecture: str
    epochs: int
    work: Path
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    device: str = "auto"
    hed_scale: float = 0.1


# The shipped pair: file in models/ -> the recipe its TOML holds.
DEFAULT_RECIPES = {
    "default_train.toml": TrainRecipe("pcamnet", 16, Path("runs/default_model")),
    "default_partner_train.toml": TrainRecipe("dense96", 16, Path("runs/default_model_partner")),
}


def default_model_settings(recipe: TrainRecipe) -> TrainSettings:
    """The ``micromet train`` settings of a default-model run: the work folder's split patches
    (``train/``, ``val/``) at the model's µm/px, one-cycle AdamW, the default augmentation."""
    work = recipe.work
    return TrainSettings(
        train=TrainConfig(
            out_dir=str(work / "run"),
            architecture=recipe.architecture,
            tile_size_px=TILE_SIZE_PX,
            mpp=MODEL_MPP,
            epochs=recipe.epochs,
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            scheduler="onecycle",
            num_workers=1,
            device=recipe.device,
            seed=recipe.seed,
        ),
        data=DataConfig(
            patches=(str(work / "train"),), val_patches=(str(work / "val"),), patch_mpp=MODEL_MPP
        ),
        augment=dataclasses.replace(AUGMENT, hed_scale=recipe.hed_scale, hed_shift=recipe.hed_scale / 4),
    )
