"""Scanline polygon fill against skimage.draw.polygon, and level-0 to mask rasterising."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.raster import fill_polygon_rc, rasterise_polygons


@pytest.mark.parametrize("seed", range(5))
def test_scanline_fill_draws_the_pixels_skimage_draws(seed: int) -> None:
    from skimage.draw import polygon

    rng = np.random.default_rng(seed)
    shape = (70, 75)
    for _ in range(40):
        n = int(rng.integers(3, 30))
        rows, cols = rng.uniform(-10, 80, n), rng.uniform(-10, 85, n)  # self-intersecting too
        expected = np.zeros(shape, dtype=bool)
        rr, cc = polygon(rows, cols, shape)
        expected[rr, cc] = True
        np.testing.assert_array_equal(fill_polygon_rc(rows, cols, shape), expected)


def test_scanline_fill_includes_centres_on_the_outline() -> None:
    filled = fill_polygon_rc(np.array([2.0, 2.0, 6.0, 6.0]), np.array([1.0, 5.0, 5.0, 1.0]), (9, 9))
    expected = np.zeros((9, 9), dtype=bool)
    expected[2:7, 1:6] = True
    np.testing.assert_array_equal(filled, expected)


def test_rasterising_puts_level0_points_in_the_pixel_that_holds_them() -> None:
    # a 64 x 64 px square from level-0 (64, 32): mask pixels (row 1-2, col 2-3) at downsample 32
    square = np.array([[64.0, 32.0], [128.0, 32.0], [128.0, 96.0], [64.0, 96.0]])
    mask = rasterise_polygons([square], (5, 6), (0, 0), 32.0)
    expected = np.zeros((5, 6), dtype=bool)
    expected[1:3, 2:4] = True
    expected[3, 4] = expected[1, 4] = expected[3, 2] = True  # vertex pixels on the far edges
    np.testing.assert_array_equal(mask, expected)
    # the same square in a window whose top-left is mask pixel (1, 2)
    window = rasterise_polygons([square], (3, 3), (1, 2), 32.0)
    np.testing.assert_array_equal(window, expected[1:4, 2:5])


def test_outline_smaller_than_a_pixel_sets_the_pixel_holding_it() -> None:
    speck = np.array([[100.0, 40.0], [102.0, 40.0], [101.0, 42.0]])
    mask = rasterise_polygons([speck], (4, 5), (0, 0), 32.0)
    assert np.argwhere(mask).tolist() == [[1, 3]]
