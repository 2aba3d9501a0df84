"""Speed benchmark, child side: one measured variant per fresh process, result as JSON.

``speed`` starts ``python -m pipeline.benchmarks.speed --run-variant NAME`` once per variant
and repeat, so each process's peak memory is its own. The variants score the same tiles (the
grid the parent planned and saved with ``save_grid``) with the same model, batch size, workers
and device:

* ``read_limit``: the tiles read exactly as micromet's readers read them (``read_block_tiles`` on
  the same region plan), by the same number of worker processes, each opening its own slide
  handle once, and no model: how fast tiles can come off the disk.
* ``compute_limit``: the model alone on random tensors of the same shape, batch size, device,
  channels_last, ``inference_mode`` and autocast as micromet, with the faster of 1 torch thread
  and all cores on the CPU: how fast the model can go.
* ``micromet_engine``: ``score_tiles_with_stats`` alone on the planned grid.
* ``micromet``: ``analyze_slide`` end to end (open, tissue, tiling, reading, scoring, heatmap,
  deposits, exports, report), timed on its second (warm) slide in the process.

Imports here stay light (numpy, stdlib) so the TIAToolbox runner, which runs in another virtual
environment, can share ``BenchSpec``, ``RunResult``, ``load_grid_arrays`` and ``tile_mask``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from pipeline.models.device import Precision
    from pipeline.slides.readers import ReadGeometry
    from pipeline.slides.slide import SlideSource
    from pipeline.slides.tiling import TileGrid

MAIN_VARIANTS = ("read_limit", "compute_limit", "micromet_engine", "micromet")
# Imported before the clock starts: import time is not what is measured.
PREIMPORTS = {
    "read_limit": ("pipeline.slides.readers", "pipeline.slides.slide", "pipeline.slides.tiling"),
    "compute_limit": ("torch", "pipeline.models"),
    "micromet_engine": ("pipeline.detection.inference", "pipeline.slides.tiling"),
    "micromet": ("pipeline.batch.analyze", "pipeline.detection.inference"),
}
# ru_maxrss is in KiB on Linux and in bytes on macOS.
_MAXRSS_TO_MB = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """What every variant runs on: the slide, the model, the planned grid and the settings.

    slide_mpp: level-0 µm/px. tile_size_px / model_mpp: the model card's tile geometry.
    grid: ``.npz`` written by ``save_grid``. out_dir: where variants write their outputs.
    """

    slide: str
    slide_mpp: float
    model: str
    tile_size_px: int
    model_mpp: float
    device: str
    workers: int | None  # None: micromet's automatic CPU plan (read limit and TIAToolbox: all cores)
    batch_size: int
    region_tiles: int
    grid: str
    out_dir: str
    stride_px: int | None = None  # heatmap stride at the model resolution (None: tile size)
    precision: Precision = "auto"

    @property
    def reader_count(self) -> int:
        """Reader processes for the read limit and TIAToolbox: --workers, else every usable core."""
        if self.workers is not None:
            return self.workers
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    @property
    def source(self) -> SlideSource:
        """The slide at the µm/px its metadata gave when the spec was planned."""
        from pipeline.slides.slide import MPP_FROM_METADATA, SlideSource

        return SlideSource.with_mpp(self.slide, self.slide_mpp, MPP_FROM_METADATA)

    def save(self, path: Path) -> None:
        """Write the spec as JSON."""
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> BenchSpec:
        """Read a spec written by ``save``."""
        return cls(**json.loads(path.read_text(encoding="utf-8")))


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One run of one variant.

    n_tiles: tiles the variant scored (or read). seconds: wall time of the measured work
    (imports, interpreter start and model loading excluded). peak_rss_main_mb: the measuring
    process's peak RSS; peak_rss_worker_mb: the largest of its finished child processes;
    peak_rss_tree_mb: peak of the summed RSS of the whole process tree, sampled by the parent
    (None where /proc is unavailable). extra: variant-specific facts. error: why it failed.
    """

    variant: str
    n_tiles: int = 0
    seconds: float = 0.0
    peak_rss_main_mb: float = 0.0
    peak_rss_worker_mb: float = 0.0
    peak_rss_tree_mb: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None

    @property
    def tiles_per_s(self) -> float:
        """Tiles per second of wall time (0 for a failed or empty run)."""
        return self.n_tiles / self.seconds if self.seconds > 0 else 0.0

    def save(self, path: Path) -> None:
        """Write the result as JSON."""
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> RunResult:
        """Read a result written by ``save``."""
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def peak_rss_mb() -> tuple[float, float]:
    """(this process, its largest finished child) peak resident set size in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_TO_MB
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * _MAXRSS_TO_MB
    return own, children


def measured(variant: str, work: Callable[[], tuple[int, dict[str, Any]]]) -> RunResult:
    """Run ``work`` (returning tile count and extra facts) and time it; memory read afterwards.

    A ``seconds`` entry in the facts replaces the wall time of ``work`` (for variants that must
    not count model loading or a warm-up).
    """
    started = time.perf_counter()
    n_tiles, extra = work()
    seconds = float(extra.pop("seconds", time.perf_counter() - started))
    own, children = peak_rss_mb()
    return RunResult(variant, n_tiles, seconds, round(own, 1), round(children, 1), extra=extra)


GRID_FIELDS = ("grid_shape", "tile_size_px", "mpp", "slide_mpp", "tile_size_l0_px", "stride_l0_px",
               "slide_dimensions")


def save_grid(grid: TileGrid, path: Path) -> None:
    """Write a ``TileGrid`` to ``path`` (.npz with its arrays and a JSON of its scalars)."""
    meta = {name: getattr(grid, name) for name in GRID_FIELDS}
    np.savez(path, xy_px=grid.xy_px, heatmap_rc=grid.heatmap_rc, tissue_fraction=grid.tissue_fraction,
             meta=np.array(json.dumps(meta)))


def load_grid_arrays(path: Path) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    """The arrays and scalar fields of a grid written by ``save_grid``."""
    with np.load(path) as data:
        arrays = {name: data[name] for name in ("xy_px", "heatmap_rc", "tissue_fraction")}
        meta: dict[str, Any] = json.loads(str(data["meta"]))
    return arrays, meta


def load_grid(path: Path) -> TileGrid:
    """The ``TileGrid`` written by ``save_grid``."""
    from pipeline.slides.tiling import TileGrid

    arrays, meta = load_grid_arrays(path)
    return TileGrid(
        xy_px=arrays["xy_px"].astype(np.int64),
        heatmap_rc=arrays["heatmap_rc"].astype(np.int64),
        grid_shape=(int(meta["grid_shape"][0]), int(meta["grid_shape"][1])),
        tile_size_px=int(meta["tile_size_px"]),
        mpp=float(meta["mpp"]),
        slide_mpp=float(meta["slide_mpp"]),
        tile_size_l0_px=float(meta["tile_size_l0_px"]),
        stride_l0_px=float(meta["stride_l0_px"]),
        slide_dimensions=(int(meta["slide_dimensions"][0]), int(meta["slide_dimensions"][1])),
        tissue_fraction=arrays["tissue_fraction"].astype(np.float32),
    )


def tile_mask(
    heatmap_rc: NDArray[np.int64], model_shape_px: tuple[float, float], stride_px: int
) -> NDArray[np.uint8]:
    """A mask with one pixel per grid cell, 1 on the planned tiles, for TIAToolbox.

    model_shape_px: (width, height) of the slide at the model resolution. TIAToolbox maps a
    patch's corners to mask pixels by multiplying with mask size / slide size and truncating;
    one extra column and row make that factor strictly above 1 / stride_px, so patch
    (col, row) starts inside mask pixel (col, row) and ends at its far edge. Without overlap
    (stride = tile) it covers only its own cell and is kept exactly when micromet planned that
    tile; with overlap it also covers the next tile_size / stride - 1 cells, so TIAToolbox also
    scores the planned tiles' up-left neighbours (its tiles/s stays per tile). Returns uint8.
    """
    width, height = model_shape_px
    mask = np.zeros((math.floor(height / stride_px) + 1, math.floor(width / stride_px) + 1), np.uint8)
    rc = np.asarray(heatmap_rc, dtype=np.int64).reshape(-1, 2)
    mask[rc[:, 0], rc[:, 1]] = 1
    return mask


def _read_span(task: tuple[SlideSource, ReadGeometry, NDArray[np.int64], list[NDArray[np.int64]]]) -> int:
    """Read blocks of tiles with one slide handle; returns the number of tiles read."""
    from pipeline.slides.readers import read_block_tiles

    source, geometry, level_xy, blocks = task
    count = 0
    with source.open() as slide:
        for block in blocks:
            count += len(read_block_tiles(slide, level_xy[block], geometry))
    return count


def read_limit(spec: BenchSpec) -> tuple[int, dict[str, Any]]:
    """Read every planned tile as micromet does, with ``spec.workers`` processes, no model.

    Each worker gets a contiguous run of region blocks (as micromet's DataLoader workers do)
    and opens its own slide handle once. The reader modules are imported before the pool
    starts, so forked workers do not pay for imports (micromet's DataLoader workers do not
    either). Returns (tiles read, facts).
    """
    import multiprocessing

    from pipeline.slides.readers import plan_regions, read_geometry, tile_level_xy

    grid = load_grid(Path(spec.grid))
    with spec.source.open() as slide:
        geometry = read_geometry(slide, spec.tile_size_px, spec.model_mpp)
        source = slide.source
    plan = plan_regions(grid.heatmap_rc, spec.region_tiles)
    level_xy = tile_level_xy(grid.xy_px, geometry)
    blocks = [plan.block(index) for index in range(plan.n_regions)]
    shares = max(1, spec.reader_count)
    tasks = [
        (source, geometry, level_xy,
         blocks[len(blocks) * i // shares : len(blocks) * (i + 1) // shares])
        for i in range(shares)
    ]
    if spec.reader_count == 0:
        counts = [_read_span(tasks[0])]
    else:
        with multiprocessing.Pool(spec.reader_count) as pool:
            counts = pool.map(_read_span, tasks, chunksize=1)
    facts = {"n_regions": plan.n_regions, "read_level": geometry.level, "workers": spec.reader_count}
    return sum(counts), facts


def _loaded_model(spec: BenchSpec) -> tuple[Any, Any, Any]:
    """(model as loaded, card, device) for ``spec``."""
    from pipeline.models import choose_device, load_checkpoint

    device = choose_device(spec.device)
    model, card = load_checkpoint(spec.model, device=str(device))
    return model, card, device


def _device_facts(device: Any) -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"device": str(device), "torch": str(torch.__version__),
                             "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        facts["device_name"] = torch.cuda.get_device_name(device)
    return facts


def _time_model_pass(model: Any, batch: Any, sizes: list[int], dtype: Any) -> float:
    """Seconds to score batches of ``sizes`` tiles (after one untimed warm-up batch)."""
    import contextlib

    import torch

    def score(size: int) -> None:
        autocast: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if dtype is not None:
            autocast = torch.autocast(device_type=batch.device.type, dtype=dtype)
        with autocast:
            logits = model(batch[:size])
        torch.softmax(logits.float(), dim=1)[:, 1].cpu()  # .cpu() waits for the device

    with torch.inference_mode():
        score(len(batch))
        started = time.perf_counter()
        for size in sizes:
            score(size)
        return time.perf_counter() - started


def compute_limit(spec: BenchSpec) -> tuple[int, dict[str, Any]]:
    """Score as many random tiles as the grid holds with the model alone (a model with exact dense
    inference: as many cells, in random regions of 16 x 16 cells, as micromet scores it).

    Same batch size, device, channels_last, inference_mode and autocast dtype as micromet. On
    the CPU it is timed with 1 torch thread and with torch's default (all cores) and the faster
    counts: on a small or busy machine one thread can beat an oversubscribed pool, and micromet
    itself leaves cores to its readers. Returns (tiles, facts).
    """
    import torch

    from pipeline.detection.dense import DENSE_BLOCK_CELLS, dense_forward
    from pipeline.detection.inference import _prepare_model
    from pipeline.models.device import scoring_autocast_dtype

    n_tiles = len(load_grid_arrays(Path(spec.grid))[0]["xy_px"])
    model, card, device = _loaded_model(spec)
    dense = dense_forward(model, card)
    model = _prepare_model(dense or model, device, compile_model=False)  # BatchNorms folded, channels_last
    dtype = scoring_autocast_dtype(device, spec.precision)
    if dense is not None:  # as micromet scores it: regions of DENSE_BLOCK_CELLS x DENSE_BLOCK_CELLS cells
        side_px = card.tile_size_px + card.stride_px * (DENSE_BLOCK_CELLS - 1)
        shape = (1, 3, side_px, side_px)
        sizes = [1] * math.ceil(n_tiles / DENSE_BLOCK_CELLS**2)
    else:
        shape = (spec.batch_size, 3, spec.tile_size_px, spec.tile_size_px)
        full, rest = divmod(n_tiles, spec.batch_size)
        sizes = [s for s in [spec.batch_size] * full + [rest] if s]
    batch = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last)
    default_threads = torch.get_num_threads()
    counts = sorted({1, default_threads}) if device.type == "cpu" else [default_threads]
    seconds_by_threads: dict[int, float] = {}
    for count in counts:
        torch.set_num_threads(count)
        seconds_by_threads[count] = _time_model_pass(model, batch, sizes, dtype)
    torch.set_num_threads(default_threads)
    best = min(seconds_by_threads, key=lambda count: seconds_by_threads[count])
    by_threads = {str(count): round(seconds, 3) for count, seconds in seconds_by_threads.items()}
    facts = {**_device_facts(device), "autocast": str(dtype), "seconds": seconds_by_threads[best],
             "torch_threads": best, "seconds_by_threads": by_threads, "mode": "dense" if dense else "tiles"}
    return n_tiles, facts


def micromet_engine(spec: BenchSpec) -> tuple[int, dict[str, Any]]:
    """``score_tiles_with_stats`` on the planned grid; saves the scores for the agreement check."""
    from pipeline.config import InferenceConfig
    from pipeline.detection.inference import score_tiles_with_stats

    grid = load_grid(Path(spec.grid))
    model, card, device = _loaded_model(spec)
    config = InferenceConfig(batch_size=spec.batch_size, num_workers=spec.workers, device=str(device),
                             region_tiles=spec.region_tiles, precision=spec.precision)
    scores, stats = score_tiles_with_stats(spec.source, grid, model, card, config)
    np.save(Path(spec.out_dir) / "micromet_engine_scores.npy", scores)
    kept = ("n_regions", "wait_s", "compute_s", "read_level", "cpu_threads", "seconds", "precision",
            "cpu_plan")
    facts = {**_device_facts(device), **{k: v for k, v in dataclasses.asdict(stats).items() if k in kept}}
    return stats.n_tiles, facts


def micromet_end_to_end(spec: BenchSpec, folder: Path) -> tuple[int, dict[str, Any]]:
    """``analyze_slide`` from the slide file to report.json, with the spec's settings, twice.

    The first (cold) run pays one-off lazy imports (matplotlib, scikit-image, shapely); the
    second (warm) is what every further slide of a batch costs and is the measured time.
    """
    from pipeline.batch.analyze import analyze_slide
    from pipeline.batch.settings import AnalysisSettings

    overrides: dict[str, dict[str, Any]] = {
        "inference": {"device": spec.device, "batch_size": spec.batch_size, "num_workers": spec.workers,
                      "region_tiles": spec.region_tiles, "precision": spec.precision,
                      "cascade": False},  # every planned tile, as the other variants score
        "tiling": {"stride_px": spec.stride_px},
    }
    context = AnalysisSettings(model_path=Path(spec.model), overrides=overrides).build()
    seconds: list[float] = []
    for run in ("cold", "warm"):
        (folder / run).mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        report = analyze_slide(context, Path(spec.slide), "bench", folder / run)
        seconds.append(time.perf_counter() - started)
    timing = dict(report["timing_s"])
    stages = sum(timing[k] for k in ("tissue_tiling", "inference", "deposits"))
    timing["rest"] = round(timing["total"] - stages, 3)
    facts = {"timing_s": timing, "category": report["category"], "seconds": seconds[1], "cold_s": seconds[0],
             "n_deposits": len(report["deposits"])}
    return int(report["n_tiles"]), facts


def run_variant(variant: str, spec: BenchSpec, repeat: int) -> RunResult:
    """Run one variant in this process and measure it (its modules imported beforehand)."""
    for module in PREIMPORTS.get(variant, ()):
        importlib.import_module(module)
    if variant == "read_limit":
        return measured(variant, lambda: read_limit(spec))
    if variant == "compute_limit":
        return measured(variant, lambda: compute_limit(spec))
    if variant == "micromet_engine":
        return measured(variant, lambda: micromet_engine(spec))
    if variant == "micromet":
        folder = Path(spec.out_dir) / f"micromet_{repeat}"
        return measured(variant, lambda: micromet_end_to_end(spec, folder))
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(MAIN_VARIANTS)}")
