"""The default model on slides made from real tissue (../shared/data), as docs/benchmarks.md shows.

Builds four small pyramidal TIFFs at 0.243 µm/px: the three CAMELYON17 tiles (centres 1, 3, 4)
and the centre-3 tile (a negative node) with a 4 x 4 square of real CAMELYON16 tumor patches
pasted in its middle (0.249 mm side, true largest dimension 0.352 mm). Runs ``micromet infer``
on them at each heatmap stride asked for and prints one Markdown table per stride.

Usage: python scripts/bench_real_tissue.py [--model models/default.pt] [--strides 32 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.batch.folder import read_report, report_path  # noqa: E402
from pipeline.cli import main as micromet  # noqa: E402
from pipeline.config import SHARED_DATA_DIR  # noqa: E402
from pipeline.synthetic.real_slides import write_c17_slide, write_tumor_square_slide  # noqa: E402

TRUTH = {
    "c17_centre_1": "node labelled ITC; tile looks tumor-free",
    "c17_centre_3": "negative node (left half of the tile was trained on)",
    "c17_centre_4": "node labelled macro; the tile may show tumor",
    "tumor_square": "real tumor square, true largest dimension {truth:.3f} mm",
}


def build_slides(folder: Path) -> float:
    """Write the four slides into ``folder``; returns the tumor square's true size in mm."""
    for centre in ("centre_1", "centre_3", "centre_4"):
        write_c17_slide(centre, folder / f"c17_{centre}.tif")
    _, truth_mm = write_tumor_square_slide(folder / "tumor_square.tif")
    return truth_mm


def table(out: Path, truth_mm: float) -> str:
    rows = ["| slide | what it is | category | deposits: largest dimension mm (centre x, y px) |"]
    rows.append("| --- | --- | --- | --- |")
    for name, text in TRUTH.items():
        report = read_report(report_path(out, name))
        found = ", ".join(
            f"{d['max_diameter_mm']:.3f} ({d['centroid_x_px']:.0f}, {d['centroid_y_px']:.0f})"
            for d in report["deposits"]
        )
        rows.append(f"| {name} | {text.format(truth=truth_mm)} | {report['category']} | {found or 'none'} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default.pt")
    parser.add_argument("--strides", type=int, nargs="+", default=[32])
    parser.add_argument("--no-cascade", action="store_true", help="infer with --no-cascade: score every tile")
    args = parser.parse_args(argv)
    if not SHARED_DATA_DIR.is_dir():
        parser.error(f"{SHARED_DATA_DIR} not found: the real tissue lives in ../shared/data beside the repo")
    with tempfile.TemporaryDirectory(prefix="micromet_real_") as tmp:
        slides = Path(tmp) / "slides"
        slides.mkdir()
        truth_mm = build_slides(slides)
        for stride in args.strides:
            out = Path(tmp) / f"out_{stride}"
            code = micromet(
                [
                    "infer",
                    str(slides),
                    "--out",
                    str(out),
                    "--model",
                    str(args.model),
                    "--stride-px",
                    str(stride),
                    "--quiet",
                    *(["--no-cascade"] if args.no_cascade else []),
                ]
            )
            if code != 0:
                return code
            print(f"\nHeatmap stride {stride} px:\n\n{table(out, truth_mm)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
