"""Annotations: reads ASAP XML, QuPath GeoJSON and CAMELYON16 JSON outlines, produces
``Annotation`` polygons in level-0 px, rasterised masks, and writes ASAP XML and GeoJSON.

Validation policy (every reader):
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
import importlib
import json
import logging
import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast
from xml.sax.saxutils import quoteattr

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import AnnotationError, OutputError
from pipeline.outputs import atomic_write_text

log = logging.getLogger(__name__)

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

_ASAP_POLYGON_TYPES = frozenset({"polygon", "spline", "rectangle"})


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


def _make_annotations(
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


def _finish(path: Path, n_raw: int, annotations: list[Annotation]) -> list[Annotation]:
    if n_raw > 0 and not annotations:
        raise AnnotationError(
            f"{path}: none of its {n_raw} polygon(s) is usable (each has fewer than 3 "
            "distinct points or no area); fix the outlines or remove the file"
        )
    return annotations


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")


# --- readers -----------------------------------------------------------------------------


def _parse_xml(path: Path) -> ElementTree.Element:
    """Parse with defusedxml when installed (no entity expansion), else the standard library."""
    try:
        parser: Any = importlib.import_module("defusedxml.ElementTree")
    except ImportError:
        parser = ElementTree
    try:
        return cast(ElementTree.Element, parser.parse(str(path)).getroot())
    except (ElementTree.ParseError, ValueError, LookupError, RecursionError) as exc:
        # defusedxml errors are ValueErrors; an unknown encoding="..." is a LookupError
        raise AnnotationError(
            f"{path}: not a valid ASAP XML file ({_short(exc)}); export it again from ASAP"
        ) from exc


def _asap_coordinates(path: Path, name: str, element: ElementTree.Element) -> NDArray[np.float64]:
    rows: list[tuple[float, float, float]] = []
    for index, coordinate in enumerate(element.iter("Coordinate")):
        try:
            order = float(coordinate.get("Order", index))
            rows.append((order, float(coordinate.attrib["X"]), float(coordinate.attrib["Y"])))
        except (KeyError, ValueError) as exc:
            raise AnnotationError(
                f"{path}: annotation {name!r} has a coordinate without numeric X and Y ({exc})"
            ) from exc
    rows.sort(key=lambda row: row[0])
    return np.array([(x, y) for _, x, y in rows], dtype=np.float64).reshape(-1, 2)


def read_asap_xml(path: Path) -> list[Annotation]:
    """Polygons of an ASAP XML file (CAMELYON16/17), in level-0 px.

    Labels come from PartOfGroup via GROUP_LABELS. Dot and point-set annotations are
    skipped with a warning. Raises AnnotationError for a missing or malformed file.
    """
    path = Path(path)
    _check_file(path)
    root = _parse_xml(path)
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(f"{path}: root element is <{root.tag}>, expected <ASAP_Annotations>")
    annotations: list[Annotation] = []
    n_raw = 0
    for index, element in enumerate(root.iter("Annotation")):
        name = element.get("Name", f"Annotation {index}")
        kind = element.get("Type", "Polygon")
        if kind.lower() not in _ASAP_POLYGON_TYPES:
            log.warning("%s: annotation %r has type %r, not a polygon; skipped", path, name, kind)
            continue
        n_raw += 1
        group = element.get("PartOfGroup", "None")
        vertices = _asap_coordinates(path, name, element)
        annotations.extend(_make_annotations(path, name, group, vertices))
    return _finish(path, n_raw, annotations)


def _load_json(path: Path) -> Any:
    _check_file(path)
    try:
        with path.open("r", encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: not a valid JSON file ({_short(exc)})") from exc
    except RecursionError:
        raise AnnotationError(
            f"{path}: not a valid annotation file (JSON nested too deeply to read)"
        ) from None
    except ValueError as exc:  # e.g. an integer literal of thousands of digits
        raise AnnotationError(f"{path}: not a valid JSON file ({_short(exc)})") from exc


def _short(exc: BaseException, limit: int = 160) -> str:
    """An exception's message on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_ring(path: Path, name: str, raw: Any) -> NDArray[np.float64]:
    """(N, 2) float64 from a JSON list of [x, y] (or [x, y, z]) numbers."""
    if not isinstance(raw, list):
        raise AnnotationError(
            f"{path}: {name!r} coordinates are {type(raw).__name__}; expected a list of [x, y]"
        )
    for point in raw:
        if not (isinstance(point, list) and len(point) >= 2 and all(map(_is_number, point[:2]))):
            shown = _short(ValueError(repr(point)), 60)
            raise AnnotationError(
                f"{path}: {name!r} has a point {shown}; expected [x, y] numbers in level-0 px"
            )
    try:
        ring = np.array([point[:2] for point in raw], dtype=np.float64).reshape(-1, 2)
    except OverflowError:
        raise AnnotationError(
            f"{path}: {name!r} has a coordinate too large for a number; coordinates must be "
            f"level-0 px within ±{MAX_COORDINATE_PX:.0e}"
        ) from None
    check_coordinates(path, name, ring)
    return ring


def _geojson_features(path: Path, data: Any) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
        if not isinstance(features, list):
            raise AnnotationError(
                f"{path}: 'features' is {type(features).__name__}; expected a list of Features"
            )
        return features
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    raise AnnotationError(
        f"{path}: not GeoJSON; expected a FeatureCollection, a Feature or a list of Features"
    )


def _feature_class(properties: Mapping[str, Any]) -> str:
    classification = properties.get("classification")
    if isinstance(classification, dict) and isinstance(classification.get("name"), str):
        return str(classification["name"])
    return ""


def read_geojson(path: Path) -> list[Annotation]:
    """Polygons of a GeoJSON file (QuPath export), in level-0 px.

    Accepts a FeatureCollection, a bare list of Features or a single Feature; Polygon and
    MultiPolygon geometries (one Annotation per part), holes kept. The class name
    (``properties.classification.name``) is the group; "Tumor" reads as tumor.
    Raises AnnotationError for a missing or malformed file.
    """
    path = Path(path)
    return _geojson_annotations(path, _load_json(path))


def _geojson_annotations(path: Path, data: Any) -> list[Annotation]:
    annotations: list[Annotation] = []
    n_raw = 0
    for index, feature in enumerate(_geojson_features(path, data)):
        if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
            raise AnnotationError(f"{path}: feature {index} has no geometry object")
        properties = feature.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        name = str(properties.get("name", f"Annotation {index}"))
        group = _feature_class(properties)
        geometry = feature["geometry"]
        kind = geometry.get("type")
        coordinates = geometry.get("coordinates")
        if kind in ("Polygon", "MultiPolygon") and not isinstance(coordinates, list):
            raise AnnotationError(f"{path}: feature {name!r} has no list of coordinates")
        if kind == "Polygon":
            polygons = [coordinates]
        elif kind == "MultiPolygon":
            polygons = coordinates
        else:
            log.warning("%s: feature %r is a %s, not a polygon; skipped", path, name, kind)
            continue
        for part, rings in enumerate(polygons):
            n_raw += 1
            part_name = name if len(polygons) == 1 else f"{name} part {part + 1}"
            if not isinstance(rings, list) or not rings:
                log.warning("%s: feature %r has no coordinates; dropped", path, part_name)
                continue
            exterior = _as_ring(path, part_name, rings[0])
            holes = [_as_ring(path, part_name, ring) for ring in rings[1:]]
            annotations.extend(_make_annotations(path, part_name, group, exterior, holes))
    return _finish(path, n_raw, annotations)


def read_camelyon16_json(path: Path) -> list[Annotation]:
    """Outlines in the NCRF CAMELYON16 JSON format, in level-0 px.

    Format: ``{"positive": [{"name", "vertices": [[x, y], ...]}], "negative": [...]}``;
    positive outlines are tumor (group "positive"), negative ones exclude (group
    "negative"). Raises AnnotationError for a missing or malformed file.
    """
    path = Path(path)
    return _camelyon16_annotations(path, _load_json(path))


def _is_camelyon16(data: Any) -> bool:
    return isinstance(data, dict) and bool({"positive", "negative"} & set(data))


def _camelyon16_annotations(path: Path, data: Any) -> list[Annotation]:
    if not _is_camelyon16(data):
        raise AnnotationError(f"{path}: expected a JSON object with 'positive' and 'negative' outline lists")
    annotations: list[Annotation] = []
    n_raw = 0
    for group, label in (("positive", "tumor"), ("negative", "exclude")):
        items = data.get(group, [])
        if not isinstance(items, list):
            raise AnnotationError(
                f"{path}: {group!r} is {type(items).__name__}; expected a list of outlines "
                '({"name", "vertices": [[x, y], ...]})'
            )
        for index, item in enumerate(items):
            if not isinstance(item, dict) or "vertices" not in item:
                raise AnnotationError(f"{path}: {group}[{index}] has no 'vertices' list")
            n_raw += 1
            name = str(item.get("name", f"{group} {index}"))
            vertices = _as_ring(path, name, item["vertices"])
            annotations.extend(
                _make_annotations(path, name, group, vertices, label=cast(AnnotationLabel, label))
            )
    return _finish(path, n_raw, annotations)


def read_annotations(path: Path) -> list[Annotation]:
    """Read an annotation file by its suffix: .xml (ASAP), .geojson, or .json (either JSON).

    Raises AnnotationError for a missing, malformed or unsupported file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return read_asap_xml(path)
    if suffix == ".geojson":
        return read_geojson(path)
    if suffix == ".json":
        data = _load_json(path)
        if _is_camelyon16(data):
            return _camelyon16_annotations(path, data)
        return _geojson_annotations(path, data)
    raise AnnotationError(
        f"{path}: unsupported annotation file type {suffix!r}; use .xml (ASAP), "
        ".geojson (QuPath) or .json (CAMELYON16 outlines)"
    )


# --- writers -----------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` atomically (``pipeline.outputs``); raises OutputError naming the file
    if the folder cannot be written."""
    try:
        atomic_write_text(Path(path), text)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write here ({exc})") from exc


def _group_to_write(annotation: Annotation) -> str:
    if annotation.group and label_for_group(annotation.group) == annotation.label:
        return annotation.group
    return CANONICAL_GROUPS[annotation.label]


def _hex_color(label: AnnotationLabel) -> str:
    return "#{:02X}{:02X}{:02X}".format(*LABEL_COLORS_RGB[label])


def _format_float(value: float) -> str:
    return repr(float(value))  # shortest text that reads back to the same float


def write_asap_xml(annotations: Sequence[Annotation], path: Path) -> None:
    """Write annotations as ASAP XML (atomically). Coordinates read back exactly.

    ASAP XML has no holes: each hole is written as its own polygon in group "_2"
    (exclusion), with a warning. Raises OutputError if the file cannot be written.
    """
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    groups: dict[str, AnnotationLabel] = {}
    for annotation in annotations:
        rings = [(annotation.name, _group_to_write(annotation), annotation.vertices_xy)]
        if annotation.holes_xy:
            log.warning("%s: ASAP XML has no holes; %r's holes written as group _2", path, annotation.name)
        rings += [(f"{annotation.name} hole {i + 1}", "_2", h) for i, h in enumerate(annotation.holes_xy)]
        for name, group, vertices in rings:
            label = label_for_group(group)
            groups.setdefault(group, label)
            lines.append(
                f'\t\t<Annotation Name={quoteattr(name)} Type="Polygon" '
                f'PartOfGroup={quoteattr(group)} Color="{_hex_color(label)}">'
            )
            lines.append("\t\t\t<Coordinates>")
            lines.extend(
                f'\t\t\t\t<Coordinate Order="{order}" X="{_format_float(x)}" Y="{_format_float(y)}" />'
                for order, (x, y) in enumerate(vertices)
            )
            lines += ["\t\t\t</Coordinates>", "\t\t</Annotation>"]
    lines += ["\t</Annotations>", "\t<AnnotationGroups>"]
    for group, label in groups.items():
        lines.append(
            f'\t\t<Group Name={quoteattr(group)} PartOfGroup="None" '
            f'Color="{_hex_color(label)}"><Attributes /></Group>'
        )
    lines += ["\t</AnnotationGroups>", "</ASAP_Annotations>", ""]
    write_text_atomic(path, "\n".join(lines))


def _closed(ring: NDArray[np.float64]) -> list[list[float]]:
    points = [[float(x), float(y)] for x, y in ring]
    return [*points, points[0]]


def annotation_to_feature(
    annotation: Annotation, measurements: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """A QuPath-compatible GeoJSON Feature (Polygon, closed rings) of one annotation."""
    group = _group_to_write(annotation)
    properties: dict[str, Any] = {
        "objectType": "annotation",
        "name": annotation.name,
        "classification": {"name": group, "color": list(LABEL_COLORS_RGB[annotation.label])},
    }
    if measurements is not None:
        properties["measurements"] = {key: float(value) for key, value in measurements.items()}
    rings = [_closed(annotation.vertices_xy), *(_closed(h) for h in annotation.holes_xy)]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": rings},
        "properties": properties,
    }


def write_geojson(
    annotations: Sequence[Annotation],
    path: Path,
    measurements: Sequence[Mapping[str, float]] | None = None,
) -> None:
    """Write annotations as a QuPath-compatible GeoJSON FeatureCollection (atomically).

    measurements: one dict per annotation (same order), written as
    ``properties.measurements``. Coordinates read back exactly. Raises ValueError when
    measurements and annotations differ in length, OutputError if the file cannot be written.
    """
    if measurements is not None and len(measurements) != len(annotations):
        raise ValueError(f"{len(measurements)} measurement dicts for {len(annotations)} annotations")
    features = [
        annotation_to_feature(a, None if measurements is None else measurements[i])
        for i, a in enumerate(annotations)
    ]
    collection = {"type": "FeatureCollection", "features": features}
    write_text_atomic(path, json.dumps(collection, indent=1) + "\n")


# --- masks and geometry ------------------------------------------------------------------


def polygon_mask(
    rings_xy: Sequence[NDArray[np.float64]],
    shape_rc: tuple[int, int],
    origin_rc: tuple[int, int] = (0, 0),
    downsample: float = 1.0,
) -> NDArray[np.bool_]:
    """Even-odd fill of polygon rings (exterior and holes) over a window of a mask grid.

    rings_xy: rings in level-0 px. shape_rc: window (rows, cols). origin_rc: the window's
    top-left in mask px. Window pixel (r, c) is set when its centre, at level-0
    ((origin_c + c + 0.5) * downsample, (origin_r + r + 0.5) * downsample), is inside.
    Scanline parity, vectorised over edge/row crossings; one byte of memory per pixel.
    """
    height, width = shape_rc
    counts = np.zeros((height, width + 1), dtype=np.uint8)  # parity survives uint8 wrap-around
    for ring in rings_xy:
        u = ring[:, 0] / downsample - origin_rc[1]
        v = ring[:, 1] / downsample - origin_rc[0]
        u2, v2 = np.roll(u, -1), np.roll(v, -1)
        first = np.clip(np.ceil(np.minimum(v, v2) - 0.5), 0, height).astype(np.intp)
        stop = np.clip(np.ceil(np.maximum(v, v2) - 0.5), 0, height).astype(np.intp)
        n_rows = stop - first  # rows whose centre lies in [min v, max v)
        if not n_rows.any():
            continue
        edge = np.repeat(np.arange(len(u)), n_rows)
        row = first[edge] + np.arange(len(edge)) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
        t = (row + 0.5 - v[edge]) / (v2[edge] - v[edge])
        col = np.clip(np.ceil(u[edge] + t * (u2[edge] - u[edge]) - 0.5), 0, width)
        np.add.at(counts, (row, col.astype(np.intp)), 1)
    inside = np.cumsum(counts[:, :width], axis=1, dtype=np.uint8)
    np.bitwise_and(inside, 1, out=inside)
    return inside.view(np.bool_)


def rasterize_annotations(
    annotations: Sequence[Annotation],
    level0_size_wh: tuple[int, int],
    downsample: float,
    labels: Sequence[AnnotationLabel] = ("tumor",),
) -> NDArray[np.bool_]:
    """Boolean mask of the annotations whose label is in ``labels``, holes left out.

    level0_size_wh: slide (width, height) in level-0 px. downsample: level-0 px per mask px.
    Returns (ceil(height / downsample), ceil(width / downsample)) bool; a pixel is set
    when its centre lies inside a polygon.
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
            rings = [annotation.vertices_xy, *annotation.holes_xy]
            mask[r0:r1, c0:c1] |= polygon_mask(rings, (r1 - r0, c1 - c0), (r0, c0), downsample)
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
