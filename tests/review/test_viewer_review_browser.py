"""The pathologist review in a real browser (Playwright + Debian's chromium): reject a deposit with
the keyboard, draw a missed one on the slide, mark the review complete, reload; the reviewed
category reaches the viewer, report.html and ``stage``; a stale tab sees a conflict message.

Needs /usr/bin/chromium (``make browser-deps``) and OpenSeadragon from ``npm ci``: skipped
with the reason when either is missing, failed under CI=true.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import shapely.geometry
from werkzeug.serving import make_server

from pipeline.cli import main
from pipeline.review.reviews import REVIEW_GEOJSON
from pipeline.review.viewer.app import OPENSEADRAGON_DIR, create_app, review_token
from pipeline.review.viewer.static_report import StaticReportConfig, write_static_report
from tests.viewer_batch import FAILED_ID, GOOD_ID, XSS_ID, build_viewer_batch, synthetic_slide

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 20_000
# A missed deposit, level-0 px: 60 x 50 px at 2 µm/px, 0.156 mm across: an ITC.
DRAWN_XY = [(100.0, 100.0), (160.0, 100.0), (160.0, 150.0), (100.0, 150.0)]


def _require(condition: bool, message: str) -> None:
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def root(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A batch whose good slide (micro, and an ITC) is patient P1's only node: pN1mi."""
    batch = build_viewer_batch(tmp_path / "batch", synthetic_slide(tmp_path_factory))
    with (batch.root / "patients.csv").open("w", newline="") as handle:
        rows = [("slide", "patient"), (GOOD_ID, "P1"), (FAILED_ID, "P2"), (XSS_ID, "P3")]
        csv.writer(handle).writerows(rows)
    return batch.root


@pytest.fixture
def server(root: Path) -> Iterator[tuple[str, str]]:
    """(URL, token) of `micromet view --review` on a free 127.0.0.1 port."""
    app = create_app(root, review=True)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", review_token(app) or ""
    httpd.shutdown()
    thread.join(timeout=10)
    httpd.server_close()


@pytest.fixture
def context(tmp_path: Path) -> Iterator[Any]:
    _require(CHROMIUM.exists(), f"{CHROMIUM} not found: install Debian's chromium (`make browser-deps`)")
    _require(OPENSEADRAGON_DIR.is_dir(), f"{OPENSEADRAGON_DIR} not found: run `npm ci`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
            viewport={"width": 1280, "height": 800},
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


def _page(context: Any, errors: list[str]) -> Any:
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: (errors.append(dialog.message), dialog.dismiss()))
    return page


def _wait_until(page: Any, expression: str) -> None:
    """Poll a JavaScript expression (the viewer's CSP forbids Playwright's eval-based waits)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        page.wait_for_timeout(50)


def _open_slide(page: Any, url: str) -> None:
    page.goto(f"{url}/slide/{GOOD_ID}")
    _wait_until(page, "window.micromet && window.micromet.ready && window.micromet.tilesLoaded"
                      " && window.micrometReview && window.micrometReview.layer !== null")


def _saved(page: Any, count: int) -> None:
    _wait_until(page, f"window.micrometReview.saved === {count} && !window.micrometReview.busy")


def _click_level0(page: Any, x_px: float, y_px: float) -> None:
    x, y = page.evaluate(
        "([x, y]) => { const m = window.micromet, r = m.viewer.element.getBoundingClientRect();"
        " const point = new OpenSeadragon.Point(x / m.widthPx, y / m.widthPx);"
        " const p = m.viewer.viewport.pixelFromPoint(point, true);"
        " return [r.left + p.x, r.top + p.y]; }",
        [x_px, y_px],
    )
    page.mouse.click(x, y)


def _rows(page: Any) -> list[list[str]]:
    return page.eval_on_selector_all(
        "#review-table tbody tr",
        "rows => rows.map(r => [r.dataset.key, r.querySelector('.decision').textContent])",
    )


def test_reject_draw_complete_reload_and_the_answer_flows_on(
    context: Any, server: tuple[str, str], root: Path, tmp_path: Path
) -> None:
    url, token = server
    errors: list[str] = []
    page = _page(context, errors)
    page.goto(f"{url}/?token={token}")
    assert "token" not in page.url  # kept by the browser, out of the address bar and history
    patients = page.inner_text("table.patients")
    assert "pN1mi" in patients

    _open_slide(page, url)
    page.fill("#reviewer-name", "Dr Ana")
    page.evaluate("document.activeElement.blur()")  # keys act on the slide, not in the name field
    page.keyboard.press("n")  # deposit 1, the micrometastasis
    _wait_until(page, "window.micrometReview.selected === 0")
    page.keyboard.press("x")
    _saved(page, 1)
    page.evaluate("window.micromet.viewer.viewport.goHome(true)")  # the whole slide again
    page.click("#review-draw")
    for x_px, y_px in DRAWN_XY:
        _click_level0(page, x_px, y_px)
    _wait_until(page, f"window.micrometReview.drawing.length === {len(DRAWN_XY)}")
    page.keyboard.press("Enter")
    _saved(page, 2)
    page.click("#review-complete")
    _saved(page, 3)

    page.reload()
    _open_slide(page, url)
    assert _rows(page) == [["deposit 1", "rejected"], ["deposit 2", "pending"], ["drawn 1", "added"]]
    assert page.inner_text("#review-status") == "review complete"
    header = page.inner_text("#slide-category")
    assert header.split()[:2] == ["itc", "reviewed"] and "automated: micro" in header
    drawn = page.evaluate("window.micrometReview.data.deposits[2].outline_xy")
    for (x, y), (x0, y0) in zip(drawn, DRAWN_XY, strict=True):
        assert abs(x - x0) <= 1.5 and abs(y - y0) <= 1.5  # one screen pixel at this zoom
    assert page.eval_on_selector_all(".outline-layer .deposit.rejected", "els => els.length") == 1
    assert page.eval_on_selector_all(".review-layer .drawn", "els => els.length") == 1
    page.screenshot(path=str(tmp_path / "review.png"))
    page.goto(f"{url}/")
    patients = page.inner_text("table.patients")
    assert "pN0(i+)" in patients and "pN1mi" not in patients and "reviewed" in patients

    report = write_static_report(root, tmp_path / "report.html", StaticReportConfig(thumbnail_max_px=200))
    page.goto(report.as_uri())
    assert "pN0(i+)" in page.inner_text("table.patients") and "reviewed" in page.inner_text("table.slides")
    out = tmp_path / "stages.csv"
    main(["stage", "--batch", str(root), "--patients", str(root / "patients.csv"), "--out", str(out)])
    with out.open() as handle:
        assert next(r for r in csv.DictReader(handle) if r["patient"] == "P1")["stage"] == "pN0(i+)"

    collection = json.loads((root / GOOD_ID / REVIEW_GEOJSON).read_text(encoding="utf-8"))
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 3
    for feature in collection["features"]:
        assert shapely.geometry.shape(feature["geometry"]).is_valid  # valid GeoJSON polygons
        properties = feature["properties"]
        assert properties["objectType"] == "annotation" and properties["reviewer"] in ("Dr Ana", "")
        assert set(properties["classification"]) == {"name", "color"}
        assert properties["measurements"]["max_diameter_mm"] > 0
    assert collection["micromet_review"]["status"] == "complete"
    assert errors == []


def test_a_stale_tab_shows_a_conflict_and_the_current_review(context: Any, server: tuple[str, str]) -> None:
    url, token = server
    errors: list[str] = []
    first, second = _page(context, errors), _page(context, errors)
    first.goto(f"{url}/?token={token}")
    for page in (first, second):  # a page in the background draws no tiles: wait for the review only
        page.goto(f"{url}/slide/{GOOD_ID}")
        _wait_until(page, "window.micrometReview && window.micrometReview.data !== null")
        page.fill("#reviewer-name", "Dr Ana")
    first.bring_to_front()
    first.click('#review-table tr[data-key="deposit 2"] button[title="reject (x)"]')
    _saved(first, 1)
    second.bring_to_front()
    second.click('#review-table tr[data-key="deposit 2"] button[title="confirm (c)"]')
    _wait_until(second, "!window.micrometReview.busy && !document.getElementById('review-message').hidden")
    message = second.inner_text("#review-message")
    assert "NOT saved" in message and "revision 1 by Dr Ana" in message
    assert ["deposit 2", "rejected"] in _rows(second)  # the other tab's edit is shown, not lost
    assert second.evaluate("window.micrometReview.saved") == 0
    assert all("409" in error for error in errors)  # the browser logs the refused request
