"""Real-tissue test slides: the builders of ``pipeline.synthetic.real_slides`` (shared with the
benchmark scripts), each first checking that its tissue is in ../shared/data: skip outside CI,
fail under CI=true when it is missing (``conftest.require_shared_data``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pipeline.config import SHARED_DATA_DIR
from pipeline.synthetic import real_slides
from pipeline.synthetic.real_slides import C16_PATCH_PX, C17_TILES, NEGATIVE_C17_TILE
from tests.conftest import require_shared_data

__all__ = [
    "C16_PATCH_PX",
    "C17_TILES",
    "NEGATIVE_C17_TILE",
    "c16_tumor_patches",
    "c17_rgb",
    "tumor_square_rgb",
    "write_c17_slide",
    "write_tumor_square_slide",
    "write_untrained_negative_slide",
]


def _require_c17() -> None:
    require_shared_data(str(real_slides.C17_TILE_DIR.relative_to(SHARED_DATA_DIR)))


def _require_c16() -> None:
    require_shared_data(str(real_slides.C16_TUMOR_DIR.relative_to(SHARED_DATA_DIR)))


def c17_rgb(centre: str) -> NDArray[np.uint8]:
    """``real_slides.c17_rgb``: the CAMELYON17 tile of ``centre``."""
    _require_c17()
    return real_slides.c17_rgb(centre)


def write_c17_slide(centre: str, path: Path) -> Path:
    """``real_slides.write_c17_slide``: the tile of ``centre`` as a pyramidal TIFF."""
    _require_c17()
    return real_slides.write_c17_slide(centre, path)


def write_untrained_negative_slide(path: Path) -> Path:
    """``real_slides.write_untrained_negative_slide``: the right half of the negative tile."""
    _require_c17()
    return real_slides.write_untrained_negative_slide(path)


def c16_tumor_patches(count: int) -> list[NDArray[np.uint8]]:
    """``real_slides.c16_tumor_patches``: ``count`` real CAMELYON16 tumor patches."""
    _require_c16()
    return real_slides.c16_tumor_patches(count)


def tumor_square_rgb(side_patches: int = 4) -> tuple[NDArray[np.uint8], tuple[int, int, int]]:
    """``real_slides.tumor_square_rgb``: the negative tile with a pasted tumor square."""
    _require_c17()
    _require_c16()
    return real_slides.tumor_square_rgb(side_patches)


def write_tumor_square_slide(path: Path, side_patches: int = 4) -> tuple[Path, float]:
    """``real_slides.write_tumor_square_slide``: the tumor-square slide and its size in mm."""
    _require_c17()
    _require_c16()
    return real_slides.write_tumor_square_slide(path, side_patches)
