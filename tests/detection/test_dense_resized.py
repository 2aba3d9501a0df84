"""Dense inference of grids whose tiles need resizing (pipeline/detection/dense.py,
``resized_regions``): each block's region is read once, resized once to T + s (n - 1) model px,
and scored with ``dense_logits``; its cells equal tile-wise scores of 96 px crops of that resized
region, and differ from per-tile resized tiles only by resampling."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import draw_tissue_rgb, write_pyramid_tiff
from numpy.typing import NDArray
from torch import nn

from pipeline.detection.dense import DENSE_BLOCK_CELLS, plan_dense
from pipeline.detection.inference import prepare_model, score_prepared
from pipeline.models import ModelCard, save_checkpoint
from pipeline.models.architectures import Dense96
from pipeline.slides.readers import RegionDataset, RegionTiles, read_geometry, tile_level_xy
from pipeline.slides.slide import SlideSource, open_slide
from pipeline.slides.tiling import TileGrid
from tests.detection.test_dense_inference import (
    ATOL,
    FP32,
    STRIDE_PX,
    TILE_PX,
    TILES,
    analyze,
    card_for,
    plan_grid,
)

# The card's µm/px (the default model's): no level of a 0.25 or 0.5 µm/px pyramid matches it.
CARD_MPP = 0.972


def resized_card() -> ModelCard:
    return dataclasses.replace(card_for(), mpp=CARD_MPP, seed_threshold=0.7)


def small_dense96(seed: int = 0) -> Dense96:
    torch.manual_seed(seed)
    return Dense96(channels=(8, 8, 16, 16, 16)).eval()


def fit_head(
    model: Dense96, slide_path: Path, card: ModelCard, positive: NDArray[np.bool_] | float
) -> Dense96:
    """``model`` with BatchNorm statistics of ``slide_path`` (read at the card's µm/px) and a head
    whose tumor probabilities spread over (0, 1): high on the cells where ``positive`` (a (rows,
    cols) mask of the slide's grid) is set, or, given a share, on about that share of the cells
    along the direction in which the features vary most."""
    with open_slide(slide_path) as slide:
        image = slide.thumbnail_at_mpp(card.mpp)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
    x = (x - torch.tensor(card.mean).view(1, 3, 1, 1)) / torch.tensor(card.std).view(1, 3, 1, 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model.train()(x)
        model.eval()
        features = model.features(x)[0]  # (channels, rows, cols): cell (row, col) of the grid
    cells = features.flatten(1).T
    if isinstance(positive, float):
        direction = torch.linalg.svd(cells - cells.mean(dim=0), full_matrices=False).Vh[0]
        projection = cells @ direction
        centre = float(torch.quantile(projection, 1.0 - positive))
    else:
        mask = torch.from_numpy(positive[: features.shape[1], : features.shape[2]].ravel())
        direction = cells[mask].mean(dim=0) - cells[~mask].mean(dim=0)
        direction = direction / direction.norm()
        projection = cells @ direction
        centre = 0.5 * float(projection[mask].mean() + projection[~mask].mean())
    gain = 4.0 / float(projection.std())
    with torch.no_grad():
        model.head.weight[1] = model.head.weight[0] + gain * direction.view(-1, 1, 1)
        assert model.head.bias is not None
        model.head.bias[1] = model.head.bias[0] - gain * centre
    return model


@pytest.fixture(scope="module", params=[0.25, 0.5], ids=["0.25um", "0.5um"])
def resized_slide(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 760 x 380 µm of synthetic tissue: a 10 x 22 grid at 0.972 µm/px (two blocks of columns),
    # read at 0.5 µm/px (level 1 of the 0.25 µm/px pyramid, level 0 of the 0.5 µm/px one)
    slide_mpp = float(request.param)
    width, height = round(760 / slide_mpp), round(380 / slide_mpp)
    path = tmp_path_factory.mktemp("resized") / f"synthetic_{slide_mpp:g}.tif"
    return write_pyramid_tiff(path, draw_tissue_rgb(width, height, seed=5), mpp=slide_mpp)


def regions_of(slide_path: Path, grid: TileGrid, plan: object) -> list[RegionTiles]:
    card = resized_card()
    with open_slide(slide_path) as slide:
        geometry = read_geometry(slide, TILE_PX, card.mpp)
    regions = plan.regions  # type: ignore[attr-defined]
    source = SlideSource.with_mpp(slide_path, grid.slide_mpp)
    dataset = RegionDataset(source, geometry, tile_level_xy(grid.xy_px, geometry), regions)
    return [item for item in dataset if isinstance(item, RegionTiles)]


def test_resized_regions_are_scored_densely_and_equal_tile_scores_of_their_own_crops(
    resized_slide: Path,
) -> None:
    card = resized_card()
    grid = plan_grid(resized_slide, CARD_MPP)
    model = fit_head(small_dense96(), resized_slide, card, 0.2)
    prepared = prepare_model(model, card, FP32)
    dense, stats = score_prepared(SlideSource.with_mpp(resized_slide, grid.slide_mpp), grid, prepared, FP32)
    assert stats.mode == "dense" and stats.n_regions == 2 and len(grid) >= 60
    assert grid.grid_shape[1] > DENSE_BLOCK_CELLS  # a partial second block
    with open_slide(resized_slide) as slide:
        geometry = read_geometry(slide, TILE_PX, card.mpp)
    assert geometry.level_tile_px != TILE_PX  # the tile path resizes every tile
    plan = plan_dense(grid, geometry, card, prepared.dense)
    assert plan is not None and plan.regions.resized is not None
    # every cell's tile: the 96 px crop at (32 col, 32 row) of its block's resized region
    crops = np.zeros((len(grid), TILE_PX, TILE_PX, 3), np.uint8)
    for item in regions_of(resized_slide, grid, plan):
        region = item.tiles[0]
        rc = grid.heatmap_rc[item.indices]
        rows, cols = (rc.max(axis=0) - rc.min(axis=0)).tolist()
        assert region.shape == (TILE_PX + STRIDE_PX * rows, TILE_PX + STRIDE_PX * cols, 3)
        for index, (row, col) in zip(item.indices, (rc - rc.min(axis=0)).tolist(), strict=True):
            y, x = STRIDE_PX * row, STRIDE_PX * col
            crops[index] = region[y : y + TILE_PX, x : x + TILE_PX]
    with torch.inference_mode():
        tile_wise = prepared.scorer(torch.from_numpy(crops)).numpy()
    np.testing.assert_allclose(dense, tile_wise, rtol=0, atol=ATOL)
    assert np.ptp(tile_wise) > 0.5  # the cells differ, so a misplaced crop would show
    # per-tile resized tiles are resampled on their own, so they differ; this random network
    # magnifies the sub-pixel shifts of the synthetic nuclei, so the difference is measured on
    # real tissue with a trained model (docs/benchmarks.md, "Dense inference")
    source = SlideSource.with_mpp(resized_slide, grid.slide_mpp)
    tiles, tile_stats = score_prepared(source, grid, prepared, TILES)
    assert tile_stats.mode == "tiles" and np.abs(dense - tiles).max() > ATOL


def test_each_resized_cell_sees_the_slide_under_one_read_level_px_from_its_true_corner(
    resized_slide: Path,
) -> None:
    card = resized_card()
    grid = plan_grid(resized_slide, CARD_MPP)
    prepared = prepare_model(small_dense96(), card, FP32)
    with open_slide(resized_slide) as slide:
        geometry = read_geometry(slide, TILE_PX, card.mpp)
    plan = plan_dense(grid, geometry, card, prepared.dense)
    assert plan is not None and plan.regions.resized is not None
    resized = plan.regions.resized
    cell_level_px = grid.stride_l0_px / geometry.downsample
    worst = 0.0
    for block in range(plan.regions.n_regions):
        rc = grid.heatmap_rc[plan.regions.block(block)]
        first = rc.min(axis=0)[::-1]  # (col, row)
        level_per_model = resized.read_px[block] / resized.model_px[block]
        for cell in rc[:, ::-1]:
            seen = resized.origin_level_px[block] + STRIDE_PX * (cell - first) * level_per_model
            worst = max(worst, float(np.abs(seen - cell * cell_level_px).max()))
    assert 0 < worst < 1.0


def test_a_grid_off_its_lattice_is_scored_tile_by_tile_when_tiles_need_resizing(resized_slide: Path) -> None:
    from pipeline.slides.tiling import subset_grid

    card = resized_card()
    grid = plan_grid(resized_slide, CARD_MPP)
    prepared = prepare_model(small_dense96(), card, FP32)
    with open_slide(resized_slide) as slide:
        geometry = read_geometry(slide, TILE_PX, card.mpp)
    assert plan_dense(grid, geometry, card, prepared.dense) is not None
    moved = dataclasses.replace(grid, xy_px=grid.xy_px + np.array([[1, 0]]))
    assert plan_dense(moved, geometry, card, prepared.dense) is None
    fine = plan_grid(resized_slide, CARD_MPP, stride_px=16)  # half the card's stride
    assert plan_dense(fine, geometry, card, prepared.dense) is None
    screen = subset_grid(grid, np.flatnonzero((grid.heatmap_rc % 3 == 0).all(axis=1)))
    assert plan_dense(screen, geometry, card, prepared.dense) is None


# --- Real tissue with a real tumor deposit, at 0.25 µm/px ---------------------------------------

TUMOR_SLIDE_MPP = 0.25


def tumor_square_slide(folder: Path) -> tuple[Path, NDArray[np.bool_]]:
    """The negative CAMELYON17 tile with real CAMELYON16 tumor pasted in its centre, written at
    0.25 µm/px (read at level 1, 0.5 µm/px, resized to 0.972), and the grid cells (rows, cols)
    wholly inside the tumor."""
    from tests.real_slides import tumor_square_rgb

    image, (x0, y0, side) = tumor_square_rgb()
    path = write_pyramid_tiff(folder / "tumor_square.tif", image, TUMOR_SLIDE_MPP, n_levels=3, tile_px=256)
    grid = plan_grid(path, CARD_MPP)
    rows, cols = grid.grid_shape
    corner = np.arange(max(rows, cols)) * grid.stride_l0_px
    inside = (corner >= x0) & (corner + grid.tile_size_l0_px <= x0 + side)
    inside_y = (corner >= y0) & (corner + grid.tile_size_l0_px <= y0 + side)
    return path, np.outer(inside_y[:rows], inside[:cols])


@pytest.mark.shared_data
def test_real_tumor_deposit_is_found_alike_by_resized_dense_and_per_tile_scoring(tmp_path: Path) -> None:
    slide_path, tumor_cells = tumor_square_slide(tmp_path)
    card = resized_card()
    torch.manual_seed(0)
    model = fit_head(Dense96().eval(), slide_path, card, tumor_cells)
    model_path = save_checkpoint(tmp_path / "dense96.pt", model, card)
    tiles = analyze(model_path, slide_path, tmp_path / "tiles", dense=False)
    dense = analyze(model_path, slide_path, tmp_path / "dense", dense=True)
    tiles_map = np.load(tmp_path / "tiles" / "heatmap.npy")
    dense_map = np.load(tmp_path / "dense" / "heatmap.npy")
    scored = np.isfinite(tiles_map)
    assert np.array_equal(scored, np.isfinite(dense_map)) and scored.sum() >= 100
    difference = np.abs(dense_map[scored] - tiles_map[scored])
    # resampling only: 0.024 mean with this model, 0.004 to 0.020 with a trained one (docs/benchmarks.md)
    assert 0 < difference.mean() < 0.05
    assert np.mean(tiles_map[tumor_cells] >= card.threshold) > 0.9  # the tumor is the deposit
    assert dense["deposits"] and len(dense["deposits"]) == len(tiles["deposits"])
    for found, expected in zip(dense["deposits"], tiles["deposits"], strict=True):
        assert found["category"] == expected["category"]
    assert dense["category"] == tiles["category"]
    reports = {mode: json.loads((tmp_path / mode / "report.json").read_text()) for mode in ("dense", "tiles")}
    assert {mode: report["inference"]["mode"] for mode, report in reports.items()} == {
        "dense": "dense",
        "tiles": "tiles",
    }
