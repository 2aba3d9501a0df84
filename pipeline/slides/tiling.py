"""Tiling: reads a slide's size, mpp and tissue mask, produces a grid of tile coordinates.

Tiles are defined at a physical resolution (model µm/px and tile size in px) and
placed on a regular grid in level-0 px, so every output maps back onto the slide.
Only tiles whose tissue coverage exceeds ``min_tissue_fraction`` are kept.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.typing import NDArray

from pipeline.config import TilingConfig
from pipeline.errors import NoTissueError
from pipeline.slides.tissue import TissueMask


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Tiles kept on a regular grid.

    xy_px: (N, 2) int64 level-0 top-left corners. heatmap_rc: (N, 2) int64 grid row, col.
    grid_shape: (rows, cols) of the full grid. tile_size_l0_px / stride_l0_px: tile side
    and step in level-0 px (floats: physical sizes rarely map to whole pixels).
    tile_size_px / mpp: the tile at the model resolution. tissue_fraction: (N,) float32.
    """

    xy_px: NDArray[np.int64]
    heatmap_rc: NDArray[np.int64]
    grid_shape: tuple[int, int]
    tile_size_px: int
    mpp: float
    slide_mpp: float
    tile_size_l0_px: float
    stride_l0_px: float
    slide_dimensions: tuple[int, int]
    tissue_fraction: NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.xy_px.shape[0])

    @property
    def stride_um(self) -> float:
        """Grid step in µm."""
        return self.stride_l0_px * self.slide_mpp

    @property
    def tile_size_um(self) -> float:
        """Tile side in µm."""
        return self.tile_size_l0_px * self.slide_mpp

    @property
    def read_size_l0_px(self) -> int:
        """Tile side in whole level-0 px, as read from the slide."""
        return math.ceil(self.tile_size_l0_px)


def grid_shape_for(
    slide_dimensions: tuple[int, int], tile_size_l0_px: float, stride_l0_px: float
) -> tuple[int, int]:
    """(rows, cols) of whole tiles that fit on the slide."""
    width, height = slide_dimensions
    cols = math.floor((width - tile_size_l0_px) / stride_l0_px) + 1 if width >= tile_size_l0_px else 0
    rows = math.floor((height - tile_size_l0_px) / stride_l0_px) + 1 if height >= tile_size_l0_px else 0
    return max(rows, 0), max(cols, 0)


def tile_tissue_fractions(
    tissue: TissueMask, x_px: NDArray[np.float64], y_px: NDArray[np.float64], size_l0_px: float
) -> NDArray[np.float32]:
    """Tissue coverage (0-1) of square tiles with level-0 corners (x_px, y_px), via an
    integral image of the mask so millions of tiles cost one pass."""
    mask = tissue.mask.astype(np.float64)
    rows, cols = mask.shape
    integral = np.zeros((rows + 1, cols + 1), dtype=np.float64)
    integral[1:, 1:] = mask.cumsum(axis=0).cumsum(axis=1)
    scale_x, scale_y = tissue.level0_px_per_mask_px
    c0 = np.clip(np.floor(x_px / scale_x), 0, cols).astype(np.int64)
    c1 = np.clip(np.ceil((x_px + size_l0_px) / scale_x), 0, cols).astype(np.int64)
    r0 = np.clip(np.floor(y_px / scale_y), 0, rows).astype(np.int64)
    r1 = np.clip(np.ceil((y_px + size_l0_px) / scale_y), 0, rows).astype(np.int64)
    area = np.maximum((r1 - r0) * (c1 - c0), 1)
    covered = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    return (covered / area).astype(np.float32)


def plan_tiles(
    slide_dimensions: tuple[int, int], slide_mpp: float, tissue: TissueMask, config: TilingConfig
) -> TileGrid:
    """Plan the tile grid for a slide.

    slide_dimensions: level-0 (width, height) px; slide_mpp: level-0 µm/px.
    Raises NoTissueError if no tile reaches ``config.min_tissue_fraction``.
    """
    tile_size_l0 = config.tile_size_px * config.mpp / slide_mpp
    stride_l0 = config.effective_stride_px * config.mpp / slide_mpp
    rows, cols = grid_shape_for(slide_dimensions, tile_size_l0, stride_l0)
    rr_2d, cc_2d = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    rr, cc = rr_2d.ravel(), cc_2d.ravel()
    x = np.round(cc * stride_l0)
    y = np.round(rr * stride_l0)
    fractions = tile_tissue_fractions(tissue, x, y, tile_size_l0)
    keep = fractions > config.min_tissue_fraction
    if not keep.any():
        raise NoTissueError(
            f"no tile of {config.tile_size_px} px at {config.mpp:g} µm/px has more than "
            f"{config.min_tissue_fraction:g} tissue (tissue fraction {tissue.tissue_fraction:.4f}); "
            "check the slide, or lower --min-tissue-fraction"
        )
    return TileGrid(
        xy_px=np.stack([x[keep], y[keep]], axis=1).astype(np.int64),
        heatmap_rc=np.stack([rr[keep], cc[keep]], axis=1).astype(np.int64),
        grid_shape=(rows, cols),
        tile_size_px=config.tile_size_px,
        mpp=config.mpp,
        slide_mpp=slide_mpp,
        tile_size_l0_px=tile_size_l0,
        stride_l0_px=stride_l0,
        slide_dimensions=slide_dimensions,
        tissue_fraction=fractions[keep],
    )


def _lattice_step(values: NDArray[np.int64], fallback: float) -> float:
    steps = np.diff(np.unique(values))
    return float(steps.min()) if len(steps) else fallback


def points_grid(template: TileGrid, xy_px: NDArray[np.int64]) -> TileGrid:
    """A TileGrid over tile corners on a regular lattice (e.g. a refinement neighbourhood);
    the lattice step is read off the points, rows and columns count from their minimum."""
    xy = np.asarray(xy_px, dtype=np.int64).reshape(-1, 2)
    stride = min(
        _lattice_step(xy[:, 0], template.stride_l0_px), _lattice_step(xy[:, 1], template.stride_l0_px)
    )
    origin = xy.min(axis=0)
    rc = np.round((xy[:, ::-1] - origin[::-1]) / stride).astype(np.int64)
    shape = (int(rc[:, 0].max()) + 1, int(rc[:, 1].max()) + 1)
    return dataclasses.replace(
        template,
        xy_px=xy,
        heatmap_rc=rc,
        grid_shape=shape,
        stride_l0_px=stride,
        tissue_fraction=np.ones(len(xy), np.float32),
    )


def subset_grid(grid: TileGrid, indices: NDArray[np.int64]) -> TileGrid:
    """The tiles of ``grid`` at ``indices``, on the same lattice."""
    return dataclasses.replace(
        grid,
        xy_px=grid.xy_px[indices],
        heatmap_rc=grid.heatmap_rc[indices],
        tissue_fraction=grid.tissue_fraction[indices],
    )
