"""Tissue detection: white glass, pen marks and black borders are rejected; specks dropped."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, require_shared_data
from numpy.typing import NDArray
from skimage import color, filters

from pipeline.config import TissueConfig
from pipeline.slides import tissue as tissue_module
from pipeline.slides.slide import open_slide
from pipeline.slides.tissue import MAX_OTSU_SATURATION, detect_tissue, tissue_mask_from_rgb


def _canvas(rows: int = 200, cols: int = 300) -> np.ndarray:
    return np.full((rows, cols, 3), 240, dtype=np.uint8)


def test_pink_tissue_is_found_and_glass_is_not() -> None:
    rgb = _canvas()
    rgb[50:150, 100:200] = (220, 150, 200)
    mask = tissue_mask_from_rgb(rgb, 8.0, TissueConfig())
    assert mask[60:140, 110:190].all()
    assert not mask[:40].any()
    assert mask.sum() == pytest.approx(100 * 100, rel=0.05)


def test_pen_marks_and_black_borders_are_rejected() -> None:
    rgb = _canvas()
    rgb[50:150, 100:200] = (220, 150, 200)
    rgb[10:30, 10:290] = (30, 140, 60)  # green pen
    rgb[160:180, 10:290] = (40, 60, 200)  # blue pen
    rgb[:, :6] = (5, 5, 5)  # black scanner border
    mask = tissue_mask_from_rgb(rgb, 8.0, TissueConfig())
    assert not mask[10:30].any()
    assert not mask[160:180].any()
    assert not mask[:, :6].any()
    assert mask[100, 150]


def test_specks_are_removed_and_holes_filled() -> None:
    rgb = _canvas()
    rgb[50:150, 100:200] = (220, 150, 200)
    rgb[95:100, 145:150] = 240  # a 5x5 hole: 0.0016 mm² at 8 µm/px
    rgb[10:12, 10:12] = (220, 150, 200)  # a 2x2 speck
    mask = tissue_mask_from_rgb(rgb, 8.0, TissueConfig())
    assert mask[97, 147]
    assert not mask[10:12, 10:12].any()


def test_blank_slide_has_zero_tissue() -> None:
    with open_slide(FIXTURES / "bad_slides" / "blank_no_tissue.tif") as slide:
        tissue = detect_tissue(slide, TissueConfig(mask_mpp=4.0))
    assert tissue.tissue_fraction == 0.0


def test_tiny_slide_tissue_fraction_matches_the_drawn_ellipse(tiny_slide: Path) -> None:
    with open_slide(tiny_slide) as slide:
        tissue = detect_tissue(slide, TissueConfig(mask_mpp=4.0))
    # The drawn ellipse covers pi * 0.35 * 0.35 of the image.
    assert tissue.tissue_fraction == pytest.approx(np.pi * 0.35**2, abs=0.03)
    assert tissue.mask_mpp == 4.0
    assert tissue.tissue_area_mm2 == pytest.approx(
        tissue.tissue_fraction * 1500 * 1100 * 0.25 / 1e6, rel=0.05
    )


@pytest.mark.shared_data
def test_real_slide_gives_a_sensible_mask() -> None:
    path = require_shared_data("slides/cmu_small_region.svs")
    with open_slide(path) as slide:
        tissue = detect_tissue(slide, TissueConfig())
    # CMU-1-Small-Region is a skin section with glass around it.
    assert 0.15 < tissue.tissue_fraction < 0.8
    assert not tissue.mask.all()


@pytest.mark.parametrize("field", ["mask_mpp", "min_saturation"])
def test_bad_config_values_name_the_field(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TissueConfig(**{field: -1.0})


def _mask_with_float_hsv(rgb: NDArray[np.uint8], mask_mpp: float, config: TissueConfig) -> NDArray[np.bool_]:
    """The tissue rules computed the plain way: every pixel converted by skimage's rgb2hsv."""
    hsv = color.rgb2hsv(rgb)
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    glass = (value > tissue_module.WHITE_VALUE) & (saturation < tissue_module.WHITE_MAX_SATURATION)
    candidates = ~glass & ~(value < tissue_module.BLACK_MAX_VALUE)
    threshold = config.min_saturation
    if candidates.sum() > 16:
        otsu = float(filters.threshold_otsu(saturation[candidates | glass]))
        threshold = max(threshold, min(otsu, MAX_OTSU_SATURATION))
    found = candidates & (saturation >= threshold)
    if config.reject_pen:
        low, high = tissue_module.PEN_HUE_RANGE
        found &= ~((hue >= low) & (hue <= high) & (saturation >= tissue_module.PEN_MIN_SATURATION))
    return tissue_module._clean_mask(found, mask_mpp, config)


@pytest.mark.parametrize("reject_pen", [True, False])
def test_mask_equals_the_one_from_float_hsv_of_every_pixel(reject_pen: bool) -> None:
    # Every 5th level of each channel (52**3 colours, pen hues, greys and black included)
    # laid out in blocks, then random noise: the table lookups must agree exactly.
    levels = np.arange(0, 256, 5, dtype=np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1)
    every_colour = np.repeat(grid.reshape(52 * 52, 52, 3), 2, axis=0)
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    config = dataclasses.replace(TissueConfig(), reject_pen=reject_pen)
    for rgb in (every_colour, noise, _canvas()):
        np.testing.assert_array_equal(
            tissue_mask_from_rgb(rgb, 8.0, config), _mask_with_float_hsv(rgb, 8.0, config)
        )


def test_pale_tumor_inside_dark_lymphoid_tissue_stays_tissue() -> None:
    # A field with no glass: Otsu would split pale tumor (saturation ~0.3) from dark
    # lymphocytes (~0.55); the cap keeps both as tissue.
    rng = np.random.default_rng(1)
    rgb = np.empty((120, 120, 3), dtype=np.uint8)
    rgb[:] = (110, 60, 150)  # saturated purple lymphoid tissue, saturation 0.6
    rgb[40:80, 40:80] = (215, 160, 200)  # pale pink tumor, saturation 0.26
    rgb = np.clip(rgb.astype(np.int16) + rng.integers(-4, 5, rgb.shape), 0, 255).astype(np.uint8)
    mask = tissue_mask_from_rgb(rgb, 8.0, TissueConfig())
    assert mask[45:75, 45:75].all()
