"""Test data: writes a synthetic slide's pyramidal tiled JPEG TIFF (generic or Aperio SVS).

Reads a ``SynthConfig`` and level-0 rows from a render function (``render`` or
``texture``); level 0 is rendered strip by strip in worker threads, lower levels are
built from it through disk-backed arrays, so memory stays bounded for any slide size.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline import __version__
from pipeline.synthetic.config import SMALLEST_LEVEL_MAX_PX, SynthConfig

RENDER_THREADS = 2  # tile rows rendered in parallel (numpy releases the GIL)
RENDER_LOOKAHEAD = 4  # tile rows rendered ahead of the TIFF writer
WRITE_BUFFER_BYTES = 16 * 2**20  # tiles tifffile collects per compression batch
APERIO_HEADER = "Aperio Image Library v12.0.15"  # OpenSlide detects Aperio by this prefix

# render_rows(y0, height, width) -> (height, width, 3) uint8 RGB of level-0 rows [y0, y0 + height).
RenderRows = Callable[[int, int, int], NDArray[np.uint8]]


class _DiskImage:
    """An RGB image in a raw file, written and read a band of rows at a time.

    Plain file I/O instead of a memory map keeps the process's resident memory bounded by
    one band whatever the slide size (the OS page cache holds the rest).
    """

    def __init__(self, path: Path, width: int, height: int) -> None:
        self.path, self.shape = path, (height, width, 3)
        self._row_bytes = width * 3
        with path.open("wb") as handle:
            handle.truncate(height * self._row_bytes)

    def write_rows(self, r0: int, rows: NDArray[np.uint8]) -> None:
        """Write rows starting at row r0 (rows beyond the image are dropped)."""
        height, width = self.shape[:2]
        block = np.ascontiguousarray(rows[: max(height - r0, 0), :width])
        with self.path.open("r+b") as handle:
            handle.seek(r0 * self._row_bytes)
            handle.write(block.tobytes())

    def read_rows(self, r0: int, r1: int) -> NDArray[np.uint8]:
        """Rows [r0, r1) as an (rows, width, 3) array."""
        r1 = min(r1, self.shape[0])
        data = np.fromfile(
            self.path, dtype=np.uint8, count=(r1 - r0) * self._row_bytes, offset=r0 * self._row_bytes
        )
        return data.reshape(r1 - r0, self.shape[1], 3)


def _halve(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """2 x 2 box average (PIL's C reduce); an odd last row or column averages what it has."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).reduce(2))


@dataclasses.dataclass(frozen=True, eq=False)
class _Strip:
    y0: int
    rgb: NDArray[np.uint8]  # (tile_size_px, padded width, 3)
    half: NDArray[np.uint8] | None  # rgb halved, for level 1


def _render_strip(render_rows: RenderRows, config: SynthConfig, y0: int, halve: bool) -> _Strip:
    ts = config.tile_size_px
    rgb = render_rows(y0, ts, math.ceil(config.width_px / ts) * ts)
    return _Strip(y0, rgb, _halve(rgb) if halve else None)


def _level0_tiles(
    render_rows: RenderRows, config: SynthConfig, level1: _DiskImage | None
) -> Iterator[NDArray[np.uint8]]:
    """Level-0 tiles in row-major order; tile rows are rendered ahead in worker threads.

    Each tile row is also halved into ``level1`` when given. Rows are independent and
    deterministic, so the threads do not change the pixels.
    """
    with ThreadPoolExecutor(RENDER_THREADS) as pool:
        pending: deque[Future[_Strip]] = deque()
        for y0 in range(0, config.height_px, config.tile_size_px):
            pending.append(pool.submit(_render_strip, render_rows, config, y0, level1 is not None))
            if len(pending) >= RENDER_LOOKAHEAD:
                yield from _strip_tiles(pending.popleft().result(), config.tile_size_px, level1)
        while pending:
            yield from _strip_tiles(pending.popleft().result(), config.tile_size_px, level1)


def _strip_tiles(strip: _Strip, ts: int, level1: _DiskImage | None) -> Iterator[NDArray[np.uint8]]:
    """The tiles of a rendered tile row, after saving its halved copy to level 1."""
    if level1 is not None and strip.half is not None:
        level1.write_rows(strip.y0 // 2, strip.half)
    for x0 in range(0, strip.rgb.shape[1], ts):
        yield strip.rgb[:, x0 : x0 + ts]


def _disk_tiles(image: _DiskImage, ts: int) -> Iterator[NDArray[np.uint8]]:
    """Tiles of a disk image, row-major; edge tiles are partial (tifffile pads them)."""
    for y0 in range(0, image.shape[0], ts):
        rows = image.read_rows(y0, y0 + ts)
        for x0 in range(0, image.shape[1], ts):
            yield rows[:, x0 : x0 + ts]


def _fill_reduced(reduced: list[_DiskImage], band_rows: int = 1024) -> None:
    """Fill reduced[k] from reduced[k - 1] for k >= 1, a band of rows at a time."""
    for previous, current in itertools.pairwise(reduced):
        for r0 in range(0, previous.shape[0], band_rows):
            current.write_rows(r0 // 2, _halve(previous.read_rows(r0, r0 + band_rows)))


def _descriptions(config: SynthConfig, dims: list[tuple[int, int]], name: str) -> list[str]:
    """ImageDescription of each level: Aperio-style for svs (OpenSlide reads MPP from it)."""
    w0, h0 = dims[0]
    if config.format == "tif":
        return [f"micromet synthetic slide {name}, seed {config.seed}"] * len(dims)
    ts, q = config.tile_size_px, config.jpeg_quality
    first = f"{APERIO_HEADER}\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({ts}x{ts}) JPEG/RGB Q={q}"
    if config.mpp is not None:
        first += f"|AppMag = {round(10 / config.mpp)}|MPP = {config.mpp:.4f}"
    first += f"|ScanScope ID = MICROMET-SYNTH|Filename = {name}|Title = seed {config.seed}"
    rest = [
        f"{APERIO_HEADER}\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({ts}x{ts}) -> {w}x{h} JPEG/RGB Q={q}"
        for w, h in dims[1:]
    ]
    return [first, *rest]


def _page_options(config: SynthConfig, level_width: int, description: str) -> dict[str, Any]:
    """tifffile.write options of one page: JPEG, description and resolution tags."""
    options: dict[str, Any] = {
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": config.jpeg_quality},
        "description": description,
        "metadata": None,
        "software": f"micromet {__version__}",
    }
    if config.mpp is not None:  # pixels per cm at this level; OpenSlide derives mpp from it
        pixels_per_cm = 1e4 / (config.mpp * config.width_px / level_width)
        options["resolution"] = (pixels_per_cm, pixels_per_cm)
        options["resolutionunit"] = "CENTIMETER"
    return options


def _tile_options(config: SynthConfig, shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        "shape": shape,
        "dtype": np.uint8,
        "tile": (config.tile_size_px, config.tile_size_px),
        "maxworkers": 2,
        "buffersize": WRITE_BUFFER_BYTES,
    }


def write_pyramid(render_rows: RenderRows, config: SynthConfig, path: Path, name: str) -> None:
    """Write the tiled JPEG pyramid of a slide, levels as consecutive pages (svs: thumbnail
    second). render_rows draws level 0; name goes into the image descriptions."""
    import tifffile

    dims = config.level_dimensions()
    all_dims = config.max_level_dimensions()
    # The svs thumbnail is the first level of at most SMALLEST_LEVEL_MAX_PX, never level 0.
    thumb_level = next(i for i, d in enumerate(all_dims) if i > 0 and max(d) <= SMALLEST_LEVEL_MAX_PX)
    n_reduced = max(len(dims) - 1, thumb_level if config.format == "svs" else 0)
    descriptions = _descriptions(config, dims, name)
    raw_bytes = sum(w * h * 3 for w, h in dims)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".synth-") as tmp:
        reduced = [
            _DiskImage(Path(tmp) / f"level{k}.rgb", w, h)
            for k, (w, h) in enumerate(all_dims[1 : n_reduced + 1], start=1)
        ]
        with tifffile.TiffWriter(path, bigtiff=raw_bytes > 2**32 - 2**28) as tif:
            tif.write(
                _level0_tiles(render_rows, config, reduced[0] if reduced else None),
                subfiletype=0,
                **_tile_options(config, (config.height_px, config.width_px, 3)),
                **_page_options(config, config.width_px, descriptions[0]),
            )
            _fill_reduced(reduced)
            if config.format == "svs":
                _write_thumbnail(tif, config, reduced[thumb_level - 1])
            for k in range(1, len(dims)):
                tif.write(
                    _disk_tiles(reduced[k - 1], config.tile_size_px),
                    subfiletype=1,
                    **_tile_options(config, reduced[k - 1].shape),
                    **_page_options(config, dims[k][0], descriptions[k]),
                )


def _write_thumbnail(tif: Any, config: SynthConfig, image: _DiskImage) -> None:
    """Aperio's second page: a small stripped (untiled) image, read as "thumbnail"."""
    w0, h0 = config.width_px, config.height_px
    h, w = image.shape[:2]
    tif.write(
        image.read_rows(0, h),
        rowsperstrip=16,
        subfiletype=1,
        **_page_options(config, w, f"{APERIO_HEADER}\r\n{w0}x{h0} -> {w}x{h} - "),
    )
