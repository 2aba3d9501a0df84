"""Review: reads a viewer's review requests and a slide's review, produces the saved review
(``<slide>/review.geojson`` and ``review.xml``, by ``pipeline.review.reviews``) and a
refreshed ``summary.csv``.

Only slides of the manifest are reviewed, and only in their result folder inside the batch
(``BatchIndex`` resolves it). One lock serialises the edits of this server; an edit made on an
outdated revision (another tab saved first) is refused as a conflict, never merged silently.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from pipeline.batch.folder import STATUS_DONE, read_manifest
from pipeline.errors import OutputError, ReviewError
from pipeline.review.report import write_summary_csv
from pipeline.review.review_files import read_review, write_review
from pipeline.review.review_import import import_review
from pipeline.review.reviews import (
    REVIEW_GEOJSON,
    SlideReview,
    apply_edit,
    check_review_matches,
    new_review,
    review_counts,
)
from pipeline.review.viewer.batch_index import BatchIndex, SlideRecord

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 2 * 1024 * 1024  # an outline of MAX_VERTICES points fits easily


def slide_review(index: BatchIndex, record: SlideRecord) -> SlideReview:
    """The slide's saved review, or a new one (revision 0) from its report.json.

    Raises ReviewError when the slide has no result to review or its review file is unreadable.
    """
    report = index.report(record) if record.status == STATUS_DONE else None
    if report is None or record.output_dir is None:
        raise ReviewError(f"{record.slide_id}: the slide has no result to review (status {record.status})")
    path = index.output_file(record, REVIEW_GEOJSON)
    if path is None and (record.output_dir / REVIEW_GEOJSON).exists():
        raise ReviewError(
            f"{record.output_dir / REVIEW_GEOJSON}: not a regular file inside the batch folder; remove it"
        )
    if path is None:
        return new_review(record.slide_id, report)
    review = read_review(path)
    check_review_matches(review, report, path)
    if review.slide_id != record.slide_id:
        raise ReviewError(
            f"{path}: the review is of slide {review.slide_id!r}, not {record.slide_id!r}; remove the file"
        )
    return review


def review_payload(index: BatchIndex, record: SlideRecord, writable: bool) -> dict[str, Any]:
    """What GET /api/review/<id> answers: {"writable", "review"} (ReviewError as ``slide_review``)."""
    return {"writable": writable, "review": review_to_json(slide_review(index, record))}


def save_edit(index: BatchIndex, record: SlideRecord, body: Any, lock: threading.Lock) -> dict[str, Any]:
    """Apply one edit request ({"base_revision", "reviewer", "edit"}) and save it.

    Returns the new payload. Raises ReviewConflictError when the review changed since
    base_revision, ReviewError for a bad request, OutputError when the files cannot be written.
    """
    if not isinstance(body, dict) or not isinstance(body.get("edit"), dict):
        raise ReviewError('expected a JSON object {"base_revision", "reviewer", "edit": {"op": ...}}')
    folder = record.output_dir
    if folder is None:
        raise ReviewError(f"{record.slide_id}: {record.problem}")
    with lock:
        review = slide_review(index, record)
        updated = apply_edit(review, body["edit"], body.get("base_revision"), body.get("reviewer"))
        write_review(folder, updated)
        if review.complete or updated.complete:
            _refresh_summary(index)
    log.info("%s: review revision %d: %s", record.slide_id, updated.revision, updated.history[-1]["action"])
    return {"writable": True, "review": review_to_json(updated)}


def import_review_file(
    index: BatchIndex, record: SlideRecord, path: Path, reviewer: str, complete: bool
) -> SlideReview:
    """Load a QuPath GeoJSON or ASAP XML file into the slide's review
    (``pipeline.review.review_import``), save it and refresh summary.csv.

    Raises ReviewError / AnnotationError naming the file, OutputError when it cannot be saved.
    """
    folder = record.output_dir
    if folder is None:
        raise ReviewError(f"{record.slide_id}: {record.problem}")
    updated = import_review(slide_review(index, record), path, reviewer, complete)
    write_review(folder, updated)
    _refresh_summary(index)
    return updated


def _refresh_summary(index: BatchIndex) -> None:
    """Rewrite summary.csv so its categories follow the completed reviews."""
    try:
        write_summary_csv(index.root, read_manifest(index.root))
    except (OutputError, ReviewError) as exc:
        log.warning("summary.csv not refreshed: %s", exc)


def review_to_json(review: SlideReview) -> dict[str, Any]:
    """The review as the viewer's API gives it: the record's fields, counts and deposits."""
    return {
        "slide_id": review.slide_id,
        "revision": review.revision,
        "status": review.status,
        "reviewer": review.reviewer,
        "note": review.note,
        "updated": review.updated,
        "automated_category": review.automated_category,
        "reviewed_category": review.reviewed_category,
        "counts": review_counts(review),
        "history": list(review.history[-20:]),
        "deposits": [
            {
                "key": d.key,
                "decision": d.decision,
                "category": d.category,
                "max_diameter_mm": d.max_diameter_mm,
                "area_mm2": d.area_mm2,
                "reviewer": d.reviewer,
                "time": d.time,
                "outline_xy": [[float(x), float(y)] for x, y in d.outline_xy],
            }
            for d in review.deposits
        ],
    }
