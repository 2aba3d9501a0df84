"""Training: one epoch of optimisation steps and one pass of validation (the loop itself).

Reads a model, a DataLoader of uint8 (B, H, W, 3) tiles with int labels and the step settings
(device, normalisation, augmentation, AMP dtype, learning-rate schedule); produces updated
weights and the epoch's loss sums (``train_one_epoch``), or validation metrics with the
probabilities and labels, gathered from every rank under DistributedDataParallel
(``evaluate``). ``pipeline.training.train`` runs these per epoch; both are importable from there too,
as in torchvision's classification reference.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader

from pipeline.training.augment import AugmentConfig, augment_batch
from pipeline.training.classify import autocast_context, binary_metrics, predict, to_model_input, unit_float
from pipeline.training.datasets import TileItem


@dataclasses.dataclass(frozen=True, eq=False)
class StepSettings:
    """What one optimisation or evaluation step needs besides the model and data."""

    device: torch.device
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: AugmentConfig
    amp_dtype: torch.dtype | None
    lr: float
    scheduler: str
    warmup_fraction: float


@dataclasses.dataclass
class EpochStats:
    """Loss and size of (part of) an epoch; ``stopped`` when max_batches cut it short."""

    loss_sum: float = 0.0
    n_samples: int = 0
    n_batches: int = 0
    stopped: bool = False

    @property
    def mean_loss(self) -> float:
        """Mean loss per sample (NaN for no samples)."""
        return self.loss_sum / self.n_samples if self.n_samples else math.nan


class TrainProgress(Protocol):
    """Progress display for a training run (the CLI passes a tqdm one)."""

    def epoch_started(self, epoch: int, n_batches: int, first_batch: int) -> None: ...
    def batch_done(self, loss: float) -> None: ...
    def epoch_done(self, metrics: Mapping[str, float]) -> None: ...


def lr_factor(scheduler: str, progress: float, warmup_fraction: float) -> float:
    """Learning-rate multiplier at ``progress`` (0-1, fraction of all epochs done)."""
    progress = min(max(progress, 0.0), 1.0)
    if scheduler == "onecycle":
        warm, floor = 0.3, 1e-4
    else:
        warm, floor = warmup_fraction, 0.0
    if warm > 0 and progress < warm:
        return max(progress / warm, 1e-3)
    cosine = 0.5 * (1.0 + math.cos(math.pi * (progress - warm) / max(1e-12, 1.0 - warm)))
    return floor + (1.0 - floor) * cosine


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[TileItem],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    step: StepSettings,
    generator: torch.Generator,
    position: tuple[int, int, int],
    max_batches: int | None = None,
    progress: TrainProgress | None = None,
) -> EpochStats:
    """Train over ``loader`` (uint8 (B, H, W, 3) tiles, int labels); returns the loss sums.

    position: (epoch, epochs, first batch) sets the learning rate of every step from
    ``lr_factor``; max_batches: stop early after this many batches (stats.stopped = True).
    Augmentation draws from ``generator`` only, so a run is repeatable.
    """
    epoch, epochs, first_batch = position
    n_total = first_batch + len(loader)
    stats = EpochStats()
    model.train()
    for tiles, labels in loader:
        if max_batches is not None and stats.n_batches >= max_batches:
            stats.stopped = True
            break
        done = (epoch + (first_batch + stats.n_batches) / max(1, n_total)) / epochs
        for group in optimizer.param_groups:
            group["lr"] = step.lr * lr_factor(step.scheduler, done, step.warmup_fraction)
        batch = augment_batch(unit_float(tiles, step.device), step.augment, generator)
        targets = labels.to(step.device, non_blocking=True)
        with autocast_context(step.device, step.amp_dtype):
            loss = functional.cross_entropy(model(to_model_input(batch, step.mean, step.std)), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        scaler.step(optimizer)
        scaler.update()
        stats.loss_sum += float(loss.detach()) * len(labels)
        stats.n_samples += len(labels)
        stats.n_batches += 1
        if progress is not None:
            progress.batch_done(float(loss.detach()))
    return stats


def evaluate(
    model: nn.Module, loader: DataLoader[TileItem], step: StepSettings
) -> tuple[dict[str, float], NDArray[np.float32], NDArray[np.int64]]:
    """Validation metrics (``binary_metrics``) with the probabilities and labels.

    Under DistributedDataParallel every rank scores its shard and the results are gathered.
    """
    probabilities, labels = predict(model, loader, step.device, (step.mean, step.std), step.amp_dtype)
    if dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (probabilities, labels))
        probabilities = np.concatenate([g[0] for g in gathered])
        labels = np.concatenate([g[1] for g in gathered])
    return binary_metrics(probabilities, labels), probabilities, labels
