"""Evaluation: reads a batch's pathologist reviews (``<slide>/review.geojson``), produces how
the model fared against them: per slide and per batch, the automated deposits reviewers
confirmed, corrected or rejected, the deposits they added (missed by the model), and whether
the slide's category changed.

Batch totals count complete reviews only; slides whose review is in progress are listed with
their counts but left out of the totals. Definitions: docs/evaluation.md, "Reviews".
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any

from pipeline.batch.folder import read_manifest, slide_folder
from pipeline.errors import EvaluationError
from pipeline.outputs import atomic_write_json, atomic_write_text, csv_safe_dict
from pipeline.review.review_files import read_slide_review
from pipeline.review.reviews import SlideReview, review_counts

REVIEWS_JSON = "reviews.json"
REVIEWS_CSV = "reviews.csv"


@dataclasses.dataclass(frozen=True)
class SlideReviewScore:
    """One reviewed slide: its review's status and what the reviewer did to the model's deposits.

    n_automated: the model's deposits; confirmed + corrected + rejected + pending = n_automated.
    added: deposits the reviewer drew (the model missed them).
    """

    slide_id: str
    status: str
    reviewer: str
    automated_category: str
    reviewed_category: str
    n_automated: int
    confirmed: int
    corrected: int
    rejected: int
    pending: int
    added: int

    @property
    def category_changed(self) -> bool:
        """True when the review changed the slide's category."""
        return self.automated_category != self.reviewed_category


@dataclasses.dataclass(frozen=True)
class ReviewScore:
    """Every reviewed slide of a batch, and totals over the complete reviews."""

    slides: tuple[SlideReviewScore, ...]

    @property
    def complete(self) -> tuple[SlideReviewScore, ...]:
        """The slides whose review is complete."""
        return tuple(s for s in self.slides if s.status == "complete")

    def totals(self) -> dict[str, Any]:
        """Sums over complete reviews, the fraction of the model's deposits rejected and of all
        tumor deposits the model missed (None when undefined), and slides whose category changed."""
        done = self.complete
        sums = {
            field: sum(getattr(s, field) for s in done)
            for field in ("n_automated", "confirmed", "corrected", "rejected", "pending", "added")
        }
        kept = sums["confirmed"] + sums["corrected"] + sums["pending"]
        return {
            "n_slides_reviewed": len(done),
            "n_slides_in_progress": len(self.slides) - len(done),
            **sums,
            "rejected_fraction": sums["rejected"] / sums["n_automated"] if sums["n_automated"] else None,
            "missed_fraction": sums["added"] / (kept + sums["added"]) if kept + sums["added"] else None,
            "n_slides_category_changed": sum(s.category_changed for s in done),
        }


def _slide_score(review: SlideReview) -> SlideReviewScore:
    counts = review_counts(review)
    n_automated = sum(1 for d in review.deposits if d.key.startswith("deposit"))
    return SlideReviewScore(
        slide_id=review.slide_id,
        status=review.status,
        reviewer=review.reviewer,
        automated_category=review.automated_category,
        reviewed_category=review.reviewed_category,
        n_automated=n_automated,
        confirmed=counts["confirmed"],
        corrected=counts["corrected"],
        rejected=counts["rejected"],
        pending=counts["pending"],
        added=counts["added"],
    )


def score_reviews(batch_dir: Path) -> ReviewScore:
    """The review scores of a batch folder (manifest.json, each finished slide's review.geojson).

    Raises EvaluationError when the batch has no review at all, ReviewError naming an
    unreadable review file, OutputError for a bad manifest.
    """
    manifest = read_manifest(Path(batch_dir))
    scores = []
    for slide_id, entry in manifest.slides.items():
        if not entry.done:
            continue
        review = read_slide_review(slide_folder(Path(batch_dir), slide_id, entry))
        if review is not None:
            scores.append(_slide_score(review))
    if not scores:
        raise EvaluationError(
            f"{batch_dir}: no slide has a review.geojson; review slides with "
            "`micromet view --review` or load them with `micromet review import`"
        )
    return ReviewScore(tuple(scores))


def review_score_to_dict(score: ReviewScore) -> dict[str, Any]:
    """JSON-ready: the batch totals and one entry per reviewed slide."""
    return {
        "batch": score.totals(),
        "slides": [{**dataclasses.asdict(s), "category_changed": s.category_changed} for s in score.slides],
    }


def write_review_score(score: ReviewScore, out_dir: Path) -> list[Path]:
    """Write reviews.json and reviews.csv (one row per reviewed slide) into ``out_dir``."""
    buffer = io.StringIO()
    fields = [f.name for f in dataclasses.fields(SlideReviewScore)] + ["category_changed"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for slide in score.slides:
        row = {**dataclasses.asdict(slide), "category_changed": slide.category_changed}
        writer.writerow(csv_safe_dict(row))
    atomic_write_text(out_dir / REVIEWS_CSV, buffer.getvalue())
    atomic_write_json(out_dir / REVIEWS_JSON, review_score_to_dict(score))
    return [out_dir / REVIEWS_CSV, out_dir / REVIEWS_JSON]


def format_review_score(score: ReviewScore) -> str:
    """One line for the batch: what reviewers did to the model's deposits."""
    t = score.totals()
    line = (
        f"reviews   {t['n_slides_reviewed']} slide(s) complete: {t['rejected']} of {t['n_automated']} "
        f"deposits rejected, {t['corrected']} corrected, {t['added']} added (missed); "
        f"{t['n_slides_category_changed']} slide categories changed"
    )
    if t["n_slides_in_progress"]:
        line += f"; {t['n_slides_in_progress']} review(s) in progress not counted"
    return line
