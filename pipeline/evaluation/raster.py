"""Evaluation: reads level-0 polygons, produces boolean masks at a lower resolution, drawn
as the CAMELYON16 evaluation masks were (ASAP's ``AnnotationToMask``, then a pyramid built
by nearest-neighbour downsampling).

ASAP sets level-0 pixel (x, y) when the point (x, y) has a non-zero winding number about
the outline and lies strictly inside the outline's bounding box; edges count for rows
min(y_a, y_b) <= y < max(y_a, y_b), and a crossing counts when it lies strictly right of
the point. Its pyramid keeps the top-left pixel of every 2 x 2 block, so pixel (r, c) of
a mask with downsample d is level-0 pixel (r * d, c * d): the point (c * d, r * d). A
scanline fill gives exactly those pixels in O(vertices + crossings) and never allocates
more than the window asked for, whatever the coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray


def _paint_polygon(raster: NDArray[np.bool_], rows: NDArray[np.float64],
                   cols: NDArray[np.float64]) -> None:
    """Set the raster pixels (r, c) whose point (x=c, y=r) lies in the polygon, by ASAP's rule.

    rows, cols: the outline in raster coordinates (floats). Only rows and columns inside
    both the raster and the outline's bounding box are visited.
    """
    height, width = raster.shape
    # strictly inside the bounding box, as ASAP tests it
    r0, r1 = max(0, math.floor(rows.min()) + 1), min(height, math.ceil(rows.max()))
    c0, c1 = max(0, math.floor(cols.min()) + 1), min(width, math.ceil(cols.max()))
    if r0 >= r1 or c0 >= c1:
        return
    ya, yb = rows, np.roll(rows, -1)
    xa, xb = cols, np.roll(cols, -1)
    # rows y with min(ya, yb) <= y < max(ya, yb), limited to the box before anything is allocated
    first = np.clip(np.ceil(np.minimum(ya, yb)), r0, r1).astype(np.int64)
    stop = np.clip(np.ceil(np.maximum(ya, yb)), r0, r1).astype(np.int64)
    count = stop - first
    edge = np.repeat(np.arange(rows.size), count)
    y = first[edge] + np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    xa, ya, xb, yb = xa[edge], ya[edge], xb[edge], yb[edge]
    direction = np.where(yb > ya, 1, -1).astype(np.int32)

    def strictly_left(c: NDArray[np.float64]) -> NDArray[np.bool_]:
        # ASAP's isLeft test of the point (c, y) against the directed edge
        side: NDArray[np.bool_] = ((xb - xa) * (y - ya) - (c - xa) * (yb - ya)) * direction > 0
        return side

    # the first column not strictly left of the crossing: ceil of the crossing's x, settled
    # by the exact side test where rounding put the crossing on the wrong side of an integer
    column_x = np.ceil(xa + (y - ya) / (yb - ya) * (xb - xa))
    column_x = np.where(strictly_left(column_x - 1), column_x, column_x - 1)
    column_x = np.where(strictly_left(column_x), column_x + 1, column_x)
    # the winding number of column c is minus the sum of the directions of the crossings at
    # or left of it (each row sums to 0)
    column = np.clip(column_x, c0, c1).astype(np.int64) - c0
    winding = np.zeros((r1 - r0, c1 - c0 + 1), dtype=np.int32)
    np.add.at(winding, (y - r0, column), direction)
    raster[r0:r1, c0:c1] |= np.cumsum(winding, axis=1)[:, :-1] != 0


def fill_polygon_rc(
    rows: NDArray[np.float64], cols: NDArray[np.float64], shape: tuple[int, int]
) -> NDArray[np.bool_]:
    """Pixels (r, c) of an array of this shape whose point (x=c, y=r) lies in a polygon.

    The rule of ASAP's ``AnnotationToMask`` (module docstring): non-zero winding number,
    strictly inside the bounding box, points on the right and bottom edges outside. Returns
    a bool array of ``shape``.
    """
    raster = np.zeros(shape, dtype=bool)
    _paint_polygon(raster, np.asarray(rows, np.float64), np.asarray(cols, np.float64))
    return raster


def rasterise_polygons(
    polygons: Sequence[NDArray[np.float64]], shape: tuple[int, int],
    origin_rc: tuple[int, int], downsample: float,
) -> NDArray[np.bool_]:
    """Level-0 polygons filled into a window of a mask with downsample level-0 px per pixel.

    polygons: (N, 2) level-0 (x, y) arrays. shape: window (rows, cols); origin_rc: the
    window's top-left in mask px. Mask pixel (r, c) is set when the level-0 point
    (c * downsample, r * downsample) lies in a polygon by ASAP's rule: the pixel the
    CAMELYON16 masks keep at that level. An outline that holds no such point leaves no
    pixel, as in those masks. Returns a bool array of the window's shape.
    """
    raster = np.zeros(shape, dtype=bool)
    for vertices in polygons:
        rows = vertices[:, 1] / downsample - origin_rc[0]
        cols = vertices[:, 0] / downsample - origin_rc[1]
        _paint_polygon(raster, rows, cols)
    return raster
