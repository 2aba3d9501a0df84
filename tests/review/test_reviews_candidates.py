"""Candidates for review in a pathologist's review (pipeline/review/reviews.py, review_import.py):
pending they stay out of the reviewed category, confirmed they count, and they survive
review.geojson, ASAP XML and QuPath / ASAP import; reports without candidates review as before."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.deposits.measure import Deposit
from pipeline.errors import ReviewError
from pipeline.review.review_files import read_review, write_review
from pipeline.review.review_import import import_review
from pipeline.review.reviews import (
    REVIEW_GEOJSON,
    REVIEW_XML,
    SlideReview,
    apply_edit,
    check_review_matches,
    new_review,
    report_fingerprint,
    review_counts,
)
from pipeline.slides.annotations import Annotation, read_asap_xml, write_geojson
from pipeline.staging import Category

MPP = 0.5
MICRO_SQUARE = [[1000.0, 1000.0], [2000.0, 1000.0], [2000.0, 2000.0], [1000.0, 2000.0]]
CANDIDATE_SQUARES = (
    [[5000.0, 5000.0], [5200.0, 5000.0], [5200.0, 5200.0], [5000.0, 5200.0]],
    [[7000.0, 3000.0], [7100.0, 3000.0], [7100.0, 3100.0], [7000.0, 3100.0]],
)
T = "2026-01-02T03:04:05+00:00"


def _entry(entry_id: int, category: str, outline: list[list[float]]) -> dict[str, Any]:
    """A full report.json entry (``Deposit.to_dict``) of a square outline (level-0 px at MPP)."""
    xy = np.asarray(outline, dtype=np.float64)
    side_mm = float(xy[1, 0] - xy[0, 0]) * MPP / 1000
    (x0, y0), (x1, y1) = xy.min(axis=0).tolist(), xy.max(axis=0).tolist()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bbox = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
    deposit = Deposit(entry_id, Category(category), side_mm * math.sqrt(2), 0.01, side_mm**2, cx, cy,
                      cx * MPP / 1000, cy * MPP / 1000, bbox, 0.95, 0.9, None, False, xy,
                      confirm_probability=0.3)
    return deposit.to_dict()


def _report(with_deposit: bool = False, with_candidates: bool = True) -> dict[str, Any]:
    report: dict[str, Any] = {
        "slide": {"mpp": MPP, "dimensions": [10_000, 8_000]},
        "category": "micro" if with_deposit else "negative",
        "cell_rule": "size-first",
        "deposits": [_entry(1, "micro", MICRO_SQUARE)] if with_deposit else [],
    }
    if with_candidates:
        report["candidates"] = [_entry(i + 1, "itc", square) for i, square in enumerate(CANDIDATE_SQUARES)]
    return report


def _edit(review: SlideReview, edit: dict[str, Any]) -> SlideReview:
    return apply_edit(review, edit, review.revision, "Dr Ana", T)


def _decide(review: SlideReview, key: str, decision: str) -> SlideReview:
    return _edit(review, {"op": "decide", "key": key, "decision": decision})


def test_pending_candidates_stay_out_of_the_reviewed_category() -> None:
    review = new_review("n1", _report())
    assert [(d.key, d.decision, d.category) for d in review.deposits] == [
        ("candidate 1", "pending", "itc"),
        ("candidate 2", "pending", "itc"),
    ]
    assert review.reviewed_category == "negative" == review.automated_category
    counts = review_counts(review)
    assert counts["pending candidates"] == 2 and counts["pending"] == 0


def test_a_confirmed_candidate_counts_and_a_rejected_one_does_not() -> None:
    review = _decide(new_review("n1", _report()), "candidate 1", "confirmed")
    assert review.reviewed_category == "itc"
    assert review.history[-1]["action"] == "confirmed candidate 1"
    review = _decide(_decide(review, "candidate 2", "rejected"), "candidate 1", "rejected")
    assert review.reviewed_category == "negative"
    counts = review_counts(review)
    assert (counts["rejected candidates"], counts["rejected"], counts["confirmed candidates"]) == (2, 0, 0)
    with pytest.raises(ReviewError, match="expected one of confirmed, rejected, pending"):
        _decide(review, "candidate 1", "added")
    with pytest.raises(ReviewError, match="no deposit 'candidate 3'"):
        _decide(review, "candidate 3", "confirmed")


def test_a_redrawn_candidate_is_measured_and_counts() -> None:
    big = [[100.0, 100.0], [1100.0, 100.0], [1100.0, 1100.0], [100.0, 1100.0]]  # 0.707 mm at 0.5 µm/px
    review = _edit(new_review("n1", _report()), {"op": "redraw", "key": "candidate 2", "outline_xy": big})
    redrawn = review.deposit("candidate 2")
    assert redrawn.decision == "corrected" and redrawn.category == "micro"
    assert review.reviewed_category == "micro" and review_counts(review)["confirmed candidates"] == 1


def test_automated_counts_leave_candidates_out() -> None:
    review = _decide(new_review("n1", _report(with_deposit=True)), "candidate 1", "rejected")
    counts = review_counts(review)
    n_automated = sum(1 for d in review.deposits if d.key.startswith("deposit"))
    assert counts["confirmed"] + counts["corrected"] + counts["rejected"] + counts["pending"] == n_automated
    assert review.reviewed_category == "micro"


def test_candidates_survive_review_geojson_and_asap_xml(tmp_path: Path) -> None:
    review = _decide(new_review("n1", _report(with_deposit=True)), "candidate 2", "confirmed")
    write_review(tmp_path, review)
    data = json.loads((tmp_path / REVIEW_GEOJSON).read_text())
    classes = {f["properties"]["key"]: f["properties"]["classification"]["name"] for f in data["features"]}
    assert classes == {"deposit 1": "Pending", "candidate 1": "Candidate", "candidate 2": "Tumor"}
    again = read_review(tmp_path / REVIEW_GEOJSON)
    assert [(d.key, d.decision) for d in again.deposits] == [(d.key, d.decision) for d in review.deposits]
    assert again.reviewed_category == "micro"
    groups = {a.name: a.group for a in read_asap_xml(tmp_path / REVIEW_XML)}
    assert groups["candidate 1 (itc)"] == "Candidate" and groups["candidate 2 (itc)"] == "Tumor"


def test_a_report_without_candidates_has_the_fingerprint_it_always_had(tmp_path: Path) -> None:
    old = _report(with_deposit=True, with_candidates=False)
    assert report_fingerprint(old) == ("micro", f"1:micro:{old['deposits'][0]['max_diameter_mm']}")
    review = new_review("n1", old)
    assert [d.key for d in review.deposits] == ["deposit 1"]
    check_review_matches(review, {**old, "candidates": []}, tmp_path / REVIEW_GEOJSON)
    with pytest.raises(ReviewError, match="earlier result"):  # candidates appeared: another result
        check_review_matches(review, _report(with_deposit=True), tmp_path / REVIEW_GEOJSON)


def _annotation(name: str, group: str, outline: list[list[float]]) -> Annotation:
    label = "tumor" if group == "Tumor" else "other"
    return Annotation(name=name, group=group, label=label, vertices_xy=np.asarray(outline))


def test_import_keeps_a_candidate_class_pending_and_confirms_one_reclassed_as_tumor(tmp_path: Path) -> None:
    path = tmp_path / "edited.geojson"
    write_geojson(
        [  # as deposits.geojson names them, one reclassed as Tumor in QuPath
            _annotation("deposit 1 (micro)", "Tumor", MICRO_SQUARE),
            _annotation("candidate 1 (for review, not counted)", "Candidate", CANDIDATE_SQUARES[0]),
            _annotation("candidate 2 (for review, not counted)", "Tumor", CANDIDATE_SQUARES[1]),
        ],
        path,
    )
    imported = import_review(new_review("n1", _report(with_deposit=True)), path, "Dr Ben", False, T)
    assert [(d.key, d.decision) for d in imported.deposits] == [
        ("deposit 1", "confirmed"),
        ("candidate 1", "pending"),
        ("candidate 2", "confirmed"),
    ]
    write_geojson([_annotation("deposit 1 (micro)", "Tumor", MICRO_SQUARE)], path)  # candidates deleted
    imported = import_review(new_review("n1", _report(with_deposit=True)), path, "Dr Ben", False, T)
    assert [d.decision for d in imported.deposits if d.is_candidate] == ["rejected", "rejected"]
