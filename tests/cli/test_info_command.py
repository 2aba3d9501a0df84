"""`micromet info`: table and JSON output, tiling summary, one-line errors with exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FIXTURES, require_shared_data

from pipeline.cli import main


def test_json_reports_levels_mpp_and_tissue(tiny_slide: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tiny_slide), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["dimensions"] == [1500, 1100]
    assert facts["level_count"] == 3
    assert facts["mpp"] == pytest.approx(0.5)
    assert 0.3 < facts["tissue_fraction"] < 0.5


def test_tiling_summary_counts_tiles_at_the_physical_size(
    tiny_slide: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(tiny_slide), "--tile-px", "50", "--tile-mpp", "2.0"]) == 0
    out = capsys.readouterr().out
    assert "50 px at 2 µm/px = 100 µm" in out
    assert "of a 5 x 7 grid" in out


def test_tile_options_go_together(tiny_slide: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tiny_slide), "--tile-px", "50"]) == 1
    assert "--tile-mpp" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name",
    [
        "empty.svs",
        "text_named.svs",
        "truncated.tif",
        "png_renamed.tif",
        "random_bytes.svs",
        "no_resolution.tif",
    ],
)
def test_bad_slides_give_one_error_line_and_exit_1(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(FIXTURES / "bad_slides" / name)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert name in err[0] and err[0].startswith("micromet info: error:")


def test_a_bad_slide_does_not_stop_the_others(tiny_slide: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["info", str(FIXTURES / "bad_slides" / "empty.svs"), str(tiny_slide), "--no-tissue"])
    captured = capsys.readouterr()
    assert code == 1
    assert "1500 x 1100 px" in captured.out


@pytest.mark.shared_data
def test_real_slides_report_format_mpp_and_tiles(capsys: pytest.CaptureFixture[str]) -> None:
    slide = require_shared_data("slides/cmu_small_region.svs")
    assert main(["info", str(slide), "--tile-px", "224", "--tile-mpp", "0.5", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["vendor"] == "aperio"
    assert facts["tiles"]["n_tiles"] > 20


def test_info_refuses_an_mpp_contradicting_the_slide_unless_forced(
    tiny_slide: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(tiny_slide), "--no-tissue", "--mpp", "0.25"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "0.25 µm/px" in err and "0.5 µm/px" in err and "--force-mpp" in err
    assert main(["info", str(tiny_slide), "--no-tissue", "--mpp", "0.25", "--force-mpp"]) == 0
    assert "0.2500 µm/px (given by the user; the slide records 0.5000)" in capsys.readouterr().out


@pytest.mark.shared_data
def test_info_qc_prints_the_qc_line(capsys: pytest.CaptureFixture[str]) -> None:
    skin = require_shared_data("slides/cmu_small_region.svs")
    assert main(["info", str(skin), "--qc"]) == 0
    out = capsys.readouterr().out
    assert "QC failed: not lymph node (dark_fraction " in out
    assert "0.4990 µm/px (from the slide)" in out
