"""Inference: reads a slide's tile grid and a model, produces one tumor probability per tile.

DataLoader workers read blocks of neighbouring tiles with one slide read each (``pipeline/slides/
readers.py``), sent as uint8 arrays about a batch per message; the main process copies them into
one reusable batch buffer (pinned for CUDA), moves it to the device, normalises it there with the
card's mean/std and scores it under ``inference_mode`` with the model's BatchNorms folded into its
convolutions. Memory stays bounded: only the items in flight are held, never all tiles.
``naive_score_tiles`` (one read per tile, batch of one, unfolded model) is the reference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import DataLoader

from pipeline.config import InferenceConfig
from pipeline.detection.cpu_plan import CpuPlan, fixed_plan, plan_cpu
from pipeline.detection.dense import DenseBatcher, dense_forward, plan_dense
from pipeline.detection.precision import PrecisionProbe, scoring_dtype
from pipeline.errors import CheckpointError, ConfigError, SlideOpenError
from pipeline.models import ModelCard, choose_device
from pipeline.models.device import precision_name
from pipeline.slides.readers import (
    ReadGeometry,
    RegionDataset,
    RegionReadFailure,
    RegionTiles,
    end_with_parent,
    keep_item,
    plan_regions,
    read_ahead,
    read_geometry,
    read_one_tile,
    tile_level_xy,
)
from pipeline.slides.slide import SlideSource
from pipeline.slides.tiling import TileGrid

log = logging.getLogger(__name__)

TUMOR_CLASS_INDEX = 1
# Items each reader process keeps read ahead of the scoring loop, and the size an item of
# joined blocks grows to (about a batch, but never more than this many bytes of tiles).
_PREFETCH_ITEMS = 4
_ITEM_MAX_BYTES = 4 * 2**20
# Relative tolerance when checking that a grid was planned at the card's resolution.
_MPP_RELATIVE_TOLERANCE = 1e-6

ProgressCallback = Callable[[int], None]


@dataclasses.dataclass(frozen=True)
class InferenceStats:
    """How a scoring run went.

    n_tiles: tiles scored. n_regions: slide reads. seconds: wall time of the scoring loop.
    tiles_per_s: n_tiles / seconds. wait_s: time the main loop waited for tiles from readers.
    compute_s: time spent moving, normalising and scoring tiles. device: e.g. "cpu", "cuda:0".
    read_level: pyramid level read. cpu_threads: torch threads used on the CPU.
    cpu_plan: reader processes and threads chosen for the run, and why.
    precision: the autocast the model ran under ("fp32", "bf16" or "fp16"), precision_probe: the
    timings that chose it (``pipeline.detection.precision``) or None. mode: "tiles" or "dense".
    partner: the run of a card's partner model (``pipeline.models.partner``). with_partner: the
    run scored the model and its partner together, in one pass (``pipeline.detection.paired``)."""

    n_tiles: int
    n_regions: int
    seconds: float
    tiles_per_s: float
    wait_s: float
    compute_s: float
    device: str
    read_level: int
    cpu_threads: int
    cpu_plan: CpuPlan
    precision: str = precision_name(None)  # plain fp32
    mode: str = "tiles"
    partner: bool = False
    with_partner: bool = False
    precision_probe: dict[str, float | str | int] | None = None


class _Scorer:
    """The model on its device with the card's normalisation; scores uint8 NHWC tiles."""

    def __init__(self, model: nn.Module, card: ModelCard, device: torch.device, dtype: torch.dtype | None,
                 probe: PrecisionProbe | None = None):
        self.device = device
        self.dtype, self.probe = dtype, probe  # autocast dtype (None: fp32), the probe that chose it
        self.model = model
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(card.mean, dtype=torch.float32, device=device).view(shape)
        self.std = torch.tensor(card.std, dtype=torch.float32, device=device).view(shape)

    def normalise(self, tiles: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 on the device -> (B, 3, H, W) float32, channels_last."""
        batch = tiles.permute(0, 3, 1, 2).float().div_(255.0)
        batch = batch.sub_(self.mean).div_(self.std)
        return batch.contiguous(memory_format=torch.channels_last)

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        """Tumor probabilities (B,) float32 on the CPU for (B, H, W, 3) uint8 tiles."""
        batch = self.normalise(tiles.to(self.device, non_blocking=True))
        autocast: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if self.dtype is not None:
            autocast = torch.autocast(device_type=self.device.type, dtype=self.dtype)
        with autocast:
            logits = self.model(batch)
        probabilities = torch.softmax(logits.float(), dim=1)[:, TUMOR_CLASS_INDEX]
        return probabilities.cpu()


def check_finite_probabilities(probabilities: NDArray[np.float32], where: str, unit: str = "tiles") -> None:
    """Raise CheckpointError naming ``where`` if any probability is NaN or infinite.

    A model whose output is not finite has broken weights or normalisation; its NaN would
    compare as "below threshold" and turn a slide negative, so the result is refused instead.
    """
    bad = int(np.count_nonzero(~np.isfinite(probabilities)))
    if bad:
        raise CheckpointError(
            f"{where}: the model gave NaN or infinite tumor probabilities for {bad} of "
            f"{len(probabilities)} {unit}, so no result is given; its weights or its card's "
            "mean/std are broken (or fp16 overflowed): use another --model or --precision fp32"
        )


def _fuse_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode ``model`` with each BatchNorm folded into the conv before it.

    Same function up to float rounding (probabilities agree to ~1e-7), about half the CPU
    time for small CNNs, whose BatchNorms cost nearly as much as their convolutions. The
    caller's model is left untouched. A model torch.fx cannot trace is returned unfused.
    """
    from torch.fx.experimental.optimization import fuse

    try:
        fused: nn.Module = fuse(model)
    except (torch.fx.proxy.TraceError, TypeError, NotImplementedError) as exc:
        log.info(
            "%s: scoring without BatchNorm folding (torch.fx cannot trace it: %s)", type(model).__name__, exc
        )
        return model
    return fused


def _prepare_model(
    model: nn.Module, device: torch.device, compile_model: bool, fuse: bool = True
) -> nn.Module:
    model.eval()
    model.to(device)
    model.to(memory_format=torch.channels_last)
    if fuse:
        model = _fuse_batch_norms(model).to(memory_format=torch.channels_last)
    if compile_model:
        compiled: nn.Module = torch.compile(model)  # type: ignore[assignment]
        return compiled
    return model


def check_grid_matches_card(grid: TileGrid, card: ModelCard, slide_mpp: float) -> None:
    """Raise ConfigError unless ``grid`` was planned with the card's tile size and mpp."""
    same_mpp = abs(grid.mpp - card.mpp) <= _MPP_RELATIVE_TOLERANCE * card.mpp
    same_slide = abs(grid.slide_mpp - slide_mpp) <= _MPP_RELATIVE_TOLERANCE * slide_mpp
    if grid.tile_size_px != card.tile_size_px or not same_mpp or not same_slide:
        raise ConfigError(
            f"tile grid planned for {grid.tile_size_px} px tiles at {grid.mpp:g} µm/px on a "
            f"{grid.slide_mpp:g} µm/px slide, but the model expects {card.tile_size_px} px at "
            f"{card.mpp:g} µm/px and the slide is read at {slide_mpp:g} µm/px; plan tiles with "
            "the model card's tile_size_px and mpp"
        )


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _slide_geometry(source: SlideSource, grid: TileGrid, card: ModelCard) -> tuple[ReadGeometry, SlideSource]:
    """The card's read geometry on the slide, and the source (µm/px settled) readers reopen."""
    # Opened and closed before any worker starts, so no handle crosses a fork.
    with source.open() as slide:
        check_grid_matches_card(grid, card, slide.mpp)
        return read_geometry(slide, card.tile_size_px, card.mpp, card.stain_normalization), slide.source


def _make_loader(dataset: RegionDataset, workers: int) -> DataLoader[RegionTiles | RegionReadFailure]:
    return DataLoader(
        dataset,
        batch_size=None,  # items are groups of blocks; batches are assembled in _Batcher
        collate_fn=keep_item,  # numpy arrays travel as one pickled message per item
        num_workers=workers,
        prefetch_factor=_PREFETCH_ITEMS if workers > 0 else None,
        in_order=workers == 0,  # results carry their tile indices, so order is free
        worker_init_fn=functools.partial(end_with_parent, os.getpid()),
    )


def _item_tiles(workers: int, batch_size: int, tile_size_px: int) -> int:
    """Tiles a reader process joins into one item: a batch, capped at _ITEM_MAX_BYTES."""
    if workers == 0:
        return 1  # read in this process: nothing to send
    return max(1, min(batch_size, _ITEM_MAX_BYTES // (3 * tile_size_px**2)))


# Blocks read, and tiles scored, by the CPU-plan probe.
_PROBE_BLOCKS = 6
_PROBE_TILES = 32


def _probe_read_s_per_tile(dataset: RegionDataset) -> float:
    """Seconds per tile to read the first few blocks in this process (slide opening excluded)."""
    plan = dataset.plan
    n_blocks = min(_PROBE_BLOCKS, plan.n_regions)
    head = dataclasses.replace(plan, starts=plan.starts[: n_blocks + 1])  # same read mode
    probe = RegionDataset(dataset.source, dataset.geometry, dataset.level_xy, head)
    iterator = iter(probe)
    opened = time.perf_counter()
    first = next(iterator, None)  # opens the slide and reads the first block: not timed
    started, tiles = time.perf_counter(), 0
    for item in iterator:
        if isinstance(item, RegionTiles):
            tiles += len(item.indices)
    if tiles == 0:  # one block only: time it with the opening included
        return (started - opened) / (len(first.indices) if isinstance(first, RegionTiles) else 1)
    return (time.perf_counter() - started) / tiles


def _probe_compute_s_per_tile(scorer: _Scorer, tile_size_px: int) -> float:
    """Single-thread seconds per tile to score a small batch (after one warm-up batch)."""
    tiles = torch.zeros((_PROBE_TILES, tile_size_px, tile_size_px, 3), dtype=torch.uint8)
    with _torch_threads(1):
        scorer(tiles)
        started = time.perf_counter()
        scorer(tiles)
        return (time.perf_counter() - started) / _PROBE_TILES


def choose_cpu_plan(
    config: InferenceConfig, device: torch.device, dataset: RegionDataset, scorer: _Scorer, tile_size_px: int
) -> CpuPlan:
    """The user's reader count if given, else one fitted to this slide and model by a probe."""
    on_cpu = device.type == "cpu"
    if config.num_workers is not None:
        return fixed_plan(config.num_workers, on_cpu, torch.get_num_threads())
    return plan_cpu(
        len(dataset.level_xy),
        on_cpu,
        torch.get_num_threads(),
        lambda: _probe_read_s_per_tile(dataset),
        lambda: _probe_compute_s_per_tile(scorer, tile_size_px),
    )


class _Batcher:
    """Copies items of tiles into one host batch buffer and scores it whenever it is full.

    The buffer is allocated once (in pinned memory for CUDA, so the copy to the device is
    asynchronous); ``_Scorer`` returns probabilities on the CPU, which waits for the device,
    so the buffer is never refilled while a copy from it is in flight.
    """

    def __init__(
        self, scorer: _Scorer, batch_size: int, tile_size_px: int, out: NDArray[np.float32], where: str
    ) -> None:
        self.scorer, self.batch_size, self.out, self.where = scorer, batch_size, out, where
        shape = (batch_size, tile_size_px, tile_size_px, 3)
        pin = scorer.device.type == "cuda"
        self.buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
        self.tiles: NDArray[np.uint8] = self.buffer.numpy()
        self.indices = np.empty(batch_size, dtype=np.int64)
        self.pending = 0

    def add(self, item: RegionTiles) -> int:
        """Queue one item's tiles; score full batches. Returns the number of tiles scored."""
        scored, start, count = 0, 0, len(item.indices)
        while start < count:
            take = min(self.batch_size - self.pending, count - start)
            stop, end = start + take, self.pending + take
            self.tiles[self.pending : end] = item.tiles[start:stop]
            self.indices[self.pending : end] = item.indices[start:stop]
            self.pending, start = end, stop
            if self.pending == self.batch_size:
                scored += self.flush()
        return scored

    def flush(self) -> int:
        """Score every queued tile. Returns how many. Raises CheckpointError if the model's
        output for them is not finite."""
        count, self.pending = self.pending, 0
        if count:
            probabilities = self.scorer(self.buffer[:count]).numpy()
            check_finite_probabilities(probabilities, self.where)
            self.out[self.indices[:count]] = probabilities
        return count


def _run_loader(
    loader: Iterable[RegionTiles | RegionReadFailure],
    batcher: _Batcher | DenseBatcher,
    slide_path: Path,
    progress: ProgressCallback | None,
) -> float:
    """Feed every block to ``batcher``; returns the seconds spent waiting for blocks."""
    wait_s = 0.0
    iterator = iter(loader)
    try:
        while True:
            started = time.perf_counter()
            item = next(iterator, None)
            wait_s += time.perf_counter() - started
            if item is None:
                break
            if isinstance(item, RegionReadFailure):
                raise SlideOpenError(item.message or f"{slide_path}: cannot read the slide")
            scored = batcher.add(item)
            if progress is not None and scored:
                progress(scored)
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        # A reader that died without a Python error (a crash inside the decoder, a kill).
        raise SlideOpenError(
            f"{slide_path}: a tile reader process stopped while reading the slide ({exc}); "
            "the file may be corrupt or memory short; rerun with --num-workers 0 to see why"
        ) from exc
    finally:
        del iterator  # stops the reader processes now, not when a traceback is dropped
    scored = batcher.flush()
    if progress is not None and scored:
        progress(scored)
    return wait_s


@dataclasses.dataclass(frozen=True)
class PreparedModel:
    """A model made ready for scoring once: BatchNorms folded into a copy, channels_last, on its
    device, compiled if asked. One serves every scoring call of a slide or a batch (the main
    grid, the cascade, refinement). It is a snapshot: weights changed afterwards (training)
    do not reach it, so training scores with ``score_tiles``, which prepares on every call.
    dense: the model's dense form (``pipeline.detection.dense``) prepared alike, or None.
    """

    scorer: _Scorer
    card: ModelCard
    device: torch.device
    dense: _Scorer | None = None


def prepare_model(model: nn.Module, card: ModelCard, config: InferenceConfig) -> PreparedModel:
    """``model`` prepared for ``config`` (device, precision, compile); the caller's model is
    left as it is apart from eval() and its device."""
    device = choose_device(config.device)
    with torch.inference_mode():
        tile_model = _prepare_model(model, device, config.compile)
        dtype, probe = scoring_dtype(tile_model, card.tile_size_px, device, config.precision)
        scorer = _Scorer(tile_model, card, device, dtype, probe)
        dense = dense_forward(model, card) if config.dense else None
        if dense is None:
            return PreparedModel(scorer, card, device)
        dense_scorer = _Scorer(_prepare_model(dense, device, config.compile), card, device, dtype, probe)
    return PreparedModel(scorer, card, device, dense_scorer)


def score_prepared(
    source: SlideSource,
    grid: TileGrid,
    prepared: PreparedModel,
    config: InferenceConfig,
    progress: ProgressCallback | None = None,
) -> tuple[NDArray[np.float32], InferenceStats]:
    """Like ``score_tiles_with_stats``, with a model prepared once by ``prepare_model``."""
    card, device, scorer = prepared.card, prepared.device, prepared.scorer
    geometry, source = _slide_geometry(source, grid, card)
    slide_path = source.path
    dense = plan_dense(grid, geometry, card, prepared.dense if config.dense else None)
    plan = dense.regions if dense else plan_regions(grid.heatmap_rc, config.region_tiles)
    dataset = RegionDataset(source, geometry, tile_level_xy(grid.xy_px, geometry), plan)
    out = np.full(len(grid), np.nan, dtype=np.float32)
    started = time.perf_counter()
    with torch.inference_mode():
        cpu = choose_cpu_plan(config, device, dataset, scorer, card.tile_size_px)
        dataset.min_item_tiles = _item_tiles(cpu.num_workers, config.batch_size, card.tile_size_px)
        with _torch_threads(cpu.torch_threads):
            batcher = _Batcher(scorer, config.batch_size, card.tile_size_px, out, str(slide_path))
            scoring = dense.batcher(grid.heatmap_rc, out) if dense else batcher
            items: Iterable[RegionTiles | RegionReadFailure] = _make_loader(dataset, cpu.num_workers)
            if cpu.read_ahead_thread:
                items = read_ahead(items, _PREFETCH_ITEMS)
            wait_s = _run_loader(items, scoring, slide_path, progress)
    check_finite_probabilities(out, str(slide_path))  # dense regions are checked here, at the end
    seconds = time.perf_counter() - started
    stats = InferenceStats(
        n_tiles=len(grid),
        n_regions=plan.n_regions,
        seconds=seconds,
        tiles_per_s=len(grid) / seconds if seconds > 0 else 0.0,
        wait_s=wait_s,
        compute_s=max(0.0, seconds - wait_s),
        device=str(device),
        read_level=geometry.level,
        cpu_threads=cpu.torch_threads,
        cpu_plan=cpu,
        precision=precision_name(scorer.dtype),
        precision_probe=None if scorer.probe is None else scorer.probe.to_dict(),
        mode="dense" if dense else "tiles",
    )
    log.info(
        "%s: scored %d tiles (%s) in %d reads at level %d on %s: %.1f tiles/s (waited %.1f s for "
        "tiles, computed %.1f s); %s",
        slide_path, stats.n_tiles, stats.mode, stats.n_regions, stats.read_level, stats.device,
        stats.tiles_per_s, stats.wait_s, stats.compute_s, cpu.reason,
    )  # fmt: skip
    return out, stats


def score_tiles_with_stats(
    source: SlideSource,
    grid: TileGrid,
    model: nn.Module,
    card: ModelCard,
    config: InferenceConfig,
    progress: ProgressCallback | None = None,
) -> tuple[NDArray[np.float32], InferenceStats]:
    """Like ``score_tiles``, also returning how the run went (``InferenceStats``)."""
    if source.mpp is not None:  # refused before the model is prepared
        check_grid_matches_card(grid, card, source.mpp)
    prepared = prepare_model(model, card, config)
    return score_prepared(source, grid, prepared, config, progress)


def score_tiles(
    source: SlideSource,
    grid: TileGrid,
    model: nn.Module,
    card: ModelCard,
    config: InferenceConfig,
    progress: ProgressCallback | None = None,
) -> NDArray[np.float32]:
    """Tumor probability (softmax of class 1) of every tile in ``grid``, in grid order.

    source: the slide, reopened by every reader process at its level-0 µm/px (an open slide's
    ``slide.source``, or ``SlideSource.with_mpp`` for an ``--mpp`` override). grid: tiles
    planned with the card's tile_size_px and mpp. model: moved to the configured device, set
    to eval() and channels_last. progress: called with the number of tiles scored since its last call.
    Returns (N,) float32 in [0, 1]. Raises SlideOpenError naming the file when a read fails,
    ConfigError when the grid does not fit the card or the device is unavailable,
    CheckpointError when the model's output is NaN or infinite.
    """
    probabilities, _ = score_tiles_with_stats(source, grid, model, card, config, progress)
    return probabilities


def naive_score_tiles(
    source: SlideSource,
    grid: TileGrid,
    model: nn.Module,
    card: ModelCard,
    device: str = "cpu",
) -> NDArray[np.float32]:
    """Reference scorer: one ``read_region_at_mpp`` per tile, batches of one, main process.

    Same tile pixels (corners snapped as in ``pipeline/slides/readers.py``), normalisation and
    (N,) float32 output as ``score_tiles``, in plain fp32; slow, for tests and benchmarks; one CPU thread.
    """
    torch_device = choose_device(device)
    out = np.full(len(grid), np.nan, dtype=np.float32)
    threads = 1 if torch_device.type == "cpu" else torch.get_num_threads()
    with (
        source.open() as slide,
        _torch_threads(threads),
        torch.inference_mode(),
    ):
        check_grid_matches_card(grid, card, slide.mpp)
        geometry = read_geometry(slide, card.tile_size_px, card.mpp, card.stain_normalization)
        scorer = _Scorer(_prepare_model(model, torch_device, False, fuse=False), card, torch_device, None)
        for index, xy_px in enumerate(grid.xy_px):
            tile = read_one_tile(slide, xy_px, geometry)
            out[index] = float(scorer(torch.from_numpy(tile[None].copy()))[0])
    check_finite_probabilities(out, str(source.path))
    return out


def dihedral_poses(tiles: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(8N, T, T, 3): each of the (N, T, T, 3) tiles in its 8 dihedral poses (4 turns, each
    also mirrored), tile by tile."""
    poses = []
    for tile in tiles:
        for turns in range(4):
            turned = np.rot90(tile, turns)
            poses += [turned, turned[:, ::-1]]
    return np.ascontiguousarray(np.stack(poses))


def score_dihedral(prepared: PreparedModel, tiles: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Tumor probability (N, 8) of (N, T, T, 3) uint8 tiles in each of their 8 dihedral poses
    (``dihedral_poses``' order)."""
    if len(tiles) == 0:
        return np.zeros((0, 8), dtype=np.float32)
    with torch.inference_mode():
        probabilities = prepared.scorer(torch.from_numpy(dihedral_poses(tiles))).numpy()
    return np.asarray(probabilities.reshape(len(tiles), 8), dtype=np.float32)
