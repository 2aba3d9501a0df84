"""The inference cascade: one screen tile per block, dense scoring only near suspicious blocks."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from pipeline.detection.cascade import block_cells, cascade_scores, screen_indices
from pipeline.slides.tiling import TileGrid


def make_grid(rows: int, cols: int, tile_l0_px: float = 96.0, stride_l0_px: float = 32.0) -> TileGrid:
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    rc = np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.int64)
    xy = np.round(rc[:, ::-1] * stride_l0_px).astype(np.int64)
    return TileGrid(
        xy_px=xy,
        heatmap_rc=rc,
        grid_shape=(rows, cols),
        tile_size_px=96,
        mpp=1.0,
        slide_mpp=1.0,
        tile_size_l0_px=tile_l0_px,
        stride_l0_px=stride_l0_px,
        slide_dimensions=(int(cols * stride_l0_px + tile_l0_px), int(rows * stride_l0_px + tile_l0_px)),
        tissue_fraction=np.ones(len(rc), np.float32),
    )


class Recorder:
    """A score function over a true probability map that remembers which tiles it scored."""

    def __init__(self, grid: TileGrid, truth: NDArray[np.float32]) -> None:
        self.grid, self.truth, self.calls = grid, truth, []  # type: list[NDArray[np.int64]]

    def __call__(self, indices: NDArray[np.int64]) -> NDArray[np.float32]:
        self.calls.append(np.asarray(indices))
        rc = self.grid.heatmap_rc[indices]
        return self.truth[rc[:, 0], rc[:, 1]].astype(np.float32)


def test_block_is_about_one_tile_and_never_below_two_cells() -> None:
    assert block_cells(make_grid(3, 3, 96.0, 32.0)) == 3
    assert block_cells(make_grid(3, 3, 224.0, 224.0)) == 2  # no overlap: every other tile
    assert block_cells(make_grid(3, 3, 97.2, 32.4)) == 3  # non-integer level-0 sizes


def test_each_block_gets_exactly_one_screen_tile_even_without_its_corner() -> None:
    grid = make_grid(6, 6)
    keep = ~((grid.heatmap_rc[:, 0] == 0) & (grid.heatmap_rc[:, 1] == 0))  # block (0, 0) lost its corner
    rc = grid.heatmap_rc[keep]
    screen, block_of = screen_indices(rc, 3)
    assert len(screen) == 4 and sorted(block_of[screen].tolist()) == [0, 1, 2, 3]
    assert [tuple(v) for v in rc[screen].tolist()] == [(0, 1), (0, 3), (3, 0), (3, 3)]


def test_tumor_free_grid_is_scored_by_the_screen_alone() -> None:
    grid = make_grid(9, 12)
    truth = np.full((9, 12), 0.05, np.float32)
    truth[4, 4] = 0.15  # below the screen threshold, between screen tiles
    recorder = Recorder(grid, truth)
    scores, facts = cascade_scores(grid, recorder, screen_threshold=0.2)
    assert len(recorder.calls) == 1 and facts.screen_tiles == 12 and facts.full_tiles == 0
    assert np.all(scores == np.float32(0.05))
    assert facts.to_dict()["scored_fraction"] == round(12 / 108, 4)


def test_a_suspicious_screen_tile_sends_its_block_and_the_eight_around_it_to_dense_scoring() -> None:
    grid = make_grid(12, 12)
    truth = np.full((12, 12), 0.01, np.float32)
    truth[3:6, 3:6] = 0.95  # block (1, 1), screen tile (3, 3)
    truth[11, 11] = 0.99  # not a screen tile, and its block's screen tile is clean: missed
    recorder = Recorder(grid, truth)
    scores, facts = cascade_scores(grid, recorder, screen_threshold=0.2)
    dense = np.zeros((12, 12), bool)
    dense[0:9, 0:9] = True
    values = np.full((12, 12), np.nan, np.float32)
    values[grid.heatmap_rc[:, 0], grid.heatmap_rc[:, 1]] = scores
    np.testing.assert_array_equal(values[dense], truth[dense])
    assert values[11, 11] == np.float32(0.01)  # what the cascade costs: a tile between screens
    assert facts.screen_tiles == 16 and facts.full_tiles == 81 - 9
    assert len(np.intersect1d(recorder.calls[0], recorder.calls[1])) == 0  # no tile scored twice
