"""Annotations: reads ASAP XML, QuPath GeoJSON and CAMELYON16 JSON outline files into
``Annotation`` polygons (level-0 px), and writes ASAP XML and GeoJSON.

Every reader applies the validation policy of ``pipeline.slides.annotation_model``.
"""

from __future__ import annotations

import importlib
import json
import logging
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast
from xml.sax.saxutils import quoteattr

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import AnnotationError
from pipeline.outputs import atomic_write_text
from pipeline.slides.annotation_model import (
    CANONICAL_GROUPS,
    LABEL_COLORS_RGB,
    MAX_COORDINATE_PX,
    Annotation,
    AnnotationLabel,
    check_coordinates,
    check_some_kept,
    label_for_group,
    make_annotations,
)

# Logged under the public module's name, as before the split: callers filter reader warnings by it.
log = logging.getLogger("pipeline.slides.annotations")

_ASAP_POLYGON_TYPES = frozenset({"polygon", "spline", "rectangle"})


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
        annotations.extend(make_annotations(path, name, group, vertices))
    return check_some_kept(path, n_raw, annotations)


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
            annotations.extend(make_annotations(path, part_name, group, exterior, holes))
    return check_some_kept(path, n_raw, annotations)


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
                make_annotations(path, name, group, vertices, label=cast(AnnotationLabel, label))
            )
    return check_some_kept(path, n_raw, annotations)


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
    atomic_write_text(Path(path), "\n".join(lines))


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
    atomic_write_text(Path(path), json.dumps(collection, indent=1) + "\n")
