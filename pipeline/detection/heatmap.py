"""Heatmap: reads tile probabilities and their grid, produces a level-0-aligned probability map.

A heatmap cell (row, col) holds the tumor probability of the tile whose level-0 top-left
corner is (origin_x_px + col * stride_l0_px, origin_y_px + row * stride_l0_px). The cell
stands for the stride-sized square centred on that tile, so an overlapping grid (stride
smaller than the tile) gives a finer map. Saved as ``heatmap.npy`` (float32, NaN where no
tile was scored) plus ``heatmap.json`` (geometry), which reload exactly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import HeatmapError
from pipeline.outputs import atomic_write_bytes
from pipeline.slides.tiling import TileGrid

HEATMAP_ARRAY = "heatmap.npy"
HEATMAP_META = "heatmap.json"
HEATMAP_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Heatmap:
    """Tumor probabilities on a regular grid over the slide.

    probabilities: (rows, cols) float32 in [0, 1], NaN where no tile was scored.
    origin_x_px, origin_y_px: level-0 top-left corner of the tile of cell (0, 0).
    stride_l0_px: grid step in level-0 px. tile_size_l0_px: tile side in level-0 px.
    slide_mpp: level-0 µm/px. slide_dimensions: level-0 (width, height) px.
    """

    probabilities: NDArray[np.float32]
    origin_x_px: float
    origin_y_px: float
    stride_l0_px: float
    tile_size_l0_px: float
    slide_mpp: float
    slide_dimensions: tuple[int, int]

    @property
    def stride_um(self) -> float:
        """Grid step in µm."""
        return self.stride_l0_px * self.slide_mpp

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        rows, cols = self.probabilities.shape
        return int(rows), int(cols)

    def cell_center_xy(self, heatmap_rc: NDArray[np.float64]) -> NDArray[np.float64]:
        """Level-0 (x, y) centres of cells given as (N, 2) fractional (row, col)."""
        rc = np.asarray(heatmap_rc, dtype=np.float64).reshape(-1, 2)
        half = self.tile_size_l0_px / 2.0
        x = self.origin_x_px + rc[:, 1] * self.stride_l0_px + half
        y = self.origin_y_px + rc[:, 0] * self.stride_l0_px + half
        return np.stack([x, y], axis=1)

    def to_metadata(self) -> dict[str, Any]:
        """The JSON sidecar contents."""
        return {
            "format_version": HEATMAP_FORMAT_VERSION,
            "shape_rc": list(self.shape),
            "origin_x_px": self.origin_x_px,
            "origin_y_px": self.origin_y_px,
            "stride_l0_px": self.stride_l0_px,
            "stride_um": self.stride_um,
            "tile_size_l0_px": self.tile_size_l0_px,
            "tile_size_um": self.tile_size_l0_px * self.slide_mpp,
            "slide_mpp": self.slide_mpp,
            "slide_dimensions": list(self.slide_dimensions),
            "cell_meaning": "probability of the tile whose level-0 top-left corner is "
            "origin + (col, row) * stride_l0_px; the cell is the stride square centred on it",
        }


def heatmap_from_scores(grid: TileGrid, probabilities: NDArray[np.float32]) -> Heatmap:
    """Place per-tile probabilities (N,) on the grid; unscored cells are NaN."""
    if probabilities.shape != (len(grid),):
        raise ValueError(f"expected {len(grid)} probabilities, got shape {probabilities.shape}")
    values = np.full(grid.grid_shape, np.nan, dtype=np.float32)
    values[grid.heatmap_rc[:, 0], grid.heatmap_rc[:, 1]] = probabilities.astype(np.float32)
    return Heatmap(
        probabilities=values,
        origin_x_px=0.0,
        origin_y_px=0.0,
        stride_l0_px=grid.stride_l0_px,
        tile_size_l0_px=grid.tile_size_l0_px,
        slide_mpp=grid.slide_mpp,
        slide_dimensions=grid.slide_dimensions,
    )


def save_heatmap(heatmap: Heatmap, folder: Path) -> None:
    """Write heatmap.npy and heatmap.json into ``folder`` atomically."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, heatmap.probabilities.astype(np.float32), allow_pickle=False)
    atomic_write_bytes(folder / HEATMAP_ARRAY, buffer.getvalue())
    meta = json.dumps(heatmap.to_metadata(), indent=2).encode()
    atomic_write_bytes(folder / HEATMAP_META, meta)


def load_heatmap(folder: Path) -> Heatmap:
    """Reload a heatmap saved by ``save_heatmap``; raises HeatmapError naming the file."""
    array_path, meta_path = folder / HEATMAP_ARRAY, folder / HEATMAP_META
    for path in (array_path, meta_path):
        if not path.is_file():
            raise HeatmapError(f"{path}: heatmap file not found; run `micromet infer` first")
    try:
        values = np.load(array_path, allow_pickle=False)
        meta = json.loads(meta_path.read_text())
        heatmap = Heatmap(
            probabilities=values.astype(np.float32, copy=False),
            origin_x_px=float(meta["origin_x_px"]),
            origin_y_px=float(meta["origin_y_px"]),
            stride_l0_px=float(meta["stride_l0_px"]),
            tile_size_l0_px=float(meta["tile_size_l0_px"]),
            slide_mpp=float(meta["slide_mpp"]),
            slide_dimensions=(int(meta["slide_dimensions"][0]), int(meta["slide_dimensions"][1])),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise HeatmapError(f"{folder}: heatmap files are unreadable or inconsistent ({exc})") from exc
    if list(heatmap.shape) != list(meta.get("shape_rc", heatmap.shape)) or values.ndim != 2:
        raise HeatmapError(f"{array_path}: array shape {values.shape} does not match {meta_path}")
    return heatmap
