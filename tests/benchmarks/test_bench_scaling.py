"""The scaling benchmark's pure parts (line fit, pyramid levels, paste-to-tile mapping, sizes
option, docs section) and its mostly-glass slide writer on a small slide read back by OpenSlide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
from conftest import draw_tissue_rgb, write_pyramid_tiff

from pipeline.benchmarks import scaling
from pipeline.benchmarks import scaling_report as report
from pipeline.benchmarks import scaling_slides as slides


def test_fit_linear_recovers_overhead_and_slope() -> None:
    areas = [1.0, 5.0, 20.0, 40.0]
    a, b, r2 = report.fit_linear(areas, [7.0 + 0.25 * x for x in areas])
    assert (a, b, r2) == pytest.approx((7.0, 0.25, 1.0))
    _, _, noisy_r2 = report.fit_linear(areas, [7.0, 9.5, 11.0, 18.0])
    assert 0.9 < noisy_r2 < 1.0


def test_fit_linear_needs_two_distinct_areas() -> None:
    with pytest.raises(ValueError, match="two or more distinct"):
        report.fit_linear([3.0, 3.0], [1.0, 2.0])


def test_camelyon_size_pyramid_halves_down_to_1024_px() -> None:
    spec = slides.BackgroundSlideSpec(100_000, 200_000, 0.25, slides.CAMELYON_PASTES)
    dims = spec.level_dimensions()
    assert len(dims) == 9
    assert dims[1] == (50_000, 100_000) and dims[-1] == (391, 782)


def test_camelyon_pastes_fit_and_are_aligned_for_copying() -> None:
    for paste in slides.CAMELYON_PASTES:
        assert paste.x_px % 256 == 0 and paste.y_px % 256 == 0
        assert paste.x_px + slides.SOURCE_SIDE_PX <= slides.CAMELYON_WIDTH_PX
        assert paste.y_px + slides.SOURCE_SIDE_PX <= slides.CAMELYON_HEIGHT_PX


def test_spec_rejects_tiles_jpeg_cannot_subsample() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        slides.BackgroundSlideSpec(1000, 1000, 0.25, (), tile_px=100)


def test_paste_tiles_lists_every_tile_a_paste_overlaps() -> None:
    paste = slides.Paste("node", 300, 10)
    spec = slides.BackgroundSlideSpec(2048, 1024, 0.25, (paste, slides.Paste("node", 1900, 900)))
    level0 = slides.paste_tiles(spec, 0, {"node": (512, 256)})
    # x 300..811 -> columns 1-3, y 10..265 -> rows 0-1; the second paste is clipped at the edge.
    assert {k for k, v in level0.items() if v == [0]} == {(r, c) for r in (0, 1) for c in (1, 2, 3)}
    assert {k for k, v in level0.items() if v == [1]} == {(3, 7)}
    level1 = slides.paste_tiles(spec, 1, {"node": (512, 256)})
    assert level1 == {(0, 0): [0], (0, 1): [0], (1, 3): [1]}


def test_parse_sizes_accepts_a_list_and_rejects_nonsense() -> None:
    assert scaling.parse_sizes("5000, 20000") == (5000, 20000)
    for bad in ("", "5000,x", "100", "200000"):
        with pytest.raises(Exception, match="--sizes"):
            scaling.parse_sizes(bad)


def test_failed_infer_names_the_log(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"exited 1; log .*infer\.log"):
        scaling.run_infer(tmp_path / "missing.tif", tmp_path / "out", None, timeout_s=60)


def fake_row(name: str, side_px: int, area_mm2: float, seconds: float) -> dict[str, Any]:
    return {
        "slide": name, "dimensions": [side_px, side_px], "tissue_area_mm2": area_mm2,
        "n_tiles": int(area_mm2 * 244), "seconds": seconds, "micromet_seconds": seconds - 8.0,
        "peak_rss_largest_mb": 900.0, "peak_rss_tree_mb": 1600.0, "heatmap_shape": [20, 20],
        "heatmap_mb": 0.01, "timing_s": {"tissue_tiling": 0.2, "total": seconds - 8.0},
        "category": "micro", "deposits": [("micro", 1.02, 14290.0, 21630.0)],
    }


def test_markdown_reports_the_fit_the_target_and_the_machine() -> None:
    rows = [fake_row(f"node_{s}.tif", s, area, 10.0 + 0.5 * area)
            for s, area in ((5000, 1.0), (20000, 12.0), (30000, 21.0))]
    big = dict(fake_row("camelyon_size.tif", 100_000, 30.0, 26.0), peak_rss_largest_mb=1500.0,
               planted=[{"category": "micro", "diameter_mm": 1.0, "centroid_x_px": 14283,
                         "centroid_y_px": 21636}],
               file_gb=2.98, levels=9, sources_s=25.0, write_s=75.0, stage_memory={"model loaded": 710},
               source_deposits=[("micro", 1.02, 14290.0, 21630.0)])
    figures = {"machine": {"cpu": "Test CPU", "usable_cores": 2, "cores": 2, "ram_gib": 23.5, "os": "Linux",
                           "python": "3.11.7", "load_average": 2.0},
               "rows": rows, "camelyon": big, "repeats": 3, "load_end": 3.5, "date": "2026-11-21",
               "model": "models/default.pt", "command": ".venv/bin/python scripts/bench_scaling.py"}
    text = report.render_markdown(figures)
    assert text.startswith(report.SECTION + "\n")
    assert "10.00 s + 0.500 s/mm² x tissue area** (r² = 1.000)" in text
    assert "predicts 25 s (wall) for its 30.0 mm²" in text and "measured 26 s (+1 s)" in text
    assert "under 3 GB): met" in text and "load average 2.0 at the start and 3.5 at the end" in text
    assert "micro 1.00 mm at (14,283, 21,636). Found: micro 1.02 mm at (14,290, 21,630)" in text
    assert "sources took 25 s, writing the pyramid 75 s" in text
    assert text.count("| node_") == 3 and "| camelyon_size.tif | 100,000 x 100,000 |" in text
    big["peak_rss_largest_mb"] = 3100.0
    assert "**not met**" in report.render_markdown(figures)


def test_background_slide_reads_back_with_glass_and_pasted_tissue(tmp_path: Path) -> None:
    source = write_pyramid_tiff(tmp_path / "node.tif", draw_tissue_rgb(1280, 768, seed=1), mpp=0.25,
                                n_levels=3, tile_px=128)
    aligned, shifted = slides.Paste("node", 256, 128), slides.Paste("node", 1700, 1333)
    spec = slides.BackgroundSlideSpec(3100, 2300, 0.25, (aligned, shifted), tile_px=128)
    path = tmp_path / "big.tif"
    slides.write_background_slide(spec, {"node": source}, path)
    with openslide.OpenSlide(str(path)) as big, openslide.OpenSlide(str(source)) as src:
        assert big.dimensions == (3100, 2300) and big.level_count == len(spec.level_dimensions())
        assert float(big.properties["openslide.mpp-x"]) == pytest.approx(0.25)

        def rgb(handle: Any, xy: tuple[int, int], level: int = 0, side: int = 256) -> np.ndarray:
            return np.asarray(handle.read_region(xy, level, (side, side)).convert("RGB")).astype(float)

        # Level 0 of the aligned paste is copied tile for tile: identical pixels.
        assert np.array_equal(rgb(big, (256 + 500, 128 + 250)), rgb(src, (500, 250)))
        # Elsewhere tiles are re-encoded (JPEG) but show the same tissue.
        assert np.abs(rgb(big, (1700 + 500, 1333 + 250)) - rgb(src, (500, 250))).mean() < 6
        assert np.abs(rgb(big, (256 + 400, 128 + 200), 1) - rgb(src, (400, 200), 1)).mean() < 6
        glass = rgb(big, (100, 1900), side=128)
        assert np.abs(glass - 242).max() < 8  # the source's background, no tissue
