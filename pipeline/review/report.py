"""Reports: reads a slide's facts, model, settings and deposits, produces ``report.json`` and
the batch ``summary.csv`` (one row per slide, failed slides included with their error)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.batch.folder import SUMMARY_CSV, Manifest, ManifestEntry, read_report_or_none, report_path
from pipeline.errors import ReviewError
from pipeline.outputs import atomic_write_text, csv_safe_dict
from pipeline.review.review_files import read_slide_review
from pipeline.review.reviews import REVIEW_GEOJSON, check_review_matches, report_candidates
from pipeline.staging import DEFAULT_CELL_RULE

# Shown on every human-facing output: report.html, every viewer page, overlay.png's footer.
RESEARCH_USE_NOTICE = (
    "Research use only. Not a medical device and not validated for diagnosis: "
    "every result needs review by a pathologist."
)
SUMMARY_COLUMNS = (
    "slide_id",
    "status",
    "category",
    "reviewed",
    "automated_category",
    "qc_warning",
    "model_warning",
    "score",
    "largest_deposit_mm",
    "n_deposits",
    "n_itc",
    "n_micro",
    "n_macro",
    "n_candidates",
    "review",
    "cell_rule",
    "mpp",
    "mpp_source",
    "threshold",
    "threshold_source",
    "tissue_fraction",
    "n_tiles",
    "seconds",
    "path",
    "error",
)


def build_report(
    slide_id: str,
    slide_facts: dict[str, Any],
    model_facts: dict[str, Any],
    settings: dict[str, Any],
    category: str,
    score: float,
    deposits: Sequence[dict[str, Any]],
    n_tiles: int,
    timing_s: dict[str, float],
) -> dict[str, Any]:
    """The ``report.json`` dict (schema in docs/architecture.md); deposits largest first.

    ``review`` lists, per flagged deposit, why its size and cell count disagree; ``cell_rule``
    is the rule that made the categories (``settings["deposits"]["cell_rule"]``).
    """
    ordered = sorted(deposits, key=lambda d: float(d["max_diameter_mm"]), reverse=True)
    return {
        "micromet_version": __version__,
        "slide_id": slide_id,
        "slide": slide_facts,
        "model": model_facts,
        "settings": settings,
        "category": category,
        "score": round(float(score), 6),
        "largest_deposit_mm": ordered[0]["max_diameter_mm"] if ordered else None,
        "cell_rule": report_cell_rule(settings),
        "review": review_reasons(ordered),
        "n_tiles": int(n_tiles),
        "deposits": list(ordered),
        "timing_s": {name: round(value, 3) for name, value in timing_s.items()},
    }


def deposit_size_text(deposit: dict[str, Any]) -> str:
    """A deposit's size as a reader should take it, from its report.json entry.

    "0.452 ± 0.091 mm" for a measurement (± the grid bound, docs/architecture.md); "≤ 0.091 mm,
    one tile" when the size is not above the grid's resolution (``max_diameter_is_upper_bound``,
    or for older reports a size at most its own bound), rounded up so it stays a bound.
    """
    size = float(deposit["max_diameter_mm"])
    bound = deposit.get("max_diameter_uncertainty_mm")
    upper = deposit.get("max_diameter_is_upper_bound")
    if upper is None and bound is not None:
        upper = size <= float(bound) * (1.0 + 1e-9)
    if upper:
        return f"≤ {upper_bound_mm(size):.3f} mm, one tile"
    if bound is None:
        return f"{size:.3f} mm"
    return f"{size:.3f} ± {float(bound):.3f} mm"


def upper_bound_mm(size_mm: float) -> float:
    """``size_mm`` rounded up to whole µm (3 decimals in mm), so a printed bound stays a bound."""
    return math.ceil(size_mm * 1000.0 - 1e-6) / 1000.0


def report_cell_rule(settings: dict[str, Any]) -> str:
    """The cell rule recorded in a report's settings ("size-first" for older reports)."""
    deposits = settings.get("deposits")
    rule = deposits.get("cell_rule") if isinstance(deposits, dict) else None
    return str(rule or DEFAULT_CELL_RULE)


def review_reasons(deposits: Sequence[dict[str, Any]]) -> list[str]:
    """ "deposit N: reason" for every deposit with a review flag, in the given order."""
    return [f"deposit {d.get('id', '?')}: {d['review']}" for d in deposits if d.get("review")]


def summary_row(slide_id: str, entry: ManifestEntry, report: dict[str, Any] | None) -> dict[str, Any]:
    """One ``summary.csv`` row from a manifest entry and (for finished slides) its report."""
    row: dict[str, Any] = {column: "" for column in SUMMARY_COLUMNS}
    row.update(
        slide_id=slide_id,
        status=entry.status or "",
        path=entry.path or "",
        error=entry.error or "",
        seconds="" if entry.seconds is None else entry.seconds,
    )
    if report is not None:
        categories = [d["category"] for d in report.get("deposits", [])]
        row.update(
            category=report["category"],
            score=report["score"],
            largest_deposit_mm=report.get("largest_deposit_mm") or "",
            n_deposits=len(categories),
            n_itc=categories.count("itc"),
            n_micro=categories.count("micro"),
            n_macro=categories.count("macro"),
            n_candidates=len(report_candidates(report)),
            review=" | ".join(review_reasons(report.get("deposits", []))),
            cell_rule=report.get("cell_rule") or report_cell_rule(report.get("settings") or {}),
            mpp=report["slide"].get("mpp", ""),
            mpp_source=report["slide"].get("mpp_source", ""),
            threshold=(report.get("model") or {}).get("threshold", ""),
            threshold_source=(report.get("model") or {}).get("threshold_source", ""),
            qc_warning=(report.get("qc") or {}).get("warning", ""),
            model_warning=(report.get("model") or {}).get("warning", ""),
            tissue_fraction=report["slide"].get("tissue_fraction", ""),
            n_tiles=report.get("n_tiles", ""),
        )
    return row


def with_review(row: dict[str, Any], folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    """A summary row after the slide's pathologist review (``pipeline.review.reviews``): where
    the review is complete, ``category`` is the reviewed one, ``automated_category`` the
    model's and ``reviewed`` "complete (reviewer)"; "in progress" or why the file is unreadable
    otherwise."""
    try:
        review = read_slide_review(folder)
        if review is not None:
            check_review_matches(review, report, folder / REVIEW_GEOJSON)
    except ReviewError as exc:
        return {**row, "reviewed": f"review not used: {exc}"}
    if review is None:
        return row
    if not review.complete:
        return {**row, "reviewed": "in progress"}
    return {
        **row,
        "category": review.reviewed_category,
        "automated_category": row["category"],
        "reviewed": f"complete ({review.reviewer})",
    }


def write_summary_csv(out_dir: Path, manifest: Manifest) -> Path:
    """Rebuild ``summary.csv`` from the manifest and the finished slides' reports."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    for slide_id, entry in sorted(manifest.slides.items()):
        path = report_path(out_dir, slide_id, entry)
        report = read_report_or_none(path) if entry.done else None
        row = summary_row(slide_id, entry, report)
        if report is not None:
            row = with_review(row, path.parent, report)
        writer.writerow(csv_safe_dict(row))
    path = out_dir / SUMMARY_CSV
    atomic_write_text(path, buffer.getvalue())
    return path
