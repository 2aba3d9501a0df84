"""Dense inference: reads a slide's tile grid and a model with ``dense_logits``, produces the grid's
tumor probabilities from whole regions, each pixel pushed through the network once.

A network whose layers are unpadded and whose total stride s equals the grid stride (e.g.
``Dense96``) gives, on a region of (T + s k) px, exactly the (k + 1) x (k + 1) outputs that scoring
each T px tile of it at stride s gives. Scoring a grid tile by tile reads and computes every pixel
(T / s)² times (9 times for 96 px tiles at a 32 px stride); a region of n x n cells costs
((n + T / s - 1) / n)² pixels per cell instead (1.27 for 16 x 16 cells).

``pipeline/detection/inference.py``'s ``score_prepared`` scores this way (``plan_dense``) when it
gives the same numbers and costs less: the model has ``dense_logits`` (``dense_forward``), the
tiles are read at a level that needs no resizing and no stain normalisation, their corners lie on
one lattice of s read-level px (a grid planned at the card's stride), and the regions hold fewer
pixels than the tiles (a sparse grid, such as the cascade's screen, is scored tile by tile).
Regions are the boxes around the grid cells of blocks of ``DENSE_BLOCK_CELLS`` x
``DENSE_BLOCK_CELLS`` cells; cells of a box outside the grid are computed and dropped.
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
from pipeline.slides.readers import ReadGeometry, RegionPlan, RegionTiles, plan_regions, tile_level_xy
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
    needs tiles read unresized at the read level (``geometry.level_tile_px`` equal to the card's
    tile size) with corners on one lattice of the card's stride, and pays off when the regions'
    pixels, at ``REGION_PIXEL_COST`` each, cost less than the tiles' (T² each).
    """
    stride_px = card.stride_px
    if scorer is None or stride_px is None or geometry.level_tile_px != card.tile_size_px or len(grid) == 0:
        return None
    if not _on_lattice(grid, tile_level_xy(grid.xy_px, geometry), stride_px):
        log.info("dense scoring off: the tiles are not on one %d px lattice at the read level", stride_px)
        return None
    regions = dataclasses.replace(plan_regions(grid.heatmap_rc, DENSE_BLOCK_CELLS), whole_regions=True)
    dense_px = region_pixels(grid.heatmap_rc, regions, card.tile_size_px, stride_px)
    if dense_px * REGION_PIXEL_COST >= len(grid) * card.tile_size_px**2:
        return None  # a sparse grid: its regions would hold more pixels than its tiles
    return DensePlan(regions, scorer)


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
