"""Deposits: reads a heatmap and the model card's deposit rules, produces the deposits a node is
categorised by and the candidates left for a reviewer.

The steps, each measured at node scale on real tissue (docs/benchmarks.md, "Node scale"):
1. Outline: 8-connected cells at or above the card's threshold (``find_deposits``).
2. Seed: a deposit needs one cell at or above the seed threshold (``keep_seeded``).
3. Confirm: the best cells of each seeded deposit are rescored in the 8 dihedral poses (rotations
   and flips of the same tile); the deposit is confirmed when the mean over the poses of one of
   them reaches the card's confirm threshold. Tumor scores high in every pose; the look-alikes
   that make false deposits in tumor-free node mostly do not. A card with a second stage
   (``ConfirmModel``, fitted on the dev part's seeded deposits) decides instead by a logistic
   model of the best cell's mean and lowest pose and the deposit's size: look-alikes are
   smaller and less stable under rotation than real deposits of the same probability.
4. An unconfirmed deposit of ITC size is a **candidate for review**: listed and counted in every
   output, never the slide's category. An unconfirmed deposit larger than an ITC stays a deposit
   (a metastasis is never dropped by this step), flagged for review.
5. Size: the max Feret diameter of the heatmap's contour at the card's size level, less the
   offset measured on real tumor (``pipeline.deposits.measure.calibrated_diameter_mm``); its ± is
   the 95 % error measured for that size class, not the grid step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from pipeline.deposits.confirm import ConfirmModel
from pipeline.deposits.measure import Deposit, SizeCalibration, find_deposits, keep_seeded, number_deposits
from pipeline.detection.heatmap import Heatmap
from pipeline.staging import Category

if TYPE_CHECKING:
    from pipeline.models.card import ModelCard

# (N, 2) int64 level-0 top-left tile corners -> (N, 8) tumor probability of each tile in its 8 poses
DihedralScoreFn = Callable[[NDArray[np.int64]], NDArray[np.float32]]
# Cells of a deposit rescored in every pose: its most probable ones.
CONFIRM_CELLS = 3
NOT_CONFIRMED = "not confirmed by rescoring in 8 poses"

__all__ = [
    "CONFIRM_CELLS",
    "DepositDecision",
    "DepositRules",
    "DihedralScoreFn",
    "best_cell_poses",
    "decide_deposits",
    "rules_from_card",
]


@dataclasses.dataclass(frozen=True)
class DepositRules:
    """threshold / seed_threshold: outline and seed probabilities. confirm_threshold: mean
    probability over the 8 poses one of a deposit's best cells must reach; None skips step 3.
    confirm_model: the second stage that decides step 3 instead, when given. size: the contour
    level, offset and measured errors of sizes; None keeps grid sizes."""

    threshold: float
    seed_threshold: float | None = None
    confirm_threshold: float | None = None
    size: SizeCalibration | None = None
    confirm_model: ConfirmModel | None = None

    @property
    def confirms(self) -> bool:
        """Whether step 3 runs: a confirm threshold or a second stage."""
        return self.confirm_threshold is not None or self.confirm_model is not None


@dataclasses.dataclass(frozen=True)
class DepositDecision:
    """deposits: categorise the slide. candidates: ITC-size findings not confirmed, for review."""

    deposits: list[Deposit]
    candidates: list[Deposit]


def best_cells_xy(heatmap: Heatmap, deposit: Deposit, threshold: float, count: int) -> NDArray[np.int64]:
    """Level-0 top-left tile corners (N, 2) of up to ``count`` most probable cells of ``deposit``."""
    values = np.nan_to_num(heatmap.probabilities, nan=0.0)
    x, y, width, height = deposit.bbox_px
    col0 = max(
        int(np.floor((x - heatmap.origin_x_px - heatmap.tile_size_l0_px / 2) / heatmap.stride_l0_px)), 0
    )
    row0 = max(
        int(np.floor((y - heatmap.origin_y_px - heatmap.tile_size_l0_px / 2) / heatmap.stride_l0_px)), 0
    )
    col1 = min(col0 + int(np.ceil(width / heatmap.stride_l0_px)) + 2, values.shape[1])
    row1 = min(row0 + int(np.ceil(height / heatmap.stride_l0_px)) + 2, values.shape[0])
    window = values[row0:row1, col0:col1]
    order = np.argsort(window, axis=None)[::-1][:count]
    rows, cols = np.unravel_index(order, window.shape)
    keep = window[rows, cols] >= threshold
    xs = heatmap.origin_x_px + (cols[keep] + col0) * heatmap.stride_l0_px
    ys = heatmap.origin_y_px + (rows[keep] + row0) * heatmap.stride_l0_px
    return np.round(np.column_stack([xs, ys])).astype(np.int64)


def best_cell_poses(
    heatmap: Heatmap, deposit: Deposit, threshold: float, score: DihedralScoreFn
) -> tuple[NDArray[np.int64], NDArray[np.float64]] | None:
    """(level-0 corner (2,), its 8 pose probabilities (8,)) of the deposit's best cell: of its
    CONFIRM_CELLS most probable cells, the one with the highest mean over the poses; None when
    no cell reaches ``threshold``."""
    cells = best_cells_xy(heatmap, deposit, threshold, CONFIRM_CELLS)
    if len(cells) == 0:
        return None
    poses = np.asarray(score(cells), dtype=np.float64).reshape(len(cells), 8)
    best = int(np.argmax(poses.mean(axis=1)))
    return cells[best], poses[best]


def _confirm(
    heatmap: Heatmap, deposit: Deposit, rules: DepositRules, score: DihedralScoreFn
) -> tuple[bool, float]:
    """(confirmed, the probability that decided: the best cell's pose mean or the second stage's)."""
    best = best_cell_poses(heatmap, deposit, rules.threshold, score)
    if best is None:
        return False, 0.0
    pose_mean, pose_min = float(best[1].mean()), float(best[1].min())
    if rules.confirm_model is None:
        return pose_mean >= float(rules.confirm_threshold or 0.0), pose_mean
    probability = rules.confirm_model.probability(pose_mean, pose_min, deposit.max_diameter_mm)
    return probability >= rules.confirm_model.threshold, probability


def decide_deposits(heatmap: Heatmap, rules: DepositRules, score: DihedralScoreFn | None) -> DepositDecision:
    """Deposits and review candidates of a heatmap under ``rules`` (module docs).

    score: rescoring of tiles in the 8 dihedral poses; None (or no confirm threshold or second
    stage in the rules) confirms every seeded deposit.
    """
    found = keep_seeded(find_deposits(heatmap, rules.threshold, calibration=rules.size), rules.seed_threshold)
    if score is None or not rules.confirms:
        return DepositDecision(found, [])
    deposits: list[Deposit] = []
    candidates: list[Deposit] = []
    for deposit in found:
        confirmed, probability = _confirm(heatmap, deposit, rules, score)
        deposit = dataclasses.replace(deposit, confirm_probability=probability)
        if confirmed:
            deposits.append(deposit)
        elif deposit.category is Category.ITC:
            candidates.append(deposit)
        else:
            deposits.append(dataclasses.replace(deposit, review=deposit.review or NOT_CONFIRMED))
    return DepositDecision(number_deposits(deposits), number_deposits(candidates))


def rules_from_card(
    card: ModelCard, threshold: float | None = None, seed: float | None = None
) -> DepositRules:
    """The deposit rules a model card states; ``threshold`` / ``seed`` replace the card's
    (a user's flags). A user's thresholds keep the card's confirmation and size calibration."""
    from pipeline.models.card import confirm_model_from_card, size_calibration_from_card

    return DepositRules(
        threshold=card.threshold if threshold is None else threshold,
        seed_threshold=card.seed_threshold if seed is None else seed,
        confirm_threshold=card.confirm_threshold,
        size=size_calibration_from_card(card),
        confirm_model=confirm_model_from_card(card),
    )
