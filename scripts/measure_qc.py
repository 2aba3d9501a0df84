"""Measure the slide-QC statistics (pipeline.slides.qc) on the real material in ../shared/data.

Prints, per source, the percentiles of every per-tile measure at the QC resolution, then the
slide-level QC values of the real slides and of synthetic slides (plain, blurred, recoloured).
docs/qc.md quotes its output; thresholds in pipeline/slides/qc.py rest on it.

    nice -n 19 .venv/bin/python scripts/measure_qc.py [--pcam-per-class 300]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from pipeline.config import CAMELYON_LEVEL0_MPP, PCAM_MPP, SHARED_DATA_DIR, TissueConfig
from pipeline.slides.qc import (
    QCConfig,
    check_slide,
    focus_measure,
    nuclear_measures,
    qc_reference_from_tiles,
    stain_statistics,
)
from pipeline.slides.slide import SlideSource, open_slide, resize_rgb
from pipeline.slides.tissue import detect_tissue

QC = QCConfig()


def _at_qc_mpp(image: NDArray[np.uint8], mpp: float) -> NDArray[np.uint8]:
    side = round(image.shape[1] * mpp / QC.tile_mpp)
    return resize_rgb(image, side, round(image.shape[0] * mpp / QC.tile_mpp))


def _load(path: Path) -> NDArray[np.uint8]:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)


def pcam_tiles(per_class: int) -> NDArray[np.uint8]:
    """Evenly spaced PCam patches of each class, at the QC resolution."""
    tiles = []
    for label in ("normal", "tumor"):
        files = sorted((SHARED_DATA_DIR / "pcam_kaggle" / label).glob("*.webp"))
        picks = np.linspace(0, len(files) - 1, per_class).round().astype(int)
        tiles += [_at_qc_mpp(_load(files[i]), PCAM_MPP) for i in picks]
    return np.stack(tiles)


def camelyon16_tiles() -> NDArray[np.uint8]:
    """The level-0 CAMELYON16 patches (0.243 µm/px) at the QC resolution."""
    files = sorted((SHARED_DATA_DIR / "camelyon16_patches").glob("*/*.png"))
    return np.stack([_at_qc_mpp(_load(f), CAMELYON_LEVEL0_MPP) for f in files])


def split_tiles(image: NDArray[np.uint8], size: int) -> Iterator[NDArray[np.uint8]]:
    """Whole ``size`` x ``size`` tiles of an image, row by row."""
    for r in range(0, image.shape[0] - size + 1, size):
        for c in range(0, image.shape[1] - size + 1, size):
            yield image[r : r + size, c : c + size]


def camelyon17_tiles() -> dict[str, NDArray[np.uint8]]:
    """Each CAMELYON17 tile (about 0.243 µm/px) at the QC resolution, cut into QC tiles."""
    result = {}
    for path in sorted((SHARED_DATA_DIR / "camelyon17_tiles").glob("*.jpeg")):
        image = _at_qc_mpp(_load(path), CAMELYON_LEVEL0_MPP)
        result[path.stem] = np.stack(list(split_tiles(image, QC.tile_size_px)))
    return result


def describe(name: str, tiles: NDArray[np.uint8]) -> None:
    """Print the 1st, 5th, 50th, 95th and 99th percentile of every per-tile measure."""
    measures = {**stain_statistics(tiles), "focus": focus_measure(tiles)}
    measures.update(nuclear_measures(tiles, QC.tile_mpp))
    print(f"\n{name}: {len(tiles)} tiles; percentiles 1 / 5 / 50 / 95 / 99")
    for measure, values in measures.items():
        finite = values[np.isfinite(values)]
        points = " / ".join(f"{v:.4g}" for v in np.percentile(finite, (1, 5, 50, 95, 99)))
        print(f"  {measure:<22} {points}")


def slide_values(path: Path, mpp: float | None = None) -> str:
    """The QC values of one slide, as pipeline.slides.qc.check_slide reports them."""
    with SlideSource.for_path(path, mpp).open() as slide:
        tissue = detect_tissue(slide, TissueConfig())
        result = check_slide(slide, tissue, QC)
        measures = ", ".join(f"{k} {v:.4g}" for k, v in result.measures.items() if v is not None)
        return f"{result.summary_line()} [{measures}]"


def synthetic_slides(folder: Path) -> dict[str, Path]:
    """A synthetic node as the demo draws it (0.5 µm/px) and at 1.0 µm/px, a blurred and a
    recoloured copy, and the test suite's pink blob (``pipeline.synthetic.pyramid_tiff``)."""
    from scipy import ndimage

    from pipeline.synthetic.generate import SynthConfig, generate_slide
    from pipeline.synthetic.pyramid_tiff import draw_tissue_rgb, write_pyramid_tiff

    slides = {}
    for mpp, width, height, seed in (
        (0.5, 3000, 2600, 3),
        (1.0, 3000, 2600, 3),
        (0.5, 6000, 5000, 7),
        (0.25, 3000, 2600, 5),
        (2.0, 400, 320, 3),
    ):
        path = folder / f"synthetic_{mpp}_{width}.tif"
        generate_slide(SynthConfig(width_px=width, height_px=height, mpp=mpp, seed=seed), path)
        slides[f"synthetic node {width} x {height} px at {mpp} µm/px"] = path
    with open_slide(folder / "synthetic_0.5_3000.tif") as slide:
        image = slide.read_region_rgb(0, 0, 0, *slide.dimensions)
    blurred = np.stack([ndimage.gaussian_filter(image[..., c], 4.0) for c in range(3)], axis=-1)
    slides["synthetic node blurred (Gaussian sigma 2 µm)"] = write_pyramid_tiff(
        folder / "blur.tif", blurred, 0.5
    )
    recoloured = image[..., [2, 0, 1]].copy()
    slides["synthetic node recoloured (RGB -> BRG, tissue turns green)"] = write_pyramid_tiff(
        folder / "bgr.tif", recoloured, 0.5
    )
    blob = draw_tissue_rgb(1500, 1100)
    slides["conftest pink blob"] = write_pyramid_tiff(folder / "blob.tif", blob, 0.5)
    return slides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pcam-per-class", type=int, default=300)
    args = parser.parse_args()
    pcam = pcam_tiles(args.pcam_per_class)
    describe("pcam_kaggle", pcam)
    c16 = camelyon16_tiles()
    describe("camelyon16_patches", c16)
    c17 = camelyon17_tiles()
    for name, tiles in c17.items():
        describe(f"camelyon17 {name}", tiles)
    everything = np.concatenate(
        [pcam[:, :62, :62], c16[:, :62, :62], *(t[:, :62, :62] for t in c17.values())]
    )
    print("\nqc_reference_from_tiles(all of the above):", qc_reference_from_tiles(everything))
    print("\nslides:")
    for path in [
        SHARED_DATA_DIR / "slides" / "cmu_small_region.svs",
        *sorted((SHARED_DATA_DIR / "formats").glob("*/*.ndpi")),
        SHARED_DATA_DIR / "formats" / "vmu" / "crop800.vmu",
    ]:
        print(f"  {path.name}: {slide_values(path)}")
    # The TCGA file records no µm/px; 0.5 (20x) is an assumption for measuring only.
    tcga = SHARED_DATA_DIR / "slides" / "tcga_cr_7395_jp2k.svs"
    print(f"  {tcga.name} (assumed 0.5 µm/px): {slide_values(tcga, 0.5)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in synthetic_slides(Path(tmp)).items():
            print(f"  {name}: {slide_values(path)}")
        for name in c17:
            from pipeline.synthetic.pyramid_tiff import write_pyramid_tiff

            image = _load(SHARED_DATA_DIR / "camelyon17_tiles" / f"{name}.jpeg")
            path = write_pyramid_tiff(Path(tmp) / f"{name}.tif", image, CAMELYON_LEVEL0_MPP)
            print(f"  {name} as a slide: {slide_values(path)}")


if __name__ == "__main__":
    main()
