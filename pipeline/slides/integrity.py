"""Slide integrity: reads a slide's TIFF directories and a sample of its tissue tiles at the
scoring resolution, produces the refusals and QC checks that stop a damaged file from passing
for glass.

A tile whose TileByteCounts entry is 0 holds no image: OpenSlide returns it transparent, it is
composited onto white, and a deposit under it is never seen, while a coarser level (the tissue
mask's) still shows the tissue. Two checks catch this: the TIFF tile table (any TIFF-based
slide: every empty tile of every level, mapped onto the tissue mask) and a sample of the
scoring grid's tissue tiles read at the scoring resolution (any format: a tissue tile read as
pure white, RGB 255 everywhere, which no scanned glass is). A level whose header declares
more tiles than its tile table lists (e.g. width and height doubled) is refused outright.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import SlideOpenError, SlideQCError
from pipeline.slides.qc import ACCEPT_FLAG, QCCheck, QCResult
from pipeline.slides.slide import Slide
from pipeline.slides.tiling import TileGrid
from pipeline.slides.tissue import TissueMask

log = logging.getLogger(__name__)

UNREADABLE_FAILURE = "tissue unreadable at full resolution (damaged file)"
# Tissue tiles of the scoring grid read to look for blank ones (spread evenly over the grid).
SAMPLED_TILES = 64


@dataclasses.dataclass(frozen=True)
class EmptyTile:
    """A tile with no data in one TIFF level: its level-0 rectangle in px."""

    level: int
    x_px: float
    y_px: float
    width_px: float
    height_px: float


# More TIFF directories than any pyramid holds: a damaged chain of directories stops here.
MAX_DIRECTORIES = 256


def _pages(tif: Any) -> list[Any]:
    """The file's TIFF pages in order, stopping at the first directory seen before (a chain
    that loops back, which iterating ``tif.pages`` would follow for ever) or at MAX_DIRECTORIES."""
    import tifffile

    pages: list[Any] = []
    seen: set[int] = set()
    for index in range(MAX_DIRECTORIES):
        try:
            page = tif.pages[index]
        except IndexError:
            break
        if not isinstance(page, tifffile.TiffPage) or page.offset in seen:
            break
        seen.add(page.offset)
        pages.append(page)
    return pages


def _tiled_levels(path: Path) -> list[tuple[int, int, int, int, tuple[int, ...], tuple[int, ...]]]:
    """(width, height, tile_w, tile_h, chunked, bytecounts) of every tiled page, largest first;
    empty for a file tifffile cannot read (OpenSlide's own checks stand for those)."""
    import tifffile

    if not path.is_file():
        return []
    try:
        with tifffile.TiffFile(path) as tif:
            levels = []
            for page in _pages(tif):
                if not page.is_tiled:
                    continue
                levels.append((
                    int(page.imagewidth), int(page.imagelength), int(page.tilewidth), int(page.tilelength),
                    tuple(int(v) for v in page.chunked), tuple(int(v) for v in page.databytecounts),
                ))
    except (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError, struct.error) as exc:
        log.debug("%s: TIFF tile table not read (%s)", path, exc)
        return []
    return sorted(levels, key=lambda level: -level[0])


def check_tile_tables(path: Path) -> list[EmptyTile]:
    """Every tile without data in the slide's TIFF levels (in level-0 px).

    Raises SlideOpenError naming the level when its header declares a size its tile table does
    not cover (a damaged header: width and height doubled, say). Returns [] for a slide that
    is not a readable TIFF.
    """
    levels = _tiled_levels(path)
    if not levels:
        return []
    width0 = levels[0][0]
    empty: list[EmptyTile] = []
    for index, (width, height, tile_w, tile_h, chunked, counts) in enumerate(levels):
        expected = math.prod(chunked)
        if expected != len(counts):
            raise SlideOpenError(
                f"{path}: TIFF level {index} declares {width} x {height} px in {tile_w} x {tile_h} px "
                f"tiles ({expected} tiles) but its tile table lists {len(counts)}; the header is "
                "damaged, so its size cannot be trusted: re-export or rescan the slide"
            )
        across = max(1, math.ceil(width / tile_w))
        scale = width0 / width
        for tile in np.flatnonzero(np.asarray(counts) == 0):
            row, col = divmod(int(tile) % (across * max(1, math.ceil(height / tile_h))), across)
            empty.append(EmptyTile(index, col * tile_w * scale, row * tile_h * scale,
                                   tile_w * scale, tile_h * scale))
    return empty


def _tissue_under(tissue: TissueMask, tile: EmptyTile) -> bool:
    """True when the tissue mask holds tissue anywhere under the tile's rectangle."""
    per_x, per_y = tissue.level0_px_per_mask_px
    rows, cols = tissue.mask.shape
    c0, c1 = int(tile.x_px // per_x), math.ceil((tile.x_px + tile.width_px) / per_x)
    r0, r1 = int(tile.y_px // per_y), math.ceil((tile.y_px + tile.height_px) / per_y)
    return bool(tissue.mask[max(0, r0) : min(rows, r1), max(0, c0) : min(cols, c1)].any())


def _blank_tiles(slide: Slide, grid: TileGrid, mpp: float, size_px: int) -> tuple[int, NDArray[np.int64]]:
    """(tiles read, level-0 xy of those read as pure white) for a sample of the grid's tiles."""
    if len(grid) == 0:
        return 0, np.zeros((0, 2), np.int64)
    picks = np.unique(np.linspace(0, len(grid) - 1, min(SAMPLED_TILES, len(grid))).round().astype(int))
    blank = [
        xy for xy in grid.xy_px[picks]
        if bool(np.all(slide.read_region_at_mpp(int(xy[0]), int(xy[1]), size_px, size_px, mpp) == 255))
    ]
    return len(picks), np.asarray(blank, np.int64).reshape(-1, 2)


def unreadable_tissue_check(
    slide: Slide, tissue: TissueMask, grid: TileGrid | None, mpp: float, tile_size_px: int
) -> tuple[QCCheck, str]:
    """The QC check "unreadable_tissue_tiles" and, when it fails, where: empty TIFF tiles over
    tissue (any level) plus sampled tiles of ``grid`` (None: not sampled), read at ``mpp``
    µm/px and ``tile_size_px``, that come back pure white. Passes at 0. Raises SlideOpenError
    for a damaged tile table (``check_tile_tables``)."""
    empty = [tile for tile in check_tile_tables(slide.path) if _tissue_under(tissue, tile)]
    n_read, blank = (0, np.zeros((0, 2), np.int64)) if grid is None else _blank_tiles(
        slide, grid, mpp, tile_size_px
    )
    details = []
    if empty:
        first = empty[0]
        details.append(
            f"{len(empty)} tiles of TIFF level {first.level} hold no data (TileByteCounts 0) where the "
            f"tissue mask shows tissue, first at level-0 x={first.x_px:.0f} y={first.y_px:.0f}"
        )
    if len(blank):
        details.append(
            f"{len(blank)} of {n_read} sampled tissue tiles read blank at {mpp:g} µm/px, first at "
            f"level-0 x={blank[0][0]} y={blank[0][1]}"
        )
    count = float(len(empty) + len(blank))
    check = QCCheck("unreadable_tissue_tiles", count, None, 0.0, count == 0.0, UNREADABLE_FAILURE)
    return check, "; ".join(details)


def check_integrity(
    slide: Slide,
    tissue: TissueMask,
    grid: TileGrid | None,
    mpp: float,
    tile_size_px: int,
    qc: QCResult,
    accept_qc_failures: bool,
) -> QCResult:
    """``qc`` with ``unreadable_tissue_check`` added. Raises SlideQCError when tissue is
    unreadable at the scoring resolution, unless ``accept_qc_failures`` (then every output
    carries the QC warning), and SlideOpenError for a damaged tile table."""
    check, where = unreadable_tissue_check(slide, tissue, grid, mpp, tile_size_px)
    if check.passed is False:
        log.warning("%s: %s: %s", slide.path, check.failure, where)
        if not accept_qc_failures:
            raise SlideQCError(
                f"{slide.path}: {check.failure}: {where}; not scored, since a deposit there would be "
                f"missed (re-export or rescan the slide, or add {ACCEPT_FLAG} to score it anyway)"
            )
    return dataclasses.replace(qc, checks=(*qc.checks, check))
