"""Scaling and memory benchmark: ``micromet infer`` time against tissue area, and peak memory
on a CAMELYON-size slide.

Scaling: square synthetic nodes (``generate_slide``, 0.25 µm/px, one 0.3 mm deposit each) run
through ``micromet infer``, each in a fresh process: wall seconds, micromet's own total, tissue
area, tiles, peak RSS; a least-squares line seconds = a + b x tissue area gives the fixed
per-slide overhead a and the cost per mm² b. Memory: a 100,000 x 200,000 px slide at 0.25 µm/px
(``write_background_slide``: a tiled JPEG pyramid of empty glass, one encoded tile reused per
level, with copies of two synthetic nodes pasted in, one with a 1.0 mm deposit) run the same way;
the issue asks for a peak RSS under 3 GB. Peak RSS: the largest single process (``wait4``'s
ru_maxrss) and the sum over micromet and its reader workers (sampled every 0.2 s).

    .venv/bin/python scripts/bench_scaling.py [--sizes 5000,10000,...] [--skip-camelyon]
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

from pipeline.batch.folder import REPORT_JSON, read_report

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from bench import TreeRssSampler, machine_facts  # noqa: E402
from bench_report import replace_section  # noqa: E402

SECTION = "## Scaling and memory"
PLOT_NAME = "benchmarks_scaling.png"
SLIDE_MPP = 0.25
DEFAULT_SIZES_PX = (5000, 10000, 20000, 30000, 40000, 60000)
SCALING_DEPOSIT_MM = 0.3  # one micro-metastasis per scaling slide, so deposit work is constant
CAMELYON_WIDTH_PX, CAMELYON_HEIGHT_PX = 100_000, 200_000
CAMELYON_NAME = "camelyon_size.tif"
SOURCE_SIDE_PX = 16384  # a power of two: the source's levels have exact downsamples 2, 4, ...
SOURCE_DEPOSIT_MM = 1.0
TILE_PX = 256
JPEG_QUALITY = 85
SMALLEST_LEVEL_MAX_PX = 1024
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


# ---- slides --------------------------------------------------------------------------------


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


# ---- measuring -----------------------------------------------------------------------------


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
        with TreeRssSampler(process.pid) as sampler:
            timer = threading.Timer(timeout_s, os.killpg, (process.pid, signal.SIGKILL))
            timer.start()
            _, status, usage = os.wait4(process.pid, 0)  # usage: this run's processes only
            timer.cancel()
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keeps Popen quiet
    folder = out_dir / slide.stem
    if process.returncode != 0 or not (folder / REPORT_JSON).exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"{slide}: micromet infer exited {process.returncode}; log {log_path}:\n"
                           + "\n".join(tail))
    largest_mb = usage.ru_maxrss / 1024.0  # KiB on Linux
    # The summed tree is at least the largest process at its peak; the sampler may miss that.
    tree_mb = max(sampler.peak_mb or 0.0, largest_mb)
    return {"seconds": seconds, "peak_rss_largest_mb": largest_mb, "peak_rss_tree_mb": tree_mb,
            **report_facts(folder)}


def report_facts(folder: Path) -> dict[str, Any]:
    """What the tables need from one slide's output folder."""
    report = read_report(folder / REPORT_JSON)
    heatmap = np.load(folder / "heatmap.npy", mmap_mode="r")
    return {
        "dimensions": report["slide"]["dimensions"], "tissue_area_mm2": report["slide"]["tissue_area_mm2"],
        "n_tiles": report["n_tiles"], "micromet_seconds": report["timing_s"]["total"],
        "timing_s": report["timing_s"], "category": report["category"],
        "deposits": [(d["category"], d["max_diameter_mm"], d["centroid_x_px"], d["centroid_y_px"])
                     for d in report["deposits"]],
        "heatmap_shape": list(heatmap.shape), "heatmap_mb": (folder / "heatmap.npy").stat().st_size / 2**20,
    }


def measure_slide(slide: Path, out_dir: Path, model: Path | None, repeats: int,
                  timeout_s: float) -> dict[str, Any]:
    """``repeats`` runs of one slide: median seconds, largest peak RSS."""
    runs = [run_infer(slide, out_dir, model, timeout_s) for _ in range(repeats)]
    row = dict(runs[-1], slide=slide.name)
    for key in ("seconds", "micromet_seconds"):
        row[key] = statistics.median(r[key] for r in runs)
        row[f"{key}_runs"] = [round(r[key], 2) for r in runs]
    for key in ("peak_rss_largest_mb", "peak_rss_tree_mb"):
        row[key] = max(r[key] for r in runs)
    return row


def stage_memory(slide: Path, model: Path | None) -> dict[str, Any]:
    """Peak RSS (MB, this process) after each step before scoring; run in a fresh process."""
    import resource

    from pipeline.batch.analyze import build_context
    from pipeline.slides.slide import open_slide
    from pipeline.slides.tiling import plan_tiles
    from pipeline.slides.tissue import detect_tissue

    def peak_mb() -> float:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)

    context = build_context(model, None, {}, None)
    steps: dict[str, Any] = {"model loaded": peak_mb()}
    with open_slide(slide) as handle:
        mask_mpp = max(context.tissue.mask_mpp, handle.mpp)
        shape = handle.thumbnail_at_mpp(mask_mpp).shape
        steps[f"thumbnail {shape[1]} x {shape[0]} px at {mask_mpp:g} µm/px"] = peak_mb()
        tissue = detect_tissue(handle, context.tissue)
        steps["tissue detection"] = peak_mb()
        grid = plan_tiles(handle.dimensions, handle.mpp, tissue, context.tiling)
        steps[f"tiling ({len(grid)} tiles)"] = peak_mb()
    return steps


def run_stage_memory(slide: Path, model: Path | None) -> dict[str, Any]:
    """``stage_memory`` in a fresh process (so earlier work does not raise the peak)."""
    command = [sys.executable, __file__, "--stage-memory", str(slide)]
    command += ["--model", str(model)] if model is not None else []
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    steps: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return steps


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

TABLE_HEAD = ("| slide | size px | tissue mm² | tiles | wall s | micromet s | tiles/s (wall) "
              "| peak RSS MB (largest process / all) | heatmap cells (MB) |\n"
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")


def table_row(row: dict[str, Any]) -> str:
    """One slide's line of the Markdown table."""
    width, height = row["dimensions"]
    shape = row["heatmap_shape"]
    return (f"| {row['slide']} | {width:,} x {height:,} | {row['tissue_area_mm2']:.1f} | {row['n_tiles']:,} "
            f"| {row['seconds']:.1f} | {row['micromet_seconds']:.1f} | {row['n_tiles'] / row['seconds']:.0f} "
            f"| {row['peak_rss_largest_mb']:,.0f} / {row['peak_rss_tree_mb']:,.0f} "
            f"| {shape[0]} x {shape[1]} ({row['heatmap_mb']:.2f}) |")


def fit_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The fitted lines, a + b x tissue area, for wall and micromet seconds."""
    areas = [r["tissue_area_mm2"] for r in rows]
    if len(set(areas)) < 2:
        return ["(one tissue area only: no fit)"]
    lines = []
    for key, label in (("seconds", "wall seconds (whole process)"), ("micromet_seconds", "micromet seconds")):
        a, b, r2 = fit_linear(areas, [r[key] for r in rows])
        lines.append(f"- {label} = **{a:.2f} s + {b:.3f} s/mm² x tissue area** (r² = {r2:.3f}); "
                     f"100 mm² of tissue: {a + 100 * b:.0f} s.")
    return lines


def fit_check_line(big: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """The big slide's wall time against what the scaling fit predicts for its tissue area."""
    a, b, _ = fit_linear([r["tissue_area_mm2"] for r in rows], [r["seconds"] for r in rows])
    predicted, measured = a + b * big["tissue_area_mm2"], big["seconds"]
    largest = max(rows, key=lambda r: r["dimensions"][0] * r["dimensions"][1])
    return (f"- The scaling fit predicts {predicted:.0f} s (wall) for its {big['tissue_area_mm2']:.1f} mm² "
            f"of tissue; measured {measured:.0f} s ({measured - predicted:+.0f} s). Tissue detection "
            f"and tiling, which look at the whole slide, took {big['timing_s']['tissue_tiling']:.1f} s "
            f"here against {largest['timing_s']['tissue_tiling']:.1f} s on {largest['slide']}.")


def camelyon_lines(big: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    """The CAMELYON-size slide's findings: RSS target, stages, fit check, deposits."""
    verdict = "met" if big["peak_rss_largest_mb"] < RSS_LIMIT_MB else "**not met**"
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in big["timing_s"].items())
    lines = [f"- Peak RSS target (under {RSS_LIMIT_MB / 1000:.0f} GB): {verdict}. "
             f"File {big['file_gb']:.2f} GB, {big['levels']} levels. micromet's stages (last run): {stages}."]
    if len({r["tissue_area_mm2"] for r in rows}) >= 2:
        lines.append(fit_check_line(big, rows))
    if big.get("stage_memory"):
        steps = "; ".join(f"{k} {v:,} MB" for k, v in big["stage_memory"].items())
        lines.append(f"- Peak RSS of one process stepping through the stages before scoring: {steps}.")
    found = "; ".join(f"{c} {d:.2f} mm at ({x:,.0f}, {y:,.0f})" for c, d, x, y in big["deposits"])
    planted = "; ".join(f"{p['category']} {p['diameter_mm']:.2f} mm at ({p['centroid_x_px']:,}, "
                        f"{p['centroid_y_px']:,})" for p in big["planted"])
    alone = "; ".join(f"{c} {d:.2f} mm at ({x:,.0f}, {y:,.0f})" for c, d, x, y in big["source_deposits"])
    lines.append(f"- Deposits planted (level-0 px): {planted or 'none'}. Found: {found or 'none'}; "
                 f"category {big['category']}. On the tumor source node alone (shifted into this "
                 f"frame): {alone or 'none'}.")
    return lines


def render_markdown(figures: dict[str, Any]) -> str:
    """The docs/benchmarks.md section."""
    machine, rows, big = figures["machine"], figures["rows"], figures.get("camelyon")
    lines = [
        SECTION, "",
        f"What: `micromet infer` (model `{figures['model']}`, default settings, device cpu), one slide per "
        "fresh process. Wall seconds: the whole process (interpreter start, imports, model loading, then "
        "open, tissue, tiling, scoring, heatmap, deposits, exports, overlay, report); micromet seconds: "
        "report.json's `timing_s.total`. Peak RSS: the largest single process (exact, `wait4`) and the "
        "sum over micromet and its reader workers (sampled every 0.2 s; shared pages count once per "
        "process). Tissue area: report.json's `slide.tissue_area_mm2`.", "",
        f"Reproduce: `{figures['command']}`", "",
        f"Machine: {machine['cpu']}, {machine['usable_cores']} of {machine['cores']} cores usable, "
        f"{machine['ram_gib']} GiB RAM, {machine['os']}, Python {machine['python']}; load average "
        f"{machine['load_average']} at the start and {figures['load_end']} at the end; {figures['date']}. "
        "The machine is shared: another engineer ran speed benchmarks at the same time, so times are "
        "noisy and pessimistic; compare rows within this section.", "",
        f"### Scaling: time against tissue area (median of {figures['repeats']} run(s) per slide)", "",
        f"Square synthetic nodes (`pipeline.synthetic.generate.generate_slide`, {SLIDE_MPP} µm/px, one "
        "planted "
        f"{SCALING_DEPOSIT_MM} mm deposit each).", "",
        TABLE_HEAD, *(table_row(r) for r in sorted(rows, key=lambda r: r["tissue_area_mm2"])), "",
        "Linear fit (a: fixed per-slide overhead, b: cost per mm² of tissue):", "", *fit_lines(rows), "",
    ]
    if figures.get("plot"):
        lines += [f"![wall time against tissue area]({figures['plot']})", ""]
    if big is not None:
        lines += [
            "### Memory: a CAMELYON-size slide", "",
            f"{CAMELYON_WIDTH_PX:,} x {CAMELYON_HEIGHT_PX:,} px at {SLIDE_MPP} µm/px "
            f"({CAMELYON_WIDTH_PX * SLIDE_MPP / 1000:.0f} x {CAMELYON_HEIGHT_PX * SLIDE_MPP / 1000:.0f} mm), "
            "written by `write_background_slide` in this script: a tiled JPEG pyramid, empty glass except "
            f"{len(CAMELYON_PASTES)} pasted copies of two {SOURCE_SIDE_PX:,} px synthetic nodes (one with "
            f"a planted {SOURCE_DEPOSIT_MM} mm deposit). Generating the two sources took "
            f"{big['sources_s']:.0f} s, writing the pyramid {big['write_s']:.0f} s.", "",
            TABLE_HEAD, table_row(big), "", *camelyon_lines(big, rows), "",
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

    areas, seconds = [r["tissue_area_mm2"] for r in rows], [r["seconds"] for r in rows]
    a, b, r2 = fit_linear(areas, seconds)
    top = max([*areas, big["tissue_area_mm2"] if big else 0.0])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(areas, seconds, "o", label="synthetic nodes")
    ax.plot([0, top], [a, a + b * top], "-", label=f"fit: {a:.1f} s + {b:.2f} s/mm² (r² {r2:.3f})")
    if big is not None:
        ax.plot([big["tissue_area_mm2"]], [big["seconds"]], "s", label="CAMELYON-size slide")
    ax.set(xlabel="tissue area (mm²)", ylabel="micromet infer wall time (s)", xlim=(0, None), ylim=(0, None))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- main ----------------------------------------------------------------------------------


def parse_sizes(text: str) -> tuple[int, ...]:
    """"5000,10000" -> (5000, 10000); each side 256 to 100,000 px."""
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
    sizes = ",".join(map(str, DEFAULT_SIZES_PX))
    parser.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES_PX,
                        help=f"sides in px of the square scaling slides (default {sizes})")
    parser.add_argument("--skip-camelyon", action="store_true", help="no CAMELYON-size slide")
    parser.add_argument("--work-dir", type=Path, default=Path(".bench/scaling"),
                        help="slides and outputs (default .bench/scaling)")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default models/default.pt)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per slide (median time)")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="limit per micromet infer run")
    parser.add_argument("--write-docs", action="store_true", help="replace the section in docs/benchmarks.md")
    parser.add_argument("--stage-memory", type=Path, default=None, help=argparse.SUPPRESS)  # child mode
    return parser


def run_camelyon(args: argparse.Namespace) -> dict[str, Any]:
    """Write (or reuse) the CAMELYON-size slide and measure it; also run the tumor source alone
    (its deposits shifted into the big slide's frame) to show the pasting changes nothing."""
    path, layout = ensure_camelyon_slide(args.work_dir)
    big = measure_slide(path, args.work_dir / "out" / "camelyon", args.model, args.repeats, args.timeout_s)
    tumor = next(p for p in CAMELYON_PASTES if p.source == "tumor")
    alone = run_infer(path.with_name("source_tumor.tif"), args.work_dir / "out" / "camelyon_source",
                      args.model, args.timeout_s)
    spec = BackgroundSlideSpec(CAMELYON_WIDTH_PX, CAMELYON_HEIGHT_PX, SLIDE_MPP, CAMELYON_PASTES)
    big.update(planted=layout["planted_deposits"], file_gb=path.stat().st_size / 1e9,
               levels=len(spec.level_dimensions()), stage_memory=run_stage_memory(path, args.model),
               sources_s=layout["sources_s"], write_s=layout["write_s"],
               source_deposits=[(c, d, x + tumor.x_px, y + tumor.y_px) for c, d, x, y in alone["deposits"]])
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
    return {
        "machine": machine, "rows": rows, "camelyon": big, "repeats": args.repeats,
        "load_end": round(os.getloadavg()[0], 1), "date": datetime.date.today().isoformat(),
        "model": str(args.model or "models/default.pt"),
        "command": shlex.join([".venv/bin/python", "scripts/bench_scaling.py", *argv]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.stage_memory is not None:
        print(json.dumps(stage_memory(args.stage_memory, args.model)))
        return 0
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
