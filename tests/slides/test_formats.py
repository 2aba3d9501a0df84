"""Every slide format with a real file in ../shared/data/formats opens with the properties
OpenSlide reports (formats/README.md), reads non-blank pixels, runs through ``micromet info``
and ``micromet infer``, and shows in report.html and the viewer; a DICOM WSI made from a
synthetic TIFF with wsidicomizer round-trips."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import draw_tissue_rgb, require_shared_data, write_pyramid_tiff

from pipeline.batch.local import collect_slides
from pipeline.cli import main
from pipeline.slides.slide import open_slide

# name under formats/: (vendor, levels, level-0 (width, height), µm/px), from formats/README.md
FORMATS = {
    "ndpi/fluorescence_dapi.ndpi": ("hamamatsu", 7, (3968, 4864), 0.2282),
    "ndpi/fluorescence_tritc.ndpi": ("hamamatsu", 7, (3968, 4864), 0.2282),
    "dicom_cmu_small_region": ("dicom", 4, (2220, 2967), 0.499),
    "philips_style/CMU-1-Small-Region.philips-style.tiff": ("philips", 5, (2304, 3072), 0.499),
    "vmu/crop800.vmu": ("hamamatsu", 2, (800, 800), 0.499),
}
FLUORESCENCE = ("fluorescence_dapi", "fluorescence_tritc")


def _assert_not_blank(rgb: np.ndarray) -> None:  # type: ignore[type-arg]
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    assert float(rgb.std()) > 2.0, "the pixels read are uniform"
    assert not bool(np.all(rgb == 255)) and not bool(np.all(rgb == 0))


@pytest.mark.shared_data
@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_opens_with_the_expected_properties_and_pixels(name: str) -> None:
    vendor, levels, size, mpp = FORMATS[name]
    with open_slide(require_shared_data(f"formats/{name}")) as slide:
        assert (slide.info.vendor, slide.info.level_count, slide.dimensions) == (vendor, levels, size)
        assert slide.mpp == pytest.approx(mpp, rel=1e-3)
        assert slide.info.mpp_source == "metadata"
        width, height = size
        _assert_not_blank(slide.read_region_rgb(width // 4, height // 4, 0, 512, 512))
        coarsest = slide.info.level_count - 1
        _assert_not_blank(slide.read_region_rgb(0, 0, coarsest, *slide.info.level_dimensions[coarsest]))


@pytest.mark.shared_data
def test_a_dicom_folder_and_any_file_of_the_series_name_the_same_slide() -> None:
    folder = require_shared_data("formats/dicom_cmu_small_region")
    with open_slide(folder) as slide:
        expected = (slide.info.vendor, slide.dimensions, slide.info.level_count, slide.mpp)
    for file in sorted(folder.glob("*.dcm")):
        with open_slide(file) as slide:
            assert (slide.info.vendor, slide.dimensions, slide.info.level_count, slide.mpp) == expected
    assert collect_slides([str(folder)]) == [folder.resolve()]


@pytest.mark.shared_data
def test_info_reports_each_format(capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(require_shared_data(f"formats/{name}")) for name in FORMATS]
    assert main(["info", "--json", "--no-tissue", *paths]) == 0
    facts = json.loads(capsys.readouterr().out)
    for (vendor, levels, size, mpp), fact in zip(FORMATS.values(), facts, strict=True):
        assert (fact["vendor"], fact["level_count"], tuple(fact["dimensions"])) == (vendor, levels, size)
        assert fact["mpp"] == pytest.approx(mpp, rel=1e-3) and fact["mpp_source"] == "metadata"


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every format file through ``micromet infer`` with the default model. None is lymph
    node and the fluorescence files have no H&E tissue, so QC failures are accepted and every
    tile is scored (--no-tissue)."""
    paths = [str(require_shared_data(f"formats/{name}")) for name in FORMATS]
    out = tmp_path_factory.mktemp("formats") / "batch"
    argv = ["infer", *paths, "--out", str(out), "--device", "cpu", "--workers", "0"]
    argv += ["--no-refine", "--no-cells", "--accept-qc-failures", "--no-tissue"]
    assert main(argv) == 0
    return out


def _report(batch: Path, slide_id: str) -> dict:  # type: ignore[type-arg]
    return json.loads((batch / slide_id / "report.json").read_text())


def _slide_ids(batch: Path) -> list[str]:
    return sorted(json.loads((batch / "manifest.json").read_text())["slides"])


@pytest.mark.slow
@pytest.mark.shared_data
def test_infer_runs_every_format_end_to_end(batch: Path) -> None:
    assert _slide_ids(batch) == sorted(
        [*FLUORESCENCE, "dicom_cmu_small_region", "CMU-1-Small-Region.philips-style", "crop800"]
    )
    by_vendor = {}
    for slide_id in _slide_ids(batch):
        report = _report(batch, slide_id)
        assert report["n_tiles"] > 0 and report["category"] in ("negative", "itc", "micro", "macro")
        by_vendor[slide_id] = (report["slide"]["vendor"], tuple(report["slide"]["dimensions"]))
    assert by_vendor["dicom_cmu_small_region"] == ("dicom", (2220, 2967))
    assert by_vendor["fluorescence_dapi"] == ("hamamatsu", (3968, 4864))


@pytest.mark.slow
@pytest.mark.shared_data
def test_fluorescence_slides_carry_a_not_h_and_e_warning_everywhere(
    batch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for slide_id in FLUORESCENCE:
        assert "not brightfield H&E" in _report(batch, slide_id)["qc"]["warning"]
    with (batch / "summary.csv").open() as handle:
        rows = {row["slide_id"]: row for row in csv.DictReader(handle)}
    for slide_id in FLUORESCENCE:
        assert "not brightfield H&E" in rows[slide_id]["qc_warning"]
        assert rows[slide_id]["mpp_source"] == "metadata"
    html = batch.parent / "report.html"
    assert main(["report", str(batch), "--out", str(html), "--thumbnail-px", "200"]) == 0
    text = html.read_text()
    assert text.count("QC failed: not brightfield H&amp;E") >= 2
    for slide_id in _slide_ids(batch):
        assert slide_id in text


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_viewer_opens_every_format(batch: Path) -> None:
    pytest.importorskip("flask")
    from pipeline.review.viewer.app import create_app

    client = create_app(batch).test_client()
    index = client.get("/")
    assert index.status_code == 200 and b"QC failed: not brightfield H&amp;E" in index.data
    for slide_id in _slide_ids(batch):
        page = client.get(f"/slide/{slide_id}")
        assert page.status_code == 200 and b"slide QC" in page.data
        dzi = client.get(f"/dz/{slide_id}.dzi")
        assert dzi.status_code == 200
        tile = client.get(f"/dz/{slide_id}_files/8/0_0.jpeg")
        assert tile.status_code == 200 and tile.mimetype == "image/jpeg"


@pytest.mark.slow
@pytest.mark.shared_data
def test_a_fluorescence_slide_is_refused_unless_qc_failures_are_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slide = require_shared_data("formats/ndpi/fluorescence_tritc.ndpi")
    out = tmp_path / "out"
    code = main(["infer", str(slide), "--out", str(out), "--device", "cpu", "--workers", "0", "--no-cells"])
    assert code == 1
    entry = json.loads((out / "manifest.json").read_text())["slides"]["fluorescence_tritc"]
    assert entry["status"] == "failed"
    assert "not brightfield H&E" in entry["error"] and "--accept-qc-failures" in entry["error"]
    assert "--accept-qc-failures" in capsys.readouterr().err


def test_a_dicom_wsi_made_with_wsidicomizer_round_trips(tmp_path: Path) -> None:
    wsidicomizer = pytest.importorskip("wsidicomizer", reason="pip install micromet[dev] (wsidicomizer)")
    image = draw_tissue_rgb(1500, 1100)
    source = write_pyramid_tiff(tmp_path / "synthetic.tif", image, mpp=0.5, n_levels=3)
    out = tmp_path / "dicom"
    wsidicomizer.WsiDicomizer.convert(source, out, add_missing_levels=True, workers=1)
    assert len(list(out.glob("*.dcm"))) == 3
    with open_slide(source) as original, open_slide(out) as dicom:
        assert dicom.info.vendor == "dicom"
        assert dicom.dimensions == original.dimensions == (1500, 1100)
        assert dicom.info.level_dimensions == original.info.level_dimensions
        assert dicom.mpp == pytest.approx(0.5)
        a = dicom.read_region_rgb(0, 0, 0, 1500, 1100).astype(np.int16)
        b = original.read_region_rgb(0, 0, 0, 1500, 1100).astype(np.int16)
    assert float(np.abs(a - b).mean()) < 3.0  # re-encoded JPEG tiles, same picture
    assert collect_slides([str(out)]) == [out.resolve()]


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_viewer_serves_every_tile_of_the_dicom_series(batch: Path) -> None:
    """Levels 1 and 2 of this series have edge tiles OpenSlide cannot decode (cut to the image
    by the converter); the viewer serves them from level 0 instead of an error."""
    pytest.importorskip("flask")
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    from pipeline.review.viewer.app import create_app
    from pipeline.review.viewer.tiles import TileConfig
    from pipeline.slides.slide import resolve_slide_path

    config = TileConfig()
    folder = require_shared_data("formats/dicom_cmu_small_region")
    generator = DeepZoomGenerator(
        openslide.OpenSlide(str(resolve_slide_path(folder))),
        tile_size=config.tile_size_px,
        overlap=config.overlap_px,
        limit_bounds=False,
    )
    client = create_app(batch).test_client()
    for level in range(generator.level_count - 3, generator.level_count):
        cols, rows = generator.level_tiles[level]
        for col in range(cols):
            for row in range(rows):
                response = client.get(f"/dz/dicom_cmu_small_region_files/{level}/{col}_{row}.jpeg")
                assert response.status_code == 200, (level, col, row)
