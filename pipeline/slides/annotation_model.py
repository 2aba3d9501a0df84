"""Annotations: the ``Annotation`` type, its labels, and the checks every reader applies.

Validation policy (every reader, ``pipeline.slides.annotation_formats``):
- a malformed file raises ``AnnotationError`` naming the file;
- a polygon with fewer than 3 distinct points is dropped with a warning naming the file
  and the annotation;
- a self-intersecting (invalid) polygon is repaired with ``shapely.make_valid``; its
  polygonal parts of at least ``MIN_REPAIRED_PART_FRACTION`` of the repaired area are kept
  (one ``Annotation`` per part), with a warning;
- a file with no polygons at all gives an empty list (a negative slide), but a file whose
  polygons were *all* dropped raises ``AnnotationError``: silently reading a broken
  outline file as "no tumor" would mislabel a positive slide;
- every coordinate must be a number (not a boolean or a string), finite, and within
  ``MAX_COORDINATE_PX`` of the origin; anything else raises ``AnnotationError``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import AnnotationError

# Logged under the public module's name, as before the split: callers filter reader warnings by it.
log = logging.getLogger("pipeline.slides.annotations")

AnnotationLabel = Literal["tumor", "exclude", "other"]

# Group / class name (lower-cased) -> label. CAMELYON16 XML: groups "_0" and "_1" are tumor
# outlines, "_2" marks regions excluded from evaluation (CAMELYON16 data description).
# CAMELYON17 XML uses "metastases"; QuPath exports use classes such as "Tumor" and
# "Ignore*". Any other group reads as "other".
GROUP_LABELS: Mapping[str, AnnotationLabel] = {
    "_0": "tumor",
    "_1": "tumor",
    "_2": "exclude",
    "tumor": "tumor",
    "tumour": "tumor",
    "metastases": "tumor",
    "metastasis": "tumor",
    "positive": "tumor",
    "exclusion": "exclude",
    "exclude": "exclude",
    "excluded": "exclude",
    "negative": "exclude",
    "ignore*": "exclude",
    "ignore": "exclude",
}
# Group written for an annotation whose own group does not map to its label.
CANONICAL_GROUPS: Mapping[AnnotationLabel, str] = {
    "tumor": "Tumor",
    "exclude": "Exclusion",
    "other": "Other",
}
# RGB colours written to GeoJSON classifications and ASAP groups.
LABEL_COLORS_RGB: Mapping[AnnotationLabel, tuple[int, int, int]] = {
    "tumor": (200, 0, 0),
    "exclude": (80, 80, 80),
    "other": (0, 120, 200),
}
# After make_valid, polygon parts smaller than this fraction of the repaired area are slivers.
MIN_REPAIRED_PART_FRACTION = 0.01
# Largest |x| or |y| accepted, in level-0 px: 10^7 px is 2.4 m at 0.243 µm/px, over ten times
# the longest whole-slide image (about 2 x 10^5 px). A larger value is a unit error (µm, nm)
# or a damaged file; accepting it would make masks and samplers try to cover that range.
MAX_COORDINATE_PX = 1e7


@dataclasses.dataclass(frozen=True, eq=False)
class Annotation:
    """One annotated region.

    Compared by identity (arrays have no single truth value); compare fields to test equality.
    vertices_xy: (N, 2) float64 exterior ring in level-0 px, (x, y), not closed (N >= 3).
    holes_xy: interior rings, each (M, 2) float64 in level-0 px.
    label: "tumor", "exclude" or "other" (from ``group`` via GROUP_LABELS when read).
    """

    name: str
    group: str
    label: AnnotationLabel
    vertices_xy: NDArray[np.float64]
    holes_xy: tuple[NDArray[np.float64], ...] = ()

    def __post_init__(self) -> None:
        vertices = np.asarray(self.vertices_xy, dtype=np.float64)
        if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) < 3:
            raise ValueError(f"vertices_xy has shape {vertices.shape}; expected (N >= 3, 2)")
        object.__setattr__(self, "vertices_xy", vertices)
        holes = tuple(np.asarray(hole, dtype=np.float64).reshape(-1, 2) for hole in self.holes_xy)
        object.__setattr__(self, "holes_xy", holes)
        if self.label not in CANONICAL_GROUPS:
            raise ValueError(f"label={self.label!r}; expected tumor, exclude or other")


def label_for_group(group: str) -> AnnotationLabel:
    """The label of a group or class name (case-insensitive); "other" when unknown."""
    return GROUP_LABELS.get(group.strip().lower(), "other")


# --- validation --------------------------------------------------------------------------


def _clean_ring(points: NDArray[np.float64]) -> NDArray[np.float64]:
    """Drop consecutive duplicate vertices and the closing vertex."""
    if len(points) == 0:
        return points
    keep = np.ones(len(points), dtype=bool)
    keep[1:] = np.any(np.diff(points, axis=0) != 0, axis=1)
    ring = points[keep]
    if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    return ring


def _polygon_parts(geometry: Any) -> list[Any]:
    """The Polygons inside a (possibly nested multi- or collection) geometry."""
    import shapely

    if isinstance(geometry, shapely.Polygon):
        return [geometry]
    if isinstance(geometry, shapely.MultiPolygon | shapely.GeometryCollection):
        return [part for g in geometry.geoms for part in _polygon_parts(g)]
    return []


def _repair(
    path: Path, name: str, shell: NDArray[np.float64], holes: list[NDArray[np.float64]]
) -> list[tuple[NDArray[np.float64], list[NDArray[np.float64]]]]:
    """Valid polygon parts (exterior, holes) of a polygon, repairing it if needed."""
    import shapely

    polygon = shapely.Polygon(shell, holes)
    if polygon.is_valid:
        return [(shell, holes)]
    # "structure" keeps only polygonal output and is ~20x faster than "linework" on
    # CAMELYON16 outlines with thousands of vertices.
    repaired = shapely.make_valid(polygon, method="structure", keep_collapsed=False)
    parts = [g for g in _polygon_parts(repaired) if g.area > 0]
    if not parts:
        log.warning("%s: annotation %r has no area after repair; dropped", path, name)
        return []
    total = sum(g.area for g in parts)
    parts = [g for g in parts if g.area >= MIN_REPAIRED_PART_FRACTION * total]
    log.warning(
        "%s: annotation %r is self-intersecting; repaired into %d polygon(s)",
        path,
        name,
        len(parts),
    )
    return [
        (
            np.asarray(g.exterior.coords, dtype=np.float64)[:-1],
            [np.asarray(r.coords, dtype=np.float64)[:-1] for r in g.interiors],
        )
        for g in sorted(parts, key=lambda g: -g.area)
    ]


def check_coordinates(path: Path, name: str, points: NDArray[np.float64]) -> None:
    """Raise AnnotationError naming the file and annotation unless every coordinate is finite
    and within ``MAX_COORDINATE_PX`` of the origin (level-0 px)."""
    if points.size == 0:
        return
    bad = ~np.isfinite(points) | (np.abs(points) > MAX_COORDINATE_PX)
    if bad.any():
        x, y = points[int(np.argmax(bad.any(axis=-1)))]
        raise AnnotationError(
            f"{path}: annotation {name!r} has a point at ({x:.6g}, {y:.6g}); coordinates must be "
            f"finite level-0 px within ±{MAX_COORDINATE_PX:.0e} - check the file's units or "
            "remove that outline"
        )


def make_annotations(
    path: Path,
    name: str,
    group: str,
    exterior: NDArray[np.float64],
    holes: Sequence[NDArray[np.float64]] = (),
    label: AnnotationLabel | None = None,
) -> list[Annotation]:
    """Validated annotations from one raw polygon: [] (dropped), one, or several repaired parts."""
    check_coordinates(path, name, exterior)
    for hole in holes:
        check_coordinates(path, name, hole)
    shell = _clean_ring(exterior)
    n_distinct = len(np.unique(shell, axis=0))
    if n_distinct < 3:
        log.warning(
            "%s: annotation %r has %d distinct point(s), fewer than 3; dropped",
            path,
            name,
            n_distinct,
        )
        return []
    clean_holes = [h for h in (_clean_ring(h) for h in holes) if len(np.unique(h, axis=0)) >= 3]
    parts = _repair(path, name, shell, clean_holes)
    final_label = label if label is not None else label_for_group(group)
    return [
        Annotation(
            name=name if len(parts) == 1 else f"{name} part {index + 1}",
            group=group,
            label=final_label,
            vertices_xy=part_shell,
            holes_xy=tuple(part_holes),
        )
        for index, (part_shell, part_holes) in enumerate(parts)
    ]


def check_some_kept(path: Path, n_raw: int, annotations: list[Annotation]) -> list[Annotation]:
    """``annotations``, unless the file had polygons (n_raw > 0) and none was kept: then raise
    AnnotationError (a broken outline file must not read as a negative slide)."""
    if n_raw > 0 and not annotations:
        raise AnnotationError(
            f"{path}: none of its {n_raw} polygon(s) is usable (each has fewer than 3 "
            "distinct points or no area); fix the outlines or remove the file"
        )
    return annotations
