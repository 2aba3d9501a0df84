"""Exports: reads measured deposits, produces QuPath GeoJSON, ASAP XML and CAMELYON16 CSV files.

All coordinates are level-0 px. Every file is written to a temporary name beside the
target and renamed (``pipeline.outputs`` / ``pipeline.slides.annotations`` writers), so a crash
never leaves a half-written file under its final name.

- QuPath GeoJSON: a FeatureCollection with one Polygon Feature per deposit (closed ring),
  ``properties.objectType = "annotation"``, classification "Tumor", name
  "deposit 1 (micro)", the measurements (mm, mm², probabilities, cell count), and the
  properties ``category`` and ``review`` (why size and cell count disagree, or null).
  Candidates for review (ITC-size findings that rescoring in 8 poses did not confirm,
  ``pipeline.deposits.decide``) follow as Features of classification "Candidate", named
  "candidate 1 (for review, not counted)", with ``properties.candidate = true``; they are not
  part of the slide's category, and a review import skips them unless reclassed as tumor.
- ASAP XML: one polygon per deposit in group "Tumor" (opens in ASAP and reads back with
  ``pipeline.slides.annotations.read_asap_xml``); a deposit flagged for review is named
  "deposit 1 (micro, review: <reason>)", since ASAP shows names but keeps no other fields.
  Candidates for review are polygons in a separate group "Candidate".
- CAMELYON16 lesion-detection CSV: one row per deposit, ``confidence,X,Y`` with the
  deposit's max probability and a point inside it (its centroid, or when the centroid of an
  irregular deposit falls outside it, the nearest interior point). The official
  evaluation script (Evaluation_FROC.py) parses X and Y with ``int()``, so they are
  written as whole level-0 px. The review flag is not in this file: the format has exactly
  these three columns. Candidates for review are not detections and are not listed.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.deposits.measure import Deposit
from pipeline.errors import AnnotationError
from pipeline.outputs import atomic_write_text, csv_safe_row
from pipeline.review.colors import CANDIDATE_COLOR, hex_to_rgb
from pipeline.slides.annotations import Annotation, annotation_to_feature
from pipeline.slides.annotations import write_asap_xml as write_annotations_xml

TUMOR_GROUP = "Tumor"
CANDIDATE_GROUP = "Candidate"
# QuPath class colour of candidates (RGB): the viewer's candidate colour, apart from tumor's red.
CANDIDATE_RGB = hex_to_rgb(CANDIDATE_COLOR)
CAMELYON16_CSV_HEADER = ("confidence", "X", "Y")

__all__ = [
    "CAMELYON16_CSV_HEADER",
    "CANDIDATE_GROUP",
    "CANDIDATE_RGB",
    "TUMOR_GROUP",
    "candidate_annotation",
    "deposit_annotation",
    "deposit_measurements",
    "detection_point_xy",
    "read_camelyon16_csv",
    "write_asap_xml",
    "write_camelyon16_csv",
    "write_qupath_geojson",
]


def deposit_annotation(deposit: Deposit) -> Annotation:
    """The deposit's outline as a tumor ``Annotation`` named "deposit N (category)", or
    "deposit N (category, review: reason)" when it is flagged for review."""
    review = f", review: {deposit.review}" if deposit.review else ""
    return Annotation(
        name=f"deposit {deposit.id} ({deposit.category}{review})",
        group=TUMOR_GROUP,
        label="tumor",
        vertices_xy=deposit.outline_xy,
    )


def candidate_annotation(candidate: Deposit) -> Annotation:
    """A candidate for review's outline as an ``Annotation`` of group "Candidate" (label
    "other": never read back as tumor) named "candidate N (for review, not counted)"."""
    return Annotation(
        name=f"candidate {candidate.id} (for review, not counted)",
        group=CANDIDATE_GROUP,
        label="other",
        vertices_xy=candidate.outline_xy,
    )


def deposit_measurements(deposit: Deposit) -> dict[str, float]:
    """Numeric measurements shown by QuPath; cell_count and confirm_probability only when
    they were measured."""
    values = {
        "id": float(deposit.id),
        "max_diameter_mm": deposit.max_diameter_mm,
        "max_diameter_uncertainty_mm": deposit.max_diameter_uncertainty_mm,
        "area_mm2": deposit.area_mm2,
        "max_probability": deposit.max_probability,
        "mean_probability": deposit.mean_probability,
        "refined": float(deposit.refined),
    }
    if deposit.cell_count is not None:
        values["cell_count"] = float(deposit.cell_count)
    if deposit.confirm_probability is not None:
        values["confirm_probability"] = float(deposit.confirm_probability)
    return values


def _candidate_feature(candidate: Deposit) -> dict[str, Any]:
    feature = annotation_to_feature(candidate_annotation(candidate), deposit_measurements(candidate))
    feature["properties"]["classification"] = {"name": CANDIDATE_GROUP, "color": list(CANDIDATE_RGB)}
    feature["properties"].update(category=str(candidate.category), review=candidate.review, candidate=True)
    return feature


def write_qupath_geojson(deposits: Sequence[Deposit], path: Path, candidates: Sequence[Deposit] = ()) -> None:
    """Write the deposits, then the candidates for review (class "Candidate"), as a QuPath
    GeoJSON FeatureCollection (atomically).

    Raises OutputError if the file cannot be written.
    """
    features = []
    for deposit in deposits:
        feature = annotation_to_feature(deposit_annotation(deposit), deposit_measurements(deposit))
        feature["properties"].update(category=str(deposit.category), review=deposit.review)
        features.append(feature)
    features += [_candidate_feature(candidate) for candidate in candidates]
    text = json.dumps({"type": "FeatureCollection", "features": features}, indent=1) + "\n"
    atomic_write_text(Path(path), text)


def write_asap_xml(deposits: Sequence[Deposit], path: Path, candidates: Sequence[Deposit] = ()) -> None:
    """Write the deposits as ASAP XML polygons in group "Tumor", the candidates for review in
    group "Candidate" (atomically).

    Raises OutputError if the file cannot be written.
    """
    annotations = [deposit_annotation(d) for d in deposits] + [candidate_annotation(c) for c in candidates]
    write_annotations_xml(annotations, Path(path))


def detection_point_xy(deposit: Deposit) -> tuple[float, float]:
    """A level-0 point inside the deposit: its centroid, or the closest interior point."""
    import shapely
    import shapely.ops

    polygon = shapely.Polygon(deposit.outline_xy)
    centroid = shapely.Point(deposit.centroid_x_px, deposit.centroid_y_px)
    if not polygon.is_valid or polygon.covers(centroid):
        return deposit.centroid_x_px, deposit.centroid_y_px
    # Pull the nearest boundary point slightly inwards (towards an interior point) so a
    # whole-pixel rounding cannot push it outside.
    nearest = shapely.ops.nearest_points(polygon.exterior, centroid)[0]
    inner = polygon.representative_point()
    for fraction in (0.05, 0.25, 0.5, 1.0):
        candidate = shapely.Point(
            nearest.x + fraction * (inner.x - nearest.x),
            nearest.y + fraction * (inner.y - nearest.y),
        )
        if polygon.contains(shapely.Point(round(candidate.x), round(candidate.y))):
            return float(candidate.x), float(candidate.y)
    return float(inner.x), float(inner.y)


def write_camelyon16_csv(deposits: Sequence[Deposit], path: Path) -> None:
    """Write the CAMELYON16 lesion-detection CSV: header ``confidence,X,Y``, one row per deposit.

    confidence: the deposit's max probability; X, Y: whole level-0 px of a point inside it.
    Raises OutputError if the file cannot be written.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CAMELYON16_CSV_HEADER)
    for deposit in deposits:
        x_px, y_px = detection_point_xy(deposit)
        writer.writerow(csv_safe_row([repr(float(deposit.max_probability)), round(x_px), round(y_px)]))
    atomic_write_text(Path(path), buffer.getvalue())


def read_camelyon16_csv(path: Path) -> list[tuple[float, int, int]]:
    """Rows (confidence, X, Y) of a CAMELYON16 detection CSV, with or without a header.

    Raises AnnotationError naming the file and line for a missing file or a bad row.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: detection CSV not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read the detection CSV ({exc})") from exc
    rows: list[tuple[float, int, int]] = []
    for number, cells in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not cells or (number == 1 and cells[0].strip().lower() == "confidence"):
            continue
        try:
            confidence, x_px, y_px = float(cells[0]), float(cells[1]), float(cells[2])
        except (IndexError, ValueError) as exc:
            raise AnnotationError(
                f"{path}: line {number}: expected 'confidence,X,Y' numbers, got {cells!r}"
            ) from exc
        if not all(math.isfinite(v) for v in (confidence, x_px, y_px)):
            raise AnnotationError(f"{path}: line {number}: non-finite value in {cells!r}")
        rows.append((confidence, round(x_px), round(y_px)))
    return rows
