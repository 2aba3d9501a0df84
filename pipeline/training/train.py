"""Training: reads slides + annotations, patch folders and PatchCamelyon; writes checkpoints.

Reads like torchvision's classification reference: ``train_one_epoch``, ``evaluate``, ``main``
(the argument parser lives in ``pipeline/cli/train.py``). A run folder holds::

    config.toml      resolved settings (feed it back with --config to repeat the run)
    samples.csv      sample index (slide, x_px, y_px, label, split, kind); samples_round<N>.csv
                     after each hard-negative mining round
    last.pt          checkpoint after every epoch (and where --max-steps stopped); resume with it
    best.pt          checkpoint with the best validation AUC (last.pt when there is no validation)
    metrics.csv      one row per epoch
    partner/, partner.pt, pair.pt   with finetune_partner: the init model's partner trained alike,
                     and the pair of both (``pipeline.training.pair``)

Checkpoints use the shared format (``pipeline.models.save_checkpoint``), so ``micromet infer
--model run/best.pt`` scores slides with them. Multi-GPU: ``torchrun --nproc_per_node N -m
pipeline train ...`` (DistributedDataParallel; initialised only when torchrun sets WORLD_SIZE>1).

This module runs the epochs; the pieces live beside it and their public names are importable
from here: ``loop`` (``train_one_epoch``, ``evaluate``), ``checkpoint`` (run
checkpoints, resume), ``mining`` (hard-negative rounds), ``metrics``
(metrics.csv) and ``ddp`` (torchrun ranks).
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from pipeline.errors import ConfigError, MicrometError, OutputError
from pipeline.models import IMAGENET_MEAN, IMAGENET_STD, autocast_dtype, build_model, load_checkpoint
from pipeline.outputs import atomic_write_text
from pipeline.training.checkpoint import (
    RunState,
    Trainer,
    TrainResult,
    describe_training_data,
    make_card,
    restore_run,
    resume_settings,
    save_run_checkpoint,
)
from pipeline.training.classify import choose_threshold
from pipeline.training.config import TrainConfig, TrainSettings, settings_to_toml
from pipeline.training.datasets import TileItem, build_datasets, make_loader, slide_sources
from pipeline.training.ddp import DistInfo, barrier, init_distributed, rank_device
from pipeline.training.loop import (
    EpochStats,
    StepSettings,
    TrainProgress,
    evaluate,
    lr_factor,
    train_one_epoch,
)
from pipeline.training.metrics import METRIC_COLUMNS, log_epoch
from pipeline.training.mining import mine_hard_negatives, mine_round, mining_due
from pipeline.training.review_samples import (
    describe_reviews,
    find_reviewed_slides,
    review_normal_samples,
    review_tile_samples,
)
from pipeline.training.sampling import (
    AnnotatedSlide,
    PatchSample,
    build_sample_index,
    read_sample_index,
    write_sample_index,
)

log = logging.getLogger(__name__)

__all__ = [
    "METRIC_COLUMNS",
    "DistInfo",
    "EpochStats",
    "RunState",
    "StepSettings",
    "TrainProgress",
    "TrainResult",
    "Trainer",
    "describe_training_data",
    "evaluate",
    "init_distributed",
    "lr_factor",
    "main",
    "make_card",
    "mine_hard_negatives",
    "resume_settings",
    "save_run_checkpoint",
    "train_one_epoch",
]

# --- main --------------------------------------------------------------------------------


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


def _load_samples(
    settings: TrainSettings,
    sources: Sequence[AnnotatedSlide],
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
        if settings.data.reviews:
            reviewed = find_reviewed_slides([Path(b) for b in settings.data.reviews])
            per_deposit = settings.data.review_tiles_per_deposit
            samples = [*samples, *review_tile_samples(reviewed, per_deposit, settings.sampling.seed)]
            if settings.data.review_negatives_per_slide:
                samples += review_normal_samples(reviewed, settings.data.review_negatives_per_slide)
        write_sample_index(index, samples)
    barrier(info)
    return read_sample_index(index)


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
    if settings.train.finetune_partner:  # refused before the model trains, not after
        from pipeline.training.pair import finetune_partner, init_partner

        init_partner(settings)
    info = init_distributed()
    try:
        result = _run(settings, resume, progress, info)
        if settings.train.finetune_partner and not result.stopped_early:

            def run_partner(partner: TrainSettings, last: Path | None) -> TrainResult:
                return _run(partner, last, progress, info)

            result = finetune_partner(settings, result, run_partner, info.is_main)
        return result
    finally:
        if info.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _setup(settings: TrainSettings, info: DistInfo) -> tuple[Trainer, StepSettings]:
    t = settings.train
    device = rank_device(t.device, info)
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed % 2**32)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    model = build_model(t.architecture)
    if t.init_model is not None:
        _load_initial_weights(model, t)
    model = model.to(device).to(memory_format=torch.channels_last)
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


def _load_initial_weights(model: nn.Module, t: TrainConfig) -> None:
    """Start from the weights of ``t.init_model`` (fine-tuning); raises ConfigError unless its
    card's architecture, tile size and µm/px are the run's, CheckpointError for a bad file."""
    start, card = load_checkpoint(str(t.init_model))
    differ = [
        f"{name} {getattr(card, name)!r} (run: {getattr(t, name)!r})"
        for name in ("architecture", "tile_size_px", "mpp")
        if not (getattr(card, name) == getattr(t, name) or (name == "mpp" and math.isclose(card.mpp, t.mpp)))
    ]
    if differ:
        raise ConfigError(
            f"{t.init_model}: --init-model's {', '.join(differ)} differ from the run's; pass "
            "--arch, --tile-size-px and --model-mpp as its card says"
        )
    model.load_state_dict(start.state_dict())
    if (
        card.seed_threshold is not None
        or card.confirm_threshold is not None
        or card.confirm_model
        or card.size_calibration
    ):
        log.warning(
            "%s's seed, confirm and size calibration are not carried to the fine-tuned checkpoint "
            "(they were measured on its weights): measure them for the new model "
            "(scripts/bench_node_scale.py calibrate --write-card) before reading its categories",
            t.init_model,
        )
    if card.partner and t.finetune_partner:
        log.info("%s's partner %s is fine-tuned after it (pair.pt)", t.init_model, card.partner["file"])
    elif card.partner:
        log.warning(
            "%s averages its scores with the partner model %s; fine-tuning starts from %s alone, and "
            "the new checkpoint has no partner: its thresholds, confirmation and size calibration are "
            "those of the new model only (measure them again, docs/benchmarks.md \"Node scale\")",
            t.init_model, card.partner["file"], t.init_model,
        )  # fmt: skip


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
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: the run folder (--out) is a file; choose a folder")
    trainer, step = _setup(settings, info)
    state = restore_run(resume, trainer, step.device) if resume is not None else RunState()
    sources = slide_sources(settings.data)
    fresh = not out.exists()
    try:
        samples = _load_samples(settings, sources, state, resume is not None, info)
        build_datasets(settings, samples)  # one class only, a bad PCam file: refused before training
    except MicrometError:
        if fresh and info.is_main:  # a bad input leaves no run folder
            shutil.rmtree(out, ignore_errors=True)
        raise
    if info.is_main:  # only once the inputs have been read: a bad input leaves no run folder
        atomic_write_text(out / "config.toml", settings_to_toml(settings))
    description = describe_training_data(settings, samples)
    if t.init_model is not None:
        description = f"fine-tuned from {t.init_model}; {description}"
    if settings.data.reviews:
        reviewed = find_reviewed_slides([Path(b) for b in settings.data.reviews])
        description = f"{description}; {describe_reviews(reviewed, samples)}"
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
        if mining_due(t, state):
            samples = mine_round(trainer, settings, sources, samples, state, step, info)
        if info.is_main:  # the checkpoint first: a crash in between must not repeat a row
            _save(trainer, settings, state, metrics, threshold, description, is_best)
            log_epoch(out, metrics, stats, state, trainer, time.perf_counter() - started)
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
