"""The static HTML report: content, escaping, self-containment, images, the command."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.config import StagingConfig
from pipeline.detection.heatmap import load_heatmap
from pipeline.errors import OutputError
from pipeline.review.colors import CATEGORY_COLORS, hex_to_rgb
from pipeline.review.overlay import blend_heatmap
from pipeline.review.report import RESEARCH_USE_NOTICE
from pipeline.review.viewer.render import render_review_image, slide_thumbnail
from pipeline.review.viewer.static_report import (
    StaticReportConfig,
    build_static_report,
    write_static_report,
)
from pipeline.slides.slide import SlideSource
from tests.viewer_batch import (
    FAILED_ERROR,
    FAILED_ID,
    GOOD_ID,
    XSS_ID,
    ViewerBatch,
    build_viewer_batch,
    snapshot,
    synthetic_slide,
)

THUMBNAIL_PX = 400
IMAGE_URI = re.compile(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> ViewerBatch:
    return build_viewer_batch(tmp_path_factory.mktemp("batch"), synthetic_slide(tmp_path_factory))


@pytest.fixture(scope="module")
def html(batch: ViewerBatch) -> str:
    return build_static_report(batch.root, StaticReportConfig(thumbnail_max_px=THUMBNAIL_PX))


def _images(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in IMAGE_URI.findall(html)]


def test_report_lists_every_slide_with_its_numbers_and_errors(html: str) -> None:
    assert html.count('<section class="report-slide"') == 3
    assert GOOD_ID in html and FAILED_ID in html
    assert 'class="badge cat-micro">micro' in html and 'class="badge cat-negative">negative' in html
    assert "0.950" in html and "0.80" in html  # score, largest deposit (mm)
    assert f"failed: {FAILED_ERROR}" in html
    assert html.count("<tr data-index=") == 2  # the two deposits of the good slide


def test_deposit_table_shows_size_area_cells_and_probability(html: str, batch: ViewerBatch) -> None:
    for deposit in batch.good_report["deposits"]:
        assert f"{deposit['max_diameter_mm']:.3f}" in html
        assert f"{deposit['area_mm2']:.4f}" in html
        assert f">{deposit['cell_count']}<" in html
    assert "0.950" in html


def test_a_deposit_whose_cells_were_not_counted_says_so_rather_than_zero(
    batch: ViewerBatch, tmp_path: Path
) -> None:
    root = tmp_path / "batch"
    shutil.copytree(batch.root, root)
    report_path = root / GOOD_ID / "report.json"
    report = json.loads(report_path.read_text())
    report["deposits"][0]["cell_count"] = None
    report["deposits"][1]["cell_count"] = 0
    report_path.write_text(json.dumps(report))
    html = build_static_report(root, StaticReportConfig(thumbnail_max_px=64))
    rows = html[html.index('<table class="deposits') :].split("</table>")[0].split("<tr ")[1:]
    assert ">not counted</span></td>" in rows[0] and '<td class="num">0</td>' not in rows[0]
    assert '<td class="num">0</td>' in rows[1]


def test_script_name_is_escaped(html: str) -> None:
    assert XSS_ID not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_report_is_self_contained(html: str) -> None:
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert re.findall(r"<link[^>]*>", html) == ['<link rel="icon" href="data:,">']
    assert "@import" not in html and "url(" not in html
    assert re.findall(r"<script([^>]*)>", html) == [""]  # one inline script, no src
    assert len(IMAGE_URI.findall(html)) == 2  # the two finished slides


def test_slide_image_shows_heatmap_and_category_outlines(html: str, batch: ViewerBatch) -> None:
    image = _images(html)[0]
    slide = batch.slide
    assert max(image.size) == THUMBNAIL_PX
    assert image.size == (THUMBNAIL_PX, round(slide.height_px * THUMBNAIL_PX / slide.width_px))
    scale = image.width / slide.width_px
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    plain_image, dimensions = slide_thumbnail(SlideSource.from_metadata(slide.slide_path), THUMBNAIL_PX)
    assert dimensions == (slide.width_px, slide.height_px)
    plain = np.asarray(plain_image, dtype=np.int16)
    micro = next(d for d in batch.good_report["deposits"] if d["category"] == "micro")
    cx, cy = round(micro["centroid_x_px"] * scale), round(micro["centroid_y_px"] * scale)
    # Viridis at p=0.95 is yellow: green rises inside the deposit compared with the slide.
    green_gain = pixels[cy - 3 : cy + 4, cx - 3 : cx + 4, 1] - plain[cy - 3 : cy + 4, cx - 3 : cx + 4, 1]
    assert float(green_gain.mean()) > 40
    orange = np.array(hex_to_rgb(CATEGORY_COLORS["micro"]))
    on_outline = [
        np.abs(pixels[round(y * scale), round(x * scale)] - orange).max() for x, y in micro["outline_xy"]
    ]
    assert np.median(on_outline) < 60  # JPEG keeps the category colour on the outline


def test_slide_picture_blends_the_heatmap_with_overlay_pngs_renderer(batch: ViewerBatch) -> None:
    heatmap = load_heatmap(batch.root / GOOD_ID)
    base, dimensions = slide_thumbnail(SlideSource.from_metadata(batch.slide.slide_path), THUMBNAIL_PX)
    assert base.height / dimensions[1] != base.width / dimensions[0]  # each axis scales on its own
    picture = render_review_image(base, dimensions, None, heatmap, [], 0.45)
    expected = blend_heatmap(np.asarray(base), heatmap, dimensions, 0.45)
    np.testing.assert_array_equal(np.asarray(picture), expected)


def test_moved_slide_file_still_shows_heatmap_and_outlines(batch: ViewerBatch, tmp_path: Path) -> None:
    root = tmp_path / "batch"
    shutil.copytree(batch.root, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["slides"][GOOD_ID]["path"] = str(tmp_path / "moved.tif")
    (root / "manifest.json").write_text(json.dumps(manifest))
    html = build_static_report(root, StaticReportConfig(thumbnail_max_px=THUMBNAIL_PX))
    assert "slide image not shown" in html and "moved.tif" in html
    assert len(IMAGE_URI.findall(html)) == 2


def test_report_command_writes_beside_the_batch_by_default(
    batch: ViewerBatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "batch"
    shutil.copytree(batch.root, root)
    assert main(["report", str(root), "--thumbnail-px", "200"]) == 0
    written = root / "report.html"
    assert str(written) in capsys.readouterr().out
    assert len(IMAGE_URI.findall(written.read_text())) == 2
    assert max(_images(written.read_text())[0].size) == 200


def test_report_command_out_leaves_the_batch_untouched(batch: ViewerBatch, tmp_path: Path) -> None:
    before = snapshot(batch.root)
    out = tmp_path / "elsewhere" / "review.html"
    assert main(["report", str(batch.root), "--out", str(out), "--thumbnail-px", "200"]) == 0
    assert out.read_text().startswith("<!doctype html>")
    assert snapshot(batch.root) == before


def test_report_command_on_a_folder_without_manifest_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 1
    assert "manifest.json: not found" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_report_command_rejects_a_bad_thumbnail_size(
    batch: ViewerBatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(batch.root), "--out", str(tmp_path / "r.html"), "--thumbnail-px", "5"]) == 1
    assert "thumbnail_max_px=5" in capsys.readouterr().err


def test_unwritable_output_names_the_path(batch: ViewerBatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=r"file/r\.html: cannot write the report"):
        write_static_report(batch.root, blocker / "r.html", StaticReportConfig(thumbnail_max_px=64))


@pytest.mark.parametrize(
    ("field", "value"),
    [("thumbnail_max_px", 10), ("heatmap_opacity", 1.5), ("jpeg_quality", 0)],
)
def test_config_rejects_out_of_range_values(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        StaticReportConfig(**{field: value})  # type: ignore[arg-type]


def _batch_with_patients_and_flags(batch: ViewerBatch, root: Path) -> Path:
    """A copy of the batch: the good slide's first deposit flagged for review, its second
    one heatmap cell large, and a patients.csv mapping its slides to two patients."""
    shutil.copytree(batch.root, root)
    report_path = root / GOOD_ID / "report.json"
    report = json.loads(report_path.read_text())
    first, second = report["deposits"]
    first["review"] = "0.800 mm is above the 0.2 mm ITC limit but only 150 tumor nuclei were counted"
    report["review"] = [f"deposit {first['id']}: {first['review']}"]
    second["max_diameter_mm"] = second["max_diameter_uncertainty_mm"] = 0.0905
    second["max_diameter_is_upper_bound"] = True
    report_path.write_text(json.dumps(report))
    (root / "patients.csv").write_text(
        f"slide,patient\n{GOOD_ID},patient_A\n{FAILED_ID},patient_B\n"
    )
    return root


def test_report_carries_the_research_use_notice_on_its_first_screen(html: str) -> None:
    assert RESEARCH_USE_NOTICE in html
    assert html.index(RESEARCH_USE_NOTICE) < html.index("<h1>")


def test_report_opens_with_the_patient_table(batch: ViewerBatch, tmp_path: Path) -> None:
    root = _batch_with_patients_and_flags(batch, tmp_path / "batch")
    html = build_static_report(root, StaticReportConfig(thumbnail_max_px=64))
    start = html.index('<table class="patients">')
    table = html[start : html.index("</table>", start)]
    assert html.index('<table class="patients">') < html.index('<table class="slides')
    row_a, row_b = table.split("<tr>")[2:4]
    assert "patient_A" in row_a and '<span class="stage">pN1mi</span>' in row_a
    assert 'href="#slide-1"' in row_a and 'class="badge cat-micro">micro' in row_a
    assert "review" in row_a
    assert "patient_B" in row_b and '<span class="stage">unstageable</span>' in row_b
    assert FAILED_ERROR in row_b
    assert "camelyon17 scheme" in html and "patients.csv" in html
    ajcc = build_static_report(root, StaticReportConfig(thumbnail_max_px=64), staging=StagingConfig("ajcc"))
    assert "ajcc scheme" in ajcc


def test_the_patient_table_lists_slides_without_a_patient_under_no_patient(
    batch: ViewerBatch, tmp_path: Path
) -> None:
    root = _batch_with_patients_and_flags(batch, tmp_path / "batch")  # maps all slides but one
    html = build_static_report(root, StaticReportConfig(thumbnail_max_px=64))
    start = html.index('<table class="patients">')
    table = html[start : html.index("</table>", start)]
    last_row = table.split('<tr class="no-patient">')[1]
    assert "<td>no patient</td>" in last_row and "not staged" in last_row and "1 slide<" in last_row
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in last_row and XSS_ID not in last_row
    assert GOOD_ID not in last_row and FAILED_ID not in last_row


def test_report_without_patients_has_no_patient_table(html: str) -> None:
    assert 'class="patients"' not in html


def test_report_groups_camelyon17_names_without_a_mapping(batch: ViewerBatch, tmp_path: Path) -> None:
    root = tmp_path / "batch"
    shutil.copytree(batch.root, root)
    manifest = json.loads((root / "manifest.json").read_text())
    slides = manifest["slides"]
    manifest["slides"] = {"patient_004_node_0": slides[GOOD_ID], "patient_004_node_1": slides[FAILED_ID]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    html = build_static_report(root, StaticReportConfig(thumbnail_max_px=64))
    assert "patient_004" in html and "unstageable" in html and "slide names" in html


def test_report_shows_review_flags_and_one_tile_sizes_as_upper_bounds(
    batch: ViewerBatch, tmp_path: Path
) -> None:
    root = _batch_with_patients_and_flags(batch, tmp_path / "batch")
    html = build_static_report(root, StaticReportConfig(thumbnail_max_px=64))
    assert "only 150 tumor nuclei were counted" in html
    assert 'class="badge review-flag"' in html
    assert "≤ 0.091 mm, one tile" in html
    assert "0.091 ± 0.091" not in html and "0.090 ± 0.090" not in html
    assert "95 % error measured" in html and "bound set by the heatmap grid" in html
    assert "size-first cell rule" in html


def test_report_command_takes_a_patient_csv_and_a_scheme(batch: ViewerBatch, tmp_path: Path) -> None:
    mapping = tmp_path / "map.csv"
    mapping.write_text(f"slide,patient\n{GOOD_ID},P1\n")
    out = tmp_path / "r.html"
    args = ["report", str(batch.root), "--out", str(out), "--thumbnail-px", "64"]
    assert main([*args, "--patients", str(mapping), "--scheme", "ajcc"]) == 0
    text = out.read_text()
    assert "P1" in text and "pN1mi" in text and "ajcc scheme" in text
    mapping.write_text("slide,patient\nnot_a_slide_of_this_batch\n")
    assert main([*args, "--patients", str(mapping)]) == 1


def test_the_slide_facts_name_a_partner_model(batch: ViewerBatch, tmp_path: Path) -> None:
    root = tmp_path / "batch"
    shutil.copytree(batch.root, root)
    report_path = root / GOOD_ID / "report.json"
    report = json.loads(report_path.read_text())
    config = StaticReportConfig(thumbnail_max_px=64)
    assert "averaged with its partner" not in build_static_report(root, config)
    report["model"]["architecture"] = "pcamnet"
    report["model"]["partner"] = {"file": "default_partner.pt", "sha256": "0" * 64, "architecture": "dense96"}
    report_path.write_text(json.dumps(report))
    html = build_static_report(root, config)
    assert "pcamnet averaged with its partner dense96 (default_partner.pt)" in html
