"""Small pyramidal TIFF slides from an RGB array, for tests and benchmarks.

``write_pyramid_tiff`` writes an (H, W, 3) uint8 image as a tiled, JPEG-compressed pyramidal
TIFF (levels as pages) with its µm/px in the resolution tags, so OpenSlide reads it like any
generic TIFF slide; ``draw_tissue_rgb`` draws the simplest tissue to put in one (a pink blob
with purple nuclei). Slides with planted deposits of known size are ``pipeline.synthetic.generate``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from numpy.typing import NDArray

__all__ = ["draw_tissue_rgb", "write_pyramid_tiff"]

UM_PER_CM = 1e4  # TIFF resolution tags count pixels per centimetre


def write_pyramid_tiff(
    path: Path,
    image: NDArray[np.uint8],
    mpp: float | None,
    n_levels: int = 3,
    tile_px: int = 128,
) -> Path:
    """Write a tiled, JPEG-compressed pyramidal TIFF (levels as pages, each half the one before)
    with ``mpp`` µm/px in its resolution tags (none when None); returns ``path``."""
    resolution = None if mpp is None else (UM_PER_CM / mpp, UM_PER_CM / mpp)
    with tifffile.TiffWriter(path) as tif:
        level = image
        for index in range(n_levels):
            level_resolution = None
            if resolution is not None:
                factor = image.shape[1] / level.shape[1]
                level_resolution = (resolution[0] / factor, resolution[1] / factor)
            tif.write(
                level,
                tile=(tile_px, tile_px),
                compression="jpeg",
                photometric="rgb",
                resolution=level_resolution,
                subfiletype=0 if index == 0 else 1,
                resolutionunit=None if mpp is None else "CENTIMETER",
            )
            level = level[::2, ::2]
    return path


def draw_tissue_rgb(width_px: int, height_px: int, seed: int = 0) -> NDArray[np.uint8]:
    """A white image with a pink elliptical tissue blob dotted with purple nuclei."""
    rng = np.random.default_rng(seed)
    image = np.full((height_px, width_px, 3), 242, dtype=np.uint8)
    yy, xx = np.mgrid[0:height_px, 0:width_px]
    cx, cy = width_px * 0.5, height_px * 0.5
    inside = ((xx - cx) / (width_px * 0.35)) ** 2 + ((yy - cy) / (height_px * 0.35)) ** 2 <= 1
    image[inside] = (222, 160, 200)
    n_nuclei = inside.sum() // 400
    ys, xs = np.nonzero(inside)
    picks = rng.choice(len(xs), size=int(n_nuclei), replace=False)
    for x, y in zip(xs[picks], ys[picks], strict=True):
        image[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = (90, 40, 140)
    return image
