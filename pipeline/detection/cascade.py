"""Inference cascade: reads a tile grid and a score function, produces every tile's probability
while scoring only part of the grid at full density.

On by default (``InferenceConfig.cascade``; ``--no-cascade`` turns it off). The grid is cut
into blocks of ``k x k`` cells, ``k`` = tile size / stride (at least 2), so one tile covers
about one block. The screen scores
one tile per block (the block's cell nearest its top-left corner): with overlapping tiles
(stride < tile size) the screen tiles cover the tissue without gaps. Every cell of a block
whose screen probability reaches ``screen_threshold``, and of the 8 blocks around it, is then
scored; every other cell takes its block's screen probability, which is below the screen
threshold and so below any deposit threshold at or above it.

What it costs is measured, not assumed (docs/benchmarks.md, "Cascade"): a deposit whose tumor
lies only in blocks whose screen tile scores below the screen threshold, next to no suspicious
block, is missed. None was on the synthetic benchmark or among 83 small real deposits, at a
third to four fifths of the tiles; that is why it is the default.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from pipeline.slides.tiling import TileGrid

ScoreIndices = Callable[[NDArray[np.int64]], NDArray[np.float32]]


@dataclasses.dataclass(frozen=True)
class CascadeFacts:
    """How a cascade run went, for report.json.

    block_cells: k, the block side in grid cells. screen_tiles / full_tiles: tiles scored by
    the screen and afterwards. grid_tiles: tiles in the grid. screen_threshold: probability at
    or above which a screen tile sends its block and the 8 around it to full scoring.
    """

    block_cells: int
    screen_tiles: int
    full_tiles: int
    grid_tiles: int
    screen_threshold: float

    def to_dict(self) -> dict[str, object]:
        """Plain values for report.json, with the share of the grid the cascade scored."""
        scored = self.screen_tiles + self.full_tiles
        share = scored / self.grid_tiles if self.grid_tiles else 0.0
        return {**dataclasses.asdict(self), "scored_fraction": round(share, 4)}


def block_cells(grid: TileGrid) -> int:
    """k: grid cells per block side, about one tile, and at least 2."""
    return max(2, math.floor(grid.tile_size_l0_px / grid.stride_l0_px + 1e-6))


def screen_indices(heatmap_rc: NDArray[np.int64], k: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(index of each block's screen tile, block number of every tile).

    A block's screen tile is its tile nearest the block's top-left corner (smallest row, then
    column offset), so on a full block it is the top-left cell.
    """
    blocks = heatmap_rc // k
    _, block_of = np.unique(blocks, axis=0, return_inverse=True)
    block_of = block_of.reshape(-1).astype(np.int64)
    offset = (heatmap_rc % k) @ np.array([k, 1], dtype=np.int64)
    order = np.lexsort((offset, block_of))
    first = np.ones(len(order), dtype=bool)
    first[1:] = block_of[order][1:] != block_of[order][:-1]
    return order[first].astype(np.int64), block_of


def _near_suspicious(
    heatmap_rc: NDArray[np.int64], k: int, suspicious_blocks: NDArray[np.int64]
) -> NDArray[np.bool_]:
    """True for every tile in a suspicious block or one of the 8 blocks around it."""
    if len(suspicious_blocks) == 0:
        return np.zeros(len(heatmap_rc), dtype=bool)
    blocks = heatmap_rc // k
    shape = blocks.max(axis=0) + 3
    marked = np.zeros(tuple(int(v) for v in shape), dtype=bool)
    for dr in (0, 1, 2):
        for dc in (0, 1, 2):
            marked[suspicious_blocks[:, 0] + dr, suspicious_blocks[:, 1] + dc] = True
    return marked[blocks[:, 0] + 1, blocks[:, 1] + 1]


def cascade_scores(
    grid: TileGrid, score: ScoreIndices, screen_threshold: float
) -> tuple[NDArray[np.float32], CascadeFacts]:
    """Probabilities of every tile in ``grid`` (grid order) and how the cascade went.

    score: scores the tiles at the given grid indices, returns their probabilities in order.
    """
    k = block_cells(grid)
    screen, block_of = screen_indices(grid.heatmap_rc, k)
    screen_p = score(screen)
    out = screen_p[block_of].astype(np.float32)  # screen[i] is block i's tile (blocks sorted)
    suspicious = grid.heatmap_rc[screen[screen_p >= screen_threshold]] // k
    full = _near_suspicious(grid.heatmap_rc, k, suspicious)
    full[screen] = False  # already scored at full density
    full_indices = np.flatnonzero(full).astype(np.int64)
    if len(full_indices):
        out[full_indices] = score(full_indices)
    facts = CascadeFacts(k, len(screen), len(full_indices), len(grid), screen_threshold)
    return out, facts
