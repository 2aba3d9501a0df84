"""The reference of the pipeline's one polygon rule: ASAP's AnnotationToMask test, point by point."""

from __future__ import annotations

import itertools

import numpy as np
from numpy.typing import NDArray


def winding_number(vertices_xy: NDArray[np.float64], x: NDArray[np.float64],
                   y: NDArray[np.float64]) -> NDArray[np.int64]:
    """ASAP's wn_PnPoly for every point (x, y): edges count on rows ya <= y < yb (upward) or
    yb <= y < ya (downward), a crossing when strictly right of the point (isLeft in exact
    arithmetic, not truncated to int)."""
    closed = np.vstack([vertices_xy, vertices_xy[:1]])
    winding = np.zeros(x.shape, dtype=np.int64)
    for (xa, ya), (xb, yb) in itertools.pairwise(closed):
        is_left = (xb - xa) * (y - ya) - (x - xa) * (yb - ya)
        winding += (ya <= y) & (yb > y) & (is_left > 0)
        winding -= (ya > y) & (yb <= y) & (is_left < 0)
    return winding


def asap_inside(vertices_xy: NDArray[np.float64], x: NDArray[np.float64],
                y: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Non-zero winding number and strictly inside the outline's bounding box."""
    low, high = vertices_xy.min(axis=0), vertices_xy.max(axis=0)
    in_box = (x > low[0]) & (x < high[0]) & (y > low[1]) & (y < high[1])
    inside: NDArray[np.bool_] = (winding_number(vertices_xy, x, y) != 0) & in_box
    return inside
