"""Training: run checkpoints and exact resume.

Reads a run's model, optimiser, AMP scaler, augmentation generator, position (``RunState``)
and settings; produces ``last.pt`` / ``best.pt`` in the shared checkpoint format
(``pipeline.models.save_checkpoint``, so ``micromet infer`` loads them) with the run's
``ModelCard`` and everything ``--resume`` needs (optimiser and scaler state, position, sample
index file, settings, every RNG state). Reading one back restores all of it
(``restore_run``) or only its settings (``resume_settings``).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelCard,
    load_training_state,
    save_checkpoint,
)
from pipeline.training.config import TrainSettings, settings_from_dict, settings_to_dict
from pipeline.training.sampling import PatchSample


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """How a run ended: checkpoint paths, position, whether max_steps stopped it early."""

    out_dir: Path
    last_path: Path
    best_path: Path | None
    epochs_done: int
    global_step: int
    stopped_early: bool
    best_auc: float
    pair_path: Path | None = None


@dataclasses.dataclass
class RunState:
    """Where a run is: ``epoch`` in progress (0-based), batches done in it, and so on."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    round: int = 0
    best_auc: float = -math.inf
    index_file: str = "samples.csv"


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def describe_training_data(settings: TrainSettings, samples: Sequence[PatchSample]) -> str:
    """A plain-language summary of the data for the model card."""
    data = settings.data
    n_slides = len({s.slide for s in samples})
    n_tumor = sum(s.label == 1 for s in samples)
    parts = [
        f"{n_slides} slides from {list(data.slides)} (annotations {list(data.annotations)}): "
        f"{len(samples)} sampled tiles ({n_tumor} tumor), split by slide "
        f"(val_fraction {data.val_fraction})"
    ]
    if data.patches or data.val_patches:
        parts.append(
            f"patch folders {list(data.patches)} (validation {list(data.val_patches)}) "
            f"at {data.patch_mpp} µm/px"
        )
    if data.pcam:
        parts.append(f"PatchCamelyon {list(data.pcam)} at ~0.97 µm/px")
    return "; ".join(parts)


def make_card(
    settings: TrainSettings, metrics: Mapping[str, float], threshold: float, training_data: str
) -> ModelCard:
    """The ModelCard of a checkpoint of this run (NaN metrics are left out). A fine-tuned run
    keeps its --init-model's heatmap stride (the part of the tile its labels describe); its
    seed, confirmation and size calibration are not carried over (they were measured on the
    other weights; train warns)."""
    t = settings.train
    finite = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
    how = (
        "threshold maximises Youden's J on validation tiles"
        if "val_auc" in finite
        else "no validation tiles: threshold 0.5 was not chosen on data; measure the operating point "
        "before use"
    )
    stride = None
    if t.init_model is not None:
        from pipeline.models import read_card

        stride = read_card(t.init_model).stride_px
    return ModelCard(
        architecture=t.architecture,
        tile_size_px=t.tile_size_px,
        mpp=t.mpp,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        threshold=threshold,
        stain_normalization=t.stain_normalization,
        training_data=training_data,
        metrics=finite,
        notes=f"trained with `micromet train`; {how}",
        stride_px=stride,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Trainer:
    """The pieces a run checkpoints: model, optimiser, AMP scaler, augmentation generator."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    generator: torch.Generator


def save_run_checkpoint(
    path: Path, trainer: Trainer, card: ModelCard, state: RunState, settings: TrainSettings
) -> Path:
    """Write a checkpoint that ``micromet infer`` loads and ``--resume`` continues exactly."""
    extra = {
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": {
            "kind": settings.train.scheduler,
            "lr": settings.train.lr,
            "warmup_fraction": settings.train.warmup_fraction,
        },
        "scaler": trainer.scaler.state_dict(),
        "epoch": state.epoch,
        "step_in_epoch": state.step_in_epoch,
        "global_step": state.global_step,
        "round": state.round,
        "best_auc": state.best_auc,
        "index_file": state.index_file,
        "config": settings_to_dict(settings),
        "rng": _rng_state(),
        "augment_generator": trainer.generator.get_state(),
    }
    return save_checkpoint(path, trainer.model, card, extra)


def resume_settings(path: Path) -> TrainSettings:
    """The settings stored in a run checkpoint (for --resume). Raises CheckpointError."""
    state = load_training_state(path)
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path}: holds no training config; only run checkpoints resume")
    return settings_from_dict(state["config"], source=str(path))


def restore_run(path: Path, trainer: Trainer, device: torch.device) -> RunState:
    """Load a run checkpoint into ``trainer`` and the global RNGs; returns where the run was.

    Raises CheckpointError when the file is not a run checkpoint (``last.pt`` of a run).
    """
    from pipeline.models import load_checkpoint

    payload = load_training_state(path, device)
    missing = [k for k in ("optimizer", "epoch", "step_in_epoch", "rng") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: cannot resume, missing {missing}; use last.pt of a run")
    weights, _ = load_checkpoint(path, device)
    trainer.model.load_state_dict(weights.state_dict())
    trainer.optimizer.load_state_dict(payload["optimizer"])
    if payload.get("scaler"):
        trainer.scaler.load_state_dict(payload["scaler"])
    trainer.generator.set_state(payload["augment_generator"].cpu())
    _set_rng_state(payload["rng"])
    return RunState(
        int(payload["epoch"]),
        int(payload["step_in_epoch"]),
        int(payload["global_step"]),
        int(payload["round"]),
        float(payload["best_auc"]),
        str(payload["index_file"]),
    )
