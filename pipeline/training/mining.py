"""Training: hard-negative mining rounds, which grow the run's sample index.

Reads the model being trained, the training slides (``AnnotatedSlide``) and the current sample
index; scores fresh normal tiles of each training slide and produces the ones the model calls
tumor (its false positives), then writes ``samples_round<N>.csv``: the index plus those hard
negatives, which the following epochs train on. Scoring uses ``pipeline.training.classify.predict``
on the weights as they are at that moment. Only rank 0 mines and writes; every rank reads the
new index after a barrier.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn
from torch.utils.data import DataLoader

from pipeline.training.checkpoint import RunState, Trainer
from pipeline.training.classify import predict
from pipeline.training.config import TrainConfig, TrainSettings
from pipeline.training.datasets import SlideTileDataset
from pipeline.training.ddp import DistInfo, barrier
from pipeline.training.loop import StepSettings
from pipeline.training.sampling import (
    AnnotatedSlide,
    PatchSample,
    read_sample_index,
    sample_negative_candidates,
    write_sample_index,
)

# Records keep the name of the module users run, ``pipeline.training.train``.
log = logging.getLogger("pipeline.training.train")


def mine_hard_negatives(
    model: nn.Module,
    sources: Sequence[AnnotatedSlide],
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


def mining_due(t: TrainConfig, state: RunState) -> bool:
    """Whether a mining round follows the epoch just finished (rounds are spread evenly)."""
    if state.round >= t.hard_negative_rounds or state.epoch >= t.epochs:
        return False
    round_len = max(1, t.epochs // (t.hard_negative_rounds + 1))
    return state.epoch % round_len == 0


def mine_round(
    trainer: Trainer,
    settings: TrainSettings,
    sources: Sequence[AnnotatedSlide],
    samples: list[PatchSample],
    state: RunState,
    step: StepSettings,
    info: DistInfo,
) -> list[PatchSample]:
    """Run the next mining round over the training slides; returns the grown sample index
    (``samples_round<N>.csv``, also recorded in ``state.index_file``)."""
    state.round += 1
    state.index_file = f"samples_round{state.round}.csv"
    if info.is_main:
        train_slides = {s.slide for s in samples if s.split == "train"}
        chosen = [s for s in sources if str(s.slide_path) in train_slides]
        mined = mine_hard_negatives(trainer.model, chosen, settings, state.round, step)
        write_sample_index(Path(settings.train.out_dir) / state.index_file, samples + mined)
    barrier(info)
    return read_sample_index(Path(settings.train.out_dir) / state.index_file)
