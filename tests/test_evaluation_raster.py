"""The FROC mask is drawn as ASAP draws the CAMELYON16 masks: each level-0 point tested by
winding number inside the outline's bounding box, then nearest-neighbour downsampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from numpy.typing import NDArray

from pipeline.evaluation.raster import fill_polygon_rc, rasterise_polygons


def _asap_inside(vertices_xy: NDArray[np.float64], x: NDArray[np.float64],
                 y: NDArray[np.float64]) -> NDArray[np.bool_]:
    """ASAP's AnnotationToMask test, point by point: wn_PnPoly(P) != 0 and P strictly inside
    the outline's bounding box (isLeft in exact arithmetic, not truncated to int)."""
    closed = np.vstack([vertices_xy, vertices_xy[:1]])
    winding = np.zeros(x.shape, dtype=np.int64)
    for (xa, ya), (xb, yb) in itertools.pairwise(closed):
        is_left = (xb - xa) * (y - ya) - (x - xa) * (yb - ya)
        winding += (ya <= y) & (yb > y) & (is_left > 0)
        winding -= (ya > y) & (yb <= y) & (is_left < 0)
    low, high = vertices_xy.min(axis=0), vertices_xy.max(axis=0)
    in_box = (x > low[0]) & (x < high[0]) & (y > low[1]) & (y < high[1])
    return (winding != 0) & in_box


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
        expected = _asap_inside(np.stack([cols, rows], axis=1), cc.astype(float), rr.astype(float))
        np.testing.assert_array_equal(fill_polygon_rc(rows, cols, shape), expected)


def test_froc_mask_of_a_small_polygon_is_the_level0_point_fill_downsampled_nearest() -> None:
    # a level-0 fill of 320 x 256 px, downsampled 16x by keeping each block's top-left pixel
    polygon = np.array([[21.5, 30.0], [250.0, 17.0], [300.0, 200.0], [130.0, 96.0], [40.0, 230.0]])
    yy, xx = np.mgrid[0:256, 0:320].astype(float)
    level0 = _asap_inside(polygon, xx, yy)
    expected = level0[::16, ::16]
    assert expected.sum() > 20
    np.testing.assert_array_equal(rasterise_polygons([polygon], (16, 20), (0, 0), 16.0), expected)
    # a window whose top-left is mask pixel (3, 5) holds the same pixels
    window = rasterise_polygons([polygon], (10, 12), (3, 5), 16.0)
    np.testing.assert_array_equal(window, expected[3:13, 5:17])


def test_a_square_covers_the_sample_points_strictly_inside_it() -> None:
    # level-0 square 64..128 x 32..96 at downsample 32: sample points x in {64, 96, 128},
    # y in {32, 64, 96}; only (96, 64) is strictly inside, so only mask pixel (2, 3) is set
    square = np.array([[64.0, 32.0], [128.0, 32.0], [128.0, 96.0], [64.0, 96.0]])
    mask = rasterise_polygons([square], (5, 6), (0, 0), 32.0)
    assert np.argwhere(mask).tolist() == [[2, 3]]


def test_outline_without_a_sample_point_leaves_no_pixel() -> None:
    # no vertex pixels: a speck between the sample points is not in the mask, as in ASAP's
    speck = np.array([[100.0, 40.0], [102.0, 40.0], [101.0, 42.0]])
    assert not rasterise_polygons([speck], (4, 5), (0, 0), 32.0).any()


def test_huge_coordinates_only_touch_the_window() -> None:
    # a square of 10^15 px would need ~10^26 mask pixels; the window asked for is 3 x 4
    square = np.array([[-1e15, -1e15], [1e15, -1e15], [1e15, 1e15], [-1e15, 1e15]])
    assert rasterise_polygons([square], (3, 4), (0, 0), 32.0).all()
