"""The batch folder format (pipeline.batch.folder): manifest round trip, readers' errors,
deposits read back from report.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.batch.folder import (
    MANIFEST_JSON,
    STATUS_DONE,
    STATUS_FAILED,
    Manifest,
    ManifestEntry,
    entry_from_dict,
    partial_folder,
    read_manifest,
    read_or_start_manifest,
    report_category,
    report_deposits,
    report_path,
    report_warning,
    slide_folder,
    write_manifest,
)
from pipeline.deposits.measure import Deposit
from pipeline.errors import EvaluationError, OutputError, StagingError
from pipeline.staging import Category


def _deposit(id_: int = 1) -> Deposit:
    outline = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
    return Deposit(id_, Category.MICRO, 0.4, 0.01, 0.1, 5.0, 5.0, 0.001, 0.001, (0, 0, 10, 10),
                   0.9, 0.8, None, False, outline, confirm_probability=0.95, size_calibrated=True)


def test_a_manifest_round_trips_with_fields_it_does_not_know(tmp_path: Path) -> None:
    manifest = Manifest("0.1.0", settings={"tissue": {"level": 2}}, settings_key="abc",
                        extra={"note": "kept"})
    manifest.slides["s1"] = ManifestEntry(path="/x/s1.svs", status=STATUS_DONE, output_dir="s1",
                                          category="micro", score=0.9, seconds=1.5,
                                          extra={"attempts": 2, "node": "10.0.0.3"})
    manifest.slides["s2"] = ManifestEntry(
        path="/x/s2.svs", status=STATUS_FAILED, output_dir="s2", error="boom"
    )
    write_manifest(tmp_path, manifest)
    document = json.loads((tmp_path / MANIFEST_JSON).read_text())
    assert document["note"] == "kept" and document["slides"]["s1"]["attempts"] == 2
    again = read_manifest(tmp_path)
    assert again == manifest
    assert again.slides["s1"].done and not again.slides["s2"].done
    assert again.slides["s2"].unavailable_reason() == "status 'failed': boom"


def test_entries_of_the_wrong_type_read_as_absent() -> None:
    entry = entry_from_dict({"status": "done", "score": "high", "seconds": True, "output_dir": 7})
    assert (entry.status, entry.score, entry.seconds, entry.output_dir) == ("done", None, None, "7")
    assert entry_from_dict(["not", "an", "object"]) == ManifestEntry(path=None, status=None)


def test_slide_and_working_folders_follow_the_entry(tmp_path: Path) -> None:
    assert slide_folder(tmp_path, "s1") == tmp_path / "s1"
    entry = ManifestEntry(path=None, status=STATUS_DONE, output_dir="elsewhere")
    assert report_path(tmp_path, "s1", entry) == tmp_path / "elsewhere" / "report.json"
    assert partial_folder(tmp_path, "s1") == tmp_path / ".s1.partial"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found; pass a batch"),
        ("{not json", "cannot read the batch manifest"),
        ('{"slides": []}', "expected a 'slides' object"),
    ],
)
def test_a_bad_manifest_is_one_error_of_the_callers_kind(
    tmp_path: Path, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / MANIFEST_JSON).write_text(content)
    with pytest.raises(StagingError, match=message):
        read_manifest(tmp_path, StagingError, "pass a batch to --batch")


def test_a_run_starts_a_manifest_and_refuses_an_unreadable_one(tmp_path: Path) -> None:
    assert read_or_start_manifest(tmp_path).slides == {}
    (tmp_path / MANIFEST_JSON).write_text("{broken")
    with pytest.raises(OutputError, match="move it away or use a new --out"):
        read_or_start_manifest(tmp_path)


def test_deposits_and_candidates_read_back_as_written(tmp_path: Path) -> None:
    deposit = _deposit()
    report = {"category": "micro", "deposits": [deposit.to_dict()], "qc": {"warning": "QC failed: x"}}
    path = tmp_path / "report.json"
    (read,) = report_deposits(report, path)
    assert read.to_dict() == deposit.to_dict()
    assert report_deposits(report, path, "candidates") == ()  # an older report has none
    assert report_category(report, path) is Category.MICRO
    assert report_warning(report, "qc") == "QC failed: x" and report_warning(report, "model") == ""


@pytest.mark.parametrize(
    ("deposits", "message"),
    [
        ({"id": 1}, "'deposits' is not a list"),
        (["x"], r"deposits\[0\] is not an object"),
        ([{"id": 1, "category": "micro"}], r"deposits\[0\]: deposit entry is missing"),
    ],
)
def test_a_malformed_deposit_names_the_file_and_the_entry(
    tmp_path: Path, deposits: object, message: str
) -> None:
    path = tmp_path / "report.json"
    with pytest.raises(EvaluationError, match=message) as caught:
        report_deposits({"deposits": deposits}, path, "deposits", EvaluationError)
    assert str(path) in str(caught.value) and "re-run the slide" in str(caught.value)


def test_a_non_finite_size_is_refused(tmp_path: Path) -> None:
    entry = _deposit().to_dict()
    entry["max_diameter_mm"] = float("nan")
    with pytest.raises(OutputError, match="not finite"):
        report_deposits({"deposits": [entry]}, tmp_path / "report.json")


def test_an_unknown_category_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="top-level 'category' is 'huge'"):
        report_category({"category": "huge"}, tmp_path / "report.json", StagingError)
