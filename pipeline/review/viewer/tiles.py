"""Review: reads slide files and plain images (``open_handle``), produces Deep Zoom descriptors
and JPEG tiles.

Open slides are kept in a small thread-safe LRU cache so that a viewer session does not
reopen the file for every tile. Deep Zoom coordinates are level-0 pixels
(``limit_bounds=False``), so heatmap and deposit coordinates line up without offsets.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import threading
from pathlib import Path
from typing import Any

from pipeline.errors import SlideOpenError


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """Deep Zoom tiling of the viewer.

    tile_size_px: tile side without overlap (254 + 2 x 1 overlap = 256 px, the DZI habit).
    overlap_px: pixels shared with each neighbour. jpeg_quality: 1-95.
    cache_slides: how many slides stay open at once.
    """

    tile_size_px: int = 254
    overlap_px: int = 1
    jpeg_quality: int = 80
    cache_slides: int = 8

    def __post_init__(self) -> None:
        checks = (
            ("tile_size_px", self.tile_size_px, 16, 2048),
            ("overlap_px", self.overlap_px, 0, 16),
            ("jpeg_quality", self.jpeg_quality, 1, 95),
            ("cache_slides", self.cache_slides, 1, 256),
        )
        for name, value, low, high in checks:
            if not (low <= value <= high):
                raise ValueError(f"{name}={value!r} is out of range; allowed {low} to {high}")


def _open_deepzoom(path: Path, config: TileConfig) -> Any:
    """A DeepZoomGenerator over ``path`` (a slide file, a plain JPEG/PNG/TIFF image, or a DICOM
    series folder); raises SlideOpenError naming the file."""
    from openslide.deepzoom import DeepZoomGenerator

    from pipeline.slides.slide import open_handle, resolve_slide_path

    path = resolve_slide_path(path)
    if not path.is_file():
        raise SlideOpenError(f"{path}: slide file not found; was it moved since the batch ran?")
    handle = open_handle(path)
    return DeepZoomGenerator(
        handle, tile_size=config.tile_size_px, overlap=config.overlap_px, limit_bounds=False
    )


def _tile_from_level0(path: Path, generator: Any, level: int, col: int, row: int) -> Any:
    """A Deep Zoom tile OpenSlide could not decode, read through ``Slide`` (which re-reads a
    reduced level's undecodable tiles from level 0); a PIL image, or None if that fails too.
    The slide is opened for its pixels only: a tile needs no µm/px, and none is made up."""
    from PIL import Image

    from pipeline.slides.slide import SlideSource, resize_rgb

    (x_px, y_px), slide_level, (width_px, height_px) = generator.get_tile_coordinates(level, (col, row))
    tile_w, tile_h = generator.get_tile_dimensions(level, (col, row))
    try:
        with SlideSource.pixels_only(path).open() as slide:
            rgb = slide.read_region_rgb(x_px, y_px, slide_level, width_px, height_px)
    except SlideOpenError:
        return None
    return Image.fromarray(resize_rgb(rgb, tile_w, tile_h))


class DeepZoomCache:
    """Deep Zoom generators of recently viewed slides, at most ``config.cache_slides``.

    An evicted slide is not closed explicitly: a request may still be reading from it,
    and OpenSlide closes the handle when the last reference goes.
    """

    def __init__(self, config: TileConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._generators: collections.OrderedDict[Path, Any] = collections.OrderedDict()

    def generator(self, path: Path) -> Any:
        """The (cached) DeepZoomGenerator of a slide file; raises SlideOpenError."""
        with self._lock:
            if path in self._generators:
                self._generators.move_to_end(path)
                return self._generators[path]
        # Open outside the lock: a slow file must not stall tiles of other slides.
        generator = _open_deepzoom(path, self.config)
        with self._lock:
            generator = self._generators.setdefault(path, generator)
            self._generators.move_to_end(path)
            while len(self._generators) > self.config.cache_slides:
                self._generators.popitem(last=False)
        return generator

    def __len__(self) -> int:
        with self._lock:
            return len(self._generators)

    def dzi(self, path: Path) -> str:
        """The DZI XML descriptor of a slide (JPEG tiles)."""
        return str(self.generator(path).get_dzi("jpeg"))

    def tile_jpeg(self, path: Path, level: int, col: int, row: int) -> bytes | None:
        """One Deep Zoom tile as JPEG bytes, or None when the address does not exist.

        Raises SlideOpenError when the slide cannot be read.
        """
        import openslide

        generator = self.generator(path)
        if not (0 <= level < generator.level_count):
            return None
        cols, rows = generator.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            return None
        try:
            tile = generator.get_tile(level, (col, row))
        except (openslide.OpenSlideError, OSError) as exc:
            with self._lock:
                self._generators.pop(path, None)  # a handle that raised is discarded
            tile = _tile_from_level0(path, generator, level, col, row)
            if tile is None:
                raise SlideOpenError(f"{path}: cannot read tile {level}/{col}_{row} ({exc})") from exc
        buffer = io.BytesIO()
        tile.convert("RGB").save(buffer, "JPEG", quality=self.config.jpeg_quality)
        return buffer.getvalue()
