"""The web viewer's server side (Flask test client): pages, deep zoom, heatmap, security."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
from conftest import FIXTURES
from flask.testing import FlaskClient
from PIL import Image

from pipeline.cli import view as view_command
from pipeline.config import StagingConfig
from pipeline.errors import OutputError, StagingError
from pipeline.review.colors import HEATMAP_TRANSPARENT_BELOW
from pipeline.review.overlay import heatmap_rgba
from pipeline.review.report import RESEARCH_USE_NOTICE
from pipeline.review.viewer.app import create_app
from pipeline.review.viewer.tiles import DeepZoomCache, TileConfig
from tests.viewer_batch import (
    FAILED_ERROR,
    FAILED_ID,
    GOOD_ID,
    HEATMAP_STRIDE_PX,
    HEATMAP_TILE_PX,
    XSS_ID,
    ViewerBatch,
    build_viewer_batch,
    snapshot,
    synthetic_slide,
)

DZI_NS = "{http://schemas.microsoft.com/deepzoom/2008}"
ESCAPED_XSS = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> ViewerBatch:
    return build_viewer_batch(tmp_path_factory.mktemp("batch"), synthetic_slide(tmp_path_factory))


@pytest.fixture(scope="module")
def client(batch: ViewerBatch) -> FlaskClient:
    return create_app(batch.root).test_client()


@pytest.fixture
def own_batch(tmp_path: Path, batch: ViewerBatch) -> Path:
    """A private copy of the batch folder that a test may rearrange."""
    root = tmp_path / "batch"
    shutil.copytree(batch.root, root, symlinks=True)
    return root


def _add_manifest_entry(root: Path, slide_id: str, entry: dict[str, Any]) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["slides"][slide_id] = entry
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_slide_list_shows_every_slide_with_category_score_and_error(client: FlaskClient) -> None:
    page = client.get("/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert f'href="/slide/{GOOD_ID}"' in html
    assert "cat-micro" in html and "0.950" in html and "0.80" in html
    assert FAILED_ID in html and FAILED_ERROR in html
    assert ESCAPED_XSS in html


def test_api_slides_lists_manifest_slides_in_order(client: FlaskClient) -> None:
    slides = client.get("/api/slides").get_json()["slides"]
    assert [s["slide_id"] for s in slides] == [GOOD_ID, XSS_ID, FAILED_ID]
    good, xss, failed = slides
    assert (good["category"], good["n_deposits"], good["largest_deposit_mm"]) == ("micro", 2, 0.8)
    assert xss["category"] == "negative" and xss["largest_deposit_mm"] is None
    assert failed["status"] == "failed" and failed["error"] == FAILED_ERROR
    assert good["review"] == [] and good["cell_rule"] == "size-first"
    assert good["largest_deposit_text"].startswith("0.800 ± ")


def test_dzi_descriptor_is_valid_xml_with_the_slide_size(client: FlaskClient, batch: ViewerBatch) -> None:
    response = client.get(f"/dz/{GOOD_ID}.dzi")
    assert response.status_code == 200 and response.mimetype == "application/xml"
    image = ET.fromstring(response.data)
    assert image.tag == f"{DZI_NS}Image"
    assert (image.get("Format"), image.get("TileSize"), image.get("Overlap")) == ("jpeg", "254", "1")
    size = image.find(f"{DZI_NS}Size")
    assert size is not None
    assert (int(size.get("Width", 0)), int(size.get("Height", 0))) == (
        batch.slide.width_px,
        batch.slide.height_px,
    )


def test_tiles_are_jpegs_of_the_slide_pixels(client: FlaskClient, batch: ViewerBatch) -> None:
    top = 11  # ceil(log2(1100)): the full-resolution Deep Zoom level
    inner = Image.open(io.BytesIO(client.get(f"/dz/{GOOD_ID}_files/{top}/1_1.jpeg").data))
    assert inner.format == "JPEG" and inner.size == (256, 256)  # 254 + overlap both sides
    last = Image.open(io.BytesIO(client.get(f"/dz/{GOOD_ID}_files/{top}/4_3.jpeg").data))
    assert last.size == (1100 - 4 * 254 + 1, 900 - 3 * 254 + 1)
    with openslide.OpenSlide(str(batch.slide.slide_path)) as slide:
        expected = np.asarray(slide.read_region((253, 253), 0, (256, 256)).convert("RGB"))
    difference = np.abs(np.asarray(inner, dtype=np.int16) - expected.astype(np.int16))
    assert float(difference.mean()) < 6.0  # JPEG re-encoding only
    assert float(expected.std()) > 10.0  # the tile shows tissue, not blank glass


@pytest.mark.parametrize(
    "url",
    [
        f"/dz/{GOOD_ID}_files/99/0_0.jpeg",
        f"/dz/{GOOD_ID}_files/11/5_0.jpeg",
        f"/dz/{GOOD_ID}_files/11/0_4.jpeg",
    ],
)
def test_tile_outside_the_pyramid_is_404(client: FlaskClient, url: str) -> None:
    assert client.get(url).status_code == 404


def test_heatmap_png_colours_every_cell(client: FlaskClient, batch: ViewerBatch) -> None:
    response = client.get(f"/heatmap/{GOOD_ID}.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    image = Image.open(io.BytesIO(response.data))
    assert image.mode == "RGBA"
    probabilities = np.load(batch.root / GOOD_ID / "heatmap.npy")
    rows, cols = probabilities.shape
    factor = image.width // cols
    assert factor > 1 and image.size == (cols * factor, rows * factor)
    cells = np.asarray(image)[factor // 2 :: factor, factor // 2 :: factor]
    assert np.array_equal(cells, heatmap_rgba(probabilities))
    # Unscored cells and probabilities up to HEATMAP_TRANSPARENT_BELOW are transparent.
    transparent = np.isnan(probabilities) | (probabilities <= HEATMAP_TRANSPARENT_BELOW)
    assert (cells[..., 3] == 0).sum() == transparent.sum() > np.isnan(probabilities).sum() > 0


def test_api_slide_gives_report_and_heatmap_geometry(client: FlaskClient, batch: ViewerBatch) -> None:
    data = client.get(f"/api/slide/{GOOD_ID}").get_json()
    assert data["report"]["deposits"] == batch.good_report["deposits"]
    assert data["mpp"] == 2.0 and data["dzi_url"] == f"/dz/{GOOD_ID}.dzi"
    heatmap = data["heatmap"]
    offset = (HEATMAP_TILE_PX - HEATMAP_STRIDE_PX) / 2  # cells are centred on their tiles
    assert (heatmap["x_px"], heatmap["y_px"]) == (offset, offset)
    assert heatmap["width_px"] == heatmap["cols"] * HEATMAP_STRIDE_PX
    assert heatmap["height_px"] == heatmap["rows"] * HEATMAP_STRIDE_PX
    assert heatmap["url"] == f"/heatmap/{GOOD_ID}.png"
    assert set(data["category_colors"]) >= {"itc", "micro", "macro"}


@pytest.mark.parametrize(
    "url",
    [
        "/dz/..%2f..%2fetc%2fpasswd.dzi",
        "/dz/../../etc/passwd.dzi",
        "/dz//etc/passwd.dzi",
        "/dz/%2Fetc%2Fpasswd.dzi",
        "/dz/..%2fmanifest.json_files/0/0_0.jpeg",
        "/heatmap/..%2Fmanifest.png",
        "/heatmap/%2Fetc%2Fpasswd.png",
        "/api/slide/..%2F..%2Fetc%2Fpasswd",
        "/api/slide/%2Fetc%2Fpasswd",
        "/slide/..%2Fmanifest.json",
        "/vendor/openseadragon/..%2F..%2F..%2F..%2Fpackage.json",
        "/vendor/openseadragon//etc/passwd",
        "/static/..%2Fapp.py",
        "/slide/no_such_slide",
        "/dz/no_such_slide.dzi",
        "/dz/no_such_slide_files/0/0_0.jpeg",
        "/heatmap/no_such_slide.png",
        "/api/slide/no_such_slide",
    ],
)
def test_traversal_absolute_paths_and_unknown_slides_are_404(client: FlaskClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 404
    assert b"root:" not in response.data and b"openseadragon" not in response.data.lower()


def test_failed_slide_without_a_file_has_no_tiles_but_a_page(client: FlaskClient) -> None:
    assert client.get(f"/dz/{FAILED_ID}.dzi").status_code == 404
    assert client.get(f"/heatmap/{FAILED_ID}.png").status_code == 404
    page = client.get(f"/slide/{FAILED_ID}")
    assert page.status_code == 200 and FAILED_ERROR in page.get_data(as_text=True)


def test_output_folder_symlinked_outside_the_batch_is_not_served(
    own_batch: Path, tmp_path: Path, batch: ViewerBatch
) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(batch.root / GOOD_ID, outside)
    (own_batch / "linked").symlink_to(outside, target_is_directory=True)
    entry = {"path": str(batch.slide.slide_path), "status": "done", "output_dir": "linked"}
    _add_manifest_entry(own_batch, "linked", entry)
    _add_manifest_entry(own_batch, "absolute", {**entry, "output_dir": str(outside)})
    client = create_app(own_batch).test_client()
    for slide_id in ("linked", "absolute"):
        assert client.get(f"/heatmap/{slide_id}.png").status_code == 404
        data = client.get(f"/api/slide/{slide_id}").get_json()
        assert data["report"] is None and data["heatmap"] is None
        assert "outside the batch" in data["problem"]
        assert "outside the batch" in client.get(f"/slide/{slide_id}").get_data(as_text=True)


def test_files_symlinked_outside_the_batch_are_not_served(own_batch: Path, tmp_path: Path) -> None:
    folder = own_batch / GOOD_ID
    for name in ("heatmap.npy", "report.json"):
        target = tmp_path / name
        shutil.move(folder / name, target)
        (folder / name).symlink_to(target)
    client = create_app(own_batch).test_client()
    assert client.get(f"/heatmap/{GOOD_ID}.png").status_code == 404
    data = client.get(f"/api/slide/{GOOD_ID}").get_json()
    assert data["report"] is None and data["heatmap"] is None
    assert "report.json is missing" in data["problem"]


def test_script_slide_id_is_escaped_in_every_page(client: FlaskClient) -> None:
    pages = [client.get("/"), client.get(f"/slide/{XSS_ID}")]
    for page in pages:
        html = page.get_data(as_text=True)
        assert page.status_code == 200
        assert XSS_ID not in html and ESCAPED_XSS in html
    assert "script-src 'self'" in pages[1].headers["Content-Security-Policy"]
    assert pages[1].headers["X-Content-Type-Options"] == "nosniff"
    data = client.get(f"/api/slide/{XSS_ID}").get_json()
    assert data["slide_id"] == XSS_ID and data["category"] == "negative"


def test_viewer_never_writes_to_the_batch_folder(batch: ViewerBatch) -> None:
    before = snapshot(batch.root)
    client = create_app(batch.root).test_client()
    for slide_id in (GOOD_ID, XSS_ID, FAILED_ID):
        for url in (
            f"/slide/{slide_id}",
            f"/api/slide/{slide_id}",
            f"/dz/{slide_id}.dzi",
            f"/heatmap/{slide_id}.png",
            f"/dz/{slide_id}_files/11/0_0.jpeg",
        ):
            client.get(url)
    client.get("/")
    client.get("/api/slides")
    assert snapshot(batch.root) == before


def test_tiles_served_from_many_threads_at_once(batch: ViewerBatch) -> None:
    app = create_app(batch.root, TileConfig(cache_slides=1))
    urls = [f"/dz/{GOOD_ID}_files/{level}/0_0.jpeg" for level in range(12)] * 4

    def fetch(url: str) -> int:
        return app.test_client().get(url).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert set(pool.map(fetch, urls)) == {200}


def test_slide_cache_keeps_at_most_its_capacity(batch: ViewerBatch, tmp_path: Path) -> None:
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"copy{index}.tif")
        paths[-1].symlink_to(batch.slide.slide_path)
    cache = DeepZoomCache(TileConfig(cache_slides=2))
    first = cache.generator(paths[0])
    assert cache.generator(paths[0]) is first
    cache.generator(paths[1])
    cache.generator(paths[2])
    assert len(cache) == 2
    assert cache.generator(paths[0]) is not first  # evicted, reopened


def test_missing_openseadragon_says_run_npm_ci(batch: ViewerBatch, tmp_path: Path) -> None:
    client = create_app(batch.root, openseadragon_dir=tmp_path / "missing").test_client()
    vendor = client.get("/vendor/openseadragon/openseadragon.min.js")
    assert vendor.status_code == 503 and "npm ci" in vendor.get_data(as_text=True)
    assert "npm ci" in client.get(f"/slide/{GOOD_ID}").get_data(as_text=True)


def test_installed_openseadragon_is_served(client: FlaskClient) -> None:
    response = client.get("/vendor/openseadragon/openseadragon.min.js")
    if response.status_code == 503:
        pytest.skip("node_modules/openseadragon missing: run `npm ci`")
    assert response.status_code == 200 and b"OpenSeadragon" in response.data


def test_folder_without_manifest_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"manifest\.json: not found"):
        create_app(tmp_path)


def test_manifest_broken_while_serving_gives_an_error_page(own_batch: Path) -> None:
    client = create_app(own_batch).test_client()
    (own_batch / "manifest.json").write_text("{not json")
    response = client.get("/")
    assert response.status_code == 500
    assert "manifest" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.20", False),
        ("example.org", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert view_command.is_loopback(host) is loopback


class _FakeServer:
    server_port = 8123

    def serve_forever(self) -> None:
        raise KeyboardInterrupt

    def server_close(self) -> None:
        pass


def test_view_command_warns_when_listening_beyond_this_machine(
    batch: ViewerBatch, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bound: list[tuple[str, int]] = []

    def fake_make_server(host: str, port: int, app: object, threaded: bool) -> _FakeServer:
        bound.append((host, port))
        return _FakeServer()

    monkeypatch.setattr("werkzeug.serving.make_server", fake_make_server)
    args = argparse.Namespace(batch_dir=batch.root, host="0.0.0.0", port=8123, no_browser=True)
    assert view_command.run(args) == 0
    captured = capsys.readouterr()
    assert bound == [("0.0.0.0", 8123)]
    assert "warning" in captured.err and "http://0.0.0.0:8123/" in captured.out
    args.host = "127.0.0.1"
    assert view_command.run(args) == 0
    assert "warning" not in capsys.readouterr().err


def test_every_viewer_page_carries_the_research_use_notice(client: FlaskClient) -> None:
    for url in ("/", f"/slide/{GOOD_ID}", f"/slide/{FAILED_ID}", "/slide/no_such_slide"):
        html = client.get(url).get_data(as_text=True)
        assert RESEARCH_USE_NOTICE in html, url
        assert html.index(RESEARCH_USE_NOTICE) < html.index("</header>") + 400  # first screen


def test_index_groups_slides_by_patient_with_their_stage(own_batch: Path) -> None:
    (own_batch / "patients.csv").write_text(f"slide,patient\n{GOOD_ID},patient_A\n{FAILED_ID},patient_B\n")
    html = create_app(own_batch).test_client().get("/").get_data(as_text=True)
    assert html.index('<table class="patients">') < html.index('class="patient-group"')
    groups = html.split('<section class="patient-group"')[1:]
    assert len(groups) == 3
    assert "patient_A" in groups[0] and "pN1mi" in groups[0] and f"/slide/{GOOD_ID}" in groups[0]
    assert FAILED_ID not in groups[0]
    assert "patient_B" in groups[1] and "unstageable" in groups[1] and FAILED_ID in groups[1]
    assert "without a patient" in groups[2] and ESCAPED_XSS in groups[2]
    page = create_app(own_batch).test_client().get(f"/slide/{GOOD_ID}").get_data(as_text=True)
    header = page[: page.index("</header>")]
    assert "patient patient_A" in header and '<span class="stage"' in header and "pN1mi" in header


def test_index_without_patients_is_one_slide_list(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    assert 'class="patients"' not in html and 'class="patient-group"' not in html


def test_view_patient_csv_is_checked_when_the_app_starts(batch: ViewerBatch, tmp_path: Path) -> None:
    mapping = tmp_path / "map.csv"
    mapping.write_text(f"slide,patient\n{GOOD_ID},P7\n")
    app = create_app(batch.root, patients_csv=mapping, staging=StagingConfig("ajcc"))
    html = app.test_client().get("/").get_data(as_text=True)
    assert "P7" in html and "pN1mi" in html and "ajcc scheme" in html
    mapping.write_text("slide\nonly\n")
    with pytest.raises(StagingError, match="slide,patient"):
        create_app(batch.root, patients_csv=mapping)


def test_slide_page_shows_review_flag_cell_rule_and_size_note(own_batch: Path) -> None:
    report_path = own_batch / GOOD_ID / "report.json"
    report = json.loads(report_path.read_text())
    report["deposits"][0]["review"] = "0.800 mm is above the 0.2 mm ITC limit but only 150 nuclei"
    report_path.write_text(json.dumps(report))
    html = create_app(own_batch).test_client().get(f"/slide/{GOOD_ID}").get_data(as_text=True)
    assert "only 150 nuclei" in html and 'class="badge review-flag"' in html
    assert "size-first" in html and "95 % error measured" in html and "bound set by the heatmap grid" in html
    index = create_app(own_batch).test_client().get("/").get_data(as_text=True)
    assert 'class="badge review-flag"' in index


def test_an_undecodable_tile_of_a_slide_without_mpp_is_reread_for_its_pixels_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The level-0 fallback opens the slide with SlideSource.pixels_only: a tile needs no µm/px,
    # so a slide recording none (a plain TIFF) still gets its tile, and no resolution is made up.
    path = FIXTURES / "bad_slides" / "no_resolution.tif"
    cache = DeepZoomCache(TileConfig())
    generator = cache.generator(path)
    level = generator.level_count - 1
    expected = np.asarray(generator.get_tile(level, (0, 0)).convert("RGB"), dtype=np.int16)

    def undecodable(*args: Any) -> Any:
        raise openslide.OpenSlideError("Cannot decode tile")

    monkeypatch.setattr(generator, "get_tile", undecodable)
    served = cache.tile_jpeg(path, level, 0, 0)
    assert served is not None
    tile = np.asarray(Image.open(io.BytesIO(served)).convert("RGB"), dtype=np.int16)
    assert tile.shape == expected.shape
    assert np.abs(tile - expected).mean() < 4  # the same pixels, through JPEG
    assert len(cache) == 0  # the handle that raised was discarded
