"""Slide access: coarser levels computed for a single-level image or slide, read by regions.

Reads an OpenSlide-like handle with one level (a plain image from ``plain_images``, or a
single-level TIFF OpenSlide opens) and produces a handle with levels 4, 16, 64... times
coarser, computed from level 0 in pieces, so a thumbnail or a zoomed-out view never decodes
level 0 whole: memory stays bounded by ``MAX_READ_PX`` level-0 pixels per read plus the
computed levels small enough to keep (``MAX_CACHED_LEVEL_PX``).
Coordinates are level-0 pixels, (x, y) and (width, height), as in OpenSlide.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
from openslide import AbstractSlide
from PIL import Image

# Level-0 pixels decoded per read when computing a coarser level (64 MB as RGBA).
MAX_READ_PX = 16_777_216
# A computed level of at most this many pixels (16 MB as RGBA) is computed once and kept.
MAX_CACHED_LEVEL_PX = 4_194_304
# A single-level image whose longer side exceeds this gets computed coarser levels.
COMPUTED_LEVELS_MIN_SIDE_PX = 4096
# Each computed level is this many times coarser than the one before ...
COMPUTED_LEVEL_FACTOR = 4
# ... until the longer side is at most this.
COMPUTED_LEVELS_MAX_COARSEST_SIDE_PX = 1024


def computed_level_factors(size: tuple[int, int]) -> tuple[int, ...]:
    """Downsamples of the levels computed for a single-level image of ``size`` (width, height)
    px: none up to ``COMPUTED_LEVELS_MIN_SIDE_PX``, else powers of ``COMPUTED_LEVEL_FACTOR``."""
    longer = max(size)
    factors: list[int] = []
    if longer <= COMPUTED_LEVELS_MIN_SIDE_PX:
        return ()
    factor = COMPUTED_LEVEL_FACTOR
    while True:
        factors.append(factor)
        if longer / factor <= COMPUTED_LEVELS_MAX_COARSEST_SIDE_PX:
            return tuple(factors)
        factor *= COMPUTED_LEVEL_FACTOR


class ComputedLevels(AbstractSlide):
    """A single-level handle with coarser levels computed from level 0 by box averaging.

    A read at a computed level decodes level 0 in pieces of at most ``MAX_READ_PX`` px; a
    computed level of at most ``MAX_CACHED_LEVEL_PX`` px is computed whole once and kept. ``properties`` gains
    ``micromet.computed-levels`` (how many levels are computed rather than stored).
    """

    def __init__(self, base: AbstractSlide, factors: tuple[int, ...]) -> None:
        super().__init__()
        self.base = base
        self.factors = (1, *factors)
        width, height = base.dimensions
        self._dimensions = tuple((max(1, width // f), max(1, height // f)) for f in self.factors)
        self._properties = {**base.properties, "micromet.computed-levels": str(len(factors))}
        self._cache: dict[int, Image.Image] = {}
        self._lock = threading.Lock()

    @classmethod
    def detect_format(cls, filename: Any) -> str | None:
        return None

    def close(self) -> None:
        self.base.close()
        self._cache.clear()

    @property
    def level_count(self) -> int:
        return len(self.factors)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(f) for f in self.factors)

    @property
    def properties(self) -> Mapping[str, str]:
        return self._properties

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        return {}

    def get_best_level_for_downsample(self, downsample: float) -> int:
        fitting = [level for level, f in enumerate(self.factors) if f <= downsample]
        return max(fitting, default=0)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        if not 0 <= level < len(self.factors):
            raise ValueError(f"level {level} does not exist; the image has {len(self.factors)} levels")
        if level == 0:
            return self.base.read_region(location, 0, size)
        factor = self.factors[level]
        width, height = self._dimensions[level]
        x, y = location[0] / factor, location[1] / factor
        if width * height > MAX_CACHED_LEVEL_PX or not (x.is_integer() and y.is_integer()):
            return self._reduced(location, factor, size)
        tile = Image.new("RGBA", size, (0, 0, 0, 0))
        whole = self._cached_level(level)
        tile.paste(whole.crop((int(x), int(y), int(x) + size[0], int(y) + size[1])), (0, 0))
        return tile

    def _cached_level(self, level: int) -> Image.Image:
        """The whole of computed ``level``, computed once (from the finer level when that is
        kept too, else from level 0 in pieces)."""
        with self._lock:
            cached = self._cache.get(level)
        if cached is not None:
            return cached
        finer = level - 1
        width, height = self._dimensions[finer]
        if finer > 0 and width * height <= MAX_CACHED_LEVEL_PX:
            step = self.factors[level] // self.factors[finer]
            source = self._cached_level(finer)
            crop = source.crop((0, 0, self._dimensions[level][0] * step, self._dimensions[level][1] * step))
            image = crop.reduce(step)
        else:
            image = self._reduced((0, 0), self.factors[level], self._dimensions[level])
        with self._lock:
            return self._cache.setdefault(level, image)

    def _reduced(self, location: tuple[int, int], factor: int, size: tuple[int, int]) -> Image.Image:
        """``size`` px at 1/``factor`` of level 0 from ``location`` (level-0 px), read in pieces."""
        width, height = size
        out = Image.new("RGBA", size, (0, 0, 0, 0))
        side = max(1, math.isqrt(MAX_READ_PX) // factor)  # output px per piece side
        for oy in range(0, height, side):
            for ox in range(0, width, side):
                piece_w, piece_h = min(side, width - ox), min(side, height - oy)
                corner = (location[0] + ox * factor, location[1] + oy * factor)
                level0 = self.base.read_region(corner, 0, (piece_w * factor, piece_h * factor))
                out.paste(_whiten_transparent(level0).reduce(factor), (ox, oy))
        return out


def _whiten_transparent(rgba: Image.Image) -> Image.Image:
    """``rgba`` with fully transparent pixels white (OpenSlide gives them black), so averaging
    them into a coarser pixel blends towards the white they are shown as."""
    if rgba.mode == "RGBA" and rgba.getchannel("A").getextrema()[0] == 255:
        return rgba
    pixels = np.array(rgba.convert("RGBA"))
    transparent = pixels[..., 3] == 0
    if not transparent.any():
        return rgba
    pixels[transparent, :3] = 255
    return Image.fromarray(pixels, "RGBA")
