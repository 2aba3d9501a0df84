"""Tiling: a grid at a physical resolution, level-0 coordinates, tissue filtering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import TilingConfig, TissueConfig
from pipeline.errors import NoTissueError
from pipeline.slides.slide import open_slide
from pipeline.slides.tiling import grid_shape_for, plan_tiles
from pipeline.slides.tissue import TissueMask, detect_tissue


def _full_mask(width: int, height: int, mask_mpp: float, slide_mpp: float) -> TissueMask:
    rows = round(height * slide_mpp / mask_mpp)
    cols = round(width * slide_mpp / mask_mpp)
    return TissueMask(np.ones((rows, cols), bool), mask_mpp, (width, height))


def test_tile_size_in_level0_px_follows_the_physical_resolution() -> None:
    tissue = _full_mask(4000, 3000, 8.0, 0.25)
    grid = plan_tiles((4000, 3000), 0.25, tissue, TilingConfig(tile_size_px=100, mpp=1.0))
    assert grid.tile_size_l0_px == pytest.approx(400)
    assert grid.grid_shape == (7, 10)
    assert len(grid) == 70
    assert grid.tile_size_um == pytest.approx(100.0)
    assert set(np.unique(grid.xy_px[:, 0])) == {400 * c for c in range(10)}


def test_overlapping_stride_gives_more_tiles() -> None:
    tissue = _full_mask(4000, 3000, 8.0, 0.25)
    config = TilingConfig(tile_size_px=100, mpp=1.0, stride_px=50)
    grid = plan_tiles((4000, 3000), 0.25, tissue, config)
    assert grid.stride_l0_px == pytest.approx(200)
    assert grid.grid_shape == grid_shape_for((4000, 3000), 400, 200) == (14, 19)


def test_only_tiles_with_enough_tissue_are_kept() -> None:
    tissue = _full_mask(4000, 3000, 8.0, 0.25)
    tissue.mask[:, : tissue.mask.shape[1] // 2] = False  # left half is glass
    grid = plan_tiles((4000, 3000), 0.25, tissue, TilingConfig(tile_size_px=100, mpp=1.0))
    assert (grid.xy_px[:, 0] >= 2000 - 400).all()
    assert (grid.tissue_fraction > 0.25).all()
    rows, cols = grid.heatmap_rc[:, 0], grid.heatmap_rc[:, 1]
    assert np.array_equal(grid.xy_px[:, 0], np.round(cols * grid.stride_l0_px).astype(np.int64))
    assert np.array_equal(grid.xy_px[:, 1], np.round(rows * grid.stride_l0_px).astype(np.int64))


def test_no_tissue_is_a_clear_error() -> None:
    tissue = TissueMask(np.zeros((10, 10), bool), 8.0, (400, 400))
    with pytest.raises(NoTissueError, match="min-tissue-fraction"):
        plan_tiles((400, 400), 0.2, tissue, TilingConfig(tile_size_px=32, mpp=0.5))


def test_tiles_cover_the_tissue_of_a_real_generated_slide(tiny_slide: Path) -> None:
    with open_slide(tiny_slide) as slide:
        tissue = detect_tissue(slide, TissueConfig(mask_mpp=4.0))
        grid = plan_tiles(slide.dimensions, slide.mpp, tissue, TilingConfig(tile_size_px=50, mpp=2.0))
    centres = grid.xy_px + grid.tile_size_l0_px / 2
    # Kept tile centres lie near the drawn ellipse (centre 750,550; radii 525,385).
    radius = ((centres[:, 0] - 750) / 525) ** 2 + ((centres[:, 1] - 550) / 385) ** 2
    assert (radius < 1.5).all()
    assert len(grid) > 10


@pytest.mark.parametrize(
    "kwargs", [{"tile_size_px": 0}, {"mpp": 0.0}, {"stride_px": 0}, {"min_tissue_fraction": 2.0}]
)
def test_bad_tiling_values_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TilingConfig(**kwargs)  # type: ignore[arg-type]
