"""Scoring one slide's tiles with an analysis context's model: the model alone or averaged with
its card's partner (``pipeline.models.partner``), the cascade, the 8-pose rescoring of the
deposit rules, and the inference section of report.json.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from pipeline.slides.slide import Slide
from pipeline.slides.tiling import TileGrid, subset_grid

if TYPE_CHECKING:
    from torch import nn

    from pipeline.config import InferenceConfig
    from pipeline.detection.inference import InferenceStats, PreparedModel
    from pipeline.models import ModelCard

ProgressCallback = Callable[[int], None]

__all__ = ["ScoringContext", "dihedral_scorer", "score_with_facts", "score_with_stats"]


class ScoringContext(Protocol):
    """What scoring reads of ``pipeline.batch.settings.AnalysisContext``."""

    @property
    def card(self) -> ModelCard: ...
    @property
    def inference(self) -> InferenceConfig: ...
    @property
    def partner(self) -> tuple[nn.Module, ModelCard, str] | None: ...
    @property
    def prepared(self) -> PreparedModel: ...
    @property
    def partner_prepared(self) -> PreparedModel | None: ...
    @property
    def pair_prepared(self) -> PreparedModel | None: ...
    @property
    def threshold(self) -> float: ...


def score_with_stats(
    context: ScoringContext,
    slide: Slide,
    grid: TileGrid,
    progress: ProgressCallback | None,
    with_partner: bool = True,
) -> tuple[NDArray[np.float32], list[InferenceStats]]:
    """Every tile of ``grid`` scored with the context's prepared model, averaged with its
    partner's probabilities when the card names one (``with_partner``), and how it went (the
    model's run first, then the partner's; one run where both score densely in one pass)."""
    from pipeline.detection.inference import score_prepared

    pair = context.pair_prepared if with_partner and context.partner is not None else None
    if pair is not None:
        scores, stats = score_prepared(slide.source, grid, pair, context.inference, progress)
        return scores, [dataclasses.replace(stats, with_partner=True)]
    scores, stats = score_prepared(slide.source, grid, context.prepared, context.inference, progress)
    partner = context.partner_prepared if with_partner else None
    if partner is None:
        return scores, [stats]
    other, other_stats = score_prepared(slide.source, grid, partner, context.inference)
    return (scores + other) / np.float32(2.0), [stats, dataclasses.replace(other_stats, partner=True)]


def score_with_facts(
    context: ScoringContext, slide: Slide, grid: TileGrid, progress: ProgressCallback | None
) -> tuple[NDArray[np.float32], dict[str, Any]]:
    """Tile probabilities and the inference section of report.json (device, CPU plan, speed)."""
    if context.inference.cascade:
        return _cascade_with_facts(context, slide, grid, progress)
    probabilities, runs = score_with_stats(context, slide, grid, progress)
    return probabilities, _inference_facts(context, runs)


def _inference_facts(context: ScoringContext, runs: Sequence[InferenceStats]) -> dict[str, Any]:
    """runs: the model's and (``partner=True``) its partner's; tiles/s counts the model's tiles
    over the seconds of both."""
    seconds = sum(stats.seconds for stats in runs)
    own = [stats for stats in runs if not stats.partner]
    tiles_by_mode = {mode: sum(s.n_tiles for s in own if s.mode == mode) for mode in ("tiles", "dense")}
    facts = {
        "device": runs[0].device,
        "precision": runs[0].precision,
        "precision_probe": runs[0].precision_probe,  # fp32 vs bf16 timings where "auto" measured them
        "mode": max(tiles_by_mode, key=lambda mode: tiles_by_mode[mode]),  # "dense" or "tiles"
        "tiles_by_mode": tiles_by_mode,
        "compiled": context.inference.compile,
        "tiles_per_s": round(sum(stats.n_tiles for stats in own) / seconds, 1) if seconds > 0 else 0.0,
        "cpu_plan": runs[0].cpu_plan.to_dict(),
        # None: libgomp's default (spinning); "PASSIVE" where micromet set it on a small machine
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    # the partner's own runs, or the runs that scored it with the model in one pass (their tiles
    # and seconds are then the model's too)
    one_pass = any(stats.with_partner for stats in runs)
    partner = [stats for stats in runs if (stats.with_partner if one_pass else stats.partner)]
    if partner:
        facts["partner"] = {
            "tiles": sum(s.n_tiles for s in partner), "seconds": round(sum(s.seconds for s in partner), 3),
            "mode": "dense" if any(s.mode == "dense" for s in partner) else "tiles", "one_pass": one_pass,
        }  # fmt: skip
    return facts


def _cascade_with_facts(
    context: ScoringContext, slide: Slide, grid: TileGrid, progress: ProgressCallback | None
) -> tuple[NDArray[np.float32], dict[str, Any]]:
    """The cascade (``pipeline.detection.cascade``): the screen, then dense scoring near
    suspicious tiles (with the partner model, where the card names one)."""
    from pipeline.detection.cascade import cascade_scores

    runs: list[InferenceStats] = []
    reported = [0]  # screen tiles are scored again near suspicious ones: count each tile once

    def count(n_scored: int) -> None:
        n_scored = min(n_scored, len(grid) - reported[0])
        reported[0] += n_scored
        if progress is not None and n_scored > 0:
            progress(n_scored)

    def score(indices: NDArray[np.int64], with_partner: bool = False) -> NDArray[np.float32]:
        scores, stats = score_with_stats(context, slide, subset_grid(grid, indices), count, with_partner)
        runs.extend(stats)
        return scores

    def full_score(indices: NDArray[np.int64]) -> NDArray[np.float32]:
        return score(indices, with_partner=True)

    # Cells the screen rules out keep the screen's probability, so the screen threshold never
    # exceeds the deposit threshold (a user's --threshold below it lowers it too).
    screen_threshold = min(context.inference.cascade_screen_threshold, context.threshold)
    partnered = context.partner is not None
    probabilities, cascade = cascade_scores(grid, score, screen_threshold, full_score if partnered else None)
    count(len(grid) - reported[0])  # the cells left unscored
    return probabilities, {**_inference_facts(context, runs), "cascade": cascade.to_dict()}


def dihedral_scorer(
    context: ScoringContext, slide: Slide
) -> Callable[[NDArray[np.int64]], NDArray[np.float32]]:
    """Tiles at level-0 corners, read as the grid reads them, scored in their 8 dihedral poses."""
    from pipeline.detection.inference import score_dihedral
    from pipeline.slides.readers import read_geometry, read_one_tile

    card = context.card
    geometry = read_geometry(slide, card.tile_size_px, card.mpp, card.stain_normalization)

    def score(xy_px: NDArray[np.int64]) -> NDArray[np.float32]:
        if len(xy_px) == 0:
            return np.zeros((0, 8), np.float32)
        tiles = np.stack([read_one_tile(slide, xy, geometry) for xy in xy_px])
        return score_dihedral(context.prepared, tiles)

    return score
