"""Tumor nuclei counts on real tissue: what the cell count (``pipeline.deposits.cells``) counts
per mm² on real tumor and on real tumor-free lymph node, and the nuclear size and pallor that
decide it.

Reads ../shared/data: the CAMELYON16 level-0 tumor and normal patches (0.243 µm/px, read at the
cell count's 0.5 µm/px as a slide would be), the three CAMELYON17 tiles (0.243 µm/px, cut into
0.124 mm squares; centre 3 is a negative node, centre 1 an ITC node and centre 4 a macro node,
so their tiles may hold tumor) and a seeded sample of PatchCamelyon tumor and normal patches
(0.972 µm/px, counted at that resolution, which is coarser than the cell count's).

For each set it prints: images and mm², all segmented nuclei of at least 20 µm² per mm² (what
the former count counted, less a lymphocyte class it rarely found), the tumor-like nuclei per
mm² that the count counts now (mean and the range over images), and the median area and mean
hematoxylin OD of the segmented nuclei, split at 40 µm². ``--overlays DIR`` writes the
CAMELYON16 tumor patches with every counted nucleus ringed, for counting the truth by eye.

Usage: .venv/bin/python scripts/measure_nuclei.py [--pcam 500] [--seed 0] [--overlays DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import CAMELYON_LEVEL0_MPP, PCAM_MPP, SHARED_DATA_DIR  # noqa: E402
from pipeline.deposits.cells import (  # noqa: E402
    CELL_COUNT_MPP,
    MAX_TUMOR_NUCLEUS_HEMATOXYLIN_OD,
    MIN_TUMOR_NUCLEUS_AREA_UM2,
    count_tumor_nuclei,
    tumor_nuclei_rc,
)
from pipeline.slides.nuclei import measure_nuclei  # noqa: E402
from pipeline.slides.slide import resize_rgb  # noqa: E402
from pipeline.training.datasets import load_rgb  # noqa: E402

C17_SQUARE_PX = 512  # 0.124 mm squares of the 2048 px CAMELYON17 tiles
FORMER_MIN_AREA_UM2 = 20.0  # the former count's smallest nucleus
C17_TILES = {
    "CAMELYON17 centre 3 (negative node)": "centre_3_patient_066_node_1",
    "CAMELYON17 centre 1 (node labelled ITC)": "centre_1_patient_024_node_2",
    "CAMELYON17 centre 4 (node labelled macro)": "centre_4_patient_097_node_3",
}


@dataclasses.dataclass(frozen=True)
class SetFigures:
    """Counts of one image set."""

    name: str
    images: int
    area_mm2: float
    read_mpp: float
    all_nuclei: int
    tumor_like_per_mm2: NDArray[np.float64]  # one value per image
    area_um2: NDArray[np.float64]  # every segmented nucleus of at least FORMER_MIN_AREA_UM2
    mean_od: NDArray[np.float64]


def at_count_resolution(rgb: NDArray[np.uint8], mpp: float) -> tuple[NDArray[np.uint8], float]:
    """The image as the cell count reads it: at CELL_COUNT_MPP, or as it is if coarser."""
    if mpp >= CELL_COUNT_MPP:
        return rgb, mpp
    factor = mpp / CELL_COUNT_MPP
    return resize_rgb(rgb, round(rgb.shape[1] * factor), round(rgb.shape[0] * factor)), CELL_COUNT_MPP


def c16_patches(kind: str) -> Iterator[NDArray[np.uint8]]:
    for path in sorted((SHARED_DATA_DIR / "camelyon16_patches" / kind).glob("*.png")):
        yield load_rgb(path)


def c17_squares(stem: str) -> Iterator[NDArray[np.uint8]]:
    tile = load_rgb(SHARED_DATA_DIR / "camelyon17_tiles" / f"{stem}.jpeg")
    for y in range(0, tile.shape[0] - C17_SQUARE_PX + 1, C17_SQUARE_PX):
        for x in range(0, tile.shape[1] - C17_SQUARE_PX + 1, C17_SQUARE_PX):
            yield tile[y : y + C17_SQUARE_PX, x : x + C17_SQUARE_PX]


def pcam_patches(label: str, count: int, seed: int) -> Iterator[NDArray[np.uint8]]:
    files = sorted((SHARED_DATA_DIR / "pcam_kaggle" / label).glob("*.webp"))
    picked = np.random.default_rng(seed).choice(len(files), min(count, len(files)), replace=False)
    for index in sorted(picked.tolist()):
        yield load_rgb(files[index])


def measure_set(name: str, images: Iterator[NDArray[np.uint8]], mpp: float) -> SetFigures:
    per_mm2, areas, ods, n_images, total_mm2, all_nuclei, read_mpp = [], [], [], 0, 0.0, 0, mpp
    for rgb in images:
        image, read_mpp = at_count_resolution(rgb, mpp)
        image_mm2 = image.shape[0] * image.shape[1] * read_mpp**2 / 1e6
        per_mm2.append(count_tumor_nuclei(image, read_mpp) / image_mm2)
        area_um2, mean_od = measure_nuclei(image, read_mpp)
        kept = area_um2 >= FORMER_MIN_AREA_UM2
        areas.append(area_um2[kept])
        ods.append(mean_od[kept])
        all_nuclei += int(kept.sum())
        n_images += 1
        total_mm2 += image_mm2
    return SetFigures(
        name, n_images, total_mm2, read_mpp, all_nuclei, np.asarray(per_mm2),
        np.concatenate(areas), np.concatenate(ods),
    )


def table(figures: Sequence[SetFigures]) -> str:
    rows = [
        "| tissue | images | mm² | counted at µm/px | all nuclei ≥ 20 µm² per mm² (former count) | "
        "tumor-like nuclei per mm²: mean (range over images) | nuclei < 40 µm²: median area, OD | "
        "nuclei ≥ 40 µm²: median area, OD |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in figures:
        small = f.area_um2 < MIN_TUMOR_NUCLEUS_AREA_UM2
        former_per_mm2 = f.all_nuclei / f.area_mm2
        rows.append(
            f"| {f.name} | {f.images} | {f.area_mm2:.3f} | {f.read_mpp:g} | {former_per_mm2:,.0f} | "
            f"**{f.tumor_like_per_mm2.mean():,.0f}** ({f.tumor_like_per_mm2.min():,.0f}-"
            f"{f.tumor_like_per_mm2.max():,.0f}) | {_median_pair(f, small)} | {_median_pair(f, ~small)} |"
        )
    return "\n".join(rows)


def _median_pair(figures: SetFigures, chosen: NDArray[np.bool_]) -> str:
    if not chosen.any():
        return "-"
    return f"{np.median(figures.area_um2[chosen]):.0f} µm², {np.median(figures.mean_od[chosen]):.3f}"


def write_overlays(folder: Path) -> None:
    """Each CAMELYON16 tumor patch at 3x, with the nuclei the count counts ringed in green."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    paths = sorted((SHARED_DATA_DIR / "camelyon16_patches" / "tumor").glob("*.png"))
    for path in paths:
        level0 = load_rgb(path)
        image, read_mpp = at_count_resolution(level0, CAMELYON_LEVEL0_MPP)
        counted = tumor_nuclei_rc(image, read_mpp)
        scale = 3 * read_mpp / CAMELYON_LEVEL0_MPP  # px of the 3x level-0 patch per counted px
        big = Image.fromarray(level0).resize((3 * level0.shape[1], 3 * level0.shape[0]))
        draw = ImageDraw.Draw(big)
        for row, col in counted.tolist():
            y, x = (row + 0.5) * scale, (col + 0.5) * scale
            draw.ellipse([x - 9, y - 9, x + 9, y + 9], outline=(0, 200, 0), width=3)
        big.save(folder / f"{path.stem}_counted{len(counted)}.png")
    print(f"wrote {len(paths)} overlays to {folder}")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pcam", type=int, default=500, help="PatchCamelyon patches per label (500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the PatchCamelyon sample (0)")
    parser.add_argument("--overlays", type=Path, help="folder for ringed tumor patches")
    args = parser.parse_args(argv)
    if not SHARED_DATA_DIR.is_dir():
        parser.error(f"{SHARED_DATA_DIR} not found: the real tissue lives in ../shared/data beside the repo")
    if args.overlays is not None:
        write_overlays(args.overlays)
    normal_name = "CAMELYON16 normal patches (tumor slides, outside tumor)"
    figures = [
        measure_set("CAMELYON16 tumor patches", c16_patches("tumor"), CAMELYON_LEVEL0_MPP),
        measure_set(normal_name, c16_patches("normal"), CAMELYON_LEVEL0_MPP),
        *(measure_set(name, c17_squares(stem), CAMELYON_LEVEL0_MPP) for name, stem in C17_TILES.items()),
        measure_set(
            "PatchCamelyon tumor patches (whole 96 px)", pcam_patches("tumor", args.pcam, args.seed), PCAM_MPP
        ),
        measure_set("PatchCamelyon normal patches", pcam_patches("normal", args.pcam, args.seed), PCAM_MPP),
    ]
    print(
        f"tumor-like: area >= {MIN_TUMOR_NUCLEUS_AREA_UM2:g} µm² and mean hematoxylin OD <= "
        f"{MAX_TUMOR_NUCLEUS_HEMATOXYLIN_OD:g}; CPU: {cpu_model()}"
    )
    print(table(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
