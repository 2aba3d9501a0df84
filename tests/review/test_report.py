"""Tests of pipeline/review/report.py: report.json's review and cell-rule fields, summary.csv, size text."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.batch.folder import entry_from_dict
from pipeline.review.report import (
    RESEARCH_USE_NOTICE,
    SUMMARY_COLUMNS,
    build_report,
    deposit_size_text,
    summary_row,
    upper_bound_mm,
)

REASON = "0.500 mm is above the 0.2 mm ITC limit but only 120 tumor nuclei were counted (< 200)"


def _deposit(id_: int, size_mm: float, review: str | None = None) -> dict[str, Any]:
    return {
        "id": id_, "category": "micro" if size_mm > 0.2 else "itc", "max_diameter_mm": size_mm,
        "max_diameter_uncertainty_mm": 0.0905, "max_diameter_is_upper_bound": size_mm <= 0.0905,
        "review": review,
    }


def _report(settings: dict[str, Any]) -> dict[str, Any]:
    deposits = [_deposit(2, 0.0905), _deposit(1, 0.5, REASON)]
    return build_report("s1", {"mpp": 0.25}, {}, settings, "micro", 0.9, deposits, 10, {})


def test_report_lists_review_reasons_and_the_cell_rule() -> None:
    report = _report({"deposits": {"cell_rule": "literal"}})
    assert report["review"] == [f"deposit 1: {REASON}"]
    assert report["cell_rule"] == "literal"
    assert _report({})["cell_rule"] == "size-first"  # the default, also for older settings


def test_summary_row_carries_review_and_cell_rule() -> None:
    assert {"review", "cell_rule"} <= set(SUMMARY_COLUMNS)
    row = summary_row("s1", entry_from_dict({"status": "done"}), _report({}))
    assert row["review"] == f"deposit 1: {REASON}"
    assert row["cell_rule"] == "size-first"
    clean = build_report("s2", {}, {}, {}, "itc", 0.9, [_deposit(1, 0.1)], 1, {})
    assert summary_row("s2", entry_from_dict({"status": "done"}), clean)["review"] == ""


@pytest.mark.parametrize(
    ("deposit", "text"),
    [
        (_deposit(1, 0.0905), "≤ 0.091 mm, one tile"),
        (_deposit(1, 0.452), "0.452 ± 0.090 mm"),
        # An older report without the flag: a size at most its own bound is one cell.
        ({"max_diameter_mm": 0.0905, "max_diameter_uncertainty_mm": 0.0905}, "≤ 0.091 mm, one tile"),
        ({"max_diameter_mm": 0.3}, "0.300 mm"),
    ],
)
def test_size_text_gives_an_upper_bound_for_one_tile(deposit: dict[str, Any], text: str) -> None:
    assert deposit_size_text(deposit) == text


def test_upper_bound_rounds_up_to_whole_micrometres() -> None:
    assert upper_bound_mm(0.0905) == 0.091
    assert upper_bound_mm(0.091) == 0.091
    assert upper_bound_mm(0.0910004) == 0.092


def test_research_notice_says_research_use_and_review() -> None:
    assert RESEARCH_USE_NOTICE.startswith("Research use only.")
    assert "pathologist" in RESEARCH_USE_NOTICE
