"""Output helpers: CSV cells that a spreadsheet would run as formulas are neutralised in
every CSV micromet writes; numbers stay numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.outputs import csv_safe, csv_unquote

HOSTILE = ['=HYPERLINK("http://x","y")', "+SUM(1)", "-2+3", "@cmd", "\t=1", "\r=1", "-"]


@pytest.mark.parametrize("text", HOSTILE)
def test_formula_starts_get_a_quote_and_read_back(text: str) -> None:
    assert csv_safe(text) == "'" + text
    assert csv_unquote(csv_safe(text)) == text


@pytest.mark.parametrize("value", ["-0.5", "+1e-3", "-12", ".5", "-1.25E+07", -0.5, 3, None, "a=b", ""])
def test_numbers_and_harmless_text_are_unchanged(value: object) -> None:
    assert csv_safe(value) == value
    if isinstance(value, str):
        assert csv_unquote(value) == value


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def _no_formula(rows: list[list[str]]) -> None:
    for row in rows:
        for cell in row:
            if cell.startswith(("=", "+", "-", "@", "\t", "\r")):
                float(cell)  # only plain numbers may start so


def test_summary_csv_neutralises_slide_ids_paths_and_errors(tmp_path: Path) -> None:
    from pipeline.batch.folder import Manifest, entry_from_dict
    from pipeline.review.report import write_summary_csv

    entry = entry_from_dict({"status": "failed", "path": "@evil.svs", "error": '=HYPERLINK("http://x")',
                             "seconds": -0.5})
    manifest = Manifest("0", {"=cmd": entry})
    rows = _rows(write_summary_csv(tmp_path, manifest))
    _no_formula(rows)
    row = dict(zip(rows[0], rows[1], strict=True))
    assert (row["slide_id"], row["path"], row["error"]) == ("'=cmd", "'@evil.svs",
                                                            '\'=HYPERLINK("http://x")')
    assert row["seconds"] == "-0.5"


def test_scores_csv_neutralises_paths_and_errors(tmp_path: Path) -> None:
    from pipeline.training.classify import PatchScore, write_scores_csv

    scores = [PatchScore("=x.png", 0.25), PatchScore("-y.png", None, "@bad")]
    path = write_scores_csv(tmp_path / "s.csv", scores)
    rows = _rows(path)
    _no_formula(rows)
    assert rows[1][0] == "'=x.png" and rows[2] == ["'-y.png", "", "'@bad"]


def test_sample_index_round_trips_a_hostile_slide_name(tmp_path: Path) -> None:
    from pipeline.training.sampling import PatchSample, read_sample_index, write_sample_index

    samples = [PatchSample("=evil.tif", -0.5, 12.25, 1, "train", "tumor")]
    path = write_sample_index(tmp_path / "samples.csv", samples)
    _no_formula(_rows(path))
    assert read_sample_index(path) == samples


def test_deposit_pairs_and_froc_csv_are_safe(tmp_path: Path) -> None:
    from pipeline.evaluation.batch import BatchEvaluation, write_evaluation
    from pipeline.evaluation.sizes import DepositPair, SizeResult

    pair = DepositPair("=s1", "@t", 0, 1.0, 0.5, -0.5, "micro", "micro", 3.0)
    sizes = SizeResult((pair,), 0.5, 1.0, np.zeros((3, 3), np.int64), 1, 1, (), ())
    evaluation = BatchEvaluation(None, None, None, None, sizes, {}, {}, ("=s1",))
    write_evaluation(evaluation, tmp_path)
    rows = _rows(tmp_path / "deposit_pairs.csv")
    _no_formula(rows)
    assert rows[1][:2] == ["'=s1", "'@t"] and "-0.5" in rows[1]
    assert json.loads((tmp_path / "evaluation.json").read_text())["evaluated_slides"] == ["=s1"]


def test_training_metrics_keep_negative_numbers(tmp_path: Path) -> None:
    from pipeline.training.metrics import METRIC_COLUMNS, append_metrics

    append_metrics(tmp_path / "metrics.csv", {"epoch": 0.0, "train_loss": -0.5})
    rows = _rows(tmp_path / "metrics.csv")
    assert rows[0] == list(METRIC_COLUMNS)
    assert dict(zip(rows[0], rows[1], strict=True))["train_loss"] == "-0.5"


def test_an_atomic_write_that_cannot_happen_is_one_output_error_naming_the_file(tmp_path: Path) -> None:
    from pipeline.errors import OutputError
    from pipeline.outputs import atomic_write_json, atomic_write_text

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=r"file/out\.json: cannot write here"):
        atomic_write_json(blocker / "out.json", {"a": 1})
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "taken").mkdir()  # a folder where the file should go: os.replace fails
    with pytest.raises(OutputError, match=r"taken: cannot write here"):
        atomic_write_text(folder / "taken", "text")
    assert sorted(p.name for p in folder.iterdir()) == ["taken"]  # no temporary file left
