"""Annotations: geometry of level-0 outlines. The pipeline's one polygon rasteriser
(``polygon_mask``: annotation masks, deposit masks for cell counts, the FROC lesion mask,
synthetic deposits), masks of annotations, areas and Feret diameters.

The rasteriser's rule is ASAP's ``AnnotationToMask``, by which the CAMELYON16 evaluation
masks were drawn, so the FROC needs no rule of its own. A point (x, y) is inside a ring when
its winding number about the ring is non-zero and it lies strictly inside the ring's
bounding box. Edges count for rows min(y_a, y_b) <= y < max(y_a, y_b) and a crossing counts
when it lies strictly right of the point, so a point exactly on the outline is inside on a
left or upper edge and outside on a right or lower one, and outside on the bounding box's
border whatever the edge. The side of an edge is decided in exact arithmetic (ASAP
truncates it to an integer). A point is in a mask when it is inside an outline and inside
no hole, each ring tested alone.

Boundary pixels this rule changed (docs/evaluation.md, "One polygon rule"): the former
annotation fill (even-odd over all rings, pixel centres on left and upper edges inside)
now leaves out centres on the bounding box's left and top border and fills where outlines
overlap; the former deposit mask (``skimage.draw.polygon``: every centre on an edge or a
vertex inside) now leaves out centres on right and lower edges and on the bounding box's
border, and an outline with no area gives no pixel. ``skimage.draw.polygon`` is not used:
its closed rule is not the CAMELYON16 masks' rule, and it tests every pixel of the bounding
box, where this scanline fill costs O(vertices + crossings) plus the pixels it returns.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pipeline.slides.annotation_model import Annotation, AnnotationLabel

# Logged under the public module's name, as before the split: callers filter its warnings by it.
log = logging.getLogger("pipeline.slides.annotations")


def _paint_ring(raster: NDArray[np.bool_], rows: NDArray[np.float64], cols: NDArray[np.float64]) -> None:
    """Set the raster pixels (r, c) whose point (x=c, y=r) lies in the ring, by the module's rule.

    rows, cols: the ring in raster coordinates (floats). Only rows and columns inside both
    the raster and the ring's bounding box are visited, whatever the coordinates.
    """
    height, width = raster.shape
    if rows.size == 0:
        return
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
    # the smallest signed type that holds any winding number of this ring (one per edge at most)
    winding_type = np.min_scalar_type(-rows.size)
    direction = np.where(yb > ya, 1, -1).astype(winding_type)

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
    winding = np.zeros((r1 - r0, c1 - c0 + 1), dtype=winding_type)
    np.add.at(winding, (y - r0, column), direction)
    np.cumsum(winding, axis=1, dtype=winding_type, out=winding)
    raster[r0:r1, c0:c1] |= winding[:, :-1] != 0


def _paint_rings(
    raster: NDArray[np.bool_], rings_xy: Sequence[NDArray[np.float64]], origin_rc: tuple[float, float],
    downsample: float, point_offset_px: float,
) -> None:
    """Paint level-0 rings into a window whose pixel (r, c) holds the module-rule test of the
    level-0 point ((origin_c + c + offset) * downsample, (origin_r + r + offset) * downsample)."""
    for ring in rings_xy:
        vertices = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
        rows = vertices[:, 1] / downsample - (origin_rc[0] + point_offset_px)
        cols = vertices[:, 0] / downsample - (origin_rc[1] + point_offset_px)
        _paint_ring(raster, rows, cols)


def polygon_mask(
    outlines_xy: Sequence[NDArray[np.float64]],
    shape_rc: tuple[int, int],
    origin_rc: tuple[float, float] = (0, 0),
    downsample: float = 1.0,
    *,
    holes_xy: Sequence[NDArray[np.float64]] = (),
    point_offset_px: float = 0.5,
) -> NDArray[np.bool_]:
    """Pixels of a window of a mask grid whose point lies inside an outline and inside no hole.

    outlines_xy, holes_xy: rings, each (N, 2) level-0 (x, y) px, not closed; each is tested
    alone by the module's rule (ASAP's). shape_rc: window (rows, cols). origin_rc: the
    window's top-left in mask px. downsample: level-0 px per mask px. point_offset_px: where a
    pixel's point lies in it, in mask px from its top-left corner: 0.5 its centre, 0.0 its
    top-left corner. Pixel (r, c) tests the level-0 point
    ((origin_c + c + point_offset_px) * downsample, (origin_r + r + point_offset_px) * downsample).
    Returns a bool array of shape_rc. Raises ValueError unless downsample > 0.
    """
    if not downsample > 0:
        raise ValueError(f"downsample={downsample!r}; expected > 0")
    inside = np.zeros(shape_rc, dtype=bool)
    _paint_rings(inside, outlines_xy, origin_rc, downsample, point_offset_px)
    if len(holes_xy) > 0:
        hole = np.zeros(shape_rc, dtype=bool)
        _paint_rings(hole, holes_xy, origin_rc, downsample, point_offset_px)
        inside &= ~hole
    return inside


def rasterize_annotations(
    annotations: Sequence[Annotation],
    level0_size_wh: tuple[int, int],
    downsample: float,
    labels: Sequence[AnnotationLabel] = ("tumor",),
) -> NDArray[np.bool_]:
    """Boolean mask of the annotations whose label is in ``labels``, holes left out.

    level0_size_wh: slide (width, height) in level-0 px. downsample: level-0 px per mask px.
    Returns (ceil(height / downsample), ceil(width / downsample)) bool; a pixel is set
    when its centre lies inside a polygon (``polygon_mask``). Raises ValueError unless
    downsample > 0.
    """
    if not downsample > 0:
        raise ValueError(f"downsample={downsample!r}; expected > 0")
    shape = (
        math.ceil(level0_size_wh[1] / downsample),
        math.ceil(level0_size_wh[0] / downsample),
    )
    mask = np.zeros(shape, dtype=bool)
    for annotation in annotations:
        if annotation.label not in labels:
            continue
        low = np.floor(annotation.vertices_xy.min(axis=0) / downsample).astype(int) - 1
        high = np.ceil(annotation.vertices_xy.max(axis=0) / downsample).astype(int) + 1
        c0, r0 = max(int(low[0]), 0), max(int(low[1]), 0)
        c1, r1 = min(int(high[0]), shape[1]), min(int(high[1]), shape[0])
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] |= polygon_mask(
                [annotation.vertices_xy], (r1 - r0, c1 - c0), (r0, c0), downsample,
                holes_xy=annotation.holes_xy,
            )
    return mask


def _hull_diameter(hull: NDArray[np.float64]) -> float:
    """Largest vertex distance of a convex polygon (counter-clockwise, no repeated vertex)
    by rotating calipers: for each edge, walk the antipodal vertex forward while it moves
    away from the edge. O(n): the antipodal index goes round the hull about once."""
    n = len(hull)
    x, y = hull[:, 0].tolist(), hull[:, 1].tolist()
    best = 0.0
    k = 1
    for i in range(n):
        j = (i + 1) % n
        ex, ey = x[j] - x[i], y[j] - y[i]
        for _ in range(n):  # bound: never more than once round the hull per edge
            k1 = (k + 1) % n
            if ex * (y[k1] - y[k]) - ey * (x[k1] - x[k]) <= 0:
                break
            k = k1
        best = max(best, (x[i] - x[k]) ** 2 + (y[i] - y[k]) ** 2,
                   (x[j] - x[k]) ** 2 + (y[j] - y[k]) ** 2)
    return math.sqrt(best)


def max_feret_diameter_px(vertices_xy: NDArray[np.float64]) -> float:
    """Largest distance between two points of a polygon (max Feret diameter), in px.

    vertices_xy: (N, 2) points in any px frame. Rotating calipers on the convex hull:
    O(N log N) for the hull, O(hull size) for the diameter.
    """
    from scipy.spatial import ConvexHull, QhullError

    points = np.unique(np.asarray(vertices_xy, dtype=np.float64).reshape(-1, 2), axis=0)
    if len(points) < 2:
        return 0.0
    if len(points) >= 3:
        try:
            return _hull_diameter(points[ConvexHull(points).vertices])  # counter-clockwise
        except QhullError:
            pass  # collinear points have no hull
    # np.unique sorts rows lexicographically: on a line, the first and last are the extremes
    return float(np.hypot(*(points[-1] - points[0])))


def warn_outlines_outside(
    path: Path, outlines_xy: Sequence[NDArray[np.float64]], size_wh_px: tuple[int, int]
) -> int:
    """Log a warning naming ``path`` when outlines lie entirely outside a slide of
    ``size_wh_px`` (level-0 width, height): a file of another slide, or coordinates of
    another level. Returns how many do."""
    width, height = size_wh_px
    outside = sum(
        1
        for v in outlines_xy
        if v[:, 0].max() < 0 or v[:, 1].max() < 0 or v[:, 0].min() >= width or v[:, 1].min() >= height
    )
    if outside:
        log.warning(
            "%s: %d of %d tumor outline(s) lie entirely outside the slide (%d x %d level-0 px); "
            "check that the file belongs to this slide and is in level-0 px",
            path, outside, len(outlines_xy), width, height,
        )
    return outside


def polygon_area_px2(vertices_xy: NDArray[np.float64], holes_xy: Sequence[NDArray[np.float64]] = ()) -> float:
    """Area of a simple polygon (shoelace), less its holes, in px² of the vertices' frame."""

    def ring_area(ring: NDArray[np.float64]) -> float:
        x, y = ring[:, 0], ring[:, 1]
        return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))

    area = ring_area(np.asarray(vertices_xy, dtype=np.float64))
    return area - sum(ring_area(np.asarray(h, dtype=np.float64)) for h in holes_xy)
