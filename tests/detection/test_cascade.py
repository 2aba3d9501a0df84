"""The inference cascade: a screen that covers every tile's footprint, dense scoring only near
suspicious blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from pipeline.detection import cascade
from pipeline.detection.cascade import block_cells, block_screen_indices, cascade_scores, screen_indices
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
    screen, block_of = block_screen_indices(rc, 3)
    assert len(screen) == 4 and sorted(block_of[screen].tolist()) == [0, 1, 2, 3]
    assert [tuple(v) for v in rc[screen].tolist()] == [(0, 1), (0, 3), (3, 0), (3, 3)]


def test_tumor_free_grid_is_scored_by_the_screen_alone() -> None:
    grid = make_grid(9, 12)
    truth = np.full((9, 12), 0.05, np.float32)
    truth[4, 4] = 0.15  # below the screen threshold, between screen tiles
    recorder = Recorder(grid, truth)
    scores, facts = cascade_scores(grid, recorder, screen_threshold=0.2)
    # 12 blocks, and 8 tiles in the last row and column that cover the grid's far edges
    assert len(recorder.calls) == 1 and facts.screen_tiles == 12 + 8 and facts.full_tiles == 0
    assert np.all(scores == np.float32(0.05))
    assert facts.to_dict()["scored_fraction"] == round(20 / 108, 4)


def test_a_suspicious_screen_tile_sends_its_block_and_the_eight_around_it_to_dense_scoring() -> None:
    grid = make_grid(12, 12)
    truth = np.full((12, 12), 0.01, np.float32)
    truth[3:6, 3:6] = 0.95  # block (1, 1), screen tile (3, 3)
    truth[10, 10] = 0.99  # not a screen tile, and its block's screen tiles are clean: missed
    recorder = Recorder(grid, truth)
    scores, facts = cascade_scores(grid, recorder, screen_threshold=0.2)
    dense = np.zeros((12, 12), bool)
    dense[0:9, 0:9] = True
    values = np.full((12, 12), np.nan, np.float32)
    values[grid.heatmap_rc[:, 0], grid.heatmap_rc[:, 1]] = scores
    np.testing.assert_array_equal(values[dense], truth[dense])
    assert values[10, 10] == np.float32(0.01)  # what the cascade costs: a tile between screens
    assert facts.screen_tiles == 16 + 9 and facts.full_tiles == 81 - 9
    assert len(np.intersect1d(recorder.calls[0], recorder.calls[1])) == 0  # no tile scored twice


# --- the screen covers every tile's footprint -----------------------------------------------


def footprint_raster(
    rc: NDArray[np.int64], shape_rc: tuple[int, int], stride_px: int, tile_px: int
) -> NDArray[np.bool_]:
    """The union of square tiles at ``rc``, drawn pixel by pixel (tile = tile_px, step = stride_px)."""
    raster = np.zeros((shape_rc[0] * stride_px + tile_px, shape_rc[1] * stride_px + tile_px), dtype=bool)
    for row, col in rc.tolist():
        top, left = row * stride_px, col * stride_px
        raster[top : top + tile_px, left : left + tile_px] = True
    return raster


def random_cells(rng: np.random.Generator, rows: int, cols: int) -> NDArray[np.int64]:
    """Grid cells of a tissue-like shape: an ellipse, holes and ragged edges, or a full rectangle."""
    rr, cc = np.mgrid[0:rows, 0:cols]
    if rng.random() < 0.2:
        keep = np.ones((rows, cols), dtype=bool)
    else:
        centre, radii = rng.uniform(0, 1, 2) * (rows, cols), rng.uniform(0.3, 0.9, 2) * (rows, cols)
        keep = ((rr - centre[0]) / radii[0]) ** 2 + ((cc - centre[1]) / radii[1]) ** 2 <= 1
        keep &= rng.random((rows, cols)) > rng.uniform(0.0, 0.4)
    if not keep.any():
        keep[rows // 2, cols // 2] = True
    return np.argwhere(keep).astype(np.int64)


@pytest.mark.parametrize(
    ("stride_px", "tile_px"),
    [(32, 96), (31, 97), (10, 24), (10, 35), (12, 12), (7, 20), (10, 41)],
)
def test_screen_tiles_cover_the_footprint_of_every_tile_for_many_grid_shapes(
    stride_px: int, tile_px: int
) -> None:
    rng = np.random.default_rng(stride_px * 1000 + tile_px)
    k = block_cells(make_grid(1, 1, float(tile_px), float(stride_px)))
    for trial in range(60):
        rows, cols = (int(v) for v in rng.integers(1, 20, 2))
        rc = random_cells(rng, rows, cols)
        screen, block_of = screen_indices(rc, k, tile_px / stride_px)
        assert len(np.unique(screen)) == len(screen)
        assert set(block_of[screen].tolist()) == set(block_of.tolist())  # every block screened
        everything = footprint_raster(rc, (rows, cols), stride_px, tile_px)
        screened = footprint_raster(rc[screen], (rows, cols), stride_px, tile_px)
        uncovered = np.argwhere(everything & ~screened)
        assert len(uncovered) == 0, f"trial {trial}: {len(uncovered)} px of tiles under no screen tile"


def test_one_tile_per_block_left_a_strip_at_the_grid_edge_that_the_screen_now_covers() -> None:
    rc = make_grid(12, 12).heatmap_rc
    first, _ = block_screen_indices(rc, 3)
    everything = footprint_raster(rc, (12, 12), 32, 96)
    old_gap = everything & ~footprint_raster(rc[first], (12, 12), 32, 96)
    # the strip beyond the last block's screen tile (ending at 9 x 32 + 96 = 384 px) to the
    # tiles' edge at 11 x 32 + 96 = 448 px: two strides wide, on the right and at the bottom
    assert old_gap[:448, 384:448].all() and old_gap[384:448, :448].all()
    assert not old_gap[:384, :384].any() and not old_gap[448:, :].any() and not old_gap[:, 448:].any()
    screen, _ = screen_indices(rc, 3, 3.0)
    added = sorted(map(tuple, rc[np.setdiff1d(screen, first)].tolist()))
    # a few extra tiles, all in the last row or column
    assert added == [(0, 11), (3, 11), (6, 11), (9, 11), (11, 0), (11, 3), (11, 6), (11, 9), (11, 11)]


def test_tiles_without_overlap_are_all_screened() -> None:
    # With tile = stride no tile sees another's ground: covering every footprint takes them all.
    rc = make_grid(5, 7, 224.0, 224.0).heatmap_rc
    screen, _ = screen_indices(rc, 2, 1.0)
    assert len(screen) == len(rc)


# --- a real deposit in the strip the old screen did not see ---------------------------------

# The negative CAMELYON17 tile cut to 1792 px (0.435 mm at 0.243 µm/px): with the default
# model's 384 px tiles every 128 px that is a full 12 x 12 grid whose last block's screen tile
# ends at x = 1536 px, while the tiles of its last two columns reach x = 1792 px.
STRIP_SLIDE_PX = 1792
STRIP_X0_PX = 1536
DEPOSIT_DIAMETER_MM = 0.05


def real_strip_slide(path: Path, centre_y_px: int, patch_index: int) -> tuple[Path, tuple[int, int]]:
    """The cut tile with a 0.05 mm disc of a real CAMELYON16 tumor patch in the middle of the
    right-hand strip; returns the slide and the disc's centre (x, y) in level-0 px."""
    from pipeline.config import CAMELYON_LEVEL0_MPP
    from tests.conftest import write_pyramid_tiff
    from tests.real_slides import C16_PATCH_PX, NEGATIVE_C17_TILE, c16_tumor_patches, c17_rgb

    image = c17_rgb(NEGATIVE_C17_TILE)[:STRIP_SLIDE_PX, :STRIP_SLIDE_PX].copy()
    patch = c16_tumor_patches(patch_index + 1)[patch_index]
    half = C16_PATCH_PX // 2
    yy, xx = np.mgrid[0:C16_PATCH_PX, 0:C16_PATCH_PX]
    radius_px = DEPOSIT_DIAMETER_MM * 1000 / CAMELYON_LEVEL0_MPP / 2
    disc = (xx - half + 0.5) ** 2 + (yy - half + 0.5) ** 2 <= radius_px**2
    centre_x = (STRIP_X0_PX + STRIP_SLIDE_PX) // 2
    image[centre_y_px - half : centre_y_px + half, centre_x - half : centre_x + half][disc] = patch[disc]
    slide = write_pyramid_tiff(path, image, CAMELYON_LEVEL0_MPP, n_levels=3, tile_px=256)
    return slide, (centre_x, centre_y_px)


@pytest.mark.shared_data
@pytest.mark.parametrize(("centre_y_px", "patch_index"), [(400, 0), (900, 5)])
def test_a_real_deposit_beyond_the_last_blocks_screen_tile_is_found_as_full_scoring_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, centre_y_px: int, patch_index: int
) -> None:
    from pipeline.config import InferenceConfig, TilingConfig, TissueConfig
    from pipeline.deposits.measure import Deposit, find_deposits, keep_seeded
    from pipeline.detection.heatmap import heatmap_from_scores
    from pipeline.detection.inference import score_tiles
    from pipeline.models import default_model_path, load_checkpoint
    from pipeline.slides.slide import open_slide
    from pipeline.slides.tiling import plan_tiles
    from pipeline.slides.tissue import detect_tissue

    slide_path, (centre_x, centre_y) = real_strip_slide(tmp_path / "strip.tif", centre_y_px, patch_index)
    model, card = load_checkpoint(default_model_path())
    with open_slide(slide_path) as slide:
        tiling = TilingConfig(tile_size_px=card.tile_size_px, mpp=card.mpp, stride_px=card.stride_px)
        grid = plan_tiles(slide.dimensions, slide.mpp, detect_tissue(slide, TissueConfig()), tiling)
        full = score_tiles(slide.source, grid, model, card, InferenceConfig(cascade=False))
    assert grid.grid_shape == (12, 12) and len(grid) == 144

    def deposits(probabilities: NDArray[np.float32]) -> list[Deposit]:
        found = find_deposits(heatmap_from_scores(grid, probabilities), card.threshold)
        return keep_seeded(found, card.seed_threshold)

    def cascade_deposits() -> list[Deposit]:
        probabilities, _ = cascade_scores(grid, lambda indices: full[indices], 0.2)
        return deposits(probabilities)

    truth = deposits(full)
    tile_l0_px = grid.tile_size_l0_px
    # whatever full scoring finds under the card's rules, the cascade finds identically
    assert [d.outline_xy.tolist() for d in cascade_deposits()] == [d.outline_xy.tolist() for d in truth]
    if not truth:  # this model does not reach the seed on this placement: nothing to lose
        return
    assert len(truth) == 1, "full scoring finds the pasted deposit and nothing else"
    assert abs(truth[0].centroid_x_px - centre_x) < tile_l0_px
    assert abs(truth[0].centroid_y_px - centre_y) < tile_l0_px
    # One screen tile per block (the former screen) sees none of it, and nothing near it is suspicious.
    monkeypatch.setattr(cascade, "_covering_tiles", lambda rc, screen, tile_strides: np.zeros(0, np.int64))
    assert cascade_deposits() == []
