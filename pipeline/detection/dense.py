"""Dense inference: reads a slide's tile grid and a model with ``dense_logits``, produces the grid's
tumor probabilities from whole regions, each pixel pushed through the network once.

A network whose layers are unpadded and whose total stride s equals the grid stride (e.g.
``Dense96``) gives, on a region of (T + s k) px, exactly the (k + 1) x (k + 1) outputs that scoring
each T px tile of it at stride s gives. Scoring a grid tile by tile reads and computes every pixel
(T / s)² times (9 times for 96 px tiles at a 32 px stride); a region of n x n cells costs
((n + T / s - 1) / n)² pixels per cell instead (1.27 for 16 x 16 cells).

``pipeline/detection/inference.py``'s ``score_prepared`` scores this way (``plan_dense``) when
the model has ``dense_logits`` (``dense_forward``), the card no stain normalisation, the tiles lie
on one lattice of the card's stride (a grid planned at it) and the regions hold fewer pixels than
the tiles (a sparse grid, such as the cascade's screen, is scored tile by tile). Regions are the
boxes around the grid cells of blocks of ``DENSE_BLOCK_CELLS`` x ``DENSE_BLOCK_CELLS`` cells;
cells of a box outside the grid are computed and dropped.

Tiles read unresized (the read level's µm/px is the card's): the region is read as it is, and
its scores equal the tile-by-tile scores to float rounding.

Tiles that need resizing (e.g. 0.25 or 0.5 µm/px slides read for 0.972 µm/px): a box of n x m
cells is read once at the read level from its top-left cell's lattice corner, rounded to a
read-level px, ``round(side x k)`` read-level px a side (k read-level px per model px), and the
WHOLE region is resized once (``resize_rgb``, as tiles are) to T + s (n - 1) model px a side, so
its tile corners land on the s px lattice. Cell j of the box then sees the slide from
origin + j s (read px / model px) read-level px: against its true corner (j + j0) x stride, the
shift is at most 0.5 (the rounded origin) + 0.5 s (n - 1) / (T + s (n - 1)) (the rounded read
size spread over the box), 0.5 + 0.42 = 0.92 read-level px for 16 cells of 32 px and 96 px tiles:
under one read-level px (0.47 model px at 1.94 read px per model px). Tile by tile, each tile is
snapped on its own (under 0.5 + 0.5 / downsample read-level px) and resized on its own, so the
two differ slightly: the dense scores equal tile-wise scores of 96 px crops of the resized
region, not of the per-tile resized tiles (``docs/benchmarks.md``, "Dense inference", measures
the difference on real tissue).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from pipeline.models import ModelCard
from pipeline.slides.readers import (
    ReadGeometry,
    RegionPlan,
    RegionTiles,
    ResizedRegions,
    plan_regions,
    round_half_up,
    tile_level_xy,
)
from pipeline.slides.tiling import TileGrid

log = logging.getLogger(__name__)

# Grid cells per side of one dense region: 16 cells of 32 px are a 576 px region for 96 px tiles
# (1.27 pixels per cell against 9 tile by tile; 8 cells would cost 1.56, 32 cells 1.13 and four
# times the activation memory).
DENSE_BLOCK_CELLS = 16
# A region's pixel costs this many times a tile's: in a tile the deeper layers shrink by their
# unpadded borders, in a region they do not. Dense96: 22 M multiply-adds per cell of a 576 px
# region (17.2 k per pixel) against 107 M per 96 px tile (11.6 k per pixel).
REGION_PIXEL_COST = 1.5

# Scores the (1, H, W, 3) uint8 region: (1, rows, cols) float32 tumor probabilities on the CPU.
RegionScorer = Callable[[torch.Tensor], torch.Tensor]


class DenseForward(nn.Module):
    """``model`` with ``dense_logits`` as its forward: (B, 3, H, W) -> (B, classes, rows, cols)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense_logits: Callable[[torch.Tensor], torch.Tensor] = self.model.dense_logits  # type: ignore[assignment]
        return dense_logits(x)


def dense_forward(model: nn.Module, card: ModelCard) -> DenseForward | None:
    """``model``'s dense form when it computes the card's grid exactly, else None.

    It must have ``dense_logits``, the card a stride and no stain normalisation (normalised per
    tile, a region's pixels would differ from its tiles'), and ``dense_logits`` must give one
    output for a tile and 3 x 3 for a tile grown by two strides (its total stride is the card's).
    ``model`` must be in eval() mode; it is run twice on zeros on its own device.
    """
    if not callable(getattr(model, "dense_logits", None)) or card.stride_px is None:
        return None
    if card.stain_normalization is not None:
        log.info("dense scoring off: the card's stain normalisation works tile by tile")
        return None
    dense = DenseForward(model)
    tile_px, stride_px = card.tile_size_px, card.stride_px
    grown = tile_px + 2 * stride_px
    one, three = (_output_cells(dense, side_px) for side_px in (tile_px, grown))
    if one != (1, 1) or three != (3, 3):
        log.info(
            "dense scoring off: dense_logits gives %s cells for a %d px tile and %s for %d px, "
            "not (1, 1) and (3, 3) (its stride is not the card's %d px)",
            one,
            tile_px,
            three,
            grown,
            stride_px,
        )
        return None
    return dense


def _output_cells(dense: DenseForward, side_px: int) -> tuple[int, ...] | None:
    """(rows, cols) ``dense`` gives for a square of ``side_px`` zeros; None if it cannot run."""
    parameter = next(dense.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        with torch.inference_mode():
            return tuple(dense(torch.zeros((1, 3, side_px, side_px), device=device)).shape[-2:])
    except RuntimeError as exc:  # e.g. an input smaller than its kernels
        log.info("dense scoring off: dense_logits fails on %d px: %s", side_px, exc)
        return None


@dataclasses.dataclass(frozen=True)
class DensePlan:
    """The regions (blocks of grid cells, one read and one model call each) and their scorer."""

    regions: RegionPlan
    scorer: RegionScorer

    def batcher(self, heatmap_rc: NDArray[np.int64], out: NDArray[np.float32]) -> DenseBatcher:
        """A batcher writing the probabilities of the grid's cells (``heatmap_rc``) into ``out``."""
        return DenseBatcher(self.scorer, heatmap_rc, out)


def _on_lattice(grid: TileGrid, level_xy: NDArray[np.int64], stride_px: int) -> bool:
    """True when every tile corner (read-level px) is one corner plus ``stride_px`` x (col, row)."""
    expected = level_xy[0] + stride_px * (grid.heatmap_rc[:, ::-1] - grid.heatmap_rc[0, ::-1])
    return bool(np.array_equal(level_xy, expected))


def region_pixels(heatmap_rc: NDArray[np.int64], regions: RegionPlan, tile_px: int, stride_px: int) -> int:
    """Pixels the regions of ``regions`` hold: each the box around its cells, T + s (cells - 1) a side."""
    total = 0
    for index in range(regions.n_regions):
        rc = heatmap_rc[regions.block(index)]
        rows, cols = (rc.max(axis=0) - rc.min(axis=0)).tolist()
        total += (tile_px + stride_px * rows) * (tile_px + stride_px * cols)
    return total


def plan_dense(
    grid: TileGrid, geometry: ReadGeometry, card: ModelCard, scorer: RegionScorer | None
) -> DensePlan | None:
    """The dense regions for ``grid``, or None where tile-by-tile scoring is needed or cheaper.

    scorer: the prepared ``DenseForward`` (None: the model has no dense form). Dense scoring
    needs tile corners on one lattice of the card's stride: at the read level when tiles are read
    unresized (``geometry.level_tile_px`` equal to the card's tile size), else the grid's own
    level-0 lattice (``resized_regions``). It pays off when the regions' pixels, at
    ``REGION_PIXEL_COST`` each, cost less than the tiles' (T² each).
    """
    stride_px = card.stride_px
    if scorer is None or stride_px is None or len(grid) == 0:
        return None
    resize = geometry.level_tile_px != card.tile_size_px
    if resize and not _on_grid_lattice(grid, card, stride_px):
        log.info("dense scoring off: the tiles are not on one lattice of the card's %d px stride", stride_px)
        return None
    if not resize and not _on_lattice(grid, tile_level_xy(grid.xy_px, geometry), stride_px):
        log.info("dense scoring off: the tiles are not on one %d px lattice at the read level", stride_px)
        return None
    regions = dataclasses.replace(plan_regions(grid.heatmap_rc, DENSE_BLOCK_CELLS), whole_regions=True)
    dense_px = region_pixels(grid.heatmap_rc, regions, card.tile_size_px, stride_px)
    if dense_px * REGION_PIXEL_COST >= len(grid) * card.tile_size_px**2:
        return None  # a sparse grid: its regions would hold more pixels than its tiles
    if resize:
        resized = resized_regions(grid, regions, geometry, card.tile_size_px, stride_px)
        regions = dataclasses.replace(regions, resized=resized)
    return DensePlan(regions, scorer)


def _on_grid_lattice(grid: TileGrid, card: ModelCard, stride_px: int) -> bool:
    """True when the grid steps ``stride_px`` model px and every level-0 corner is its (col, row)
    times that step, rounded (as ``plan_tiles`` places them)."""
    step_model_px = grid.stride_l0_px * grid.slide_mpp / card.mpp
    if abs(step_model_px - stride_px) > 1e-6 * stride_px:
        return False
    expected = np.round(grid.heatmap_rc[:, ::-1] * grid.stride_l0_px)
    return bool(np.array_equal(grid.xy_px, expected.astype(np.int64)))


def resized_regions(
    grid: TileGrid, regions: RegionPlan, geometry: ReadGeometry, tile_px: int, stride_px: int
) -> ResizedRegions:
    """Per block of ``regions``: its box's read-level origin and size, and its model size.

    The origin is the lattice corner of the box's top-left cell in read-level px, rounded; the
    read size is the model size (T + s (cells - 1) a side) times the read-level px per model px,
    rounded (see the module docstring for the shift this implies).
    """
    cell_level_px = grid.stride_l0_px / geometry.downsample  # read-level px per grid cell
    level_per_model_px = cell_level_px / stride_px
    origins, model_sizes = [], []
    for index in range(regions.n_regions):
        rc = grid.heatmap_rc[regions.block(index)]
        first, last = rc.min(axis=0), rc.max(axis=0)
        origins.append(first[::-1] * cell_level_px)
        model_sizes.append(tile_px + stride_px * (last - first)[::-1])
    model_px = np.asarray(model_sizes, dtype=np.int64).reshape(-1, 2)
    read_px = np.maximum(1, round_half_up(model_px.astype(np.float64) * level_per_model_px))
    origin_level_px = round_half_up(np.asarray(origins, dtype=np.float64).reshape(-1, 2))
    return ResizedRegions(origin_level_px=origin_level_px, read_px=read_px, model_px=model_px)


class DenseBatcher:
    """Scores whole regions (a ``RegionPlan`` with ``whole_regions``) and writes their grid cells.

    Same face as ``inference._Batcher``: ``add`` an item, ``flush`` at the end. Each item is one
    region, scored at once; cells of its box that are not in the grid are dropped.
    """

    def __init__(self, scorer: RegionScorer, heatmap_rc: NDArray[np.int64], out: NDArray[np.float32]) -> None:
        self.scorer, self.heatmap_rc, self.out = scorer, heatmap_rc, out

    def add(self, item: RegionTiles) -> int:
        """Score one region (item.tiles (1, H, W, 3)); returns how many grid tiles it held."""
        region = item.tiles if item.tiles.flags.writeable else item.tiles.copy()  # torch wants writable
        probabilities = self.scorer(torch.from_numpy(region)).numpy()[0]  # (rows, cols)
        rc = self.heatmap_rc[item.indices]
        rc = rc - rc.min(axis=0)
        self.out[item.indices] = probabilities[rc[:, 0], rc[:, 1]]
        return len(item.indices)

    def flush(self) -> int:
        """Nothing is queued: every region is scored as it arrives."""
        return 0
