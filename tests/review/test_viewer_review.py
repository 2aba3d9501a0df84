"""Pathologist review through the viewer's server (Flask test client) and the commands the
reviewed answers flow into: token, Host and Origin refusals, stale-write conflicts, writes
only inside the batch, summary.csv, ``stage``, report.html, ``evaluate --reviews`` and
``review import``."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from pipeline.cli import main
from pipeline.cli import view as view_command
from pipeline.review.reviews import REVIEW_GEOJSON, REVIEW_XML
from pipeline.review.viewer.app import create_app, review_token
from pipeline.review.viewer.static_report import build_static_report
from tests.viewer_batch import (
    FAILED_ID,
    GOOD_ID,
    XSS_ID,
    ViewerBatch,
    build_viewer_batch,
    snapshot,
    synthetic_slide,
)

URL = f"/api/review/{GOOD_ID}"
REJECT_MICRO = {"op": "decide", "key": "deposit 1", "decision": "rejected"}


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> ViewerBatch:
    return build_viewer_batch(tmp_path_factory.mktemp("batch"), synthetic_slide(tmp_path_factory))


@pytest.fixture
def root(tmp_path: Path, batch: ViewerBatch) -> Path:
    """A private copy of the batch, with patients.csv: the good slide is patient P1's only node."""
    copy = tmp_path / "batch"
    shutil.copytree(batch.root, copy, symlinks=True)
    with (copy / "patients.csv").open("w", newline="") as handle:
        rows = [("slide", "patient"), (GOOD_ID, "P1"), (FAILED_ID, "P2"), (XSS_ID, "P3")]
        csv.writer(handle).writerows(rows)
    return copy


@pytest.fixture
def app(root: Path) -> Flask:
    return create_app(root, review=True)


def _post(client: FlaskClient, app: Flask, body: dict[str, Any], **headers: str) -> Any:
    sent = {"X-Micromet-Token": review_token(app) or "", "Origin": "http://localhost", **headers}
    return client.post(URL, json=body, headers={k: v for k, v in sent.items() if v is not None})


def _edit(revision: int, edit: dict[str, Any], reviewer: str = "Dr Ana") -> dict[str, Any]:
    return {"base_revision": revision, "reviewer": reviewer, "edit": edit}


def test_a_token_is_made_per_run_only_in_review_mode(root: Path) -> None:
    first, second = create_app(root, review=True), create_app(root, review=True)
    assert review_token(create_app(root)) is None
    token = review_token(first)
    assert token and len(token) >= 32 and token != review_token(second)


def test_without_review_mode_nothing_can_be_written(root: Path) -> None:
    before = snapshot(root)
    client = create_app(root).test_client()
    response = client.post(URL, json=_edit(0, REJECT_MICRO), headers={"X-Micromet-Token": "guess"})
    assert response.status_code == 403 and "micromet view --review" in response.get_json()["error"]
    assert client.get(URL).get_json()["writable"] is False  # the review can still be read
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X-Micromet-Token": None}, "token is missing or wrong"),
        ({"X-Micromet-Token": "not-the-token"}, "token is missing or wrong"),
        ({"Origin": "http://evil.example"}, "a write from 'http://evil.example' is refused"),
        ({"Origin": "http://localhost:9999"}, "is refused"),
        ({"Sec-Fetch-Site": "cross-site"}, "from another site is refused"),
        ({"Host": "evil.example"}, "Host 'evil.example' is not this viewer"),
    ],
)
def test_writes_from_elsewhere_or_without_the_token_are_refused(
    app: Flask, root: Path, headers: dict[str, str], message: str
) -> None:
    before = snapshot(root)
    response = _post(app.test_client(), app, _edit(0, REJECT_MICRO), **headers)
    assert response.status_code == 403
    assert message in response.get_json()["error"]
    assert snapshot(root) == before


@pytest.mark.parametrize("url", ["/", "/api/slides", URL, f"/slide/{GOOD_ID}", f"/heatmap/{GOOD_ID}.png"])
def test_reads_naming_another_host_are_refused(app: Flask, url: str) -> None:
    client = app.test_client()
    assert client.get(url, headers={"Host": "rebind.evil.example:8000"}).status_code == 403
    assert client.get(url, headers={"Host": "127.0.0.1:8000"}).status_code == 200
    assert client.get(url, headers={"Host": "[::1]:8000"}).status_code == 200


def test_hosts_the_user_names_are_answered(root: Path) -> None:
    client = create_app(root, allowed_hosts=["Slides.Lab"]).test_client()
    assert client.get("/", headers={"Host": "slides.lab:8000"}).status_code == 200
    assert client.get("/", headers={"Host": "other.lab:8000"}).status_code == 403


def test_a_write_with_the_token_lands_only_in_the_slides_folder(app: Flask, root: Path) -> None:
    before = snapshot(root)
    response = _post(app.test_client(), app, _edit(0, REJECT_MICRO))
    assert response.status_code == 200, response.get_json()
    review = response.get_json()["review"]
    assert review["revision"] == 1 and review["reviewed_category"] == "itc"
    changed = {path for path, stamp in snapshot(root).items() if before.get(path) != stamp}
    # report.json (the automated result) and everything else are untouched
    assert changed == {f"{GOOD_ID}/{REVIEW_GEOJSON}", f"{GOOD_ID}/{REVIEW_XML}", GOOD_ID}


def test_a_stale_write_from_a_second_tab_is_refused_with_the_current_review(app: Flask, root: Path) -> None:
    tab1, tab2 = app.test_client(), app.test_client()
    assert tab1.get(URL).get_json()["review"]["revision"] == 0
    assert tab2.get(URL).get_json()["review"]["revision"] == 0
    assert _post(tab1, app, _edit(0, REJECT_MICRO, "tab one")).status_code == 200
    confirm = {"op": "decide", "key": "deposit 1", "decision": "confirmed"}
    response = _post(tab2, app, _edit(0, confirm, "tab two"))
    body = response.get_json()
    assert response.status_code == 409 and body["conflict"] is True
    assert "revision 1 by tab one" in body["error"] and "NOT saved" in body["error"]
    assert body["review"]["revision"] == 1  # tab two now sees tab one's edit
    assert body["review"]["deposits"][0]["decision"] == "rejected"
    saved = json.loads((root / GOOD_ID / REVIEW_GEOJSON).read_text())
    assert saved["micromet_review"]["revision"] == 1
    assert saved["features"][0]["properties"]["decision"] == "rejected"
    assert _post(tab2, app, _edit(1, confirm, "tab two")).status_code == 200  # redone on the new revision


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("not json", 400, "expected a JSON object"),
        ({"base_revision": 0, "reviewer": "A", "edit": {"op": "draw", "outline_xy": [[0, 0]]}}, 400, "3 to"),
        ({"base_revision": "0", "reviewer": "A", "edit": REJECT_MICRO}, 400, "not a revision number"),
    ],
)
def test_bad_edits_are_400_with_a_reason(
    app: Flask, root: Path, body: Any, status: int, message: str
) -> None:
    client = app.test_client()
    headers = {"X-Micromet-Token": review_token(app) or "", "Content-Type": "application/json"}
    data = body if isinstance(body, str) else json.dumps(body)
    response = client.post(URL, data=data, headers=headers)
    assert response.status_code == status and message in response.get_json()["error"]
    assert not (root / GOOD_ID / REVIEW_GEOJSON).exists()


def test_a_failed_slide_has_nothing_to_review(app: Flask, root: Path) -> None:
    client = app.test_client()
    response = client.post(f"/api/review/{FAILED_ID}", json=_edit(0, REJECT_MICRO),
                           headers={"X-Micromet-Token": review_token(app) or ""})
    assert response.status_code == 400 and "no result to review" in response.get_json()["error"]
    assert not (root / FAILED_ID).exists()
    assert client.post("/api/review/no_such_slide", json={},
                       headers={"X-Micromet-Token": review_token(app) or ""}).status_code == 404


def test_a_review_file_linked_outside_the_batch_is_neither_read_nor_written(
    app: Flask, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.geojson"
    outside.write_text("{}")
    (root / GOOD_ID / REVIEW_GEOJSON).symlink_to(outside)
    client = app.test_client()
    assert "not a regular file inside the batch" in client.get(URL).get_json()["error"]
    response = _post(client, app, _edit(0, REJECT_MICRO))
    assert response.status_code == 400
    assert outside.read_text() == "{}"


def _review_the_good_slide(app: Flask) -> None:
    client = app.test_client()
    drawn = [[100.0, 100.0], [160.0, 100.0], [160.0, 150.0], [100.0, 150.0]]  # 78 px = 0.156 mm: itc
    for revision, edit in enumerate([REJECT_MICRO, {"op": "draw", "outline_xy": drawn},
                                     {"op": "status", "status": "complete", "note": "one false micro"}]):
        response = _post(client, app, _edit(revision, edit))
        assert response.status_code == 200, response.get_json()


def test_a_complete_review_flows_into_the_viewer_summary_stage_and_report(
    app: Flask, root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = app.test_client()
    assert "pN1mi" in client.get("/").get_data(as_text=True)
    _review_the_good_slide(app)

    index = client.get("/").get_data(as_text=True)
    patients = index[index.index('<table class="patients">'):index.index("</table>")]
    assert "pN0(i+)" in patients and "pN1mi" not in patients
    assert 'class="badge reviewed"' in patients and "automated:" in patients
    page = client.get(f"/slide/{GOOD_ID}").get_data(as_text=True)
    header = page[:page.index("</header>")]
    assert "badge cat-itc" in header and 'class="badge reviewed"' in header and "cat-micro" in header

    with (root / "summary.csv").open() as handle:
        row = next(r for r in csv.DictReader(handle) if r["slide_id"] == GOOD_ID)
    assert (row["category"], row["automated_category"]) == ("itc", "micro")
    assert row["reviewed"] == "complete (Dr Ana)"

    out = tmp_path / "stages.csv"
    mapping = str(root / "patients.csv")
    assert main(["stage", "--batch", str(root), "--patients", mapping, "--out", str(out)]) == 1  # P2 failed
    with out.open() as handle:
        stage = next(row for row in csv.DictReader(handle) if row["patient"] == "P1")
    assert stage["stage"] == "pN0(i+)"
    assert stage["reviewed_nodes"] == f"{GOOD_ID}: itc (automated micro, reviewed by Dr Ana)"
    assert "reviewed nodes" in capsys.readouterr().out

    html = build_static_report(root)
    assert "pN0(i+)" in html and 'class="badge reviewed"' in html


def test_evaluate_counts_what_reviewers_rejected_and_added(
    app: Flask, root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", "--batch", str(root), "--reviews", "--out", str(out)]) == 1  # no review yet
    assert "no slide has a review.geojson" in capsys.readouterr().err
    _review_the_good_slide(app)
    assert main(["evaluate", "--batch", str(root), "--reviews", "--out", str(out), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["reviews"]
    assert scores["batch"]["n_slides_reviewed"] == 1
    batch = scores["batch"]
    assert (batch["n_automated"], batch["rejected"], batch["added"]) == (2, 1, 1)
    assert scores["batch"]["rejected_fraction"] == 0.5 and scores["batch"]["n_slides_category_changed"] == 1
    (slide,) = scores["slides"]
    assert (slide["slide_id"], slide["pending"], slide["category_changed"]) == (GOOD_ID, 1, True)
    assert (out / "reviews.csv").read_text().startswith("slide_id,status,reviewer,")


def test_review_import_command_loads_an_edited_asap_file(
    app: Flask, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _review_the_good_slide(app)
    xml = (root / GOOD_ID / REVIEW_XML).read_text()
    edited = root.parent / "edited.xml"
    # The reviewer restores the micro deposit in ASAP (moves it back from Rejected to Tumor).
    edited.write_text(xml.replace('PartOfGroup="Rejected"', 'PartOfGroup="Tumor"', 1))
    code = main(["review", "import", str(root), GOOD_ID, str(edited), "--reviewer", "Dr Ben", "--complete"])
    assert code == 0
    assert "reviewed category micro (automated micro)" in capsys.readouterr().out
    with (root / "summary.csv").open() as handle:
        row = next(r for r in csv.DictReader(handle) if r["slide_id"] == GOOD_ID)
    assert (row["category"], row["reviewed"]) == ("micro", "complete (Dr Ben)")
    assert main(["review", "import", str(root), "nope", str(edited), "--reviewer", "B"]) == 1
    assert "no slide 'nope' in this batch" in capsys.readouterr().err


def test_view_review_prints_the_link_with_the_token(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    apps: list[Flask] = []

    class FakeServer:
        server_port = 8123

        def serve_forever(self) -> None:
            raise KeyboardInterrupt

        def server_close(self) -> None:
            pass

    def fake_make_server(host: str, port: int, app: Flask, threaded: bool) -> FakeServer:
        apps.append(app)
        return FakeServer()

    monkeypatch.setattr("werkzeug.serving.make_server", fake_make_server)
    args = argparse.Namespace(batch_dir=root, host="127.0.0.1", port=8123, no_browser=True, review=True)
    assert view_command.run(args) == 0
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:8123/?token={review_token(apps[0])}" in out and "review mode" in out
    args.review = False
    assert view_command.run(args) == 0
    assert "token" not in capsys.readouterr().out and review_token(apps[1]) is None


def test_a_review_of_an_earlier_result_is_not_used_anywhere(app: Flask, root: Path, tmp_path: Path) -> None:
    _review_the_good_slide(app)
    report_path = root / GOOD_ID / "report.json"
    report = json.loads(report_path.read_text())
    report["deposits"][0]["max_diameter_mm"] = 0.9  # the slide was analysed again elsewhere
    report_path.write_text(json.dumps(report))
    client = app.test_client()
    assert "earlier result" in client.get(URL).get_json()["error"]
    index = client.get("/").get_data(as_text=True)
    assert "earlier result" in index and 'class="badge reviewed"' not in index
    out = tmp_path / "stages.csv"
    mapping = str(root / "patients.csv")
    assert main(["stage", "--batch", str(root), "--patients", mapping, "--out", str(out)]) == 1
    assert not out.exists()  # nothing written from a review that does not belong to the result
