"""Dense inference of resized tiles against per-tile resizing, on real tissue (docs/benchmarks.md,
"Dense inference").

Builds pyramidal TIFFs of real tissue from ../shared/data at each slide µm/px asked for (the
CAMELYON17 tiles of centres 1, 3 and 4, and the centre-3 tile with a square of real CAMELYON16
tumor pasted in; their pixels declared at that µm/px), so the model's 0.972 µm/px matches no
pyramid level and every tile is resized. Analyses each slide twice with the model, dense
(each 16 x 16 cell region read and resized once) and tile by tile (each tile resized on its
own), refinement and cell counts off, and prints one Markdown table: the max and mean
difference of the heatmaps, the same for tile-by-tile scoring of the grid moved by one
read-level px (how much the model moves with such a shift), the cells on opposite sides of
the threshold, and the deposits and categories of both.

Usage: python scripts/bench_dense_resized.py [--model runs/dense16.pt] [--slide-mpp 0.25 0.5]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import SHARED_DATA_DIR  # noqa: E402
from pipeline.synthetic.pyramid_tiff import write_pyramid_tiff  # noqa: E402
from pipeline.synthetic.real_slides import c17_rgb, tumor_square_rgb  # noqa: E402


def slides(folder: Path, slide_mpp: float) -> list[Path]:
    """The four real-tissue slides written at ``slide_mpp`` µm/px into ``folder``."""
    images = {f"c17_{centre}": c17_rgb(centre) for centre in ("centre_1", "centre_3", "centre_4")}
    images["tumor_square"] = tumor_square_rgb()[0]
    return [
        write_pyramid_tiff(folder / f"{name}_{slide_mpp:g}.tif", image, slide_mpp, n_levels=3, tile_px=256)
        for name, image in images.items()
    ]


def analyze(model: Path, slide: Path, folder: Path, dense: bool) -> tuple[dict[str, Any], np.ndarray]:
    """The slide's report and heatmap, scored densely or tile by tile."""
    from pipeline.batch.analyze import analyze_slide
    from pipeline.batch.settings import AnalysisSettings

    overrides: dict[str, dict[str, Any]] = {
        "inference": {
            "device": "cpu",
            "precision": "fp32",
            "num_workers": 0,
            "dense": dense,
            "cascade": False,
        },
        "deposits": {"refine": False, "count_cells": False},
        "qc": {"accept_qc_failures": True},
    }
    folder.mkdir(parents=True)
    context = AnalysisSettings(model_path=model, overrides=overrides).build()
    report = analyze_slide(context, slide, slide.stem, folder)
    return report, np.load(folder / "heatmap.npy")


def shift_sensitivity(model_path: Path, slide: Path) -> NDArray[np.float32]:
    """|difference| of the tile-by-tile scores of ``slide``'s grid and of the same grid moved by
    one read-level px along x: how much the model itself moves with a sub-pixel-sized shift."""
    from pipeline.config import InferenceConfig, TilingConfig, TissueConfig
    from pipeline.detection.inference import score_tiles
    from pipeline.models import load_checkpoint
    from pipeline.slides.readers import read_geometry
    from pipeline.slides.slide import open_slide
    from pipeline.slides.tiling import plan_tiles
    from pipeline.slides.tissue import detect_tissue

    model, card = load_checkpoint(model_path)
    tiling = TilingConfig(tile_size_px=card.tile_size_px, mpp=card.mpp, stride_px=card.stride_px)
    with open_slide(slide) as opened:
        grid = plan_tiles(opened.dimensions, opened.mpp, detect_tissue(opened, TissueConfig()), tiling)
        downsample = read_geometry(opened, card.tile_size_px, card.mpp).downsample
        source = opened.source
    shifted = dataclasses.replace(grid, xy_px=grid.xy_px + np.array([[round(downsample), 0]]))
    config = InferenceConfig(device="cpu", precision="fp32", num_workers=0, cascade=False, dense=False)
    scores = [score_tiles(source, g, model, card, config) for g in (grid, shifted)]
    return np.asarray(np.abs(scores[0] - scores[1]), dtype=np.float32)


def compare(model: Path, slide: Path, folder: Path) -> str:
    """One table row: dense against tile-by-tile scoring of ``slide``."""
    dense, dense_map = analyze(model, slide, folder / "dense", dense=True)
    tiles, tiles_map = analyze(model, slide, folder / "tiles", dense=False)
    scored = np.isfinite(tiles_map)
    difference = np.abs(dense_map[scored] - tiles_map[scored])
    threshold = float(dense["model"]["threshold"])
    flipped = int(np.count_nonzero((dense_map[scored] >= threshold) != (tiles_map[scored] >= threshold)))
    modes = f"{dense['inference']['mode']} / {tiles['inference']['mode']}"

    def deposits(report: dict[str, Any]) -> str:
        return ", ".join(d["category"] for d in report["deposits"]) or "none"

    shift = shift_sensitivity(model, slide)
    return (
        f"| {slide.stem} | {modes} | {int(scored.sum())} | {difference.max():.4f} | {difference.mean():.4f} "
        f"| {shift.max():.4f} | {shift.mean():.4f} "
        f"| {flipped} | {deposits(dense)} / {deposits(tiles)} | {dense['category']} / {tiles['category']} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "dense16.pt")
    parser.add_argument("--slide-mpp", type=float, nargs="+", default=[0.25, 0.5])
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"{args.model}: no such model; pass a dense96 checkpoint with --model", file=sys.stderr)
        return 2
    if not SHARED_DATA_DIR.is_dir():
        print(f"{SHARED_DATA_DIR}: the real data is missing (see its README)", file=sys.stderr)
        return 2
    print(f"model {args.model}")
    print(
        "| slide | mode (dense / tiles) | cells | max abs diff | mean abs diff "
        "| tiles moved 1 read px: max | mean | cells across threshold "
        "| deposits (dense / tiles) | category (dense / tiles) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for slide_mpp in args.slide_mpp:
            for slide in slides(Path(tmp), slide_mpp):
                print(compare(args.model, slide, Path(tmp) / slide.stem), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
