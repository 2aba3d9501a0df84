"""The viewer and the static report in a real browser (Playwright + Debian's chromium).

Needs /usr/bin/chromium (``make browser-deps``) and OpenSeadragon from ``npm ci``: skipped
with the reason when either is missing, failed under CI=true.
"""

from __future__ import annotations

import dataclasses
import io
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from werkzeug.serving import make_server

from pipeline.detection.heatmap import Heatmap, load_heatmap
from pipeline.review.colors import DEFAULT_HEATMAP_OPACITY
from pipeline.review.overlay import blend_heatmap, heatmap_rect_px
from pipeline.review.viewer.app import OPENSEADRAGON_DIR, create_app
from pipeline.review.viewer.static_report import StaticReportConfig, write_static_report
from tests.viewer_batch import (
    FAILED_ID,
    GOOD_ID,
    TUMOR_PROBABILITY,
    XSS_ID,
    ViewerBatch,
    build_viewer_batch,
    synthetic_slide,
)

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 20_000


def _require(condition: bool, message: str) -> None:
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@dataclasses.dataclass
class BrowserPage:
    """A page and what it reported: console errors, uncaught exceptions, dialogs."""

    page: Any
    errors: list[str]
    dialogs: list[str]


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> ViewerBatch:
    return build_viewer_batch(tmp_path_factory.mktemp("batch"), synthetic_slide(tmp_path_factory))


@pytest.fixture(scope="module")
def server_url(batch: ViewerBatch) -> Iterator[str]:
    """The viewer app on a free 127.0.0.1 port, served from a background thread."""
    server = make_server("127.0.0.1", 0, create_app(batch.root), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    _require(
        CHROMIUM.exists(),
        f"{CHROMIUM} not found: install Debian's chromium (`make browser-deps`, or apt-get install chromium)",
    )
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        # Playwright takes the profile folder as user_data_dir (it refuses --user-data-dir).
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
            viewport={"width": 1280, "height": 800},
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def browser_page(browser_context: Any) -> Iterator[BrowserPage]:
    page = browser_context.new_page()
    result = BrowserPage(page, [], [])
    page.on("console", lambda m: result.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: result.errors.append(str(exc)))

    def on_dialog(dialog: Any) -> None:
        result.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    yield result
    page.close()


def _wait_until(page: Any, expression: str) -> None:
    """Poll a JavaScript expression until it is truthy. (Playwright's wait_for_function
    evaluates strings with eval, which the viewer's Content-Security-Policy forbids.)"""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        page.wait_for_timeout(50)


def _open_viewer(browser_page: BrowserPage, url: str) -> Any:
    _require(OPENSEADRAGON_DIR.is_dir(), f"{OPENSEADRAGON_DIR} not found: run `npm ci`")
    page = browser_page.page
    page.goto(url)
    _wait_until(page, "window.micromet && window.micromet.ready && window.micromet.tilesLoaded")
    return page


def test_viewer_draws_slide_heatmap_outlines_and_zooms_to_a_deposit(
    browser_page: BrowserPage, server_url: str, batch: ViewerBatch, tmp_path: Path
) -> None:
    page = _open_viewer(browser_page, f"{server_url}/slide/{GOOD_ID}")
    assert page.evaluate("window.micromet.viewer.world.getItemCount()") == 2  # slide + heatmap
    assert page.evaluate("window.micromet.heatmapItem.getOpacity()") == pytest.approx(0.6)
    page.click("#heatmap-toggle")
    assert page.evaluate("window.micromet.heatmapItem.getOpacity()") == 0
    page.click("#heatmap-toggle")
    page.locator("#heatmap-opacity").fill("0.3")
    assert page.evaluate("window.micromet.heatmapItem.getOpacity()") == pytest.approx(0.3)

    strokes = page.eval_on_selector_all(
        ".outline-layer .outline", "els => els.map(e => e.getAttribute('stroke'))"
    )
    assert strokes == ["#E69F00", "#0072B2"]  # micro, itc: report order, category colours

    deposit = batch.good_report["deposits"][1]  # the ITC: small, off-centre
    page.click('#deposit-table tr[data-index="1"]')
    _wait_until(
        page,
        "(() => { const m = window.micromet, c = m.viewer.viewport.getCenter(true);"
        " return Math.hypot(c.x - m.focusTarget.x, c.y - m.focusTarget.y) < 1e-4; })()",
    )
    _wait_until(page, "window.micromet.tilesLoaded")
    center = page.evaluate("window.micromet.viewer.viewport.getCenter(true)")
    width_px = batch.slide.width_px
    assert center["x"] == pytest.approx(deposit["centroid_x_px"] / width_px, abs=1e-3)
    assert center["y"] == pytest.approx(deposit["centroid_y_px"] / width_px, abs=1e-3)
    bounds = page.evaluate("window.micromet.viewer.viewport.getBounds(true)")
    assert bounds["width"] < 0.5  # zoomed in from the whole slide (width 1)
    assert bounds["x"] * width_px <= deposit["bbox_x_px"]
    assert (bounds["x"] + bounds["width"]) * width_px >= deposit["bbox_x_px"] + deposit["bbox_width_px"]

    _check_scale_bar(page, batch)
    page.screenshot(path=str(tmp_path / "viewer.png"))
    assert browser_page.errors == [] and browser_page.dialogs == []


def _screen_patch(page: Any, x_l0: float, y_l0: float, size_px: int) -> NDArray[np.int16]:
    """A size_px square of the page's pixels centred on level-0 point (x_l0, y_l0)."""
    x, y = page.evaluate(
        "([x, y]) => { const m = window.micromet, r = m.viewer.element.getBoundingClientRect();"
        " const point = new OpenSeadragon.Point(x / m.widthPx, y / m.widthPx);"
        " const p = m.viewer.viewport.pixelFromPoint(point, true);"
        " return [r.left + p.x, r.top + p.y]; }",
        [x_l0, y_l0],
    )
    clip = {"x": round(x) - size_px // 2, "y": round(y) - size_px // 2, "width": size_px, "height": size_px}
    png = page.screenshot(clip=clip)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_viewer_composites_the_heatmap_by_overlay_pngs_rule(
    browser_page: BrowserPage, server_url: str, batch: ViewerBatch
) -> None:
    """Inside a tumour cell, the browser's slide + heatmap layer equals blend_heatmap (the renderer
    of overlay.png and report.html) applied to the same screen pixels without the layer."""
    page = _open_viewer(browser_page, f"{server_url}/slide/{GOOD_ID}")
    heatmap = load_heatmap(batch.root / GOOD_ID)
    micro = next(d for d in batch.good_report["deposits"] if d["category"] == "micro")
    x0, y0, _, _ = heatmap_rect_px(heatmap)
    stride = heatmap.stride_l0_px
    col, row = int((micro["centroid_x_px"] - x0) // stride), int((micro["centroid_y_px"] - y0) // stride)
    assert heatmap.probabilities[row, col] == pytest.approx(TUMOR_PROBABILITY)
    x_l0, y_l0 = x0 + (col + 0.5) * stride, y0 + (row + 0.5) * stride
    size_px = 7  # screen px, well inside the cell (32 level-0 px wide)
    with_layer = _screen_patch(page, x_l0, y_l0, size_px)
    page.click("#heatmap-toggle")
    assert page.evaluate("window.micromet.heatmapItem.getOpacity()") == 0
    page.wait_for_timeout(300)  # the next frame is drawn without the layer
    without_layer = _screen_patch(page, x_l0, y_l0, size_px)
    cell = Heatmap(
        np.full((1, 1), TUMOR_PROBABILITY, dtype=np.float32), 0.0, 0.0, float(size_px), float(size_px),
        heatmap.slide_mpp, (size_px, size_px),
    )
    expected = blend_heatmap(
        without_layer.astype(np.uint8), cell, (size_px, size_px), DEFAULT_HEATMAP_OPACITY
    ).astype(np.int16)
    assert np.abs(with_layer - without_layer).max() > 40  # the layer was drawn
    assert np.abs(with_layer - expected).max() <= 3  # browser rounding
    assert browser_page.errors == []


def _check_scale_bar(page: Any, batch: ViewerBatch) -> None:
    """The bar's on-screen length matches its label, measured through OpenSeadragon."""
    mpp = batch.good_report["slide"]["mpp"]
    px_per_mm = page.evaluate(
        "(mmInViewport) => { const v = window.micromet.viewer.viewport;"
        " return v.pixelFromPoint(new OpenSeadragon.Point(mmInViewport, 0), true).x"
        " - v.pixelFromPoint(new OpenSeadragon.Point(0, 0), true).x; }",
        1000.0 / mpp / batch.slide.width_px,
    )
    label = page.inner_text("#scalebar .scalebar-label")
    bar_px = page.eval_on_selector("#scalebar .scalebar-bar", "e => e.getBoundingClientRect().width")
    assert label.endswith(" mm")
    assert bar_px == pytest.approx(float(label.removesuffix(" mm")) * px_per_mm, rel=0.02)
    assert 20 <= bar_px <= 160


@pytest.mark.parametrize("size", [(1280, 800), (700, 420)])
def test_the_scale_bar_is_fully_on_screen_in_large_and_small_windows(
    browser_page: BrowserPage, server_url: str, size: tuple[int, int]
) -> None:
    page = browser_page.page
    page.set_viewport_size({"width": size[0], "height": size[1]})
    page.goto(f"{server_url}/slide/{GOOD_ID}")
    _wait_until(page, "!document.getElementById('scalebar').hidden")
    box = page.evaluate(
        "(() => { const s = document.getElementById('scalebar').getBoundingClientRect(),"
        " o = document.querySelector('.osd-wrap').getBoundingClientRect();"
        " return {top: s.top, bottom: s.bottom, left: s.left, osdBottom: o.bottom,"
        " height: window.innerHeight, scroll: document.documentElement.scrollHeight}; })()"
    )
    assert box["top"] >= 0 and box["bottom"] <= box["osdBottom"] <= box["height"]
    assert box["scroll"] <= box["height"]  # nothing below the window to scroll to


def test_script_named_slide_is_shown_as_text_and_never_runs(
    browser_page: BrowserPage, server_url: str
) -> None:
    page = browser_page.page
    page.goto(f"{server_url}/")
    link = page.locator("table.slides tbody a").nth(1)
    assert link.inner_text() == XSS_ID
    link.click()
    _wait_until(page, "window.micromet && window.micromet.ready")
    assert page.inner_text("h1.slide-title") == XSS_ID
    assert urllib.parse.unquote(page.url).endswith(f"/slide/{XSS_ID}")
    assert browser_page.dialogs == [] and browser_page.errors == []


def test_slide_list_sorts_by_score_and_category(browser_page: BrowserPage, server_url: str) -> None:
    page = browser_page.page
    page.goto(f"{server_url}/")
    first = "document.querySelector('table.slides tbody tr td').textContent"
    page.click("th:has-text('category')")  # numbers sort largest first
    assert page.evaluate(first) == GOOD_ID
    page.click("th:has-text('category')")
    assert page.evaluate(first) == FAILED_ID
    page.click("th:has-text('score')")
    assert page.evaluate(first) == GOOD_ID
    assert browser_page.errors == []


def test_static_report_opens_from_disk_with_its_images(
    browser_page: BrowserPage, batch: ViewerBatch, tmp_path: Path
) -> None:
    report = write_static_report(
        batch.root, tmp_path / "report.html", StaticReportConfig(thumbnail_max_px=300)
    )
    page = browser_page.page
    page.goto(report.as_uri())
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert widths == [300, 300]
    first = "document.querySelector('table.slides tbody tr td').textContent"
    page.click("th:has-text('score')")
    assert page.evaluate(first) == GOOD_ID
    page.click("th:has-text('score')")
    assert page.evaluate(first) == FAILED_ID
    page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
    assert browser_page.errors == [] and browser_page.dialogs == []
