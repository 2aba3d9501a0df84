"""Small slides built from the real tissue in ../shared/data (never committed), for tests and
benchmarks.

CAMELYON17 tiles are 2048 px JPEGs at about 0.243 µm/px (0.5 mm across); the level-0
CAMELYON16 patches are 256 px at 0.243 µm/px. Both are written as small pyramidal TIFFs with
their resolution (``pipeline.synthetic.pyramid_tiff``), so they run through OpenSlide like any
CAMELYON slide. Raises ConfigError naming the file when the reference data is not there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from pipeline.config import CAMELYON_LEVEL0_MPP, SHARED_DATA_DIR
from pipeline.errors import ConfigError
from pipeline.slides.slide import rgba_to_rgb
from pipeline.synthetic.pyramid_tiff import write_pyramid_tiff

__all__ = [
    "C16_PATCH_PX",
    "C16_TUMOR_DIR",
    "C17_TILES",
    "C17_TILE_DIR",
    "NEGATIVE_C17_TILE",
    "c16_tumor_patches",
    "c17_rgb",
    "tumor_square_rgb",
    "write_c17_slide",
    "write_tumor_square_slide",
    "write_untrained_negative_slide",
]

C17_TILE_DIR = SHARED_DATA_DIR / "camelyon17_tiles"
C16_TUMOR_DIR = SHARED_DATA_DIR / "camelyon16_patches" / "tumor"
C17_TILES = {
    "centre_1": "centre_1_patient_024_node_2",
    "centre_3": "centre_3_patient_066_node_1",
    "centre_4": "centre_4_patient_097_node_3",
}
NEGATIVE_C17_TILE = "centre_3"
C16_PATCH_PX = 256
_MISSING = "the reference data lives in ../shared/data beside the repo (see its README)"


def _read_rgb(path: Path) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 RGB of a reference image, transparency composited onto white."""
    if not path.is_file():
        raise ConfigError(f"{path}: not found; {_MISSING}")
    try:
        with Image.open(path) as image:
            rgba = np.asarray(image.convert("RGBA"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"{path}: cannot read the image ({exc}); restore it from {_MISSING}") from exc
    return rgba_to_rgb(rgba)


def c17_rgb(centre: str) -> NDArray[np.uint8]:
    """The CAMELYON17 tile of ``centre`` (a key of C17_TILES) as (2048, 2048, 3) uint8 RGB."""
    return _read_rgb(C17_TILE_DIR / f"{C17_TILES[centre]}.jpeg")


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
    """``count`` real level-0 CAMELYON16 tumor patches (RGB, 256 px at 0.243 µm/px), in file
    name order; raises ConfigError when the folder holds fewer."""
    paths = sorted(C16_TUMOR_DIR.glob("*.png"))[:count]
    if len(paths) < count:
        raise ConfigError(f"{C16_TUMOR_DIR}: expected at least {count} tumor patches, found {len(paths)}; "
                          f"{_MISSING}")  # fmt: skip
    return [_read_rgb(path) for path in paths]


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
    return path, float(side * np.sqrt(2.0) * CAMELYON_LEVEL0_MPP / 1000.0)
