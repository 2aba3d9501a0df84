"""The scaling benchmark's slides: square synthetic nodes, and a CAMELYON-size slide of mostly
glass written tile by tile.

``ensure_scaling_slide``: a square synthetic node (``generate_slide``, 0.25 µm/px, one 0.3 mm
deposit). ``write_background_slide``: a tiled JPEG pyramid of empty glass, one encoded tile
reused per level, with copies of source slides pasted in (level-0 tiles of an aligned paste are
copied byte for byte); ``ensure_camelyon_slide`` writes the 100,000 x 200,000 px one from two
synthetic nodes, one with a 1.0 mm deposit. Slides are cached under the work folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CAMELYON_PASTES", "BackgroundSlideSpec", "Paste", "ensure_camelyon_slide", "ensure_scaling_slide",
    "paste_tiles", "write_background_slide",
]

SLIDE_MPP = 0.25
SCALING_DEPOSIT_MM = 0.3  # one micro-metastasis per scaling slide, so deposit work is constant
CAMELYON_WIDTH_PX, CAMELYON_HEIGHT_PX = 100_000, 200_000
CAMELYON_NAME = "camelyon_size.tif"
SOURCE_SIDE_PX = 16384  # a power of two: the source's levels have exact downsamples 2, 4, ...
SOURCE_DEPOSIT_MM = 1.0
TILE_PX = 256
JPEG_QUALITY = 85
SMALLEST_LEVEL_MAX_PX = 1024
GLASS_PATCH_PX = 64  # a corner of every synthetic node that is surely glass


@dataclasses.dataclass(frozen=True)
class Paste:
    """A copy of a source slide placed with its top-left corner at (x_px, y_px), level 0."""

    source: str
    x_px: int
    y_px: int


# Multiples of 256 px = 2**8: level-0 tiles are copied from the sources as they are, and the
# pastes stay pixel-aligned on every one of the 9 levels.
CAMELYON_PASTES = (
    Paste("tumor", 8_192, 10_240),
    Paste("negative", 60_160, 30_208),
    Paste("negative", 20_480, 70_656),
    Paste("negative", 70_912, 95_232),
    Paste("negative", 15_360, 140_544),
    Paste("negative", 62_720, 171_008),
)


@dataclasses.dataclass(frozen=True)
class BackgroundSlideSpec:
    """A mostly-glass slide: level-0 size, µm/px, TIFF tile side and the pasted sources."""

    width_px: int
    height_px: int
    mpp: float
    pastes: tuple[Paste, ...]
    tile_px: int = TILE_PX

    def __post_init__(self) -> None:
        if self.width_px < 1 or self.height_px < 1:
            raise ValueError(f"width_px, height_px = {self.width_px}, {self.height_px}; need at least 1")
        if self.tile_px < 16 or self.tile_px % 16:
            raise ValueError(f"tile_px={self.tile_px}; need a multiple of 16 (JPEG 4:2:0 blocks)")

    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) per level, halving (rounding up) until the long side is <= 1024 px."""
        dims = [(self.width_px, self.height_px)]
        while max(dims[-1]) > SMALLEST_LEVEL_MAX_PX:
            w, h = dims[-1]
            dims.append(((w + 1) // 2, (h + 1) // 2))
        return dims


def paste_tiles(
    spec: BackgroundSlideSpec, level: int, source_sizes: dict[str, tuple[int, int]]
) -> dict[tuple[int, int], list[int]]:
    """(row, col) -> indices into ``spec.pastes`` of the pastes each non-glass tile of ``level``
    shows; level ``level`` is 2**level times coarser than level 0."""
    width, height = spec.level_dimensions()[level]
    span = spec.tile_px * 2**level  # a tile's side in level-0 px
    last_col, last_row = math.ceil(width / spec.tile_px) - 1, math.ceil(height / spec.tile_px) - 1
    touched: dict[tuple[int, int], list[int]] = {}
    for index, paste in enumerate(spec.pastes):
        paste_w, paste_h = source_sizes[paste.source]
        col0, col1 = max(0, paste.x_px // span), min(last_col, (paste.x_px + paste_w - 1) // span)
        row0, row1 = max(0, paste.y_px // span), min(last_row, (paste.y_px + paste_h - 1) // span)
        for key in ((r, c) for r in range(row0, row1 + 1) for c in range(col0, col1 + 1)):
            touched.setdefault(key, []).append(index)
    return touched


def encode_tile(rgb: NDArray[np.uint8]) -> bytes:
    """JPEG bytes as tifffile writes them for compression="jpeg", photometric="rgb"."""
    import imagecodecs

    encoded = imagecodecs.jpeg_encode(
        rgb, level=JPEG_QUALITY, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
    )
    return bytes(encoded)


def read_source(handle: Any, x_px: int, y_px: int, downsample: int, tile_px: int) -> NDArray[np.uint8]:
    """RGBA (tile_px, tile_px, 4) of a source slide: the square at level-0 (x_px, y_px) spanning
    tile_px x downsample level-0 px, from the nearest finer level (transparent outside)."""
    from PIL import Image

    level = handle.get_best_level_for_downsample(downsample + 1e-6)
    level_downsample = float(handle.level_downsamples[level])
    side = math.ceil(tile_px * downsample / level_downsample)
    region = handle.read_region((x_px, y_px), level, (side, side))
    if side != tile_px:
        region = region.resize((tile_px, tile_px), Image.Resampling.BOX)
    return np.asarray(region, dtype=np.uint8)


def glass_tile(handle: Any, tile_px: int, downsample: int) -> NDArray[np.uint8]:
    """An empty-glass RGB tile at ``downsample``: the source's top-left GLASS_PATCH_PX square at
    level 0 (the margin of a synthetic node is glass) repeated, its pixel noise divided by the
    downsample as averaging downsample² pixels of independent noise does."""
    corner = np.asarray(handle.read_region((0, 0), 0, (GLASS_PATCH_PX, GLASS_PATCH_PX)).convert("RGB"))
    mean = corner.reshape(-1, 3).mean(axis=0)
    smoothed = mean + (corner.astype(np.float32) - mean) / downsample
    repeats = math.ceil(tile_px / GLASS_PATCH_PX)
    tiled = np.tile(np.clip(smoothed + 0.5, 0, 255).astype(np.uint8), (repeats, repeats, 1))
    rgb: NDArray[np.uint8] = np.ascontiguousarray(tiled[:tile_px, :tile_px])
    return rgb


def render_tile(
    spec: BackgroundSlideSpec, level: int, row_col: tuple[int, int], indices: Sequence[int],
    sources: dict[str, Any], glass: NDArray[np.uint8],
) -> NDArray[np.uint8]:
    """One level tile: glass with the overlapping pastes composited over it (RGB uint8)."""
    downsample, span = 2**level, spec.tile_px * 2**level
    x0, y0 = row_col[1] * span, row_col[0] * span
    tile = glass.astype(np.float32)
    for index in indices:
        paste = spec.pastes[index]
        rgba = read_source(sources[paste.source], x0 - paste.x_px, y0 - paste.y_px, downsample, spec.tile_px)
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        tile = tile * (1.0 - alpha) + rgba[..., :3].astype(np.float32) * alpha
    composited: NDArray[np.uint8] = np.clip(tile + 0.5, 0, 255).astype(np.uint8)
    return composited


def copied_tile(spec: BackgroundSlideSpec, paste: Paste, row_col: tuple[int, int], page: Any) -> bytes | None:
    """A level-0 tile's bytes copied from the source's level 0 (tifffile ``page``), or None when
    the paste is not tile-aligned, the tile is not wholly inside it, or the encodings differ."""
    tile_px = spec.tile_px
    if (page is None or paste.x_px % tile_px or paste.y_px % tile_px or page.compression != 7
            or page.jpegtables is not None or page.photometric != 6 or page.subsampling != (2, 2)
            or (page.tilewidth, page.tilelength) != (tile_px, tile_px)):
        return None
    row, col = row_col[0] - paste.y_px // tile_px, row_col[1] - paste.x_px // tile_px
    if not (0 <= row < page.imagelength // tile_px and 0 <= col < page.imagewidth // tile_px):
        return None
    index = row * math.ceil(page.imagewidth / tile_px) + col
    handle = page.parent.filehandle
    handle.seek(page.dataoffsets[index])
    data: bytes = handle.read(page.databytecounts[index])
    return data


def level_tiles(
    spec: BackgroundSlideSpec, level: int, sources: dict[str, Any], pages: dict[str, Any]
) -> Iterator[bytes]:
    """Encoded tiles of ``level`` in row-major order; glass tiles share one encoding, level-0
    tiles inside an aligned paste are copied from the source's level-0 page (``pages``)."""
    width, height = spec.level_dimensions()[level]
    cols, rows = math.ceil(width / spec.tile_px), math.ceil(height / spec.tile_px)
    first = sources[spec.pastes[0].source] if spec.pastes else next(iter(sources.values()))
    glass = glass_tile(first, spec.tile_px, 2**level)
    glass_bytes = encode_tile(glass)
    sizes = {name: tuple(handle.dimensions) for name, handle in sources.items()}
    touched = paste_tiles(spec, level, sizes)
    for row in range(rows):
        for col in range(cols):
            indices = touched.get((row, col))
            if indices is None:
                yield glass_bytes
                continue
            paste = spec.pastes[indices[0]]
            copied = copied_tile(spec, paste, (row, col), pages[paste.source]) if level == 0 else None
            if copied is not None and len(indices) == 1:
                yield copied
            else:
                yield encode_tile(render_tile(spec, level, (row, col), indices, sources, glass))


def write_background_slide(spec: BackgroundSlideSpec, sources: dict[str, Path], path: Path) -> None:
    """Write the mostly-glass pyramidal TIFF to ``path`` (via a temporary name). Memory stays
    bounded: tiles are generated one at a time. ``sources``: name -> slide file for the pastes."""
    import openslide
    import tifffile

    handles = {name: openslide.OpenSlide(str(source)) for name, source in sources.items()}
    tiffs = {name: tifffile.TiffFile(source) for name, source in sources.items()}
    pages = {name: tiff.pages.first if tiff.pages.first.is_tiled else None for name, tiff in tiffs.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
            for level, (width, height) in enumerate(spec.level_dimensions()):
                pixels_per_cm = 1e4 / (spec.mpp * spec.width_px / width)
                tif.write(
                    level_tiles(spec, level, handles, pages), shape=(height, width, 3), dtype=np.uint8,
                    tile=(spec.tile_px, spec.tile_px), compression="jpeg", photometric="rgb",
                    resolution=(pixels_per_cm, pixels_per_cm), resolutionunit="CENTIMETER",
                    subfiletype=0 if level == 0 else 1, metadata=None,
                    description=f"micromet scaling benchmark: mostly glass, {len(spec.pastes)} pastes",
                )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        for handle in handles.values():
            handle.close()
        for tiff in tiffs.values():
            tiff.close()


def ensure_scaling_slide(work_dir: Path, side_px: int) -> Path:
    """A square synthetic node of ``side_px`` at 0.25 µm/px with one 0.3 mm deposit (cached)."""
    from pipeline.synthetic.generate import PlantedDeposit, SynthConfig, generate_slide

    path = work_dir / "slides" / f"node_{side_px}.tif"
    if not path.exists():
        config = SynthConfig(width_px=side_px, height_px=side_px, mpp=SLIDE_MPP, seed=side_px,
                             deposits=(PlantedDeposit(SCALING_DEPOSIT_MM),))
        generate_slide(config, path)
    return path


def ensure_camelyon_slide(work_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The CAMELYON-size slide (cached) and its layout: pastes, planted deposits in its frame,
    seconds spent generating the sources and writing the pyramid."""
    from pipeline.synthetic.generate import PlantedDeposit, SynthConfig, generate_slide, read_truth

    folder = work_dir / "camelyon"
    path, layout_path = folder / CAMELYON_NAME, folder / "camelyon_size.layout.json"
    if path.exists() and layout_path.exists():  # the layout is written last
        return path, json.loads(layout_path.read_text())
    started = time.perf_counter()
    sources = {"tumor": folder / "source_tumor.tif", "negative": folder / "source_negative.tif"}
    for name, source in sources.items():
        deposits = (PlantedDeposit(SOURCE_DEPOSIT_MM),) if name == "tumor" else ()
        generate_slide(SynthConfig(width_px=SOURCE_SIDE_PX, height_px=SOURCE_SIDE_PX, mpp=SLIDE_MPP,
                                   seed=11 if name == "tumor" else 12, deposits=deposits), source)
    sources_s = time.perf_counter() - started
    spec = BackgroundSlideSpec(CAMELYON_WIDTH_PX, CAMELYON_HEIGHT_PX, SLIDE_MPP, CAMELYON_PASTES)
    write_background_slide(spec, sources, path)
    planted = [
        {"diameter_mm": round(d.diameter_mm, 3), "category": d.category,
         "centroid_x_px": round(d.centroid_xy[0] + p.x_px), "centroid_y_px": round(d.centroid_xy[1] + p.y_px)}
        for p in CAMELYON_PASTES
        for d in read_truth(sources[p.source].with_name(f"{sources[p.source].stem}.truth.json")).deposits
    ]
    write_s = time.perf_counter() - started - sources_s
    layout = {"pastes": [dataclasses.asdict(p) for p in CAMELYON_PASTES], "planted_deposits": planted,
              "sources_s": round(sources_s, 1), "write_s": round(write_s, 1)}
    layout_path.write_text(json.dumps(layout, indent=1) + "\n")
    return path, layout

