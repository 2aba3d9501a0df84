"""Deposit refinement: reads deposits whose size is ambiguous, produces re-measured deposits.

A deposit is ambiguous when its size interval [d - u, d + u] (max Feret diameter d, grid
uncertainty u, see ``pipeline.deposits.measure``) contains a category cut-off (0.2 mm or 2.0 mm):
the coarse grid cannot tell ITC from micro, or micro from macro. Such a deposit is rescored:

1. Its bounding box, grown by one coarse tile on every side, is covered with overlapping
   tiles at a finer stride: ``refine_stride_fraction`` x tile size (and at least twice as
   fine as the coarse grid), in whole level-0 px.
2. ``score_fn`` scores those tiles. It is a callback ``score_fn(xy_px) -> probabilities``
   (xy_px: (N, 2) int64 level-0 top-left tile corners, tiles of the heatmap's tile size;
   returns (N,) float32), so this module does not depend on torch: the caller passes a
   closure around ``pipeline.detection.inference.score_tiles``.
3. The fine probabilities form a local ``Heatmap``; ``find_deposits`` measures it with the
   same threshold. The fine components that overlap the deposit's previous outline replace
   it (one deposit may split in two; separate deposits are never summed), flagged
   ``refined=True``, with the smaller uncertainty of the finer stride.
4. While a replacement is still ambiguous, the stride halves and step 1-3 repeat on the
   replacements' boxes grown by two previous strides, at most MAX_REFINE_ROUNDS rounds,
   MAX_REFINE_TILES tiles per round, and never below MIN_REFINE_STRIDE_FRACTION of the
   tile. Fine components under MIN_FRAGMENT_CELLS cells are edge noise and are dropped.
   The category then follows the point estimate of the finest measurement, as it would
   without refinement.

If a round finds no tumor at all where the coarse grid saw some, the previous measurement is
kept (a detection is never dropped by refinement) and a warning is logged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from pipeline.config import DepositConfig
from pipeline.deposits.measure import Deposit, find_deposits, number_deposits
from pipeline.detection.heatmap import Heatmap
from pipeline.staging import ITC_MAX_DIAMETER_MM, MICRO_MAX_DIAMETER_MM

log = logging.getLogger(__name__)

ScoreFn = Callable[[NDArray[np.int64]], NDArray[np.float32]]

# Category cut-offs a size interval must not straddle (pipeline.staging).
CATEGORY_CUTOFFS_MM = (ITC_MAX_DIAMETER_MM, MICRO_MAX_DIAMETER_MM)
# At most this many rescoring rounds per deposit; the stride halves each round.
MAX_REFINE_ROUNDS = 5
# A round that would score more tiles than this is not run (cost bound for huge deposits).
MAX_REFINE_TILES = 250_000
# The stride never halves below this fraction of the tile: a tile's probability changes
# little over a few px, so a finer grid only resolves threshold noise at the edge.
MIN_REFINE_STRIDE_FRACTION = 1.0 / 64.0
# Fine components smaller than this many fine cells are edge noise, not separate deposits;
# they are dropped unless nothing larger was found.
MIN_FRAGMENT_CELLS = 4

__all__ = [
    "CATEGORY_CUTOFFS_MM",
    "MAX_REFINE_ROUNDS",
    "MAX_REFINE_TILES",
    "ScoreFn",
    "is_ambiguous",
    "refine_deposit",
    "refine_deposits",
]


@dataclasses.dataclass(frozen=True)
class _Box:
    """An axis-aligned region in level-0 px: [x0, x1] x [y0, y1]."""

    x0: float
    y0: float
    x1: float
    y1: float

    def grown(self, margin_px: float) -> _Box:
        return _Box(self.x0 - margin_px, self.y0 - margin_px, self.x1 + margin_px,
                    self.y1 + margin_px)


def is_ambiguous(deposit: Deposit) -> bool:
    """True when [d - u, d + u] of the deposit's max diameter contains a category cut-off."""
    low = deposit.max_diameter_mm - deposit.max_diameter_uncertainty_mm
    high = deposit.max_diameter_mm + deposit.max_diameter_uncertainty_mm
    return any(low <= cutoff <= high for cutoff in CATEGORY_CUTOFFS_MM)


def refine_deposits(
    heatmap: Heatmap,
    deposits: Sequence[Deposit],
    threshold: float,
    score_fn: ScoreFn,
    config: DepositConfig,
) -> list[Deposit]:
    """All deposits, with the ambiguous ones re-measured; sorted largest first, ids 1..n.

    Does nothing when ``config.refine`` is False. See the module docs for the procedure.
    """
    if not config.refine:
        return list(deposits)
    result: list[Deposit] = []
    seen: set[tuple[tuple[int, int, int, int], float]] = set()
    for deposit in deposits:
        if not is_ambiguous(deposit):
            result.append(deposit)
            continue
        for replacement in refine_deposit(
            heatmap, deposit, threshold, score_fn, config.refine_stride_fraction
        ):
            key = (replacement.bbox_px, round(replacement.area_mm2, 12))
            if key not in seen:  # neighbouring coarse deposits may refine to the same one
                seen.add(key)
                result.append(replacement)
    return number_deposits(result)


def refine_deposit(
    heatmap: Heatmap,
    deposit: Deposit,
    threshold: float,
    score_fn: ScoreFn,
    stride_fraction: float,
    max_rounds: int = MAX_REFINE_ROUNDS,
) -> list[Deposit]:
    """Re-measure one deposit on finer grids until its category is decided (module docs).

    Returns its replacement(s), or [deposit] unchanged when no round could run.
    """
    stride_px = min(stride_fraction * heatmap.tile_size_l0_px, heatmap.stride_l0_px / 2.0)
    current = [deposit]
    box = _bbox_box(deposit).grown(heatmap.tile_size_l0_px)
    for _ in range(max_rounds):
        stride_px = float(max(1, round(stride_px)))
        fine = _fine_heatmap(heatmap, box, stride_px, score_fn)
        if fine is None:
            break
        found = _without_specks(
            _overlapping(find_deposits(fine, threshold, refined=True), current), fine.stride_um
        )
        if not found:
            log.warning(
                "refinement at %.1f µm stride found no tumor near deposit at (%.0f, %.0f) px; "
                "keeping the previous measurement",
                fine.stride_um, deposit.centroid_x_px, deposit.centroid_y_px,
            )
            break
        current = found
        min_stride_px = max(1.0, MIN_REFINE_STRIDE_FRACTION * heatmap.tile_size_l0_px)
        if stride_px / 2.0 < min_stride_px or not any(is_ambiguous(d) for d in current):
            break
        box = _union_box(current).grown(2.0 * stride_px)
        stride_px /= 2.0
    return current


def _without_specks(found: list[Deposit], stride_um: float) -> list[Deposit]:
    """Drop components under MIN_FRAGMENT_CELLS fine cells, keeping the largest regardless."""
    if len(found) <= 1:
        return found
    min_area_mm2 = MIN_FRAGMENT_CELLS * (stride_um / 1000.0) ** 2
    largest = max(found, key=lambda d: d.area_mm2)
    return [d for d in found if d is largest or d.area_mm2 >= min_area_mm2 - 1e-15]


def _bbox_box(deposit: Deposit) -> _Box:
    x, y, width, height = deposit.bbox_px
    return _Box(float(x), float(y), float(x + width), float(y + height))


def _union_box(deposits: Sequence[Deposit]) -> _Box:
    boxes = [_bbox_box(d) for d in deposits]
    return _Box(min(b.x0 for b in boxes), min(b.y0 for b in boxes),
                max(b.x1 for b in boxes), max(b.y1 for b in boxes))


def _fine_heatmap(
    heatmap: Heatmap, box: _Box, stride_px: float, score_fn: ScoreFn
) -> Heatmap | None:
    """Score tiles whose centres cover ``box`` every ``stride_px``; None if over budget.

    Tiles reaching outside the slide are not scored (NaN), as the coarse grid never has them.
    """
    tile = heatmap.tile_size_l0_px
    cols = math.ceil((box.x1 - box.x0) / stride_px) + 1
    rows = math.ceil((box.y1 - box.y0) / stride_px) + 1
    if rows * cols > MAX_REFINE_TILES:
        log.warning(
            "refinement would score %d tiles (limit %d) at %.1f px stride; not refined further",
            rows * cols, MAX_REFINE_TILES, stride_px,
        )
        return None
    origin_x, origin_y = math.floor(box.x0 - tile / 2.0), math.floor(box.y0 - tile / 2.0)
    grid_r, grid_c = np.mgrid[0:rows, 0:cols]
    x_px = np.rint(origin_x + grid_c.ravel() * stride_px).astype(np.int64)
    y_px = np.rint(origin_y + grid_r.ravel() * stride_px).astype(np.int64)
    width, height = heatmap.slide_dimensions
    inside = (x_px >= 0) & (y_px >= 0) & (x_px + tile <= width) & (y_px + tile <= height)
    values = np.full(rows * cols, np.nan, dtype=np.float32)
    if inside.any():
        scores = np.asarray(score_fn(np.column_stack([x_px[inside], y_px[inside]])))
        if scores.shape != (int(inside.sum()),):
            raise ValueError(
                f"score_fn returned shape {scores.shape} for {int(inside.sum())} tiles; "
                "expected one probability per tile"
            )
        values[inside] = scores.astype(np.float32)
    return dataclasses.replace(
        heatmap,
        probabilities=values.reshape(rows, cols),
        origin_x_px=float(origin_x),
        origin_y_px=float(origin_y),
        stride_l0_px=stride_px,
    )


def _overlapping(found: Sequence[Deposit], previous: Sequence[Deposit]) -> list[Deposit]:
    """The deposits of ``found`` whose outline overlaps one of ``previous``' outlines."""
    import shapely

    shapes = [shapely.Polygon(d.outline_xy).buffer(0) for d in previous]
    union = shapely.union_all(shapes)
    return [d for d in found if union.intersects(shapely.Polygon(d.outline_xy).buffer(0))]
