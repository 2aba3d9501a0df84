"""Training: reads slides + annotations, patch folders and PatchCamelyon; writes checkpoints.

Reads like torchvision's classification reference: ``train_one_epoch``, ``evaluate``, ``main``
(the argument parser lives in ``pipeline/commands/train.py``). A run folder holds::

    config.toml      resolved settings (feed it back with --config to repeat the run)
    samples.csv      sample index (slide, x_px, y_px, label, split, kind); samples_round<N>.csv
                     after each hard-negative mining round
    last.pt          checkpoint after every epoch (and where --max-steps stopped); resume with it
    best.pt          checkpoint with the best validation AUC (last.pt when there is no validation)
    metrics.csv      one row per epoch

Checkpoints use the shared format (``pipeline.models.save_checkpoint``), so ``micromet infer
--model run/best.pt`` scores slides with them. Multi-GPU: ``torchrun --nproc_per_node N -m
pipeline train ...`` (DistributedDataParallel; initialised only when torchrun sets WORLD_SIZE>1).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader

from pipeline.augment import AugmentConfig, augment_batch
from pipeline.classify import (
    autocast_context,
    binary_metrics,
    choose_threshold,
    predict,
    to_model_input,
    unit_float,
)
from pipeline.datasets import (
    SlideTileDataset,
    TileItem,
    build_datasets,
    make_loader,
    slide_sources,
)
from pipeline.errors import CheckpointError
from pipeline.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelCard,
    autocast_dtype,
    build_model,
    choose_device,
    load_training_state,
    save_checkpoint,
)
from pipeline.outputs import csv_safe_dict
from pipeline.sampling import (
    PatchSample,
    SlideSource,
    build_sample_index,
    read_sample_index,
    sample_negative_candidates,
    write_sample_index,
)
from pipeline.train_config import (
    TrainConfig,
    TrainSettings,
    settings_from_dict,
    settings_to_dict,
    settings_to_toml,
)

log = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "epoch",
    "round",
    "global_step",
    "lr",
    "train_loss",
    "n_train",
    "val_loss",
    "val_auc",
    "val_accuracy",
    "val_n",
    "seconds",
)


# --- the loop ----------------------------------------------------------------------------


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


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that writes files."""
        return self.rank == 0


# --- hard-negative mining ----------------------------------------------------------------


def mine_hard_negatives(
    model: nn.Module,
    sources: Sequence[SlideSource],
    settings: TrainSettings,
    round_index: int,
    step: StepSettings,
) -> list[PatchSample]:
    """Normal tiles of ``sources`` that the model scores as tumor (its false positives).

    Scores hard_negative_candidates_per_slide fresh normal centres per slide and keeps up to
    hard_negatives_per_slide of those at or above hard_negative_min_probability, highest first.
    """
    t = settings.train
    mined: list[PatchSample] = []
    for source in sources:
        candidates = sample_negative_candidates(
            source,
            settings.sampling,
            t.hard_negative_candidates_per_slide,
            round_index,
            settings.data.slide_mpp,
        )
        dataset = SlideTileDataset(
            candidates, t.tile_size_px, t.mpp, t.stain_normalization, settings.data.slide_mpp
        )
        loader = DataLoader(dataset, batch_size=t.batch_size, num_workers=t.num_workers)
        probabilities, _ = predict(model, loader, step.device, (step.mean, step.std), step.amp_dtype)
        dataset.close()
        order = np.argsort(-probabilities, kind="stable")[: t.hard_negatives_per_slide]
        kept = [candidates[i] for i in order if probabilities[i] >= t.hard_negative_min_probability]
        log.info("%s: round %d: %d hard negatives", source.slide_path, round_index, len(kept))
        mined.extend(kept)
    return mined


# --- checkpoints and resume ---------------------------------------------------------------


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
    """The ModelCard of a checkpoint of this run (NaN metrics are left out)."""
    t = settings.train
    return ModelCard(
        architecture=t.architecture,
        tile_size_px=t.tile_size_px,
        mpp=t.mpp,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        threshold=threshold,
        stain_normalization=t.stain_normalization,
        training_data=training_data,
        metrics={k: float(v) for k, v in metrics.items() if math.isfinite(v)},
        notes="trained with `micromet train`; threshold maximises Youden's J on validation tiles",
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


def _restore(path: Path, trainer: Trainer, device: torch.device) -> RunState:
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


# --- main --------------------------------------------------------------------------------


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


def init_distributed() -> DistInfo:
    """Join the torchrun process group when torchrun set WORLD_SIZE > 1; else rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistInfo(rank, world_size, local_rank)


def _device(requested: str, info: DistInfo) -> torch.device:
    device = choose_device(requested)
    if info.world_size > 1 and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def _optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=t.lr,
            momentum=t.momentum,
            weight_decay=t.weight_decay,
            nesterov=True,
        )
    return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def _barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def _load_samples(
    settings: TrainSettings,
    sources: Sequence[SlideSource],
    state: RunState,
    resuming: bool,
    info: DistInfo,
) -> list[PatchSample]:
    out = Path(settings.train.out_dir)
    index = out / state.index_file
    if info.is_main and not resuming:
        if settings.data.index:
            samples = read_sample_index(Path(settings.data.index))
        elif sources:
            samples = build_sample_index(
                sources, settings.sampling, settings.data.val_fraction, settings.data.slide_mpp
            )
        else:
            samples = []
        write_sample_index(index, samples)
    _barrier(info)
    return read_sample_index(index)


def _append_metrics(path: Path, row: Mapping[str, float]) -> None:
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(csv_safe_dict({k: row.get(k, "") for k in METRIC_COLUMNS}))


def _mining_due(t: TrainConfig, state: RunState) -> bool:
    if state.round >= t.hard_negative_rounds or state.epoch >= t.epochs:
        return False
    round_len = max(1, t.epochs // (t.hard_negative_rounds + 1))
    return state.epoch % round_len == 0


def _mine(
    trainer: Trainer,
    settings: TrainSettings,
    sources: Sequence[SlideSource],
    samples: list[PatchSample],
    state: RunState,
    step: StepSettings,
    info: DistInfo,
) -> list[PatchSample]:
    state.round += 1
    state.index_file = f"samples_round{state.round}.csv"
    if info.is_main:
        train_slides = {s.slide for s in samples if s.split == "train"}
        chosen = [s for s in sources if str(s.slide_path) in train_slides]
        mined = mine_hard_negatives(trainer.model, chosen, settings, state.round, step)
        write_sample_index(Path(settings.train.out_dir) / state.index_file, samples + mined)
    _barrier(info)
    return read_sample_index(Path(settings.train.out_dir) / state.index_file)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch) * 1_009 + rank


def main(
    settings: TrainSettings, resume: Path | None = None, progress: TrainProgress | None = None
) -> TrainResult:
    """Train a tile classifier; resume exactly from a run checkpoint when ``resume`` is given.

    Writes config.toml, the sample index, last.pt, best.pt and metrics.csv to
    ``settings.train.out_dir``. Raises ConfigError / CheckpointError / SlideOpenError /
    AnnotationError naming the offending file or setting.
    """
    info = init_distributed()
    try:
        return _run(settings, resume, progress, info)
    finally:
        if info.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _setup(settings: TrainSettings, info: DistInfo) -> tuple[Trainer, StepSettings]:
    t = settings.train
    device = _device(t.device, info)
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed % 2**32)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    model = build_model(t.architecture).to(device).to(memory_format=torch.channels_last)
    dtype = autocast_dtype(device, t.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    trainer = Trainer(model, _optimizer(model, t), scaler, torch.Generator())
    step = StepSettings(
        device,
        IMAGENET_MEAN,
        IMAGENET_STD,
        settings.augment,
        dtype,
        t.lr,
        t.scheduler,
        t.warmup_fraction,
    )
    return trainer, step


def _finish_epoch(
    wrapped: nn.Module, state: RunState, val: DataLoader[TileItem] | None, step: StepSettings
) -> tuple[dict[str, float], float, bool]:
    """Evaluate and move to the next epoch; returns metrics, threshold and whether it is best
    (always True without validation data)."""
    metrics: dict[str, float] = {"epoch": float(state.epoch), "round": float(state.round)}
    threshold = 0.5
    if val is not None:
        scores, probabilities, labels = evaluate(wrapped, val, step)
        metrics.update({f"val_{k}": v for k, v in scores.items()})
        threshold = choose_threshold(probabilities, labels)
    auc = metrics.get("val_auc", math.nan)
    is_best = val is None or (math.isfinite(auc) and auc > state.best_auc)
    if is_best and math.isfinite(auc):
        state.best_auc = auc
    state.epoch, state.step_in_epoch = state.epoch + 1, 0
    return metrics, threshold, is_best


def _save(
    trainer: Trainer,
    settings: TrainSettings,
    state: RunState,
    metrics: Mapping[str, float],
    threshold: float,
    description: str,
    is_best: bool,
) -> None:
    out = Path(settings.train.out_dir)
    card = make_card(settings, metrics, threshold, description)
    save_run_checkpoint(out / "last.pt", trainer, card, state, settings)
    if is_best:
        save_run_checkpoint(out / "best.pt", trainer, card, state, settings)


def _run(
    settings: TrainSettings, resume: Path | None, progress: TrainProgress | None, info: DistInfo
) -> TrainResult:
    t = settings.train
    out = Path(t.out_dir)
    trainer, step = _setup(settings, info)
    state = _restore(resume, trainer, step.device) if resume is not None else RunState()
    sources = slide_sources(settings.data)
    samples = _load_samples(settings, sources, state, resume is not None, info)
    if info.is_main:  # only once the inputs have been read: a bad input leaves no run folder
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.toml").write_text(settings_to_toml(settings), encoding="utf-8")
    description = describe_training_data(settings, samples)
    wrapped: nn.Module = trainer.model
    if info.world_size > 1:
        ids = [info.local_rank] if step.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(trainer.model, device_ids=ids)
    while state.epoch < t.epochs:
        if t.max_steps is not None and state.global_step >= t.max_steps:
            break
        started = time.perf_counter()
        stats, val = _train_epoch(trainer, wrapped, settings, samples, state, step, info, progress)
        if stats.stopped:
            break
        metrics, threshold, is_best = _finish_epoch(wrapped, state, val, step)
        if progress is not None:
            progress.epoch_done(metrics)
        if _mining_due(t, state):
            samples = _mine(trainer, settings, sources, samples, state, step, info)
        if info.is_main:  # the checkpoint first: a crash in between must not repeat a row
            _save(trainer, settings, state, metrics, threshold, description, is_best)
            _log_epoch(out, metrics, stats, state, trainer, time.perf_counter() - started)
    stopped = state.epoch < t.epochs
    if stopped and info.is_main:  # max_steps: save the exact position to resume from
        _save(trainer, settings, state, {}, 0.5, description, False)
    best = out / "best.pt"
    return TrainResult(
        out,
        out / "last.pt",
        best if best.exists() else None,
        state.epoch,
        state.global_step,
        stopped,
        state.best_auc,
    )


def _log_epoch(
    out: Path,
    metrics: Mapping[str, float],
    stats: EpochStats,
    state: RunState,
    trainer: Trainer,
    seconds: float,
) -> None:
    row = dict(metrics)
    row.update(
        {
            "global_step": float(state.global_step),
            "lr": float(trainer.optimizer.param_groups[0]["lr"]),
            "train_loss": stats.mean_loss,
            "n_train": float(stats.n_samples),
            "seconds": seconds,
        }
    )
    _append_metrics(out / "metrics.csv", row)
    log.info("epoch %d: %s", state.epoch, {k: round(v, 4) for k, v in row.items()})


def _train_epoch(
    trainer: Trainer,
    wrapped: nn.Module,
    settings: TrainSettings,
    samples: Sequence[PatchSample],
    state: RunState,
    step: StepSettings,
    info: DistInfo,
    progress: TrainProgress | None,
) -> tuple[EpochStats, DataLoader[TileItem] | None]:
    t = settings.train
    train_set, val_set = build_datasets(settings, samples)
    if state.step_in_epoch == 0:
        trainer.generator.manual_seed(_epoch_seed(t.seed, state.epoch, info.rank))
    shard = (info.rank, info.world_size)
    loader = make_loader(
        train_set,
        t.batch_size,
        t.num_workers,
        True,
        (t.seed, state.epoch),
        shard,
        start_sample=state.step_in_epoch * t.batch_size,
    )
    val = None
    if val_set is not None:
        val = make_loader(val_set, t.batch_size, t.num_workers, False, (t.seed, 0), shard)
    if progress is not None:
        progress.epoch_started(state.epoch, state.step_in_epoch + len(loader), state.step_in_epoch)
    max_batches = None if t.max_steps is None else t.max_steps - state.global_step
    stats = train_one_epoch(
        wrapped,
        loader,
        trainer.optimizer,
        trainer.scaler,
        step,
        trainer.generator,
        (state.epoch, t.epochs, state.step_in_epoch),
        max_batches,
        progress,
    )
    state.global_step += stats.n_batches
    state.step_in_epoch += stats.n_batches
    return stats, val
