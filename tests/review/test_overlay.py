"""Tests of pipeline/review/overlay.py: the one heatmap renderer, the overlay PNG, its colours and
scale bar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_pyramid_tiff
from matplotlib import colormaps
from numpy.typing import NDArray
from PIL import Image

from pipeline.detection.heatmap import Heatmap
from pipeline.errors import HeatmapError
from pipeline.review.colors import CATEGORY_COLORS, HEATMAP_TRANSPARENT_BELOW, hex_to_rgb
from pipeline.review.overlay import (
    COLORBAR_PANEL_PX,
    COLORBAR_WIDTH_PX,
    COLORMAP,
    FOOTER_BAND_PX,
    HEATMAP_OPACITY,
    LEGEND_BAND_PX,
    MARGIN_PX,
    THUMB_TOP_PX,
    blend_heatmap,
    heatmap_layer,
    heatmap_over_thumbnail,
    heatmap_rgba,
    legend_swatch_boxes,
    overlay_size_px,
    overlay_thumbnail_mpp,
    overlay_title,
    render_overlay,
    scale_bar_length,
    write_overlay,
)
from pipeline.slides.slide import open_slide

SLIDE_MPP = 0.5
WIDTH, HEIGHT = 1200, 900  # level-0 px
STRIDE = 100.0  # level-0 px; tiles equal the stride, so cell (r, c) is x in [100c, 100c + 100)
TISSUE = (200, 180, 210)


@pytest.mark.parametrize(
    ("mm_per_px", "length_mm"),
    [(0.001, 0.2), (0.004, 0.5), (0.008, 1.0), (0.02, 2.0), (0.05, 10.0), (0.0004, 0.05)],
)
def test_scale_bar_is_the_longest_round_length_that_fits(mm_per_px: float, length_mm: float) -> None:
    got_mm, got_px = scale_bar_length(mm_per_px)
    assert got_mm == pytest.approx(length_mm)
    assert got_px == pytest.approx(length_mm / mm_per_px)
    assert got_px <= 200.0
    assert got_px > 200.0 / 2.5  # 1-2-5 steps never leave the bar under 40 % of the room


def test_scale_bar_rejects_a_non_positive_resolution() -> None:
    with pytest.raises(ValueError, match="mm_per_px"):
        scale_bar_length(0.0)


@pytest.fixture
def slide_path(tmp_path: Path) -> Path:
    image = np.full((HEIGHT, WIDTH, 3), 245, dtype=np.uint8)
    image[100:800, 100:1100] = TISSUE
    return write_pyramid_tiff(tmp_path / "node.tif", image, mpp=SLIDE_MPP)


def make_heatmap() -> Heatmap:
    values = np.full((9, 12), np.nan, dtype=np.float32)
    values[1:8, 1:11] = 0.0  # tissue, not tumor
    values[3:5, 6:9] = 1.0  # tumor: level-0 x 600-900, y 300-500
    return Heatmap(values, 0.0, 0.0, STRIDE, STRIDE, SLIDE_MPP, (WIDTH, HEIGHT))


def png_pixel(png: NDArray[np.uint8], x_l0: float, y_l0: float, scale: float) -> NDArray[np.int64]:
    """The PNG pixel showing level-0 point (x_l0, y_l0) for a thumbnail ``scale`` px per l0 px."""
    row = THUMB_TOP_PX + int(y_l0 * scale)
    col = MARGIN_PX + int(x_l0 * scale)
    return png[row, col, :3].astype(np.int64)


def blend(base: tuple[int, int, int], probability: float) -> NDArray[np.float64]:
    color = np.asarray(colormaps[COLORMAP](probability)[:3]) * 255.0
    floor = HEATMAP_TRANSPARENT_BELOW
    alpha = HEATMAP_OPACITY * min(1.0, max(0.0, (probability - floor) / (1.0 - floor)))
    return (1 - alpha) * np.asarray(base, dtype=np.float64) + alpha * color


def test_overlay_png_shows_the_heatmap_over_the_thumbnail(slide_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "overlay.png"
    with open_slide(slide_path) as slide:
        render_overlay(slide, make_heatmap(), out, max_side_px=600)
    png = np.asarray(Image.open(out).convert("RGB"))
    thumb_w, thumb_h = 600, 450  # 1200 x 900 at half size
    assert png.shape[1] == thumb_w + 2 * MARGIN_PX + COLORBAR_PANEL_PX
    assert (png.shape[1], png.shape[0]) == overlay_size_px((thumb_h, thumb_w))
    assert png.shape[0] == THUMB_TOP_PX + thumb_h + LEGEND_BAND_PX + FOOTER_BAND_PX + MARGIN_PX
    scale = thumb_w / WIDTH
    tumor = png_pixel(png, 750, 400, scale)
    normal = png_pixel(png, 300, 600, scale)
    glass = png_pixel(png, 1150, 850, scale)  # unscored (NaN) cell: the thumbnail shows through
    np.testing.assert_allclose(tumor, blend(TISSUE, 1.0), atol=12)
    np.testing.assert_allclose(normal, blend(TISSUE, 0.0), atol=12)
    np.testing.assert_allclose(glass, (245, 245, 245), atol=6)
    assert not list(tmp_path.glob(".overlay.png*"))  # no temporary file left behind


def longest_black_run(row: NDArray[np.uint8]) -> int:
    black = (row.max(axis=-1) < 40).astype(np.int8)
    edges = np.diff(np.concatenate([[0], black, [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((stops - starts).max()) if len(starts) else 0


def test_scale_bar_in_the_png_has_the_computed_length(slide_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "overlay.png"
    with open_slide(slide_path) as slide:
        render_overlay(slide, make_heatmap(), out, max_side_px=600)
    png = np.asarray(Image.open(out).convert("RGB"))
    mm_per_px = SLIDE_MPP * (WIDTH / 600) / 1000.0  # 1 µm/px thumbnail
    _, length_px = scale_bar_length(mm_per_px, 200.0)
    bottom_left = png[THUMB_TOP_PX + 380 : THUMB_TOP_PX + 450, MARGIN_PX : MARGIN_PX + 300]
    measured = max(longest_black_run(row) for row in bottom_left)
    assert abs(measured - length_px) <= 2


def test_deposit_outlines_are_drawn_in_their_colour(slide_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "overlay.png"
    square = np.array([[200.0, 200.0], [500.0, 200.0], [500.0, 500.0], [200.0, 500.0]])
    with open_slide(slide_path) as slide:
        render_overlay(slide, make_heatmap(), out, [square], ["#00ff00"], max_side_px=600)
    png = np.asarray(Image.open(out).convert("RGB"))
    edge = png_pixel(png, 350, 200, 0.5)
    assert edge[1] > 200 and edge[0] < 80 and edge[2] < 80


def test_heatmap_of_another_slide_is_refused(slide_path: Path, tmp_path: Path) -> None:
    heatmap = make_heatmap()
    other = Heatmap(heatmap.probabilities, 0.0, 0.0, STRIDE, STRIDE, SLIDE_MPP, (999, 999))
    with open_slide(slide_path) as slide, pytest.raises(HeatmapError, match="999 x 999"):
        render_overlay(slide, other, tmp_path / "overlay.png")
    assert not (tmp_path / "overlay.png").exists()


def test_a_pyramid_level_that_fits_is_the_thumbnail_itself(slide_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "overlay.png"
    with open_slide(slide_path) as slide:
        # Levels are 1200, 600 and 300 px wide: 600 lies within [350, 700] and is read as is.
        assert overlay_thumbnail_mpp(slide, 700) == pytest.approx(slide.level_mpp(1))
        # Level 0 (1200 px) fits within [1000, 2000]: the slide itself, never anything finer.
        assert overlay_thumbnail_mpp(slide, 2000) == pytest.approx(SLIDE_MPP)
        # No level within [125, 250] (the coarsest is 300 px wide): resampled to 250 px.
        assert overlay_thumbnail_mpp(slide, 250) == pytest.approx(SLIDE_MPP * WIDTH / 250)
        render_overlay(slide, make_heatmap(), out, max_side_px=700)
    png = np.asarray(Image.open(out).convert("RGB"))
    width, height = overlay_size_px((450, 600))
    assert png.shape[:2] == (height, width)


def test_colour_bar_runs_from_probability_zero_at_the_bottom_to_one_at_the_top(
    slide_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "overlay.png"
    with open_slide(slide_path) as slide:
        render_overlay(slide, make_heatmap(), out, max_side_px=600)
    png = np.asarray(Image.open(out).convert("RGB")).astype(np.int64)
    column = 2 * MARGIN_PX + 600 + COLORBAR_WIDTH_PX // 2
    top, bottom = png[THUMB_TOP_PX + 3, column], png[THUMB_TOP_PX + 450 - 4, column]
    np.testing.assert_allclose(top, np.asarray(colormaps[COLORMAP](1.0)[:3]) * 255, atol=6)
    np.testing.assert_allclose(bottom, np.asarray(colormaps[COLORMAP](0.0)[:3]) * 255, atol=6)


def test_overlay_in_two_halves_equals_the_one_call(slide_path: Path, tmp_path: Path) -> None:
    square = [np.array([[200.0, 200.0], [500.0, 200.0], [500.0, 500.0], [200.0, 500.0]])]
    with open_slide(slide_path) as slide:
        render_overlay(slide, make_heatmap(), tmp_path / "one.png", square, ["#00ff00"], max_side_px=600)
        blended = heatmap_over_thumbnail(slide, make_heatmap(), max_side_px=600)
        write_overlay(blended, slide, tmp_path / "two.png", square, ["#00ff00"])
        with pytest.raises(ValueError, match="2 deposit colours for 1 outlines"):
            write_overlay(blended, slide, tmp_path / "three.png", square, ["red", "blue"])
    one = np.asarray(Image.open(tmp_path / "one.png"))
    np.testing.assert_array_equal(one, np.asarray(Image.open(tmp_path / "two.png")))
    assert not (tmp_path / "three.png").exists()


def test_low_probabilities_leave_the_h_and_e_visible(slide_path: Path, tmp_path: Path) -> None:
    heatmap = make_heatmap()
    heatmap.probabilities[1:8, 1:3] = 0.05  # scored, very unlikely tumor: no tint at all
    unscored = Heatmap(np.full_like(heatmap.probabilities, np.nan), 0.0, 0.0, STRIDE, STRIDE,
                       SLIDE_MPP, (WIDTH, HEIGHT))
    with open_slide(slide_path) as slide:
        render_overlay(slide, heatmap, tmp_path / "overlay.png", max_side_px=600)
        render_overlay(slide, unscored, tmp_path / "plain.png", max_side_px=600)
    png = np.asarray(Image.open(tmp_path / "overlay.png").convert("RGB"))
    plain = np.asarray(Image.open(tmp_path / "plain.png").convert("RGB"))
    for x_l0, y_l0 in ((150, 400), (250, 700), (300, 600)):  # p = 0.05, 0.05 and 0.0
        np.testing.assert_array_equal(png_pixel(png, x_l0, y_l0, 0.5), png_pixel(plain, x_l0, y_l0, 0.5))
        np.testing.assert_allclose(png_pixel(png, x_l0, y_l0, 0.5), TISSUE, atol=2)
    assert not np.array_equal(png_pixel(png, 750, 400, 0.5), png_pixel(plain, 750, 400, 0.5))


def test_overlay_has_a_title_an_outline_legend_and_the_research_notice(
    slide_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "overlay.png"
    title = overlay_title("node_7", "micro", 1.234)
    assert title == "node_7 · micro · largest deposit 1.23 mm"
    with open_slide(slide_path) as slide:
        render_overlay(slide, make_heatmap(), out, max_side_px=600, title=title)
    png = np.asarray(Image.open(out).convert("RGB")).astype(np.int64)
    title_band = png[MARGIN_PX:THUMB_TOP_PX, MARGIN_PX : MARGIN_PX + 300]
    assert (title_band.max(axis=-1) < 100).sum() > 100  # dark text on white
    for name, (left, top, right, bottom) in legend_swatch_boxes((450, 600)).items():
        centre = png[(top + bottom) // 2, (left + right) // 2]
        np.testing.assert_array_equal(centre, hex_to_rgb(CATEGORY_COLORS[name]))
    footer_top = THUMB_TOP_PX + 450 + LEGEND_BAND_PX
    footer = png[footer_top : footer_top + FOOTER_BAND_PX, MARGIN_PX:]
    assert (footer.max(axis=-1) < 100).sum() > 300  # the notice is written there


def test_overlay_title_reads_an_upper_bound_and_no_deposits() -> None:
    assert overlay_title("s", "itc", 0.0905, upper_bound=True) == "s · itc · largest deposit ≤ 0.091 mm"
    assert overlay_title("s", "negative", None) == "s · negative · no deposits"
    flagged = overlay_title("s", "micro", 0.5, n_review=2)
    assert flagged == "s · micro · largest deposit 0.50 mm · review: 2 deposits"


# The renderer pinned on a tiny heatmap: 2 x 3 cells of 2 x 2 level-0 px over a 6 x 4 px slide.
TINY_PROBABILITIES = [[np.nan, 0.1, 0.5], [0.55, 0.9, 1.0]]
TINY_BASE = (100, 150, 200)
# heatmap_rgba: viridis; alpha 0 for NaN and p <= 0.1, then linear to 255 at p = 1.
TINY_RGBA = [
    [[68, 1, 84, 0], [72, 35, 116, 0], [32, 144, 140, 113]],
    [[30, 155, 137, 128], [189, 222, 38, 227], [253, 231, 36, 255]],
]
# blend_heatmap at the default opacity 0.6: base x (1 - a) + colour x a, a = alpha / 255 x 0.6.
TINY_BLENDED = [
    [TINY_BASE, TINY_BASE, (82, 148, 184)],
    [(79, 152, 181), (148, 189, 113), (192, 199, 101)],
]


def tiny_heatmap() -> Heatmap:
    return Heatmap(np.array(TINY_PROBABILITIES, dtype=np.float32), 0.0, 0.0, 2.0, 2.0, SLIDE_MPP, (6, 4))


def test_heatmap_colours_and_alpha_are_pinned() -> None:
    rgba = heatmap_rgba(tiny_heatmap().probabilities)
    np.testing.assert_array_equal(rgba, np.array(TINY_RGBA, dtype=np.uint8))


def test_blend_heatmap_pins_every_pixel_of_a_tiny_heatmap() -> None:
    thumb = np.empty((4, 6, 3), dtype=np.uint8)
    thumb[...] = TINY_BASE
    blended = blend_heatmap(thumb, tiny_heatmap(), (6, 4))
    expected = np.repeat(np.repeat(np.array(TINY_BLENDED, dtype=np.uint8), 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(blended, expected)
    np.testing.assert_array_equal(thumb[0, 0], TINY_BASE)  # the input is left alone
    opaque = blend_heatmap(thumb, tiny_heatmap(), (6, 4), opacity=1.0)
    np.testing.assert_array_equal(opaque[3, 5], (253, 231, 36))  # p = 1 at full opacity: viridis' top


def test_blend_heatmap_scales_each_axis_to_the_whole_slide() -> None:
    """A 6 x 3 px picture of the 6 x 4 px slide: rows scale by 3/4, columns by 1. Pixel row 1
    (level-0 y 1.33) lies in the second cell row, not the first as a 1:1 scale would put it."""
    thumb = np.empty((3, 6, 3), dtype=np.uint8)
    thumb[...] = TINY_BASE
    blended = blend_heatmap(thumb, tiny_heatmap(), (6, 4))
    np.testing.assert_array_equal(blended[0, ::2], np.array(TINY_BLENDED[0], dtype=np.uint8))
    np.testing.assert_array_equal(blended[1, ::2], np.array(TINY_BLENDED[1], dtype=np.uint8))
    np.testing.assert_array_equal(blended[2, ::2], np.array(TINY_BLENDED[1], dtype=np.uint8))


def test_blend_heatmap_rejects_a_bad_opacity_or_slide_size() -> None:
    thumb = np.zeros((4, 6, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="opacity"):
        blend_heatmap(thumb, tiny_heatmap(), (6, 4), opacity=1.5)
    with pytest.raises(ValueError, match="slide_dimensions"):
        blend_heatmap(thumb, tiny_heatmap(), (0, 4))


def test_viewer_layer_is_the_same_colouring_in_blocks() -> None:
    layer = heatmap_layer(tiny_heatmap(), upscale=3)
    assert layer.shape == (6, 9, 4) and layer.dtype == np.uint8
    np.testing.assert_array_equal(layer[1::3, 1::3], np.array(TINY_RGBA, dtype=np.uint8))
    np.testing.assert_array_equal(layer[3:6, 6:9], np.broadcast_to(TINY_RGBA[1][2], (3, 3, 4)))
    with pytest.raises(ValueError, match="upscale"):
        heatmap_layer(tiny_heatmap(), upscale=0)


def test_overlay_blend_is_blend_heatmap_over_the_slide_thumbnail(slide_path: Path) -> None:
    with open_slide(slide_path) as slide:
        blended = heatmap_over_thumbnail(slide, make_heatmap(), max_side_px=600)
        thumb = slide.thumbnail_at_mpp(overlay_thumbnail_mpp(slide, 600))
    expected = blend_heatmap(thumb, make_heatmap(), (WIDTH, HEIGHT), HEATMAP_OPACITY)
    np.testing.assert_array_equal(blended, expected)
