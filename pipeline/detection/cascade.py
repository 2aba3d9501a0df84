"""Inference cascade: reads a tile grid and a score function, produces every tile's probability
while scoring only part of the grid at full density.

On by default (``InferenceConfig.cascade``; ``--no-cascade`` turns it off). The grid is cut
into blocks of ``k x k`` cells, ``k`` = tile size / stride (at least 2), so one tile covers
about one block. The screen scores one tile per block (the block's cell nearest its top-left
corner) and then as few more as it takes for the screen tiles' footprints together to cover
the footprint of every tile in the grid (``screen_indices``). One tile per block alone leaves
strips that no screen tile sees: beyond the last screen tile of a row or column, a tile's
footprint reaches up to k - 1 strides further (62 µm with the default model), and at tissue
edges a block may lack the cells whose tiles would close the gap; real 0.05 mm deposits there
were lost (issue 21). The extra tiles sit along the grid's edges, so they cost a share of the
grid that shrinks as the tissue grows. Every cell of a block one of whose screen
probabilities reaches ``screen_threshold``, and of the 8 blocks around it, is then scored;
every other cell takes its block's highest screen probability, which is below the screen
threshold and so below any deposit threshold at or above it.

What it costs is measured, not assumed (docs/benchmarks.md, "Cascade"): a deposit whose tumor
lies only in tiles that are not screen tiles, under screen tiles that score below the screen
threshold, next to no suspicious block, is missed. Every point of the grid's footprint lies in
a screen tile, so such a deposit is one that its screen tiles see too little of (e.g. at a
tile's rim) to reach the screen threshold.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from pipeline.slides.tiling import TileGrid

ScoreIndices = Callable[[NDArray[np.int64]], NDArray[np.float32]]

# A tile/stride ratio this close to a whole number counts as whole (as in ``block_cells``).
_WHOLE_TOLERANCE = 1e-6


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
    return max(2, math.floor(grid.tile_size_l0_px / grid.stride_l0_px + _WHOLE_TOLERANCE))


def block_screen_indices(
    heatmap_rc: NDArray[np.int64], k: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(index of each block's first screen tile, block number of every tile).

    A block's first screen tile is its tile nearest the block's top-left corner (smallest row,
    then column offset), so on a full block it is the top-left cell. Blocks are numbered in
    (block row, block column) order, so entry i of the first array is block i's tile.
    """
    blocks = heatmap_rc // k
    _, block_of = np.unique(blocks, axis=0, return_inverse=True)
    block_of = block_of.reshape(-1).astype(np.int64)
    offset = (heatmap_rc % k) @ np.array([k, 1], dtype=np.int64)
    order = np.lexsort((offset, block_of))
    first = np.ones(len(order), dtype=bool)
    first[1:] = block_of[order][1:] != block_of[order][:-1]
    return order[first].astype(np.int64), block_of


def screen_indices(
    heatmap_rc: NDArray[np.int64], k: int, tile_strides: float
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(indices of all screen tiles, ascending; block number of every tile).

    heatmap_rc: (N, 2) grid row, col of the tiles. k: block side in cells. tile_strides: tile
    side / stride (>= 1). The screen is each block's first tile (``block_screen_indices``)
    plus, where their footprints leave part of some tile's footprint uncovered, the fewest
    further tiles a greedy pass in raster order needs to cover it.
    """
    first, block_of = block_screen_indices(heatmap_rc, k)
    extra = _covering_tiles(heatmap_rc, first, tile_strides)
    return np.union1d(first, extra).astype(np.int64), block_of


def _elementary_span(tile_strides: float) -> tuple[int, bool]:
    """(w, sliver): a tile at grid position p covers elementary intervals 2p .. 2p + w - 1.

    Tile edges lie at p and p + t (in strides), t = m + f with m whole and 0 <= f < 1, so every
    edge is at a whole number or a whole number + f. Cutting each stride [i, i + 1) into
    [i, i + f) (index 2i) and [i + f, i + 1) (index 2i + 1) makes every tile a whole run of
    these intervals: [p, p + t) is 2p .. 2p + 2m. When f is 0 the even intervals are empty
    (sliver False) and need no cover.
    """
    whole = math.floor(tile_strides + _WHOLE_TOLERANCE)
    sliver = tile_strides - whole > _WHOLE_TOLERANCE
    return 2 * whole + 1, sliver


def footprint_cover(
    heatmap_rc: NDArray[np.int64], shape_rc: tuple[int, int], tile_strides: float
) -> NDArray[np.bool_]:
    """Which elementary cells (``_elementary_span``) the tiles at ``heatmap_rc`` cover.

    shape_rc: the grid's (rows, cols), at least one more than every row and column used.
    Returns a bool array of (2 rows + w, 2 cols + w); empty elementary cells are never set.
    """
    span, sliver = _elementary_span(tile_strides)
    rows, cols = 2 * shape_rc[0] + span, 2 * shape_rc[1] + span
    diff = np.zeros((rows + 1, cols + 1), dtype=np.int64)
    top, left = 2 * heatmap_rc[:, 0], 2 * heatmap_rc[:, 1]
    np.add.at(diff, (top, left), 1)
    np.add.at(diff, (top + span, left), -1)
    np.add.at(diff, (top, left + span), -1)
    np.add.at(diff, (top + span, left + span), 1)
    covered = diff.cumsum(axis=0).cumsum(axis=1)[:rows, :cols] > 0
    if not sliver:
        covered[0::2, :] = False
        covered[:, 0::2] = False
    return np.asarray(covered, dtype=bool)


def _covering_tiles(
    heatmap_rc: NDArray[np.int64], screen: NDArray[np.int64], tile_strides: float
) -> NDArray[np.int64]:
    """Indices of tiles to add to ``screen`` so that it covers every tile's footprint."""
    if len(heatmap_rc) == 0:
        return np.zeros(0, dtype=np.int64)
    shape_rc = (int(heatmap_rc[:, 0].max()) + 1, int(heatmap_rc[:, 1].max()) + 1)
    span, _ = _elementary_span(tile_strides)
    index_at = np.full(shape_rc, -1, dtype=np.int64)
    index_at[heatmap_rc[:, 0], heatmap_rc[:, 1]] = np.arange(len(heatmap_rc))
    covered = footprint_cover(heatmap_rc[screen], shape_rc, tile_strides)
    missing = footprint_cover(heatmap_rc, shape_rc, tile_strides) & ~covered
    added: list[int] = []
    for e_row, e_col in np.argwhere(missing):  # raster order
        if covered[e_row, e_col]:
            continue
        row, col = _covering_cell(index_at, int(e_row), int(e_col), span)
        added.append(int(index_at[row, col]))
        covered[2 * row : 2 * row + span, 2 * col : 2 * col + span] = True
    return np.asarray(added, dtype=np.int64)


def _covering_cell(index_at: NDArray[np.int64], e_row: int, e_col: int, span: int) -> tuple[int, int]:
    """The grid cell, among those with a tile whose footprint holds elementary cell
    (e_row, e_col), furthest down and then right: it covers the most of what the raster pass
    has not reached yet."""
    row0, col0 = max(0, (e_row - span + 2) // 2), max(0, (e_col - span + 2) // 2)
    window = index_at[row0 : e_row // 2 + 1, col0 : e_col // 2 + 1] >= 0
    rows, cols = np.nonzero(window)
    best = int(np.lexsort((cols, rows))[-1])  # raises on an empty window: a caller's bug
    return row0 + int(rows[best]), col0 + int(cols[best])


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
    grid: TileGrid, score: ScoreIndices, screen_threshold: float, full_score: ScoreIndices | None = None
) -> tuple[NDArray[np.float32], CascadeFacts]:
    """Probabilities of every tile in ``grid`` (grid order) and how the cascade went.

    score: scores the tiles at the given grid indices, returns their probabilities in order.
    full_score: scores the tiles near suspicious ones, screen tiles there included (a model
    with a partner: the screen is the model alone, the heatmap near suspicious tiles the
    average); None: ``score``, and screen tiles keep their screen probability.
    """
    k = block_cells(grid)
    screen, block_of = screen_indices(grid.heatmap_rc, k, grid.tile_size_l0_px / grid.stride_l0_px)
    screen_p = np.asarray(score(screen), dtype=np.float32)
    block_p = np.full(int(block_of.max()) + 1 if len(block_of) else 0, -np.inf, dtype=np.float32)
    np.maximum.at(block_p, block_of[screen], screen_p)
    out = block_p[block_of].astype(np.float32)
    suspicious = grid.heatmap_rc[screen[screen_p >= screen_threshold]] // k
    full = _near_suspicious(grid.heatmap_rc, k, suspicious)
    if full_score is None:
        full[screen] = False  # already scored at full density
    out[screen] = screen_p
    full_indices = np.flatnonzero(full).astype(np.int64)
    if len(full_indices):
        out[full_indices] = (full_score or score)(full_indices)
    facts = CascadeFacts(k, len(screen), len(full_indices), len(grid), screen_threshold)
    return out, facts
