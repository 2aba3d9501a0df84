"""The inference cascade on small real tumor deposits: what it saves and what it misses.

Builds small pyramidal TIFFs at 0.243 µm/px from real tissue (../shared/data): the negative
CAMELYON17 node tile (centre 3) with real CAMELYON16 tumor pasted at a seeded random place,
``--per-size`` slides for each deposit size: 1 x 1 patch (0.062 mm side, an ITC), 2 x 2
(0.124 mm, an ITC) and 3 x 3 (0.187 mm, an ITC near the 0.2 mm cut-off). Runs
``micromet infer`` on all of them with ``--no-cascade`` and with the cascade (the default) and
prints, per size, how many deposits each run found (a detection within one tile of the pasted
square) and the share of tiles the cascade scored.

Usage: python scripts/bench_cascade_real.py [--per-size 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.batch.folder import read_report, report_path  # noqa: E402
from pipeline.cli import main as micromet  # noqa: E402
from pipeline.config import CAMELYON_LEVEL0_MPP, SHARED_DATA_DIR  # noqa: E402
from pipeline.synthetic.pyramid_tiff import write_pyramid_tiff  # noqa: E402
from pipeline.synthetic.real_slides import (  # noqa: E402
    C16_PATCH_PX,
    NEGATIVE_C17_TILE,
    c16_tumor_patches,
    c17_rgb,
)

SIZES_PATCHES = (1, 2, 3)


def build(folder: Path, per_size: int, seed: int) -> dict[str, tuple[int, int, int]]:
    """Write the slides; returns slide name -> pasted square (x0, y0, side px)."""
    rng = np.random.default_rng(seed)
    patches = c16_tumor_patches(28)
    squares = {}
    for side_patches in SIZES_PATCHES:
        for index in range(per_size):
            image = c17_rgb(NEGATIVE_C17_TILE)
            side = side_patches * C16_PATCH_PX
            x0, y0 = (int(v) for v in rng.integers(256, image.shape[0] - 256 - side, size=2))
            chosen = rng.choice(len(patches), side_patches**2, replace=False)
            for k, patch_index in enumerate(chosen):
                row, col = divmod(k, side_patches)
                y, x = y0 + row * C16_PATCH_PX, x0 + col * C16_PATCH_PX
                image[y : y + C16_PATCH_PX, x : x + C16_PATCH_PX] = patches[patch_index]
            name = f"tumor{side_patches}x{side_patches}_{index}"
            write_pyramid_tiff(folder / f"{name}.tif", image, CAMELYON_LEVEL0_MPP, n_levels=3, tile_px=256)
            squares[name] = (x0, y0, side)
    return squares


def found(report: dict[str, object], square: tuple[int, int, int]) -> bool:
    """True if a deposit's centre lies within one 96 µm tile of the pasted square."""
    x0, y0, side = square
    margin = 96.0 / CAMELYON_LEVEL0_MPP
    for deposit in report["deposits"]:  # type: ignore[attr-defined]
        x, y = deposit["centroid_x_px"], deposit["centroid_y_px"]
        if x0 - margin <= x <= x0 + side + margin and y0 - margin <= y <= y0 + side + margin:
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--per-size", type=int, default=8, help="slides per deposit size (8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not SHARED_DATA_DIR.is_dir():
        parser.error(f"{SHARED_DATA_DIR} not found: the real tissue lives in ../shared/data beside the repo")
    with tempfile.TemporaryDirectory(prefix="micromet_cascade_") as tmp:
        slides = Path(tmp) / "slides"
        slides.mkdir()
        squares = build(slides, args.per_size, args.seed)
        reports: dict[str, dict[str, dict[str, object]]] = {}
        for mode, extra in (("full", ["--no-cascade"]), ("cascade", [])):
            out = Path(tmp) / mode
            if micromet(["infer", str(slides), "--out", str(out), "--quiet", *extra]) != 0:
                return 1
            reports[mode] = {n: read_report(report_path(out, n)) for n in squares}
        rows = [
            "| pasted real tumor | slides | found, full scoring | found, cascade | lost by the cascade | "
            "tiles cascade scored |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for side_patches in SIZES_PATCHES:
            names = [n for n in squares if n.startswith(f"tumor{side_patches}x")]
            hits = {m: sum(found(reports[m][n], squares[n]) for n in names) for m in reports}
            lost = sum(found(reports["full"][n], squares[n]) and not found(reports["cascade"][n], squares[n])
                       for n in names)
            facts = [reports["cascade"][n]["inference"] for n in names]
            scored = [f["cascade"]["scored_fraction"] for f in facts]  # type: ignore[index]
            side_mm = side_patches * C16_PATCH_PX * CAMELYON_LEVEL0_MPP / 1000
            share = 100 * float(np.mean(scored))
            rows.append(f"| {side_patches} x {side_patches} patches ({side_mm:.3f} mm side) | {len(names)} | "
                        f"{hits['full']} | {hits['cascade']} | {lost} | {share:.0f} % |")
        print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
