"""Scaling and memory benchmark: ``micromet infer`` time against tissue area, and peak memory
on a CAMELYON-size slide.

Scaling: square synthetic nodes (``pipeline.synthetic.generate_slide``, 0.25 µm/px, one planted
0.3 mm deposit each; --sizes sides in px) are run through ``micromet infer`` one at a time, each
in a fresh process. Per slide: wall seconds of the process (interpreter start, imports and model
loading included), micromet's own total from report.json, tissue area, tiles, tiles/s and peak
RSS. A least-squares line, seconds = a + b x tissue area, gives the fixed per-slide overhead a
and the cost per mm² b.

Memory: a CAMELYON-size slide (100,000 x 200,000 px at 0.25 µm/px, 25 x 50 mm) is written by
``write_background_slide``: a tiled JPEG pyramid (levels as pages, resolution in pixels/cm) whose
tiles are empty glass, one encoded tile reused per level, except where copies of two synthetic
nodes are pasted (one of them with a planted 1.0 mm deposit). It is run through ``micromet
infer`` the same way; its peak RSS is the figure the issue bounds (under 3 GB).

Peak RSS: the largest single process of the run (exact: ``wait4``'s ru_maxrss), and the sum over
the run's process tree (micromet and its reader workers; sampled every 0.2 s, so shared pages
count once per process).

    .venv/bin/python scripts/bench_scaling.py [--sizes 5000,10000,20000,30000] [--skip-camelyon]
        [--work-dir .bench/scaling] [--model models/default.pt] [--repeats 1] [--write-docs]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import machine_facts, process_tree, rss_mb  # noqa: E402
from bench_report import replace_section  # noqa: E402

SECTION = "## Scaling and memory"
PLOT_NAME = "benchmarks_scaling.png"
SLIDE_MPP = 0.25
DEFAULT_SIZES_PX = (5000, 10000, 20000, 30000)
SCALING_DEPOSIT_MM = 0.3  # one micro-metastasis per scaling slide, so deposit work is constant
CAMELYON_WIDTH_PX, CAMELYON_HEIGHT_PX = 100_000, 200_000
CAMELYON_NAME = "camelyon_size.tif"
SOURCE_SIDE_PX = 16384  # a power of two: the source's levels have exact downsamples 2, 4, ...
SOURCE_DEPOSIT_MM = 1.0
TILE_PX = 256
JPEG_QUALITY = 85
SMALLEST_LEVEL_MAX_PX = 1024
SAMPLE_INTERVAL_S = 0.2
GLASS_PATCH_PX = 64  # a corner of every synthetic node that is surely glass
RSS_LIMIT_MB = 3000.0  # the target for the CAMELYON-size slide


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


def tiles_touching(
    box_xywh: tuple[int, int, int, int], downsample: int, tile_px: int, grid_cols_rows: tuple[int, int]
) -> list[tuple[int, int]]:
    """(row, col) of the level tiles that overlap a level-0 box, the level being ``downsample``
    times coarser than level 0 (tiles of ``tile_px`` level px, clipped to the grid)."""
    x, y, w, h = box_xywh
    span = tile_px * downsample
    col0, col1 = max(0, x // span), min(grid_cols_rows[0] - 1, (x + w - 1) // span)
    row0, row1 = max(0, y // span), min(grid_cols_rows[1] - 1, (y + h - 1) // span)
    return [(r, c) for r in range(row0, row1 + 1) for c in range(col0, col1 + 1)]


def paste_tiles(
    spec: BackgroundSlideSpec, level: int, source_sizes: dict[str, tuple[int, int]]
) -> dict[tuple[int, int], list[int]]:
    """Which pastes (indices into ``spec.pastes``) each non-glass tile of ``level`` shows."""
    width, height = spec.level_dimensions()[level]
    grid = (math.ceil(width / spec.tile_px), math.ceil(height / spec.tile_px))
    touched: dict[tuple[int, int], list[int]] = {}
    for index, paste in enumerate(spec.pastes):
        box = (paste.x_px, paste.y_px, *source_sizes[paste.source])
        for key in tiles_touching(box, 2**level, spec.tile_px, grid):
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


# ---- slides --------------------------------------------------------------------------------


def ensure_scaling_slide(work_dir: Path, side_px: int) -> Path:
    """A square synthetic node of ``side_px`` at 0.25 µm/px with one 0.3 mm deposit (cached)."""
    from pipeline.synthetic import PlantedDeposit, SynthConfig, generate_slide

    path = work_dir / "slides" / f"node_{side_px}.tif"
    if not path.exists():
        config = SynthConfig(width_px=side_px, height_px=side_px, mpp=SLIDE_MPP, seed=side_px,
                             deposits=(PlantedDeposit(SCALING_DEPOSIT_MM),))
        generate_slide(config, path)
    return path


def ensure_camelyon_slide(work_dir: Path) -> tuple[Path, float | None]:
    """The CAMELYON-size slide and the seconds it took to write (None when cached)."""
    from pipeline.synthetic import PlantedDeposit, SynthConfig, generate_slide, read_truth

    folder = work_dir / "camelyon"
    path, layout_path = folder / CAMELYON_NAME, folder / "camelyon_size.layout.json"
    if path.exists() and layout_path.exists():  # the layout is written last
        return path, None
    started = time.perf_counter()
    sources = {"tumor": folder / "source_tumor.tif", "negative": folder / "source_negative.tif"}
    for name, source in sources.items():
        if not source.exists():
            deposits = (PlantedDeposit(SOURCE_DEPOSIT_MM),) if name == "tumor" else ()
            generate_slide(SynthConfig(width_px=SOURCE_SIDE_PX, height_px=SOURCE_SIDE_PX, mpp=SLIDE_MPP,
                                       seed=11 if name == "tumor" else 12, deposits=deposits), source)
    spec = BackgroundSlideSpec(CAMELYON_WIDTH_PX, CAMELYON_HEIGHT_PX, SLIDE_MPP, CAMELYON_PASTES)
    write_background_slide(spec, sources, path)
    planted = [
        {"diameter_mm": round(d.diameter_mm, 3), "category": d.category,
         "centroid_x_px": round(d.centroid_xy[0] + p.x_px), "centroid_y_px": round(d.centroid_xy[1] + p.y_px)}
        for p in CAMELYON_PASTES
        for d in read_truth(sources[p.source].with_name(f"{sources[p.source].stem}.truth.json")).deposits
    ]
    layout = {"pastes": [dataclasses.asdict(p) for p in CAMELYON_PASTES], "planted_deposits": planted}
    layout_path.write_text(json.dumps(layout, indent=1) + "\n")
    return path, time.perf_counter() - started


# ---- measuring -----------------------------------------------------------------------------


class RssSampler:
    """Samples the summed RSS of a process tree in a thread; ``peak_tree_mb`` is the largest."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.peak_tree_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        tree, count = {self.root_pid}, 0
        while not self._stop.is_set():
            if count % 5 == 0:  # listing /proc costs the measured run CPU: only every second
                tree = process_tree(self.root_pid)
            count += 1
            values = [v for v in (rss_mb(pid) for pid in tree) if v is not None]
            if values:
                self.peak_tree_mb = max(self.peak_tree_mb or 0.0, sum(values))
            self._stop.wait(SAMPLE_INTERVAL_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def infer_command(slide: Path, out_dir: Path, model: Path | None) -> list[str]:
    """``micromet infer`` on one slide, as a fresh Python process."""
    command = [sys.executable, "-m", "pipeline", "infer", str(slide), "--out", str(out_dir), "--overwrite"]
    return command + (["--model", str(model)] if model is not None else [])


def run_infer(slide: Path, out_dir: Path, model: Path | None, timeout_s: float) -> dict[str, Any]:
    """Run and measure one ``micromet infer``; raises RuntimeError naming the log on failure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "infer.log"
    with log_path.open("w", encoding="utf-8") as log_file:
        started = time.perf_counter()
        process = subprocess.Popen(infer_command(slide, out_dir, model), stdout=log_file,
                                   stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        with RssSampler(process.pid) as sampler:
            timer = threading.Timer(timeout_s, os.killpg, (process.pid, signal.SIGKILL))
            timer.start()
            _, status, usage = os.wait4(process.pid, 0)
            timer.cancel()
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keeps Popen quiet
    folder = out_dir / slide.stem
    if process.returncode != 0 or not (folder / "report.json").exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"{slide}: micromet infer exited {process.returncode}; log {log_path}:\n"
                           + "\n".join(tail))
    return {"seconds": seconds, "peak_rss_largest_mb": usage.ru_maxrss / 1024.0,  # KiB on Linux
            "peak_rss_tree_mb": sampler.peak_tree_mb, **report_facts(folder)}


def report_facts(folder: Path) -> dict[str, Any]:
    """What the scaling table needs from one slide's output folder."""
    report = json.loads((folder / "report.json").read_text())
    heatmap = np.load(folder / "heatmap.npy", mmap_mode="r")
    return {
        "dimensions": report["slide"]["dimensions"],
        "tissue_area_mm2": report["slide"]["tissue_area_mm2"],
        "n_tiles": report["n_tiles"],
        "micromet_seconds": report["timing_s"]["total"],
        "timing_s": report["timing_s"],
        "category": report["category"],
        "deposits": [(d["category"], d["max_diameter_mm"], d["centroid_x_px"], d["centroid_y_px"])
                     for d in report["deposits"]],
        "heatmap_shape": list(heatmap.shape),
        "heatmap_mb": (folder / "heatmap.npy").stat().st_size / 2**20,
    }


def measure_slide(slide: Path, out_dir: Path, model: Path | None, repeats: int,
                  timeout_s: float) -> dict[str, Any]:
    """``repeats`` runs of one slide: median seconds, largest peak RSS."""
    runs = [run_infer(slide, out_dir, model, timeout_s) for _ in range(repeats)]
    row = dict(runs[-1])
    for key in ("seconds", "micromet_seconds"):
        row[key] = statistics.median(r[key] for r in runs)
        row[f"{key}_runs"] = [round(r[key], 2) for r in runs]
    for key in ("peak_rss_largest_mb", "peak_rss_tree_mb"):
        row[key] = max((r[key] for r in runs if r[key] is not None), default=None)
    row["slide"] = slide.name
    return row


def fit_linear(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares y = a + b x; returns (a, b, r²). Needs two or more distinct x."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xs) < 2 or np.ptp(xs) == 0:
        raise ValueError(f"need two or more distinct x values to fit a line, got {list(xs)}")
    b, a = np.polyfit(xs, ys, 1)
    residual = float(np.sum((ys - (a + b * xs)) ** 2))
    total = float(np.sum((ys - ys.mean()) ** 2))
    return float(a), float(b), 1.0 - residual / total if total > 0 else 1.0


# ---- report --------------------------------------------------------------------------------


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _fit_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    areas = [r["tissue_area_mm2"] for r in rows]
    lines = []
    for key, label in (("seconds", "wall seconds (whole process)"), ("micromet_seconds", "micromet seconds")):
        a, b, r2 = fit_linear(areas, [r[key] for r in rows])
        lines.append(f"- {label} = **{a:.2f} s + {b:.3f} s/mm² x tissue area** (r² = {r2:.3f}); "
                     f"100 mm² of tissue would take {a + 100 * b:.0f} s.")
    return lines


def scaling_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown table and fit of the scaling slides (rows sorted by tissue area)."""
    lines = ["| slide | size px | tissue mm² | tiles | wall s | micromet s | tiles/s (wall) "
             "| peak RSS MB (largest process / all) | heatmap cells (MB) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(rows, key=lambda row: row["tissue_area_mm2"]):
        width, height = r["dimensions"]
        shape = r["heatmap_shape"]
        lines.append(
            f"| {r['slide']} | {width:,} x {height:,} | {r['tissue_area_mm2']:.1f} | {r['n_tiles']:,} "
            f"| {r['seconds']:.1f} | {r['micromet_seconds']:.1f} | {r['n_tiles'] / r['seconds']:.0f} "
            f"| {_mb(r['peak_rss_largest_mb'])} / {_mb(r['peak_rss_tree_mb'])} "
            f"| {shape[0]} x {shape[1]} ({r['heatmap_mb']:.2f}) |")
    if len({r["tissue_area_mm2"] for r in rows}) >= 2:
        lines += ["", "Linear fit over these slides (a: fixed per-slide overhead, b: cost per mm²):", "",
                  *_fit_lines(rows)]
    return lines


def camelyon_lines(big: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    """The CAMELYON-size slide's figures, checked against the fit and the 3 GB target."""
    width, height = big["dimensions"]
    largest = big["peak_rss_largest_mb"]
    verdict = "met" if largest is not None and largest < RSS_LIMIT_MB else "**not met**"
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in big["timing_s"].items())
    lines = [
        "| slide | file GB | tissue mm² | tiles | wall s | micromet s | tiles/s (wall) "
        "| peak RSS MB (largest process / all) | heatmap cells (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {width:,} x {height:,} px ({width * SLIDE_MPP / 1000:.0f} x {height * SLIDE_MPP / 1000:.0f} mm) "
        f"| {big['file_gb']:.2f} | {big['tissue_area_mm2']:.1f} | {big['n_tiles']:,} | {big['seconds']:.1f} "
        f"| {big['micromet_seconds']:.1f} | {big['n_tiles'] / big['seconds']:.0f} "
        f"| {_mb(largest)} / {_mb(big['peak_rss_tree_mb'])} "
        f"| {big['heatmap_shape'][0]} x {big['heatmap_shape'][1]} ({big['heatmap_mb']:.2f}) |",
        "",
        f"- Peak RSS target (under {RSS_LIMIT_MB / 1000:.0f} GB, largest process): {verdict}.",
        f"- micromet's stages: {timing}.",
    ]
    if len({r["tissue_area_mm2"] for r in rows}) >= 2:
        a, b, _ = fit_linear([r["tissue_area_mm2"] for r in rows], [r["seconds"] for r in rows])
        lines.append(f"- The scaling fit predicts {a + b * big['tissue_area_mm2']:.0f} s (wall) for its "
                     f"{big['tissue_area_mm2']:.1f} mm² of tissue; measured {big['seconds']:.0f} s. The "
                     "difference is what the 1.25 billion px of glass cost beyond the tissue.")
    found = "; ".join(f"{c} {d:.2f} mm at ({x:,.0f}, {y:,.0f})" for c, d, x, y in big["deposits"]) or "none"
    planted = "; ".join(f"{p['category']} {p['diameter_mm']:.2f} mm at ({p['centroid_x_px']:,}, "
                        f"{p['centroid_y_px']:,})" for p in big.get("planted", [])) or "none"
    lines += [f"- Deposits planted (level-0 px): {planted}. Found: {found}; slide category "
              f"{big['category']}."]
    return lines


def render_markdown(figures: dict[str, Any]) -> str:
    """The docs/benchmarks.md section."""
    machine, rows, big = figures["machine"], figures["rows"], figures.get("camelyon")
    lines = [
        SECTION, "",
        "What: `micromet infer` (model `" + figures["model"] + "`, default settings, device cpu) on one "
        "slide per fresh process. Wall seconds cover the whole process (interpreter start, imports, model "
        "loading, then open, tissue, tiling, scoring, heatmap, deposits, exports, overlay, report); "
        "micromet seconds are its own `timing_s.total` from report.json. Peak RSS: the largest single "
        "process (exact, from `wait4`) and the summed RSS of micromet and its reader workers (sampled "
        "every 0.2 s; shared pages count once per process). Tissue area is report.json's "
        "`slide.tissue_area_mm2`.", "",
        f"Reproduce: `{figures['command']}`", "",
        f"Machine: {machine['cpu']}, {machine['usable_cores']} of {machine['cores']} cores usable, "
        f"{machine['ram_gib']} GiB RAM, {machine['os']}, Python {machine['python']}; load average "
        f"{machine['load_average']} at the start and {figures['load_end']} at the end; "
        f"{figures['date']}. The machine is shared: another engineer ran speed benchmarks at the same "
        "time, so absolute times are pessimistic and noisy; compare rows within this section.", "",
        f"### Scaling: time against tissue area ({figures['repeats']} run(s) per slide, median)", "",
        f"Square synthetic nodes (`pipeline.synthetic.generate_slide`, {SLIDE_MPP} µm/px, one planted "
        f"{SCALING_DEPOSIT_MM} mm deposit each, cached under `{figures['work_dir']}`).", "",
        *scaling_table(rows), "",
    ]
    if figures.get("plot"):
        lines += [f"![time against tissue area]({figures['plot']})", ""]
    if big is not None:
        lines += [
            "### Memory: a CAMELYON-size slide", "",
            f"{CAMELYON_WIDTH_PX:,} x {CAMELYON_HEIGHT_PX:,} px at {SLIDE_MPP} µm/px, written by "
            "`bench_scaling.write_background_slide`: a tiled JPEG pyramid of "
            f"{big['levels']} levels, empty glass except {len(CAMELYON_PASTES)} pasted copies of two "
            f"{SOURCE_SIDE_PX:,} px synthetic nodes (one with a planted {SOURCE_DEPOSIT_MM} mm deposit). "
            f"Writing it took {big['write_s']}.", "",
            *camelyon_lines(big, rows), "",
        ]
    return "\n".join(lines)


def write_docs_section(markdown: str) -> None:
    """Replace this benchmark's section in docs/benchmarks.md, keeping the others."""
    path = REPO / "docs" / "benchmarks.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    path.write_text(replace_section(text, SECTION, markdown), encoding="utf-8")


def plot_scaling(rows: Sequence[dict[str, Any]], big: dict[str, Any] | None, path: Path) -> None:
    """Wall seconds against tissue area with the fitted line (PNG at ``path``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    areas = [r["tissue_area_mm2"] for r in rows]
    a, b, r2 = fit_linear(areas, [r["seconds"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(areas, [r["seconds"] for r in rows], "o", label="synthetic nodes")
    top = max([*areas, big["tissue_area_mm2"] if big else 0.0])
    ax.plot([0, top], [a, a + b * top], "-", label=f"fit: {a:.1f} s + {b:.2f} s/mm² (r² {r2:.3f})")
    if big is not None:
        ax.plot([big["tissue_area_mm2"]], [big["seconds"]], "s", label="CAMELYON-size slide")
    ax.set_xlabel("tissue area (mm²)")
    ax.set_ylabel("micromet infer wall time (s)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- main ----------------------------------------------------------------------------------


def parse_sizes(text: str) -> tuple[int, ...]:
    """"5000,10000" -> (5000, 10000); each side between 256 and 100,000 px."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: expected comma-separated integers") from exc
    if not sizes or any(not 256 <= s <= 100_000 for s in sizes):
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: each side must be 256 to 100000 px")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES_PX,
                        help="sides in px of the square scaling slides (default 5000,10000,20000,30000)")
    parser.add_argument("--skip-camelyon", action="store_true", help="no CAMELYON-size slide")
    parser.add_argument("--work-dir", type=Path, default=Path(".bench/scaling"),
                        help="slides and outputs (default .bench/scaling)")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default models/default.pt)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per slide (median time)")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="limit per micromet infer run")
    parser.add_argument("--write-docs", action="store_true", help="replace the section in docs/benchmarks.md")
    return parser


def run_camelyon(args: argparse.Namespace) -> dict[str, Any]:
    """Write (or reuse) the CAMELYON-size slide and measure it."""
    path, write_s = ensure_camelyon_slide(args.work_dir)
    big = measure_slide(path, args.work_dir / "out" / "camelyon", args.model, args.repeats, args.timeout_s)
    layout = json.loads(path.with_name("camelyon_size.layout.json").read_text())  # see ensure_camelyon_slide
    spec = BackgroundSlideSpec(CAMELYON_WIDTH_PX, CAMELYON_HEIGHT_PX, SLIDE_MPP, CAMELYON_PASTES)
    big.update(planted=layout["planted_deposits"], file_gb=path.stat().st_size / 1e9,
               levels=len(spec.level_dimensions()),
               write_s="(cached: written by an earlier run)" if write_s is None else f"{write_s:.0f} s")
    return big


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Every measurement; returns the figures for the report."""
    machine = machine_facts()
    rows = []
    for side_px in args.sizes:
        slide = ensure_scaling_slide(args.work_dir, side_px)
        rows.append(measure_slide(slide, args.work_dir / "out" / f"node_{side_px}", args.model,
                                  args.repeats, args.timeout_s))
        print(json.dumps(rows[-1]), flush=True)
    big = None if args.skip_camelyon else run_camelyon(args)
    if big is not None:
        print(json.dumps(big), flush=True)
    return {
        "machine": machine, "rows": rows, "camelyon": big, "repeats": args.repeats,
        "load_end": round(os.getloadavg()[0], 1), "date": datetime.date.today().isoformat(),
        "model": str(args.model or "models/default.pt"), "work_dir": str(args.work_dir),
        "command": shlex.join([".venv/bin/python", "scripts/bench_scaling.py", *argv]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    args.work_dir = args.work_dir.resolve()
    figures = run(args, argv)
    (args.work_dir / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    if args.write_docs and len({r["tissue_area_mm2"] for r in figures["rows"]}) >= 2:
        plot_scaling(figures["rows"], figures["camelyon"], REPO / "docs" / PLOT_NAME)
        figures["plot"] = PLOT_NAME
    markdown = render_markdown(figures)
    print(markdown)
    if args.write_docs:
        write_docs_section(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
