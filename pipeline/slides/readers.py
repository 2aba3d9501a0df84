"""Inference reading: reads a slide in regions of neighbouring tiles, produces uint8 model tiles.

Used by ``pipeline/detection/inference.py`` inside DataLoader workers. Tiles are grouped into blocks of
``region_tiles x region_tiles`` grid cells; one block is one OpenSlide read at the pyramid level
``Slide.read_region_at_mpp`` would use, cut into per-tile windows, each resized on its own
(same function as ``read_region_at_mpp``) so a tile's pixels do not depend on its region.

Why tile corners are snapped to the read level's pixel grid: OpenSlide maps a level-0 corner to
``x / downsample`` level pixels and resamples bilinearly when that is fractional. A region read
has one such phase, so a tile at another phase would differ from its own one-tile read by up to
half a level pixel. Snapping every corner to ``round(x / downsample)`` level pixels (a shift of
under half a level pixel) gives every tile phase zero, and region tiles then equal one-tile
reads at the snapped corner exactly whenever the downsample is an integer (generic and
CAMELYON pyramidal TIFFs). With a non-integer downsample (e.g. Aperio's 4.0003) OpenSlide still
applies a sub-pixel phase of under 0.5 / downsample level px, different per read, so the two
agree closely but not bit for bit. At level 0 nothing is snapped.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from queue import Full, Queue
from typing import Any, NamedTuple, TypeVar

import numpy as np
from numpy.typing import NDArray
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.errors import MicrometError
from pipeline.slides.slide import Slide, SlideSource, resize_rgb

T = TypeVar("T")

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclasses.dataclass(frozen=True)
class ReadGeometry:
    """Where and how model tiles are read.

    level: pyramid level read. downsample: its level-0 px per level px (as the slide reports it).
    level_tile_px: tile side read at ``level``, in level px. tile_size_px / mpp: the model tile
    side in px at ``mpp`` µm/px (the card's geometry). stain_normalization: the card's
    method, applied to every tile as read (None: tiles as scanned).
    """

    level: int
    downsample: float
    level_tile_px: int
    tile_size_px: int
    mpp: float
    stain_normalization: str | None = None


def round_half_up(values: NDArray[np.float64]) -> NDArray[np.int64]:
    """Round to the nearest integer, halves up (numpy's round goes to even)."""
    return np.floor(values + 0.5).astype(np.int64)


def read_geometry(
    slide: Slide, tile_size_px: int, mpp: float, stain_normalization: str | None = None
) -> ReadGeometry:
    """The level and read size of a ``tile_size_px`` tile at ``mpp`` µm/px.

    Uses the same level choice and rounding as ``Slide.read_region_at_mpp``.
    """
    level = slide.best_level_for_mpp(mpp)
    scale = mpp / slide.level_mpp(level)  # level px per model px (>= ~1)
    return ReadGeometry(
        level=level,
        downsample=slide.info.level_downsamples[level],
        level_tile_px=max(1, round(tile_size_px * scale)),
        tile_size_px=tile_size_px,
        mpp=mpp,
        stain_normalization=stain_normalization,
    )


def tile_level_xy(xy_px: NDArray[np.int64], geometry: ReadGeometry) -> NDArray[np.int64]:
    """(N, 2) level-0 tile corners -> (N, 2) corners in whole px of the read level (snapped)."""
    return round_half_up(np.asarray(xy_px, dtype=np.float64) / geometry.downsample)


def level_to_l0_px(level_xy: NDArray[np.int64], geometry: ReadGeometry) -> NDArray[np.int64]:
    """(N, 2) read-level px -> the level-0 px corner to pass to OpenSlide for them."""
    return round_half_up(np.asarray(level_xy, dtype=np.float64) * geometry.downsample)


def snapped_tile_xy_px(xy_px: NDArray[np.int64], geometry: ReadGeometry) -> NDArray[np.int64]:
    """(N, 2) level-0 tile corners moved (by under half a read-level px) onto the level's grid."""
    return level_to_l0_px(tile_level_xy(xy_px, geometry), geometry)


def read_one_tile(slide: Slide, xy_px: NDArray[np.int64], geometry: ReadGeometry) -> NDArray[np.uint8]:
    """One model tile (T, T, 3) uint8 with one read: the reference the region reader matches.

    xy_px: (2,) level-0 corner as in ``TileGrid.xy_px``; it is snapped like region tiles.
    """
    x_px, y_px = snapped_tile_xy_px(np.asarray(xy_px).reshape(1, 2), geometry)[0]
    size = geometry.tile_size_px
    tile = slide.read_region_at_mpp(int(x_px), int(y_px), size, size, geometry.mpp)
    return _normalize(tile, geometry)


def _normalize(tile: NDArray[np.uint8], geometry: ReadGeometry) -> NDArray[np.uint8]:
    """The card's stain normalisation, identical at training and inference."""
    if geometry.stain_normalization is None:
        return tile
    from pipeline.slides.stain import normalize_stain

    return normalize_stain(tile, geometry.stain_normalization)


def read_block_region(
    slide: Slide, level_xy: NDArray[np.int64], geometry: ReadGeometry
) -> NDArray[np.uint8]:
    """The pixels (H, W, 3) uint8 at the read level spanning the tiles at ``level_xy`` (k, 2).

    One slide read of the box from the tiles' first corner to the last tile's far edge, as read
    level px, unresized and unnormalised. Raises SlideOpenError naming the file if the region
    cannot be decoded.
    """
    origin = level_xy.min(axis=0)
    width, height = (level_xy.max(axis=0) - origin + geometry.level_tile_px).tolist()
    x_px, y_px = level_to_l0_px(origin.reshape(1, 2), geometry)[0]
    return slide.read_region_rgb(int(x_px), int(y_px), geometry.level, width, height)


def read_block_tiles(
    slide: Slide, level_xy: NDArray[np.int64], geometry: ReadGeometry
) -> NDArray[np.uint8]:
    """Model tiles (k, T, T, 3) uint8 of one block with a single slide read.

    level_xy: (k, 2) tile corners in read-level px (from ``tile_level_xy``). The region spans
    all k tiles (cells between them without tissue are read too); each tile window is cut
    out and, when the level is finer than the model, resized on its own.
    Raises SlideOpenError naming the file if the region cannot be decoded.
    """
    side = geometry.level_tile_px
    origin = level_xy.min(axis=0)
    region = read_block_region(slide, level_xy, geometry)
    size = geometry.tile_size_px
    tiles = np.empty((len(level_xy), size, size, 3), dtype=np.uint8)
    for index, (col, row) in enumerate((level_xy - origin).tolist()):
        window = region[row : row + side, col : col + side]
        tile = window if side == size else resize_rgb(window, size, size)
        tiles[index] = _normalize(tile, geometry)
    return tiles


@dataclasses.dataclass(frozen=True)
class ResizedRegions:
    """Where whole regions whose tiles need resizing are read, and the model size they get.

    Per block b: ``origin_level_px[b]`` (x, y) and ``read_px[b]`` (width, height) in read-level
    px, resized at once (``resize_rgb``) to ``model_px[b]`` (width, height) model px.
    """

    origin_level_px: NDArray[np.int64]
    read_px: NDArray[np.int64]
    model_px: NDArray[np.int64]


def read_resized_region(
    slide: Slide, block: int, regions: ResizedRegions, geometry: ReadGeometry
) -> NDArray[np.uint8]:
    """Block ``block``'s region (H, W, 3) uint8 in model px: one read, one ``resize_rgb``.

    Raises SlideOpenError naming the file if the region cannot be decoded.
    """
    x_px, y_px = level_to_l0_px(regions.origin_level_px[block].reshape(1, 2), geometry)[0]
    read_w, read_h = regions.read_px[block].tolist()
    model_w, model_h = regions.model_px[block].tolist()
    region = slide.read_region_rgb(int(x_px), int(y_px), geometry.level, read_w, read_h)
    return region if (read_w, read_h) == (model_w, model_h) else resize_rgb(region, model_w, model_h)


@dataclasses.dataclass(frozen=True)
class RegionPlan:
    """Tiles grouped into blocks of neighbouring grid cells, one slide read per block.

    order: (N,) int64 tile indices (grid order) sorted block by block, blocks row-major.
    starts: (B + 1,) int64; block b holds ``order[starts[b]:starts[b + 1]]``.
    whole_regions: read each block as its whole region, not cut into tiles (dense scoring).
    resized: with ``whole_regions``, each region read and resized as it says (tiles that need
    resizing); None: read unresized at the read level (``read_block_region``).
    """

    order: NDArray[np.int64]
    starts: NDArray[np.int64]
    whole_regions: bool = False
    resized: ResizedRegions | None = None

    @property
    def n_regions(self) -> int:
        """Number of blocks (slide reads)."""
        return int(self.starts.shape[0]) - 1

    def block(self, index: int) -> NDArray[np.int64]:
        """Tile indices of block ``index``."""
        return self.order[self.starts[index] : self.starts[index + 1]]


def plan_regions(heatmap_rc: NDArray[np.int64], region_tiles: int) -> RegionPlan:
    """Group tiles by ``region_tiles x region_tiles`` blocks of grid cells.

    heatmap_rc: (N, 2) grid row, col of each tile (``TileGrid.heatmap_rc``).
    """
    if region_tiles < 1:
        raise ValueError(f"region_tiles={region_tiles!r} is out of range; need at least 1")
    rc = np.asarray(heatmap_rc, dtype=np.int64).reshape(-1, 2)
    if rc.shape[0] == 0:
        return RegionPlan(order=np.zeros(0, np.int64), starts=np.zeros(1, np.int64))
    block_r, block_c = rc[:, 0] // region_tiles, rc[:, 1] // region_tiles
    key = block_r * (int(block_c.max()) + 1) + block_c
    order = np.lexsort((rc[:, 1], rc[:, 0], key)).astype(np.int64)
    sorted_key = key[order]
    breaks = np.flatnonzero(np.diff(sorted_key)) + 1
    starts = np.concatenate([[0], breaks, [len(order)]]).astype(np.int64)
    return RegionPlan(order=order, starts=starts)


class RegionTiles(NamedTuple):
    """One block read by a worker: tile indices (k,) int64 and tiles (k, T, T, 3) uint8.

    Plain numpy arrays: a DataLoader worker pickles them into its result queue as one message,
    where torch tensors would each cost a shared-memory file-descriptor handshake with the main
    process (milliseconds apiece on a busy machine). Use ``keep_item`` as the DataLoader's
    ``collate_fn`` so they are not turned into tensors inside the worker.
    """

    indices: NDArray[np.int64]
    tiles: NDArray[np.uint8]


class RegionReadFailure(NamedTuple):
    """A worker could not read its slide; ``message`` names the file and what to do."""

    message: str


def _worker_span(n_regions: int) -> range:
    """The contiguous run of blocks this DataLoader worker reads (all of them in-process).

    Contiguous runs keep a worker on neighbouring blocks, so OpenSlide's tile cache serves
    the slide tiles two blocks share.
    """
    info = get_worker_info()
    if info is None:
        return range(n_regions)
    start = n_regions * info.id // info.num_workers
    stop = n_regions * (info.id + 1) // info.num_workers
    return range(start, stop)


def end_with_parent(parent_pid: int, worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: this reader process ends when ``parent_pid`` dies.

    A reader left behind by a killed ``micromet`` would hold the caller's stdout/stderr pipes
    (and hundreds of MB) for minutes. On Linux the kernel kills the reader when its parent
    exits (PR_SET_PDEATHSIG); elsewhere ``RegionDataset`` checks its parent between reads.
    Use with ``functools.partial(end_with_parent, os.getpid())``.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            log.debug("reader %d: prctl(PR_SET_PDEATHSIG) failed (errno %d)", worker_id, ctypes.get_errno())
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


def _exit_if_orphaned(parent_pid: int) -> None:
    """In a reader process: exit at once if the process that started it has gone."""
    if get_worker_info() is not None and os.getppid() != parent_pid:
        os._exit(1)  # no cleanup: queues to a dead parent would block a normal exit


class RegionDataset(IterableDataset[RegionTiles | RegionReadFailure]):
    """Blocks of model tiles, read by whichever process iterates it.

    Each iterating process (DataLoader worker or the main process) opens its own ``Slide``
    from ``source`` (pass an open slide's ``slide.source``, so every process reads at the
    resolution it settled), and closes it when done: handles are never shared.
    A read error is yielded as ``RegionReadFailure`` (then iteration stops) so the main
    process can raise it as SlideOpenError without a worker traceback. Consecutive blocks are
    sent together until an item holds at least ``min_item_tiles`` tiles: fewer, larger
    messages cost the receiving process less. With ``plan.whole_regions`` each block is one
    item whose ``tiles`` is its region (1, H, W, 3) (``read_block_region``, or
    ``read_resized_region`` with ``plan.resized``), for dense scoring.
    """

    def __init__(
        self,
        source: SlideSource,
        geometry: ReadGeometry,
        level_xy: NDArray[np.int64],
        plan: RegionPlan,
        min_item_tiles: int = 1,
    ) -> None:
        super().__init__()
        self.source = source
        self.geometry = geometry
        self.level_xy = level_xy
        self.plan = plan
        self.min_item_tiles = min_item_tiles
        self.parent_pid = os.getpid()  # the process that iterates, or starts the readers

    def __iter__(self) -> Iterator[RegionTiles | RegionReadFailure]:
        span = _worker_span(self.plan.n_regions)
        if len(span) == 0:
            return
        try:
            slide = self.source.open()
        except MicrometError as exc:
            yield RegionReadFailure(str(exc))
            return
        with slide:
            yield from self._read_span(slide, span)

    def _read_span(self, slide: Slide, span: range) -> Iterator[RegionTiles | RegionReadFailure]:
        held: list[RegionTiles] = []
        n_held = 0
        for block_index in span:
            _exit_if_orphaned(self.parent_pid)
            indices = self.plan.block(block_index)
            try:
                tiles = self._read_block(slide, block_index, indices)
            except MicrometError as exc:
                yield RegionReadFailure(str(exc))
                return
            held.append(RegionTiles(indices, tiles))
            n_held += len(indices)
            if n_held >= self.min_item_tiles or self.plan.whole_regions:  # regions differ in size
                yield _joined(held)
                held, n_held = [], 0
        if held:
            yield _joined(held)

    def _read_block(self, slide: Slide, block_index: int, indices: NDArray[np.int64]) -> NDArray[np.uint8]:
        if self.plan.whole_regions and self.plan.resized is not None:
            return read_resized_region(slide, block_index, self.plan.resized, self.geometry)[None]
        if self.plan.whole_regions:
            return read_block_region(slide, self.level_xy[indices], self.geometry)[None]
        return read_block_tiles(slide, self.level_xy[indices], self.geometry)


def _joined(blocks: list[RegionTiles]) -> RegionTiles:
    """One item holding the tiles of ``blocks`` (their own arrays, not views of the plan)."""
    if len(blocks) == 1:
        return RegionTiles(blocks[0].indices.copy(), blocks[0].tiles)
    return RegionTiles(
        np.concatenate([block.indices for block in blocks]),
        np.concatenate([block.tiles for block in blocks]),
    )


def keep_item(item: Any) -> Any:
    """DataLoader ``collate_fn`` passing each item through unchanged (numpy stays numpy).

    With ``batch_size=None`` the DataLoader calls it with one ``RegionTiles`` or
    ``RegionReadFailure`` (typed Any to fit DataLoader's list-of-samples signature).
    """
    return item


_END_OF_ITEMS = object()


def read_ahead(items: Iterable[T], depth: int) -> Iterator[T]:
    """``items``, produced by a thread of this process up to ``depth`` items ahead.

    OpenSlide's reads run in C with the GIL released, so on a compute-bound CPU run the next
    blocks are read while torch scores the current batch, without the second copy of the
    slide handle and the pickling that a reader process costs. An exception in the thread is
    raised here; stopping early (``close`` or garbage collection) stops the thread.
    """
    queue: Queue[object] = Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        result: object = _END_OF_ITEMS
        try:
            for item in items:
                if not _put(queue, item, stop):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            result = exc
        _put(queue, result, stop)

    thread = threading.Thread(target=produce, name="micromet-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not _END_OF_ITEMS:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


def _put(queue: Queue[object], item: object, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; True when it was put."""
    while not stop.is_set():
        try:
            queue.put(item, timeout=0.05)
            return True
        except Full:
            continue
    return False
