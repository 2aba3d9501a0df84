"""The one polygon rasteriser (``polygon_mask``): ASAP's rule, as the CAMELYON16 masks were
drawn, at pixel centres (annotation and deposit masks) or pixel corners (the FROC mask)."""

from __future__ import annotations

import numpy as np
import pytest
from polygon_reference import asap_inside

from pipeline.slides.annotation_geometry import polygon_mask
from pipeline.slides.annotations import polygon_mask as public_polygon_mask

# An L-shaped outline in pixel-centre coordinates: [1, 5] x [1, 3] plus [3, 5] x [3, 5].
L_SHAPE_RC = np.array([[1, 1], [5, 1], [5, 5], [3, 5], [3, 3], [1, 3]], dtype=np.float64)
# Its pixels by the rule: strictly inside the box (rows and columns 2..4), the lower edge of
# the left arm (row 3, column 2) out, the inner left edge (column 3, rows 3-4) in.
L_SHAPE_PIXELS = [[2, 2], [2, 3], [2, 4], [3, 3], [3, 4], [4, 3], [4, 4]]


@pytest.mark.parametrize("seed", range(4))
def test_scanline_fill_equals_the_asap_point_test(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (40, 45)
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    for trial in range(60):
        n = int(rng.integers(3, 25))
        rows, cols = rng.uniform(-5, 48, n), rng.uniform(-5, 50, n)  # self-intersecting too
        if trial % 2:
            rows, cols = np.round(rows * 2) / 2, np.round(cols * 2) / 2  # vertices on the grid
        ring = np.stack([cols, rows], axis=1)
        expected = asap_inside(ring, cc.astype(float), rr.astype(float))
        np.testing.assert_array_equal(polygon_mask([ring], shape, point_offset_px=0.0), expected)
        # the same pixels tested at their centres, the outline moved by half a pixel
        np.testing.assert_array_equal(polygon_mask([ring + 0.5], shape), expected)


def test_edge_pixels_of_a_small_polygon() -> None:
    """Pins the boundary rule: on a left or upper edge in, on a right or lower edge out, on the
    bounding box's border out. (The former annotation fill also set row 1 and column 1 -
    centres on the box's top and left border; the former deposit mask, skimage.draw.polygon,
    set every centre on the outline: rows and columns 1 to 5 of the shape.)"""
    at_centres = polygon_mask([L_SHAPE_RC + 0.5], (7, 7))
    assert np.argwhere(at_centres).tolist() == L_SHAPE_PIXELS
    assert public_polygon_mask is polygon_mask
    # the same points at downsample 4 in a window whose top-left is mask pixel (1, 2)
    level0 = (L_SHAPE_RC + 0.5) * 4.0
    window = polygon_mask([level0], (6, 5), (1, 2), 4.0)
    np.testing.assert_array_equal(window, at_centres[1:7, 2:7])
    # the FROC tests each pixel's top-left corner: the outline at the corners gives the same
    at_corners = polygon_mask([L_SHAPE_RC * 32.0], (7, 7), (0, 0), 32.0, point_offset_px=0.0)
    np.testing.assert_array_equal(at_corners, at_centres)


def test_froc_mask_of_a_small_polygon_is_the_level0_point_fill_downsampled_nearest() -> None:
    # a level-0 fill of 320 x 256 px, downsampled 16x by keeping each block's top-left pixel
    polygon = np.array([[21.5, 30.0], [250.0, 17.0], [300.0, 200.0], [130.0, 96.0], [40.0, 230.0]])
    yy, xx = np.mgrid[0:256, 0:320].astype(float)
    expected = asap_inside(polygon, xx, yy)[::16, ::16]
    assert expected.sum() > 20
    mask = polygon_mask([polygon], (16, 20), (0, 0), 16.0, point_offset_px=0.0)
    np.testing.assert_array_equal(mask, expected)
    # a window whose top-left is mask pixel (3, 5) holds the same pixels
    window = polygon_mask([polygon], (10, 12), (3, 5), 16.0, point_offset_px=0.0)
    np.testing.assert_array_equal(window, expected[3:13, 5:17])


def test_a_square_covers_the_sample_points_strictly_inside_it() -> None:
    # level-0 square 64..128 x 32..96 at downsample 32: sample points x in {64, 96, 128},
    # y in {32, 64, 96}; only (96, 64) is strictly inside, so only mask pixel (2, 3) is set
    square = np.array([[64.0, 32.0], [128.0, 32.0], [128.0, 96.0], [64.0, 96.0]])
    mask = polygon_mask([square], (5, 6), (0, 0), 32.0, point_offset_px=0.0)
    assert np.argwhere(mask).tolist() == [[2, 3]]


def test_outline_without_a_sample_point_leaves_no_pixel() -> None:
    # no vertex pixels: a speck between the sample points is not in the mask, as in ASAP's
    speck = np.array([[100.0, 40.0], [102.0, 40.0], [101.0, 42.0]])
    assert not polygon_mask([speck], (4, 5), (0, 0), 32.0, point_offset_px=0.0).any()
    # nor does an outline without area, or no vertex at all
    assert not polygon_mask([np.array([[1.5, 1.5], [5.5, 1.5]]), np.zeros((0, 2))], (8, 8)).any()


def test_huge_coordinates_only_touch_the_window() -> None:
    # a square of 10^15 px would need ~10^26 mask pixels; the window asked for is 3 x 4
    square = np.array([[-1e15, -1e15], [1e15, -1e15], [1e15, 1e15], [-1e15, 1e15]])
    assert polygon_mask([square], (3, 4), (0, 0), 32.0, point_offset_px=0.0).all()
    assert polygon_mask([square], (3, 4), (0, 0), 32.0).all()


def test_holes_are_cut_by_the_same_rule_and_outlines_are_joined() -> None:
    # outline: centres 1..9; hole: centres strictly inside [3, 6], i.e. 4 and 5
    outline = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], dtype=np.float64) + 0.5
    hole = np.array([[3, 3], [6, 3], [6, 6], [3, 6]], dtype=np.float64) + 0.5
    mask = polygon_mask([outline], (11, 11), holes_xy=[hole])
    expected = np.zeros((11, 11), dtype=bool)
    expected[1:10, 1:10] = True
    expected[4:6, 4:6] = False
    np.testing.assert_array_equal(mask, expected)
    # two overlapping outlines, opposite windings: their overlap is filled (union), where the
    # former even-odd fill left it empty
    other = (outline[::-1] + 5.0)
    both = polygon_mask([outline, other], (16, 16))
    assert both[7, 7] and both[12, 12] and both[2, 2]
    assert both.sum() == 2 * 81 - 16


def test_a_self_intersecting_outline_is_filled_by_winding_number() -> None:
    # a pentagram: its centre has winding number 2, inside (even-odd would leave it out)
    angles = np.pi / 2 + np.arange(5) * 4 * np.pi / 5
    star = np.column_stack([20 + 15 * np.cos(angles), 20 + 15 * np.sin(angles)])
    mask = polygon_mask([star], (40, 40))
    assert mask[20, 20]
    yy, xx = np.mgrid[0:40, 0:40].astype(float) + 0.5
    np.testing.assert_array_equal(mask, asap_inside(star, xx, yy))


def test_downsample_must_be_positive() -> None:
    with pytest.raises(ValueError, match="downsample"):
        polygon_mask([np.zeros((3, 2))], (2, 2), downsample=0.0)
