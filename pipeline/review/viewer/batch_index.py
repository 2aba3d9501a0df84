"""Review: reads a batch output folder safely, produces slide records, reports and heatmaps.

Only slides recorded in ``manifest.json`` are known, and only files that resolve (after
following symlinks) inside the batch folder are read. Nothing here writes anything.
Layout: docs/architecture.md, "Batch output layout".
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

from pipeline.batch.folder import (
    REPORT_JSON,
    STATUS_DONE,
    ManifestEntry,
    manifest_path,
    read_manifest,
    read_report,
    report_deposits,
)
from pipeline.detection.heatmap import HEATMAP_ARRAY, HEATMAP_META, Heatmap, load_heatmap
from pipeline.errors import HeatmapError, OutputError, ReviewError
from pipeline.review.report import deposit_size_text, review_reasons
from pipeline.review.review_files import read_review
from pipeline.review.reviews import REVIEW_GEOJSON, SlideReview, check_review_matches, report_candidates

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SlideRecord:
    """One manifest entry.

    slide_path: the slide file the batch read (absolute; may lie outside the batch).
    output_dir: the slide's result folder, resolved and inside the batch; None when the
    manifest names a folder outside the batch (``problem`` says why).
    """

    slide_id: str
    status: str
    error: str | None
    slide_path: Path | None
    output_dir: Path | None
    problem: str | None = None


@dataclasses.dataclass(frozen=True)
class SlideSummary:
    """What a slide list shows: the record plus the headline numbers of its report.

    largest_deposit_text: the largest deposit's size as a reader should take it
    (``pipeline.review.report.deposit_size_text``), None without deposits. review: "deposit N:
    reason" for each deposit whose size and cell count disagree. cell_rule: the rule that
    made the categories. qc_warning: the slide-QC warning its category carries ("QC failed:
    ..."), None when QC passed or was not run. review_status: the pathologist review's
    status ("complete", "in progress"), None without one; where it is complete, ``category``
    is the reviewed category and ``automated_category`` the model's (else None).
    n_candidates: the report's candidates for review (ITC-size findings rescoring did not
    confirm; ``report_candidates``), not counted in ``category``.
    """

    record: SlideRecord
    category: str | None
    score: float | None
    largest_deposit_mm: float | None
    n_deposits: int
    problem: str | None
    largest_deposit_text: str | None = None
    review: tuple[str, ...] = ()
    cell_rule: str | None = None
    qc_warning: str | None = None
    review_status: str | None = None
    reviewer: str | None = None
    automated_category: str | None = None
    n_candidates: int = 0


def resolve_inside(root: Path, candidate: Path) -> Path | None:
    """``candidate`` (relative to ``root`` or absolute) resolved through symlinks, or None
    when it points outside ``root`` (itself already resolved)."""
    path = candidate if candidate.is_absolute() else root / candidate
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # symlink loops
        return None
    return resolved if resolved.is_relative_to(root) else None


def _record_from_entry(root: Path, slide_id: str, entry: ManifestEntry) -> SlideRecord:
    slide_path = None
    if entry.path:
        slide_path = Path(entry.path) if Path(entry.path).is_absolute() else root / entry.path
    raw_output = entry.output_dir or slide_id
    output_dir = resolve_inside(root, Path(raw_output))
    problem = None
    if output_dir is None:
        problem = f"output folder {raw_output!r} is outside the batch folder; not shown"
        log.warning("%s: %s", slide_id, problem)
    return SlideRecord(
        slide_id=slide_id,
        status=entry.status if entry.status is not None else "unknown",
        error=entry.error,
        slide_path=slide_path,
        output_dir=output_dir,
        problem=problem,
    )


class BatchIndex:
    """The slides of one batch folder, re-read when ``manifest.json`` changes (a batch may
    still be running). Thread-safe; never writes."""

    def __init__(self, batch_dir: Path) -> None:
        try:
            self.root = Path(batch_dir).resolve()
        except RuntimeError as exc:  # Python 3.11 raises this for a symbolic link loop
            raise OutputError(f"{batch_dir}: a symbolic link loop, not a batch folder; pass the folder "
                              "`micromet infer --out` wrote") from exc
        self.manifest_path = manifest_path(self.root)
        read_manifest(self.root)  # raises OutputError for a folder without a readable manifest
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._records: dict[str, SlideRecord] = {}
        self._reports: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}
        self.records()

    def records(self) -> dict[str, SlideRecord]:
        """Slide id -> record, in manifest order; raises OutputError for a bad manifest."""
        with self._lock:
            try:
                stat = self.manifest_path.stat()
            except OSError as exc:
                raise OutputError(
                    f"{self.manifest_path}: cannot read the batch manifest ({exc.strerror})"
                ) from exc
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._records = self._read_manifest()
                self._stamp = stamp
            return dict(self._records)

    def _read_manifest(self) -> dict[str, SlideRecord]:
        slides = read_manifest(self.root).slides
        return {slide_id: _record_from_entry(self.root, slide_id, entry)
                for slide_id, entry in slides.items()}

    def record(self, slide_id: str) -> SlideRecord | None:
        """The record of ``slide_id``, or None when the manifest does not list it."""
        return self.records().get(slide_id)

    def output_file(self, record: SlideRecord, name: str) -> Path | None:
        """``name`` in the slide's output folder if it is a file inside the batch, else None."""
        if record.output_dir is None:
            return None
        path = resolve_inside(self.root, record.output_dir / name)
        return path if path is not None and path.is_file() else None

    def report(self, record: SlideRecord) -> dict[str, Any] | None:
        """The slide's report.json (cached until it changes), or None when it is missing.

        Raises OutputError when the file exists but is not a JSON object.
        """
        path = self.output_file(record, REPORT_JSON)
        if path is None:
            return None
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._reports.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        report = read_report(path)
        with self._lock:
            self._reports[path] = (stamp, report)
        return report

    def heatmap(self, record: SlideRecord) -> Heatmap | None:
        """The slide's heatmap, or None when its files are missing or outside the batch.

        Raises HeatmapError when the files exist but are inconsistent.
        """
        array = self.output_file(record, HEATMAP_ARRAY)
        meta = self.output_file(record, HEATMAP_META)
        # Both must be real files of those names in one folder inside the batch, so that
        # load_heatmap (which joins the names to the folder) reads exactly these two.
        if array is None or meta is None or array.parent != meta.parent:
            return None
        if (array.name, meta.name) != (HEATMAP_ARRAY, HEATMAP_META):
            return None
        return load_heatmap(array.parent)

    def summary(self, record: SlideRecord) -> SlideSummary:
        """Headline numbers of one slide; a missing or unreadable report becomes ``problem``."""
        problem = record.problem
        report: dict[str, Any] | None = None
        if problem is None and record.status == STATUS_DONE:
            try:
                report = self.report(record)
                if report is not None:  # damaged deposits are named here, not met mid-drawing
                    for field in ("deposits", "candidates"):
                        report_deposits(report, Path(record.slide_id) / REPORT_JSON, field)
            except OutputError as exc:
                problem = str(exc)
            if report is None and problem is None:
                problem = "report.json is missing (incomplete output folder)"
        review = None
        if report is not None and problem is None:
            review, problem = self._review(record, report)
        report = report or {}
        deposits = report.get("deposits")
        deposits = [d for d in deposits if isinstance(d, dict)] if isinstance(deposits, list) else []
        candidates = report_candidates(report)
        summary = SlideSummary(
            record=record,
            category=_optional_str(report.get("category")),
            score=_optional_float(report.get("score")),
            largest_deposit_mm=_optional_float(report.get("largest_deposit_mm")),
            n_deposits=len(deposits),
            problem=problem,
            largest_deposit_text=_largest_text(deposits),
            review=tuple(str(reason) for reason in report.get("review") or review_reasons(deposits)),
            cell_rule=_optional_str(report.get("cell_rule")) if report else None,
            qc_warning=_optional_str((report.get("qc") or {}).get("warning")) or None,
            n_candidates=len(candidates),
        )
        return summary if review is None else _reviewed(summary, review)

    def _review(self, record: SlideRecord, report: dict[str, Any]) -> tuple[SlideReview | None, str | None]:
        """The slide's pathologist review, or (None, why it cannot be used)."""
        path = self.output_file(record, REVIEW_GEOJSON)
        if path is None:
            return None, None
        try:
            review = read_review(path)
            check_review_matches(review, report, path)
        except ReviewError as exc:
            return None, str(exc)
        return review, None

    def summaries(self) -> list[SlideSummary]:
        """Summaries of every slide, in manifest order."""
        return [self.summary(record) for record in self.records().values()]


def _reviewed(summary: SlideSummary, review: SlideReview) -> SlideSummary:
    if not review.complete:
        return dataclasses.replace(summary, review_status=review.status, reviewer=review.reviewer)
    return dataclasses.replace(
        summary,
        category=review.reviewed_category,
        automated_category=summary.category,
        review_status=review.status,
        reviewer=review.reviewer,
    )


def _largest_text(deposits: list[dict[str, Any]]) -> str | None:
    largest = max(deposits, key=lambda d: _optional_float(d.get("max_diameter_mm")) or 0.0, default=None)
    if largest is None or _optional_float(largest.get("max_diameter_mm")) is None:
        return None
    try:
        return deposit_size_text(largest)
    except (TypeError, ValueError):
        return None


def _optional_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def load_heatmap_or_none(index: BatchIndex, record: SlideRecord) -> Heatmap | None:
    """The slide's heatmap, or None (logged) when it is missing or unreadable."""
    try:
        return index.heatmap(record)
    except HeatmapError as exc:
        log.warning("%s: heatmap not shown: %s", record.slide_id, exc)
        return None
