"""Review files: reads and writes a slide's review record, ``<slide>/review.geojson`` (QuPath)
and its ASAP twin ``review.xml`` (format in ``pipeline.review.reviews``' docs). The one reader
of review.geojson for summary.csv, stage, the viewer and training from reviews; the review
itself (decisions, edits, categories) is ``pipeline.review.reviews``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipeline.errors import ReviewError
from pipeline.outputs import atomic_write_text
from pipeline.review.reviews import (
    CANDIDATE_CLASS,
    DECISION_CLASSES,
    DECISIONS,
    PENDING,
    REVIEW_GEOJSON,
    REVIEW_XML,
    SCHEMA_VERSION,
    STATUSES,
    UM_PER_MM,
    ReviewedDeposit,
    SlideReview,
    check_outline,
)
from pipeline.slides.annotations import Annotation, AnnotationLabel, annotation_to_feature, write_asap_xml
from pipeline.staging import Category


def _review_class(deposit: ReviewedDeposit) -> tuple[str, tuple[int, int, int]]:
    """The QuPath / ASAP class and colour of a deposit's decision; "Candidate" while a
    candidate for review is pending."""
    if deposit.is_candidate and deposit.decision == PENDING:
        return CANDIDATE_CLASS
    return DECISION_CLASSES[deposit.decision]


def _feature(deposit: ReviewedDeposit) -> dict[str, Any]:
    class_name, color = _review_class(deposit)
    annotation = _asap_annotation(deposit)
    measurements = {
        "max_diameter_um": deposit.max_diameter_mm * UM_PER_MM,
        "max_diameter_mm": deposit.max_diameter_mm,
        "area_mm2": deposit.area_mm2,
    }
    feature = annotation_to_feature(annotation, measurements)
    feature["properties"].update(
        classification={"name": class_name, "color": list(color)},
        isLocked=False,
        key=deposit.key,
        decision=deposit.decision,
        category=deposit.category,
        reviewer=deposit.reviewer,
        time=deposit.time,
    )
    return feature


def review_to_geojson(review: SlideReview) -> dict[str, Any]:
    """The review as a QuPath-compatible GeoJSON FeatureCollection (module docs)."""
    meta = {
        "schema": SCHEMA_VERSION,
        "slide_id": review.slide_id,
        "revision": review.revision,
        "status": review.status,
        "reviewer": review.reviewer,
        "note": review.note,
        "updated": review.updated,
        "mpp": review.mpp,
        "slide_dimensions": list(review.slide_dimensions) if review.slide_dimensions else None,
        "cell_rule": review.cell_rule,
        "automated_category": review.automated_category,
        "reviewed_category": review.reviewed_category,
        "history": list(review.history),
        "report_deposits": list(review.report_deposits),
    }
    return {
        "type": "FeatureCollection",
        "micromet_review": meta,
        "features": [_feature(d) for d in review.deposits],
    }


def _deposit_from_feature(path: Path, index: int, feature: Any) -> ReviewedDeposit:
    try:
        properties = feature["properties"]
        ring = feature["geometry"]["coordinates"][0]
        outline = check_outline(ring, f"{path}: feature {index}", None)
        measurements = properties["measurements"]
        decision = str(properties["decision"])
        if decision not in DECISIONS:
            raise ValueError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
        return ReviewedDeposit(
            key=str(properties["key"]),
            decision=decision,
            outline_xy=outline,
            category=str(Category(properties["category"])),
            max_diameter_mm=float(measurements["max_diameter_mm"]),
            area_mm2=float(measurements["area_mm2"]),
            reviewer=str(properties.get("reviewer") or ""),
            time=str(properties.get("time") or ""),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ReviewError(
            f"{path}: feature {index} is not a micromet review deposit ({exc!r}); "
            "fix or delete the file (report.json is unchanged)"
        ) from None


def review_from_geojson(path: Path, data: Any) -> SlideReview:
    """Parse a review.geojson written by ``review_to_geojson``; raises ReviewError naming
    ``path`` for anything else."""
    hint = "fix or delete the file (report.json is unchanged)"
    if not isinstance(data, dict) or not isinstance(data.get("micromet_review"), dict):
        raise ReviewError(f"{path}: not a micromet review (no 'micromet_review' object); {hint}")
    meta, features = data["micromet_review"], data.get("features")
    if not isinstance(features, list):
        raise ReviewError(f"{path}: 'features' is not a list; {hint}")
    try:
        dims = meta.get("slide_dimensions")
        review = SlideReview(
            slide_id=str(meta["slide_id"]),
            revision=int(meta["revision"]),
            status=str(meta["status"]),
            reviewer=str(meta.get("reviewer") or ""),
            note=str(meta.get("note") or ""),
            updated=str(meta.get("updated") or ""),
            mpp=float(meta["mpp"]),
            slide_dimensions=(int(dims[0]), int(dims[1])) if dims else None,
            cell_rule=str(meta["cell_rule"]),
            automated_category=str(Category(meta["automated_category"])),
            deposits=tuple(_deposit_from_feature(path, i, f) for i, f in enumerate(features)),
            history=tuple(dict(entry) for entry in meta.get("history") or ()),
            report_deposits=tuple(str(item) for item in meta.get("report_deposits") or ()),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ReviewError(f"{path}: malformed 'micromet_review' ({exc!r}); {hint}") from None
    valid_mpp = math.isfinite(review.mpp) and review.mpp > 0
    if review.status not in STATUSES or review.revision < 1 or not valid_mpp:
        raise ReviewError(
            f"{path}: status {review.status!r}, revision {review.revision} or mpp "
            f"{review.mpp} is not valid; {hint}"
        )
    return review


def read_review(path: Path) -> SlideReview:
    """Read a review.geojson; raises ReviewError naming the file when it is unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ReviewError(
            f"{path}: cannot read the review ({exc}); fix or delete the file (report.json is unchanged)"
        ) from None
    return review_from_geojson(Path(path), data)


def read_slide_review(folder: Path) -> SlideReview | None:
    """The review in a slide's result folder, or None when it has none (ReviewError as
    ``read_review``). The one reader of review.geojson for summary.csv, stage and the viewer."""
    path = Path(folder) / REVIEW_GEOJSON
    return read_review(path) if path.is_file() else None


def write_review(folder: Path, review: SlideReview) -> Path:
    """Write review.geojson and its ASAP twin review.xml atomically into ``folder``; returns
    the GeoJSON path. Raises OutputError naming a file that cannot be written."""
    path = Path(folder) / REVIEW_GEOJSON
    write_asap_xml([_asap_annotation(d) for d in review.deposits], Path(folder) / REVIEW_XML)
    atomic_write_text(path, json.dumps(review_to_geojson(review), indent=1, ensure_ascii=False) + "\n")
    return path


def _asap_annotation(deposit: ReviewedDeposit) -> Annotation:
    class_name = _review_class(deposit)[0]
    label: AnnotationLabel = "tumor" if class_name == "Tumor" else "other"
    return Annotation(f"{deposit.key} ({deposit.category})", class_name, label, deposit.outline_xy)
