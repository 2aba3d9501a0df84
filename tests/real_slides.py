"""Test slides built at test time from the real tissue in ../shared/data (never committed).

CAMELYON17 tiles are 2048 px JPEGs at about 0.243 µm/px (0.5 mm across); the level-0
CAMELYON16 patches are 256 px at 0.243 µm/px. Both are written as small pyramidal TIFFs with
their resolution, so they run through OpenSlide like any CAMELYON slide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pipeline.config import CAMELYON_LEVEL0_MPP
from pipeline.training.datasets import load_rgb
from tests.conftest import require_shared_data, write_pyramid_tiff

C17_TILES = {
    "centre_1": "centre_1_patient_024_node_2",
    "centre_3": "centre_3_patient_066_node_1",
    "centre_4": "centre_4_patient_097_node_3",
}
NEGATIVE_C17_TILE = "centre_3"
C16_PATCH_PX = 256


def c17_rgb(centre: str) -> NDArray[np.uint8]:
    """The CAMELYON17 tile of ``centre`` as (2048, 2048, 3) uint8 RGB."""
    return load_rgb(require_shared_data("camelyon17_tiles") / f"{C17_TILES[centre]}.jpeg")


def write_c17_slide(centre: str, path: Path) -> Path:
    """A pyramidal TIFF of the CAMELYON17 tile of ``centre`` at 0.243 µm/px."""
    return write_pyramid_tiff(path, c17_rgb(centre), CAMELYON_LEVEL0_MPP, n_levels=3, tile_px=256)


def write_untrained_negative_slide(path: Path) -> Path:
    """A pyramidal TIFF of the right half of the negative node's tile (centre 3): the default
    model trained on crops of its left half only, so only this half is evidence."""
    rgb = c17_rgb(NEGATIVE_C17_TILE)
    right_half = np.ascontiguousarray(rgb[:, rgb.shape[1] // 2 :])
    return write_pyramid_tiff(path, right_half, CAMELYON_LEVEL0_MPP, 3, 256)


def c16_tumor_patches(count: int) -> list[NDArray[np.uint8]]:
    """``count`` real level-0 CAMELYON16 tumor patches (RGB, 256 px at 0.243 µm/px)."""
    folder = require_shared_data("camelyon16_patches") / "tumor"
    patches = [load_rgb(path) for path in sorted(folder.glob("*.png"))[:count]]
    if len(patches) < count:
        raise RuntimeError(f"{folder}: expected at least {count} tumor patches, found {len(patches)}")
    return patches


def tumor_square_rgb(side_patches: int = 4) -> tuple[NDArray[np.uint8], tuple[int, int, int]]:
    """The negative CAMELYON17 tile with a square of real CAMELYON16 tumor patches pasted in its
    centre; returns the image and the square as (x0, y0, side) in level-0 px."""
    image = c17_rgb(NEGATIVE_C17_TILE)
    side = side_patches * C16_PATCH_PX
    y0 = x0 = (image.shape[0] - side) // 2
    patches = c16_tumor_patches(side_patches * side_patches)
    for index, patch in enumerate(patches):
        row, col = divmod(index, side_patches)
        y, x = y0 + row * C16_PATCH_PX, x0 + col * C16_PATCH_PX
        image[y : y + C16_PATCH_PX, x : x + C16_PATCH_PX] = patch
    return image, (x0, y0, side)


def write_tumor_square_slide(path: Path, side_patches: int = 4) -> tuple[Path, float]:
    """The tumor-square slide as a pyramidal TIFF; returns it and the square's true largest
    dimension (its diagonal) in mm."""
    image, (_, _, side) = tumor_square_rgb(side_patches)
    write_pyramid_tiff(path, image, CAMELYON_LEVEL0_MPP, n_levels=3, tile_px=256)
    return path, side * np.sqrt(2.0) * CAMELYON_LEVEL0_MPP / 1000.0
