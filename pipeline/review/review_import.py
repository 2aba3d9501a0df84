"""Review: reads a QuPath GeoJSON or ASAP XML file edited from a slide's review (or from the
automated exports), produces the slide's updated review (``pipeline.review.reviews``).

Files are read by ``pipeline.slides.annotations.read_annotations`` (the readers of every
annotation file); outlines keep their coordinates exactly, so an export imported back is the
same review.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import AnnotationError, ReviewError
from pipeline.review.reviews import (
    ADDED,
    CANDIDATE_CLASS,
    CONFIRMED,
    CORRECTED,
    DEPOSIT_KEY,
    PENDING,
    REJECTED,
    SAME_OUTLINE_PX,
    STATUS_COMPLETE,
    ReviewedDeposit,
    SlideReview,
    check_outline,
    check_text,
    measured_deposit,
    now_utc,
)
from pipeline.slides.annotations import Annotation, read_annotations

log = logging.getLogger(__name__)


def _same_outline(a: NDArray[np.float64], b: NDArray[np.float64]) -> bool:
    return a.shape == b.shape and bool(np.abs(a - b).max() <= SAME_OUTLINE_PX)


def _imported_decision(annotation: Annotation) -> str | None:
    group = annotation.group.strip().lower()
    if group in (REJECTED, PENDING):
        return str(group)
    if group == CANDIDATE_CLASS[0].lower():  # a candidate for review left as it was: pending
        return PENDING
    return CONFIRMED if annotation.label == "tumor" else None


def _merge_imported(review: SlideReview, annotations: Sequence[Annotation], reviewer: str,
                    time: str) -> tuple[ReviewedDeposit, ...]:
    automated = {d.key: d for d in review.deposits if d.key.startswith(("deposit", "candidate"))}
    merged: dict[str, ReviewedDeposit] = {}
    drawn: list[ReviewedDeposit] = []
    for annotation in annotations:
        decision = _imported_decision(annotation)
        match = DEPOSIT_KEY.match(annotation.name)
        key = f"{match.group(1).lower()} {match.group(2)}" if match else ""
        if decision is None:
            log.warning("%s: annotation %r (class %r) is neither tumor, Rejected nor Pending; skipped",
                        review.slide_id, annotation.name, annotation.group)
            continue
        outline = annotation.vertices_xy
        if key in automated and key not in merged:
            current = automated[key]
            if _same_outline(outline, current.outline_xy):
                kept = CORRECTED if (decision, current.decision) == (CONFIRMED, CORRECTED) else decision
                merged[key] = dataclasses.replace(current, decision=kept, reviewer=reviewer, time=time)
            else:
                corrected = CORRECTED if decision == CONFIRMED else decision
                merged[key] = measured_deposit(review, key, corrected, outline, reviewer, time)
        elif decision != PENDING:
            added = ADDED if decision == CONFIRMED else REJECTED
            drawn.append(measured_deposit(review, f"drawn {len(drawn) + 1}", added, outline, reviewer, time))
    # A deposit deleted in QuPath or ASAP is a rejection.
    for key, deposit in automated.items():
        if key not in merged:
            merged[key] = dataclasses.replace(deposit, decision=REJECTED, reviewer=reviewer, time=time)
    return (*(merged[key] for key in automated), *drawn)


def import_review(review: SlideReview, path: Path, reviewer: str, complete: bool,
                  time: str | None = None) -> SlideReview:
    """The review after loading a QuPath GeoJSON or ASAP XML file edited from review.geojson
    / review.xml (or from the automated exports).

    Annotations named "deposit N" update automated deposit N: class Rejected rejects it,
    Pending leaves it pending, a tumor class confirms it (corrected when its outline moved by
    more than SAME_OUTLINE_PX). Annotations named "candidate N" update candidate for review N
    alike (class Candidate leaves it pending). Other tumor annotations are added deposits
    (Rejected drawn ones are kept as rejected). An automated deposit or candidate absent from
    the file is rejected: it was deleted. ``complete`` marks the review complete. Raises
    AnnotationError / ReviewError naming the file.
    """
    name = check_text(reviewer, "--reviewer", required=True)
    time = time or now_utc()
    annotations = read_annotations(Path(path))
    for annotation in annotations:
        try:
            check_outline(annotation.vertices_xy, f"{path}: {annotation.name!r}", review.slide_dimensions)
        except ReviewError as exc:
            raise AnnotationError(str(exc)) from None
    deposits = _merge_imported(review, annotations, name, time)
    revision = review.revision + 1
    status = STATUS_COMPLETE if complete else review.status
    entry = {"revision": revision, "time": time, "reviewer": name, "action": f"imported {Path(path).name}"}
    return dataclasses.replace(review, revision=revision, status=status, reviewer=name, updated=time,
                               deposits=deposits, history=(*review.history, entry))
