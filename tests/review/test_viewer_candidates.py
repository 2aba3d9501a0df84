"""Candidates for review (ITC-size findings that rescoring in 8 poses did not confirm) in the
web viewer (Flask test client), the static report and its slide picture: counted beside the
category, listed apart from deposits, drawn dashed, never the slide's category. Reports written
before candidates existed (no ``candidates`` key) show none."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from pipeline.review.colors import CANDIDATE_COLOR, hex_to_rgb
from pipeline.review.viewer.app import create_app, review_token
from pipeline.review.viewer.render import render_review_image
from pipeline.review.viewer.static_report import StaticReportConfig, build_static_report
from tests.viewer_batch import (
    FAILED_ID,
    GOOD_ID,
    XSS_FOLDER,
    ViewerBatch,
    build_viewer_batch,
    deposit_entry,
    synthetic_slide,
)

CANDIDATE_ID = "node_candidates"
CONFIRM_PROBABILITIES = (0.42, 0.137)
NOTE = "not counted in the category"


def candidate_entries(batch: ViewerBatch) -> list[dict[str, Any]]:
    """Two report.json candidates (deposit fields), built by hand from the planted ITC."""
    slide = batch.slide
    mpp = slide.mpp if slide.mpp is not None else slide.render_mpp
    entries = []
    for number, (confirm, shift_px) in enumerate(zip(CONFIRM_PROBABILITIES, (0.0, 120.0), strict=True), 1):
        entry = deposit_entry(slide.deposits[-1], mpp)
        entry["outline_xy"] = [[x + shift_px, y] for x, y in entry["outline_xy"]]
        entry["centroid_x_px"] += shift_px
        entry["centroid_x_mm"] = entry["centroid_x_px"] * mpp / 1000
        entry["bbox_x_px"] += int(shift_px)
        entry.update(id=number, category="itc", cell_count=None, review=None,
                     max_probability=0.91, confirm_probability=confirm, size_calibrated=True)
        entries.append(entry)
    return entries


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> ViewerBatch:
    """The viewer test batch plus a negative slide with two candidates for review."""
    batch = build_viewer_batch(tmp_path_factory.mktemp("batch"), synthetic_slide(tmp_path_factory))
    folder = batch.root / CANDIDATE_ID
    shutil.copytree(batch.root / XSS_FOLDER, folder)
    report = json.loads((folder / "report.json").read_text())
    report.update(slide_id=CANDIDATE_ID, candidates=candidate_entries(batch))
    report["settings"] = {"confirm_threshold": 0.6}
    (folder / "report.json").write_text(json.dumps(report))
    manifest = json.loads((batch.root / "manifest.json").read_text())
    manifest["slides"][CANDIDATE_ID] = {
        "path": str(batch.slide.slide_path), "status": "done", "error": None, "output_dir": CANDIDATE_ID
    }
    (batch.root / "manifest.json").write_text(json.dumps(manifest))
    return batch


@pytest.fixture(scope="module")
def client(batch: ViewerBatch) -> FlaskClient:
    return create_app(batch.root).test_client()


def test_api_counts_candidates_per_slide_and_none_for_old_reports(client: FlaskClient) -> None:
    slides = {s["slide_id"]: s for s in client.get("/api/slides").get_json()["slides"]}
    assert slides[CANDIDATE_ID]["n_candidates"] == 2
    assert slides[CANDIDATE_ID]["category"] == "negative" and slides[CANDIDATE_ID]["n_deposits"] == 0
    assert slides[GOOD_ID]["n_candidates"] == 0  # report.json without a "candidates" key
    assert slides[FAILED_ID]["n_candidates"] == 0


def test_api_slide_gives_the_candidates_apart_from_deposits(client: FlaskClient, batch: ViewerBatch) -> None:
    data = client.get(f"/api/slide/{CANDIDATE_ID}").get_json()
    assert data["candidates"] == candidate_entries(batch)
    assert data["report"]["deposits"] == [] and data["category"] == "negative"
    assert [c["confirm_probability"] for c in data["candidates"]] == list(CONFIRM_PROBABILITIES)
    old = client.get(f"/api/slide/{GOOD_ID}").get_json()
    assert "candidates" not in old["report"] and old["candidates"] == []
    assert client.get(f"/api/slide/{FAILED_ID}").get_json()["candidates"] == []


def test_slide_list_shows_the_candidate_count_beside_the_category(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    row = html[html.index(f'href="/slide/{CANDIDATE_ID}"'):]
    row = row[: row.index("</tr>")]
    assert "cat-negative" in row and "· 2 candidates for review" in row
    assert html.count("candidates for review") == 1  # no other slide has any


def test_slide_page_lists_candidates_apart_with_size_centroid_and_probabilities(
    client: FlaskClient, batch: ViewerBatch
) -> None:
    html = client.get(f"/slide/{CANDIDATE_ID}").get_data(as_text=True)
    assert "· 2 candidates for review" in html
    table = html[html.index('id="candidate-table"'):]
    table = table[: table.index("</table>")]
    assert table.count("<tr data-candidate-index=") == 2
    first = candidate_entries(batch)[0]
    assert f"{first['max_diameter_mm']:.3f} ± {first['max_diameter_uncertainty_mm']:.3f} mm" in table
    assert f"{first['centroid_x_mm']:.3f}, {first['centroid_y_mm']:.3f}" in table
    assert "0.420" in table and "0.137" in table and "0.910" in table
    assert f"Candidates for review <small>{NOTE}</small>" in html
    assert "confirm p below 0.60" in html
    assert 'id="candidate-toggle"' in html
    deposits = html[html.index('<h2>Deposits</h2>'):html.index('id="candidates"')]
    assert "no deposits" in deposits and "data-candidate-index" not in deposits


def test_pages_of_reports_without_candidates_show_none(client: FlaskClient) -> None:
    html = client.get(f"/slide/{GOOD_ID}").get_data(as_text=True)
    assert "candidate-table" not in html and "candidate-toggle" not in html
    assert "candidates for review" not in html


@pytest.mark.parametrize("value", ["junk", {"id": 1}, [17, None]])
def test_a_malformed_candidates_field_reads_as_none(tmp_path: Path, batch: ViewerBatch, value: Any) -> None:
    root = tmp_path / "batch"
    shutil.copytree(batch.root, root)
    path = root / CANDIDATE_ID / "report.json"
    report = json.loads(path.read_text())
    report["candidates"] = value
    path.write_text(json.dumps(report))
    client = create_app(root).test_client()
    assert client.get(f"/api/slide/{CANDIDATE_ID}").get_json()["candidates"] == []
    page = client.get(f"/slide/{CANDIDATE_ID}")
    assert page.status_code == 200 and "candidate-table" not in page.get_data(as_text=True)


def test_static_report_counts_and_lists_candidates_not_in_the_category(batch: ViewerBatch) -> None:
    html = build_static_report(batch.root, StaticReportConfig(thumbnail_max_px=200))
    section = html[html.index(f"<h2>{CANDIDATE_ID} "):]
    section = section[: section.index("</section>")]
    heading = section[: section.index("</h2>")]
    assert "cat-negative" in heading and "· 2 candidates for review" in heading
    assert f"Candidates for review <small>{NOTE}</small>" in section
    assert section.count("<tr data-candidate-index=") == 2
    assert "0.420" in section and "0.137" in section
    assert "candidates for review dashed" in section  # the picture's caption
    assert "<dt>candidates</dt><dd>2 for review, not counted in the category</dd>" in section
    good = html[html.index(f"<h2>{GOOD_ID} "):]
    good = good[: good.index("</section>")]
    assert "candidate" not in good  # an old report.json: no candidates anywhere
    assert html.count("<tr data-index=") == 2  # the deposits table still holds only deposits


def _candidate_pixels(image: Image.Image) -> int:
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(hex_to_rgb(CANDIDATE_COLOR))).sum(axis=2) <= 6).sum())


def test_the_slide_picture_draws_candidates_dashed_in_their_own_colour(batch: ViewerBatch) -> None:
    base = Image.new("RGB", (550, 450), (255, 255, 255))
    dimensions = (batch.slide.width_px, batch.slide.height_px)
    candidates = candidate_entries(batch)
    plain = render_review_image(base, dimensions, None, None, [], 0.6)
    drawn = render_review_image(base, dimensions, None, None, [], 0.6, candidates)
    assert _candidate_pixels(plain) == 0 and _candidate_pixels(drawn) > 20
    # Dashed: walking along the first candidate's outline, its colour comes and goes.
    outline = np.asarray(candidates[0]["outline_xy"] + candidates[0]["outline_xy"][:1]) * 0.5
    points = [a + t * (b - a) for a, b in itertools.pairwise(outline)
              for t in np.linspace(0, 1, 8, endpoint=False)]
    pixels = np.asarray(drawn).astype(int)
    target = np.array(hex_to_rgb(CANDIDATE_COLOR))
    on = [bool(np.abs(pixels[round(y), round(x)] - target).sum() <= 6) for x, y in points]
    assert 0.2 < sum(on) / len(on) < 0.8


def test_a_reviewer_confirms_a_candidate_or_rejects_it(tmp_path: Path, batch: ViewerBatch) -> None:
    root = tmp_path / "batch"
    shutil.copytree(batch.root, root)
    app = create_app(root, review=True)
    client = app.test_client()
    url = f"/api/review/{CANDIDATE_ID}"
    review = client.get(url).get_json()["review"]
    assert [(d["key"], d["decision"]) for d in review["deposits"]] == [
        ("candidate 1", "pending"), ("candidate 2", "pending")]
    assert review["reviewed_category"] == "negative" and review["counts"]["pending candidates"] == 2
    headers = {"X-Micromet-Token": review_token(app) or "", "Origin": "http://localhost"}

    def decide(revision: int, key: str, decision: str) -> dict[str, Any]:
        edit = {"op": "decide", "key": key, "decision": decision}
        body = {"base_revision": revision, "reviewer": "Dr Ana", "edit": edit}
        response = client.post(url, json=body, headers=headers)
        assert response.status_code == 200, response.get_json()
        result: dict[str, Any] = response.get_json()["review"]
        return result

    review = decide(0, "candidate 1", "confirmed")
    assert review["reviewed_category"] == "itc"
    review = decide(1, "candidate 2", "rejected")
    assert review["counts"]["confirmed candidates"] == 1 and review["counts"]["rejected candidates"] == 1
    status = {"op": "status", "status": "complete", "note": ""}
    done = client.post(url, json={"base_revision": 2, "reviewer": "Dr Ana", "edit": status}, headers=headers)
    assert done.status_code == 200
    slides = {s["slide_id"]: s for s in client.get("/api/slides").get_json()["slides"]}
    assert slides[CANDIDATE_ID]["category"] == "itc"  # the reviewed category, a confirmed candidate
    assert client.get(f"/api/slide/{CANDIDATE_ID}").get_json()["report"]["category"] == "negative"
    summary = (root / "summary.csv").read_text()
    assert f"{CANDIDATE_ID},done,itc,complete (Dr Ana),negative" in summary


def test_the_candidate_note_names_the_second_stage_when_the_card_has_one(batch: ViewerBatch) -> None:
    app = create_app(batch.root)
    template = app.jinja_env.from_string(
        '{% from "_macros.html" import candidate_table %}{{ candidate_table([], settings, false) }}'
    )
    with app.app_context():
        staged = template.render(settings={"confirm_threshold": None, "confirm_model": {"threshold": 0.46}})
        plain = template.render(settings={"confirm_threshold": 0.8, "confirm_model": {}})
        old = template.render(settings=None)
    staged, plain, old = (
        html[html.index('class="candidate-note"') : html.index("</p>")] for html in (staged, plain, old)
    )
    assert "second stage" in staged and "p below 0.46" in staged
    assert "second stage" not in plain and "confirm p below 0.80" in plain
    assert "second stage" not in old and old.endswith("did not confirm. Each needs a pathologist's look.")
