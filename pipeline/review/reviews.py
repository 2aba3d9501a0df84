"""Review: reads a slide's report.json and a pathologist's decisions, produces the slide's review
record ``<slide>/review.geojson`` (and ``review.xml`` for ASAP) and its reviewed category.

The review never changes the automated result: report.json stays as the batch wrote it and the
review is a separate record beside it. Each automated deposit has a decision (pending,
confirmed, rejected, or corrected with a new outline); missed deposits are drawn as polygons
("added"). Each candidate for review of report.json (an ITC-size finding rescoring did not
confirm, ``pipeline.deposits.decide``) is reviewed the same way as "candidate N", but counts as
tumor only once a reviewer confirms (or redraws) it: a pending one stays out of the category.
Drawn and corrected outlines are measured with the code that measures automated deposits
(``pipeline.deposits.measure.max_feret_diameter``) and categorised by size
(``pipeline.staging.categorize_deposit``, no cell count). Where the review is complete the
slide's reviewed category (its worst deposit that stands) replaces the automated one in
summary.csv, ``stage``, report.html and the viewer, which show the automated one beside it.

review.geojson is a QuPath-compatible FeatureCollection: one Polygon Feature per deposit with
``properties.objectType = "annotation"``, ``classification`` {name: Tumor / Rejected / Pending /
Candidate (a pending candidate), color}, ``measurements`` (max_diameter_um, max_diameter_mm,
area_mm2), and ``decision``, ``reviewer``, ``time``; the foreign member ``micromet_review``
holds the revision, status, reviewer, note, categories and the history of changes. Every edit
carries the revision it was made on; an edit on an outdated revision raises ReviewConflictError
(nothing is lost silently).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.batch.folder import REPORT_JSON, report_deposits
from pipeline.deposits.measure import max_feret_diameter
from pipeline.errors import ReviewConflictError, ReviewError
from pipeline.review.exports import CANDIDATE_GROUP, CANDIDATE_RGB
from pipeline.slides.annotations import (
    polygon_area_px2,
)
from pipeline.staging import DEFAULT_CELL_RULE, Category, categorize_deposit, slide_category

log = logging.getLogger(__name__)

REVIEW_GEOJSON = "review.geojson"
REVIEW_XML = "review.xml"
SCHEMA_VERSION = 1
STATUS_IN_PROGRESS = "in progress"
STATUS_COMPLETE = "complete"
STATUSES = (STATUS_IN_PROGRESS, STATUS_COMPLETE)
# Decisions on automated deposits; drawn ones are "added".
PENDING, CONFIRMED, REJECTED, CORRECTED, ADDED = "pending", "confirmed", "rejected", "corrected", "added"
DECISIONS = (PENDING, CONFIRMED, REJECTED, CORRECTED, ADDED)
# QuPath class of each decision, and its colour (RGB).
DECISION_CLASSES: Mapping[str, tuple[str, tuple[int, int, int]]] = {
    PENDING: ("Pending", (230, 159, 0)),
    CONFIRMED: ("Tumor", (200, 0, 0)),
    CORRECTED: ("Tumor", (200, 0, 0)),
    ADDED: ("Tumor", (200, 0, 0)),
    REJECTED: ("Rejected", (120, 120, 120)),
}
CANDIDATE_CLASS = (CANDIDATE_GROUP, CANDIDATE_RGB)  # a candidate for review still pending
# review_counts' keys for the candidates' decisions (a redrawn candidate is confirmed).
CANDIDATE_COUNTS: Mapping[str, str] = {
    CONFIRMED: "confirmed candidates",
    CORRECTED: "confirmed candidates",
    REJECTED: "rejected candidates",
    PENDING: "pending candidates",
}
MAX_TEXT_CHARS = 2000  # reviewer names and notes
MAX_VERTICES = 20_000
# An imported outline within this of the current one (each vertex, level-0 px) is unchanged.
SAME_OUTLINE_PX = 1.0
UM_PER_MM = 1000.0
DEPOSIT_KEY = re.compile(r"^(deposit|candidate|drawn) (\d+)\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, eq=False)
class ReviewedDeposit:
    """One deposit of a review.

    key: "deposit N" (automated deposit N of report.json), "candidate N" (its candidate for
    review N) or "drawn N". decision: one of
    DECISIONS. outline_xy: (N, 2) float64 level-0 px, open ring. category, max_diameter_mm,
    area_mm2: the automated values for an automated outline, else measured from the outline.
    reviewer, time: who decided last, and when (ISO 8601 UTC); empty while pending.
    """

    key: str
    decision: str
    outline_xy: NDArray[np.float64]
    category: str
    max_diameter_mm: float
    area_mm2: float
    reviewer: str = ""
    time: str = ""

    @property
    def is_candidate(self) -> bool:
        """True for a candidate for review of report.json ("candidate N")."""
        return self.key.startswith("candidate")

    @property
    def counts_as_tumor(self) -> bool:
        """Every deposit but a rejected one stands (a pending one keeps the model's call); a
        candidate only once confirmed or redrawn (the model did not count it)."""
        if self.is_candidate:
            return self.decision in (CONFIRMED, CORRECTED)
        return self.decision != REJECTED


@dataclasses.dataclass(frozen=True)
class SlideReview:
    """A slide's review: revision (0 = never saved), status, last reviewer, note, deposits
    and history (dicts: revision, time, reviewer, action), plus the slide facts it needs."""

    slide_id: str
    revision: int
    status: str
    reviewer: str
    note: str
    updated: str
    mpp: float
    slide_dimensions: tuple[int, int] | None
    cell_rule: str
    automated_category: str
    deposits: tuple[ReviewedDeposit, ...]
    history: tuple[dict[str, Any], ...] = ()
    report_deposits: tuple[str, ...] = ()  # report_fingerprint of the report.json reviewed

    @property
    def complete(self) -> bool:
        """True when the reviewer marked the slide "review complete"."""
        return self.status == STATUS_COMPLETE

    @property
    def reviewed_category(self) -> str:
        """The slide's category from the deposits that stand (negative when none does)."""
        return str(slide_category(d.category for d in self.deposits if d.counts_as_tumor))

    def deposit(self, key: str) -> ReviewedDeposit:
        """The deposit called ``key``; raises ReviewError when there is none."""
        for deposit in self.deposits:
            if deposit.key == key:
                return deposit
        raise ReviewError(f"{self.slide_id}: no deposit {key!r} in this review; reload the page")


def now_utc() -> str:
    """The current time, ISO 8601 UTC to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# --- measuring ------------------------------------------------------------------------------


def _report_mpp(report: Mapping[str, Any], slide_id: str) -> float:
    mpp = (report.get("slide") or {}).get("mpp")
    if not isinstance(mpp, int | float) or isinstance(mpp, bool) or not (math.isfinite(mpp) and mpp > 0):
        raise ReviewError(
            f"{slide_id}: report.json records no valid µm/px (slide.mpp = {mpp!r}); drawn deposits "
            "cannot be measured - re-run the slide with --mpp"
        )
    return float(mpp)


def check_outline(outline: Any, what: str, dimensions: tuple[int, int] | None) -> NDArray[np.float64]:
    """``outline`` ([[x, y], ...], level-0 px) as an (N, 2) float64 open ring.

    Raises ReviewError naming ``what`` unless it has 3 to MAX_VERTICES distinct finite points
    inside the slide (``dimensions``: level-0 width, height; None = not checked).
    """
    try:
        points = np.asarray(outline, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ReviewError(f"{what}: the outline is not a list of [x, y] numbers ({exc})") from None
    if points.ndim != 2 or points.shape[1:] != (2,) or not 3 <= len(points) <= MAX_VERTICES + 1:
        raise ReviewError(
            f"{what}: the outline needs 3 to {MAX_VERTICES} [x, y] points, got shape {points.shape}"
        )
    if np.array_equal(points[0], points[-1]):
        points = points[:-1]
    if not np.isfinite(points).all():
        raise ReviewError(f"{what}: the outline has a coordinate that is not a finite number")
    if dimensions is not None:
        width, height = dimensions
        if points.min() < 0 or points[:, 0].max() > width or points[:, 1].max() > height:
            raise ReviewError(f"{what}: the outline leaves the slide (0-{width} x 0-{height} level-0 px)")
    if len(np.unique(points, axis=0)) < 3 or polygon_area_px2(points) <= 0:
        raise ReviewError(f"{what}: the outline encloses no area; draw at least 3 distinct points")
    return points


def measure_outline(outline_xy: NDArray[np.float64], mpp: float, cell_rule: str) -> tuple[float, float, str]:
    """(max_diameter_mm, area_mm2, category) of a drawn outline in level-0 px at ``mpp`` µm/px:
    the max Feret diameter of automated deposits, the polygon's area, the size category."""
    max_diameter_mm = max_feret_diameter(outline_xy) * mpp / UM_PER_MM
    area_mm2 = polygon_area_px2(outline_xy) * (mpp / UM_PER_MM) ** 2
    return max_diameter_mm, area_mm2, str(categorize_deposit(max_diameter_mm, None, cell_rule))


def measured_deposit(review: SlideReview, key: str, decision: str, outline: NDArray[np.float64],
                     reviewer: str, time: str) -> ReviewedDeposit:
    """A deposit with ``outline`` measured by ``measure_outline`` at the review's µm/px."""
    diameter, area, category = measure_outline(outline, review.mpp, review.cell_rule)
    return ReviewedDeposit(key, decision, outline, category, diameter, area, reviewer, time)


# --- a new review from report.json ----------------------------------------------------------


def _dimensions(report: Mapping[str, Any]) -> tuple[int, int] | None:
    dims = (report.get("slide") or {}).get("dimensions")
    if isinstance(dims, list) and len(dims) == 2 and all(isinstance(v, int) for v in dims):
        return int(dims[0]), int(dims[1])
    return None


def report_candidates(report: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The candidates for review of a report.json (entries with a deposit's fields), in report
    order; none for a report written before candidates existed (or a malformed field)."""
    candidates = (report or {}).get("candidates")
    if not isinstance(candidates, list):
        return []
    return [c for c in candidates if isinstance(c, dict)]


def _automated_deposits(slide_id: str, report: Mapping[str, Any], field: str) -> tuple[ReviewedDeposit, ...]:
    """The report's ``deposits`` (or ``candidates``) as pending reviewed deposits, read with
    the batch folder's report reader (ReviewError naming the slide's report.json)."""
    kind = "candidate" if field == "candidates" else "deposit"
    path = Path(slide_id) / REPORT_JSON
    return tuple(
        ReviewedDeposit(f"{kind} {d.id}", PENDING, d.outline_xy, str(d.category),
                        d.max_diameter_mm, d.area_mm2)
        for d in report_deposits(report, path, field, ReviewError)
    )


def new_review(slide_id: str, report: Mapping[str, Any]) -> SlideReview:
    """The unsaved review (revision 0) of a slide: every automated deposit, then every
    candidate for review, pending.

    Raises ReviewError when report.json has no valid µm/px or a malformed deposit.
    """
    return SlideReview(
        slide_id=slide_id,
        revision=0,
        status=STATUS_IN_PROGRESS,
        reviewer="",
        note="",
        updated="",
        mpp=_report_mpp(report, slide_id),
        slide_dimensions=_dimensions(report),
        cell_rule=str(report.get("cell_rule") or DEFAULT_CELL_RULE),  # build_report records it
        automated_category=str(Category(str(report.get("category", "negative")).lower())),
        deposits=(*_automated_deposits(slide_id, report, "deposits"),
                  *_automated_deposits(slide_id, report, "candidates")),
        report_deposits=report_fingerprint(report),
    )


def report_fingerprint(report: Mapping[str, Any]) -> tuple[str, ...]:
    """The slide category, "id:category:max_diameter_mm" of each deposit and "candidate
    id:category:max_diameter_mm" of each candidate for review of a report.json: what a review
    was made on (a report without candidates reads as before they existed)."""
    deposits = [d for d in report.get("deposits") or [] if isinstance(d, dict)]
    return (str(report.get("category")),
            *(f"{d.get('id')}:{d.get('category')}:{d.get('max_diameter_mm')}" for d in deposits),
            *(f"candidate {c.get('id')}:{c.get('category')}:{c.get('max_diameter_mm')}"
              for c in report_candidates(report)))


def check_review_matches(review: SlideReview, report: Mapping[str, Any], path: Path) -> None:
    """Raise ReviewError naming ``path`` when the review was made on another report.json (the
    slide was analysed again since): its decisions may not belong to these deposits."""
    if review.report_deposits and review.report_deposits != report_fingerprint(report):
        raise ReviewError(
            f"{path}: this review was made on an earlier result of the slide (report.json has changed "
            "since); rename or move the file away to review the new result, or load it back with "
            "`micromet review import` if its outlines still apply"
        )


# --- edits ----------------------------------------------------------------------------------


def check_text(value: Any, what: str, required: bool) -> str:
    """``value`` stripped; raises ReviewError unless it is text (non-empty if ``required``)."""
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise ReviewError(f"{what} must be text of at most {MAX_TEXT_CHARS} characters")
    text = value.strip()
    if required and not text:
        raise ReviewError(f"{what} is empty; enter the reviewer's name before editing")
    return text


def _next_drawn_key(review: SlideReview) -> str:
    matches = [DEPOSIT_KEY.match(d.key) for d in review.deposits]
    numbers = [int(m.group(2)) for m in matches if m and m.group(1) == "drawn"]
    return f"drawn {max(numbers, default=0) + 1}"


def _edit_deposits(review: SlideReview, edit: Mapping[str, Any], reviewer: str,
                   time: str) -> tuple[tuple[ReviewedDeposit, ...], str]:
    op = edit.get("op")
    deposits = list(review.deposits)
    if op == "draw":
        key = _next_drawn_key(review)
        outline = check_outline(edit.get("outline_xy"), key, review.slide_dimensions)
        deposits.append(measured_deposit(review, key, ADDED, outline, reviewer, time))
        return tuple(deposits), f"drew {key}"
    key = str(edit.get("key"))
    index = review.deposits.index(review.deposit(key))
    current = deposits[index]
    if op == "decide":
        decision = str(edit.get("decision"))
        automated = key.startswith(("deposit", "candidate"))
        allowed = (CONFIRMED, REJECTED, PENDING) if automated else (ADDED, REJECTED)
        if decision not in allowed:
            raise ReviewError(f"{key}: decision {decision!r}; expected one of {', '.join(allowed)}")
        deposits[index] = dataclasses.replace(current, decision=decision, reviewer=reviewer, time=time)
        return tuple(deposits), f"{decision} {key}"
    if op == "redraw":
        outline = check_outline(edit.get("outline_xy"), key, review.slide_dimensions)
        decision = ADDED if key.startswith("drawn") else CORRECTED
        deposits[index] = measured_deposit(review, key, decision, outline, reviewer, time)
        return tuple(deposits), f"redrew {key}"
    if op == "delete" and key.startswith("drawn"):
        del deposits[index]
        return tuple(deposits), f"deleted {key}"
    raise ReviewError(f"unknown edit {op!r}; expected decide, draw, redraw, delete (drawn only) or status")


def apply_edit(review: SlideReview, edit: Mapping[str, Any], base_revision: Any, reviewer: Any,
               time: str | None = None) -> SlideReview:
    """The review after one edit made on ``base_revision`` by ``reviewer``; revision + 1 and
    a history entry. Edits (JSON objects): {"op": "decide", "key", "decision"}, {"op": "draw",
    "outline_xy"}, {"op": "redraw", "key", "outline_xy"}, {"op": "delete", "key"} (drawn
    deposits), {"op": "status", "status", "note"}.

    Raises ReviewConflictError when ``base_revision`` is not the current revision, ReviewError
    for a malformed edit.
    """
    if not isinstance(base_revision, int) or isinstance(base_revision, bool):
        raise ReviewError(f"base_revision {base_revision!r} is not a revision number; reload the page")
    if base_revision != review.revision:
        by = f" by {review.reviewer}" if review.reviewer else ""
        raise ReviewConflictError(
            f"{review.slide_id}: the review was saved elsewhere (revision {review.revision}{by} at "
            f"{review.updated}) after the revision {base_revision} you edited; your edit was NOT saved. "
            "The current review is shown now: check it and redo your edit."
        )
    name = check_text(reviewer, "reviewer", required=True)
    time = time or now_utc()
    deposits, status, note = review.deposits, review.status, review.note
    if edit.get("op") == "status":
        status = str(edit.get("status"))
        if status not in STATUSES:
            raise ReviewError(f"status {status!r}; expected one of {', '.join(STATUSES)}")
        note = check_text(edit.get("note", note), "note", required=False)
        action = f"marked {status}" + (f"; note: {note}" if note != review.note else "")
    else:
        deposits, action = _edit_deposits(review, edit, name, time)
    revision = review.revision + 1
    entry = {"revision": revision, "time": time, "reviewer": name, "action": action}
    return dataclasses.replace(review, revision=revision, status=status, note=note, reviewer=name,
                               updated=time, deposits=deposits, history=(*review.history, entry))


# --- what flows on --------------------------------------------------------------------------


def review_counts(review: SlideReview) -> dict[str, int]:
    """How many automated deposits were confirmed, corrected, rejected or left pending, how
    many the reviewer added (drawn and not rejected), and apart from them how many candidates
    for review were confirmed (or redrawn), rejected or left pending (CANDIDATE_COUNTS)."""
    counts = {decision: 0 for decision in DECISIONS} | {name: 0 for name in CANDIDATE_COUNTS.values()}
    for deposit in review.deposits:
        if deposit.key.startswith("drawn") and deposit.decision == REJECTED:
            continue
        counts[CANDIDATE_COUNTS[deposit.decision] if deposit.is_candidate else deposit.decision] += 1
    return counts


def keep_superseded_review(old_folder: Path, new_folder: Path) -> Path | None:
    """When a slide is analysed again, move its review from the old result folder into the new
    one as review.superseded-<UTC time>.geojson (and .xml), so a re-run never deletes a
    pathologist's work; the new result starts unreviewed. Returns the kept GeoJSON, if any."""
    old = Path(old_folder) / REVIEW_GEOJSON
    if not old.is_file() or old.is_symlink():
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = Path(new_folder) / f"review.superseded-{stamp}.geojson"
    old.replace(kept)
    xml = Path(old_folder) / REVIEW_XML
    if xml.is_file() and not xml.is_symlink():
        xml.replace(kept.with_suffix(".xml"))
    log.warning("%s: the slide was analysed again; its review is kept as %s (load it back with "
                "`micromet review import` if its outlines still apply)", old_folder.name, kept)
    return kept
