"""Benchmark tile scoring on the CPU: the region-reading engine against plain per-tile loops.

Generates (once) a synthetic ~20000 x 20000 px slide with ``pipeline.synthetic.generate``, plans
micronet tiles (96 px at 1.0 µm/px) on its tissue and times, over the same tiles:

* ``read loop``: one ``Slide.read_region_at_mpp`` per tile, no model (the I/O of a plain loop);
* ``naive``: ``naive_score_tiles``, one read and one forward pass per tile;
* ``per-tile reads, batched``: the engine with region_tiles=1, num_workers=0;
* the engine with region reads, in process and with reader workers.

Usage: .venv/bin/python scripts/bench_inference.py [--size-px 20000] [--slide-mpp 0.5]
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipeline.config import InferenceConfig, TilingConfig, TissueConfig
from pipeline.detection.inference import naive_score_tiles, score_tiles_with_stats
from pipeline.models import ModelCard, build_model
from pipeline.slides.slide import SlideSource, open_slide
from pipeline.slides.tiling import TileGrid, plan_tiles
from pipeline.slides.tissue import detect_tissue
from pipeline.synthetic.generate import PlantedDeposit, SynthConfig, generate_slide

TILE_PX = 96
MODEL_MPP = 1.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-px", type=int, default=20000, help="slide width and height")
    parser.add_argument("--slide-mpp", type=float, default=0.5, help="level-0 µm/px")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/micromet-bench"),
                        help="folder for the generated slide (reused between runs)")
    parser.add_argument("--naive-tiles", type=int, default=0,
                        help="time the slow loops on this many tiles only (0 = all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--stride-px", type=int, default=None,
                        help="tile stride at 1.0 µm/px (default: the tile size, no overlap)")
    return parser.parse_args()


def bench_slide(cache: Path, size_px: int, slide_mpp: float) -> Path:
    path = cache / f"bench_{size_px}px_{slide_mpp:g}mpp.tif"
    if not path.exists():
        config = SynthConfig(width_px=size_px, height_px=size_px, mpp=slide_mpp, seed=7,
                             deposits=(PlantedDeposit(1.5), PlantedDeposit(0.4)))
        started = time.perf_counter()
        generate_slide(config, path)
        print(f"generated {path} in {time.perf_counter() - started:.0f} s")
    return path


def plan(path: Path, slide_mpp: float, stride_px: int | None) -> TileGrid:
    with open_slide(path) as slide:
        tissue = detect_tissue(slide, TissueConfig())
        return plan_tiles(slide.dimensions, slide_mpp, tissue,
                          TilingConfig(tile_size_px=TILE_PX, mpp=MODEL_MPP, stride_px=stride_px))


def subset(grid: TileGrid, count: int) -> TileGrid:
    if count <= 0 or count >= len(grid):
        return grid
    keep = slice(0, count)
    return TileGrid(grid.xy_px[keep], grid.heatmap_rc[keep], grid.grid_shape, grid.tile_size_px,
                    grid.mpp, grid.slide_mpp, grid.tile_size_l0_px, grid.stride_l0_px,
                    grid.slide_dimensions, grid.tissue_fraction[keep])


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def read_loop(path: Path, slide_mpp: float, grid: TileGrid) -> None:
    with SlideSource.with_mpp(path, slide_mpp).open() as slide:
        for x_px, y_px in grid.xy_px.tolist():
            slide.read_region_at_mpp(x_px, y_px, TILE_PX, TILE_PX, MODEL_MPP)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_before = os.getloadavg()[0]
    path = bench_slide(args.cache, args.size_px, args.slide_mpp)
    grid = plan(path, args.slide_mpp, args.stride_px)
    small = subset(grid, args.naive_tiles)
    torch.manual_seed(0)
    model = build_model("micronet")
    card = ModelCard(architecture="micronet", tile_size_px=TILE_PX, mpp=MODEL_MPP)
    rows: list[tuple[str, int, float, str]] = []
    seconds = timed(lambda: read_loop(path, args.slide_mpp, small))
    rows.append(("read loop (read_region_at_mpp per tile, no model)", len(small), seconds, ""))
    naive: list[np.ndarray] = []
    seconds = timed(lambda: naive.append(
        naive_score_tiles(SlideSource.with_mpp(path, args.slide_mpp), small, model, card)))
    rows.append(("naive_score_tiles (read + forward per tile, 1 thread)", len(small), seconds, ""))
    settings = [("per-tile reads, batched", 1, 0), ("engine, region reads, in process", 4, 0),
                ("engine, region reads, 2 reader workers", 4, 2)]
    for label, region_tiles, workers in settings:
        config = InferenceConfig(batch_size=args.batch_size, num_workers=workers,
                                 region_tiles=region_tiles, device="cpu")
        source = SlideSource.with_mpp(path, args.slide_mpp)
        scores, stats = score_tiles_with_stats(source, grid, model, card, config)
        note = (f"region_tiles={region_tiles}, num_workers={workers}, {stats.n_regions} reads, "
                f"{stats.cpu_threads} torch threads, waited {stats.wait_s:.1f} s")
        rows.append((label, stats.n_tiles, stats.seconds, note))
        difference = np.abs(scores[: len(small)] - naive[0]).max()
        assert difference < 1e-4, f"{label}: scores differ from naive by {difference}"
    print(f"\nslide {path.name}: {grid.slide_dimensions[0]} x {grid.slide_dimensions[1]} px at "
          f"{args.slide_mpp:g} µm/px, {len(grid)} tissue tiles of {TILE_PX} px at {MODEL_MPP:g} "
          f"µm/px, stride {grid.stride_l0_px * grid.slide_mpp:g} µm; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, {platform.processor()}, load average at start {load_before:.1f}\n")
    print("| method | tiles | seconds | tiles/s | notes |\n| --- | ---: | ---: | ---: | --- |")
    for label, count, secs, note in rows:
        print(f"| {label} | {count} | {secs:.1f} | {count / secs:.0f} | {note} |")


if __name__ == "__main__":
    main()
