"""Slides drawn as cartoons: report.html, the viewer and ``micromet stage`` say on their first
screen that the categories are not meaningful, and mark them; real-texture slides are not marked."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.review.cartoon import (
    CARTOON_MARK,
    batch_cartoon_slides,
    cartoon_notice,
    is_cartoon_slide,
    truth_path,
)
from pipeline.review.viewer.app import create_app
from pipeline.review.viewer.static_report import StaticReportConfig, build_static_report
from tests.viewer_batch import GOOD_ID, XSS_ID, ViewerBatch, build_viewer_batch, synthetic_slide

NOTICE_START = "slides here are synthetic cartoons"


def _truth(slide: Path, **fields: object) -> Path:
    slide.parent.mkdir(parents=True, exist_ok=True)
    slide.write_bytes(b"not read")
    data = {"generator": "micromet 0.1.0 synthetic", "slide": slide.name, **fields}
    truth_path(slide).write_text(json.dumps(data), encoding="utf-8")
    return slide


@pytest.mark.parametrize(
    ("fields", "cartoon"),
    [
        ({"texture": "cartoon"}, True),
        ({}, True),  # written before textures existed: all were drawn
        ({"texture": "real"}, False),
        ({"texture": "cartoon", "generator": "someone else"}, False),
    ],
)
def test_a_slide_is_a_cartoon_when_its_micromet_truth_file_says_so(
    tmp_path: Path, fields: dict[str, object], cartoon: bool
) -> None:
    slide = _truth(tmp_path / "node.tif", **fields)
    assert truth_path(slide) == tmp_path / "node.truth.json"
    assert is_cartoon_slide(slide) is cartoon


def test_a_slide_without_a_readable_truth_file_is_not_called_a_cartoon(tmp_path: Path) -> None:
    assert not is_cartoon_slide(None)
    assert not is_cartoon_slide(tmp_path / "plain.tif")
    (tmp_path / "broken.truth.json").write_text("{not json", encoding="utf-8")
    assert not is_cartoon_slide(tmp_path / "broken.tif")


def test_the_notice_counts_the_cartoon_slides() -> None:
    assert cartoon_notice([], 3) == ""
    assert cartoon_notice(["a", "b", "c"], 3).startswith("All slides here are synthetic cartoons")
    assert cartoon_notice(["a"], 3).startswith("1 of 3 slides here")
    assert "not meaningful" in cartoon_notice(["a"], 3)


# --- report.html and the viewer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> ViewerBatch:
    """The viewer tests' batch: two finished slides pointing at one cartoon synthetic slide."""
    return build_viewer_batch(tmp_path_factory.mktemp("cartoon_batch"), synthetic_slide(tmp_path_factory))


@pytest.fixture(scope="module")
def real_batch(batch: ViewerBatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same batch whose slide's truth file says it was painted from real texture."""
    root = tmp_path_factory.mktemp("real_batch")
    slide = root / "slides" / "node.tif"
    slide.parent.mkdir()
    shutil.copy(batch.slide.slide_path, slide)
    truth = json.loads(batch.slide.truth_path.read_text(encoding="utf-8"))
    truth_path(slide).write_text(json.dumps({**truth, "texture": "real"}), encoding="utf-8")
    shutil.copytree(batch.root, root / "batch")
    manifest = json.loads((root / "batch" / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["slides"].values():
        entry["path"] = str(slide)
    (root / "batch" / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root / "batch"


def _first_screen(html: str) -> str:
    """What comes before the page's main content (header, notices)."""
    return html.split('<main class="page">', 1)[0]


def test_report_says_on_its_first_screen_that_cartoon_categories_are_not_meaningful(
    batch: ViewerBatch,
) -> None:
    html = build_static_report(batch.root, StaticReportConfig(thumbnail_max_px=128))
    assert batch_cartoon_slides(batch.root) == sorted([GOOD_ID, XSS_ID])
    top = _first_screen(html)
    assert 'class="cartoon-notice"' in top and "2 of 3 " + NOTICE_START in top
    # the slide table and each slide's section mark both finished slides' categories
    assert html.count(CARTOON_MARK) >= 4


def test_report_of_real_texture_slides_carries_no_cartoon_notice(real_batch: Path) -> None:
    html = build_static_report(real_batch, StaticReportConfig(thumbnail_max_px=128))
    assert batch_cartoon_slides(real_batch) == []
    assert 'class="cartoon-notice"' not in html and CARTOON_MARK not in html


def test_viewer_batch_and_slide_pages_say_so_first_and_mark_the_categories(batch: ViewerBatch) -> None:
    client = create_app(batch.root).test_client()
    index = client.get("/").get_data(as_text=True)
    assert 'class="cartoon-notice"' in _first_screen(index) and NOTICE_START in index
    assert index.count(CARTOON_MARK) == 2  # one per finished slide; the failed one has no category
    page = client.get(f"/slide/{GOOD_ID}").get_data(as_text=True)
    assert page.index('class="cartoon-notice"') < page.index('id="viewer-root"')
    assert CARTOON_MARK in page


def test_viewer_of_real_texture_slides_carries_no_cartoon_notice(real_batch: Path) -> None:
    client = create_app(real_batch).test_client()
    for url in ("/", f"/slide/{GOOD_ID}"):
        page = client.get(url).get_data(as_text=True)
        assert 'class="cartoon-notice"' not in page and CARTOON_MARK not in page


# --- micromet stage -----------------------------------------------------------------------------


def _stage_batch(root: Path, textures: dict[str, str]) -> Path:
    """A batch folder of one patient's nodes; textures: slide id -> its truth file's texture."""
    manifest: dict[str, dict[str, object]] = {"slides": {}}
    for slide_id, texture in textures.items():
        slide = _truth(root / "slides" / f"{slide_id}.tif", texture=texture)
        (root / "batch" / slide_id).mkdir(parents=True)
        report = {"slide": slide_id, "category": "negative", "deposits": []}
        (root / "batch" / slide_id / "report.json").write_text(json.dumps(report), encoding="utf-8")
        manifest["slides"][slide_id] = {"path": str(slide), "status": "done", "output_dir": slide_id}
    (root / "batch" / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root / "batch"


def _stage_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_stage_says_first_that_cartoon_categories_are_not_meaningful(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = _stage_batch(
        tmp_path,
        {"patient_000_node_0": "cartoon", "patient_000_node_1": "real", "patient_001_node_0": "real"},
    )
    assert main(["stage", "--batch", str(batch), "--out", str(tmp_path / "stages.csv")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("micromet stage: NOTE: 1 of 3 " + NOTICE_START)
    table = {line.split()[0]: line for line in out[1:] if line.startswith("patient_")}
    assert "pN0 (not meaningful)" in table["patient_000"]
    assert "not meaningful" not in table["patient_001"]
    rows = {row["patient"]: row for row in _stage_rows(tmp_path / "stages.csv")}
    assert rows["patient_000"]["category_warning"] == "not meaningful: node_0 is a synthetic cartoon slide"
    assert rows["patient_001"]["category_warning"] == ""


def test_stage_json_stays_parseable_and_carries_the_mark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = _stage_batch(tmp_path, {"patient_000_node_0": "cartoon", "patient_000_node_1": "cartoon"})
    assert main(["stage", "--batch", str(batch), "--out", str(tmp_path / "s.csv"), "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert rows[0]["category_warning"] == "not meaningful: node_0, node_1 are synthetic cartoon slides"
    assert "All " + NOTICE_START in captured.err


def test_stage_of_real_texture_slides_has_no_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = _stage_batch(tmp_path, {"patient_000_node_0": "real"})
    assert main(["stage", "--batch", str(batch), "--out", str(tmp_path / "s.csv")]) == 0
    captured = capsys.readouterr()
    assert "NOTE" not in captured.out + captured.err and "not meaningful" not in captured.out
    assert _stage_rows(tmp_path / "s.csv")[0]["category_warning"] == ""
