"""Slide QC (pipeline.slides.qc): brightfield H&E, stain range, focus, tissue amount, lymph-node look,
on synthetic slides (plain, blurred, recoloured) and on the real material in ../shared/data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import require_shared_data, write_pyramid_tiff
from PIL import Image
from scipy import ndimage

from pipeline.config import CAMELYON_LEVEL0_MPP, TissueConfig
from pipeline.slides.qc import (
    DEFAULT_QC_REFERENCE,
    STAIN_NAMES,
    QCConfig,
    QCResult,
    check_slide,
    qc_line,
    qc_reference_from_tiles,
    stain_statistics,
)
from pipeline.slides.slide import open_slide
from pipeline.slides.tissue import detect_tissue
from pipeline.synthetic.generate import SynthConfig, generate_slide


def run_qc(path: Path, mpp: float | None = None, reference: dict[str, list[float]] | None = None) -> QCResult:
    with open_slide(path, mpp_override=mpp) as slide:
        return check_slide(slide, detect_tissue(slide, TissueConfig()), QCConfig(), reference)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic node at 0.5 µm/px (as the demo draws), a blurred and a recoloured copy, and
    a tiny one at 2.0 µm/px (as the training tests draw)."""
    folder = tmp_path_factory.mktemp("qc")
    plain = folder / "plain.tif"
    generate_slide(SynthConfig(width_px=3000, height_px=2600, mpp=0.5, seed=3), plain)
    with open_slide(plain) as slide:
        image = slide.read_region_rgb(0, 0, 0, *slide.dimensions)
    blurred = np.stack([ndimage.gaussian_filter(image[..., c], 4.0) for c in range(3)], axis=-1)
    coarse = folder / "coarse.tif"
    generate_slide(SynthConfig(width_px=400, height_px=320, mpp=2.0, seed=1, tile_size_px=128), coarse)
    return {
        "plain": plain,
        # sigma 4 px = 2 µm: nuclear edges are gone, as in a scan far out of focus
        "blurred": write_pyramid_tiff(folder / "blurred.tif", blurred, 0.5),
        # channels rotated (R, G, B) -> (B, R, G): the pink and purple tissue turns green
        "recoloured": write_pyramid_tiff(folder / "green.tif", image[..., [2, 0, 1]].copy(), 0.5),
        "coarse": coarse,
    }


def test_a_synthetic_node_passes_qc_by_default(synthetic: dict[str, Path]) -> None:
    result = run_qc(synthetic["plain"])
    assert result.passed, result.summary_line()
    assert result.warning == ""
    assert result.summary_line().startswith("QC passed (dark_fraction ")


def test_a_blurred_slide_is_flagged_out_of_focus(synthetic: dict[str, Path]) -> None:
    result = run_qc(synthetic["blurred"])
    assert not result.passed
    assert "out of focus" in result.failures
    focus = next(c for c in result.checks if c.name == "focus")
    assert focus.value is not None and focus.value < QCConfig().min_focus


def test_a_slide_recoloured_far_from_h_and_e_is_flagged(synthetic: dict[str, Path]) -> None:
    result = run_qc(synthetic["recoloured"])
    assert result.failures == ["stain outside the model's range"]
    assert result.warning == "QC failed: stain outside the model's range"
    failed = {c.name for c in result.checks if c.passed is False}
    assert "od_green_share" in failed


def test_focus_and_nuclei_are_not_measured_on_a_slide_coarser_than_the_qc_resolution(
    synthetic: dict[str, Path],
) -> None:
    result = run_qc(synthetic["coarse"])
    assert result.passed
    assert result.to_dict()["not_measured"] == ["focus", "lymphoid_score"]
    assert "focus n/a" in result.summary_line()


def test_the_model_cards_stain_range_replaces_the_default(synthetic: dict[str, Path]) -> None:
    narrow = {**DEFAULT_QC_REFERENCE, "od_eosin": [0.5, 0.6]}
    result = run_qc(synthetic["plain"], reference=narrow)
    assert result.failures == ["stain outside the model's range"]
    eosin = next(c for c in result.checks if c.name == "od_eosin")
    assert (eosin.low, eosin.high, eosin.passed) == (0.5, 0.6, False)


def test_report_dict_and_console_line_carry_every_value(synthetic: dict[str, Path]) -> None:
    qc = run_qc(synthetic["blurred"]).to_dict()
    assert qc["passed"] is False and qc["warning"].startswith("QC failed: ")
    names = [c["name"] for c in qc["checks"]]
    assert names == ["dark_fraction", *STAIN_NAMES, "focus", "tissue_area_mm2", "lymphoid_score"]
    assert set(qc["measures"]) == {"lymphocytes_per_mm2", "nuclear_fraction"}
    assert qc_line(qc).startswith(qc["warning"] + " (dark_fraction ")


def test_qc_reference_from_tiles_spans_the_tiles_with_a_margin() -> None:
    rng = np.random.default_rng(0)
    pink = np.array([220, 150, 200]) + rng.integers(-25, 25, size=(40, 32, 32, 3))
    tiles = np.clip(pink, 0, 255).astype(np.uint8)
    reference = qc_reference_from_tiles(tiles)
    assert list(reference) == list(STAIN_NAMES)
    for name, values in stain_statistics(tiles).items():
        low, high = reference[name]
        assert low < float(values.min()) and float(values.max()) < high


def test_qc_reference_from_tiles_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match=r"expected \(N, H, W, 3\) uint8"):
        qc_reference_from_tiles(np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"expected \(N, H, W, 3\) uint8"):
        qc_reference_from_tiles(np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="no tile has stained pixels"):
        qc_reference_from_tiles(np.full((4, 8, 8, 3), 255, np.uint8))


def test_a_bad_qc_setting_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"qc\.min_focus"):
        QCConfig(min_focus=-1.0)
    with pytest.raises(ValueError, match=r"qc\.max_dark_fraction"):
        QCConfig(max_dark_fraction=2.0)


# Real material from ../shared/data.


@pytest.mark.shared_data
def test_the_fluorescence_ndpi_is_flagged_not_h_and_e() -> None:
    for name in ("fluorescence_dapi.ndpi", "fluorescence_tritc.ndpi"):
        result = run_qc(require_shared_data(f"formats/ndpi/{name}"))
        assert "not brightfield H&E" in result.failures, result.summary_line()
        dark = next(c for c in result.checks if c.name == "dark_fraction")
        assert dark.value is not None and dark.value > 0.7


@pytest.mark.parametrize(
    "tile",
    ["centre_1_patient_024_node_2", "centre_3_patient_066_node_1", "centre_4_patient_097_node_3"],
)
@pytest.mark.shared_data
def test_slides_made_from_real_camelyon17_tiles_pass_qc(tile: str, tmp_path: Path) -> None:
    jpeg = require_shared_data(f"camelyon17_tiles/{tile}.jpeg")
    image = np.asarray(Image.open(jpeg).convert("RGB"), dtype=np.uint8)
    result = run_qc(write_pyramid_tiff(tmp_path / f"{tile}.tif", image, CAMELYON_LEVEL0_MPP))
    assert result.passed, result.summary_line()
    score = next(c for c in result.checks if c.name == "lymphoid_score")
    assert score.value is not None and score.value >= 1.2


@pytest.mark.shared_data
def test_the_real_skin_slide_is_not_lymph_node() -> None:
    result = run_qc(require_shared_data("slides/cmu_small_region.svs"))
    assert result.failures == ["not lymph node"], result.summary_line()
    assert result.warning == "QC failed: not lymph node"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from pipeline.models import ModelCard, build_model, save_checkpoint

    torch.manual_seed(0)
    card = ModelCard(
        architecture="micronet", tile_size_px=32, mpp=2.0, threshold=0.5, training_data="untrained"
    )
    path = tmp_path_factory.mktemp("model") / "test.pt"
    save_checkpoint(path, build_model("micronet"), card)
    return path


def _infer(slide: Path, out: Path, model: Path, *flags: str) -> int:
    from pipeline.cli import main

    argv = ["infer", str(slide), "--out", str(out), "--model", str(model), "--device", "cpu"]
    return main([*argv, "--workers", "0", "--no-refine", "--no-cells", *flags])


def test_a_slide_failing_qc_is_refused_with_the_reason_and_the_flag(
    tiny_slide: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _infer(tiny_slide, out, tiny_model) == 1
    with (out / "summary.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert row["status"] == "failed" and row["category"] == ""
    assert "QC failed: not lymph node" in row["error"] and "--accept-qc-failures" in row["error"]
    assert "QC failed: not lymph node" in capsys.readouterr().err


def test_an_accepted_qc_failure_is_scored_and_its_category_carries_the_warning(
    tiny_slide: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _infer(tiny_slide, out, tiny_model, "--accept-qc-failures") == 0
    report = json.loads((out / "tiny" / "report.json").read_text())
    assert report["qc"]["warning"] == "QC failed: not lymph node"
    assert report["settings"]["qc"]["accept_qc_failures"] is True
    with (out / "summary.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert row["status"] == "done" and row["qc_warning"] == "QC failed: not lymph node"
    console = capsys.readouterr().out
    assert f"{report['category']} [QC failed: not lymph node]" in console
    assert "tiny: QC failed: not lymph node (dark_fraction " in console


def test_qc_settings_come_from_the_config_file(tiny_model: Path, tmp_path: Path) -> None:
    from pipeline.batch.settings import AnalysisSettings
    from pipeline.errors import ConfigError

    config = tmp_path / "run.toml"
    config.write_text("[qc]\nmin_focus = 10.0\n")
    accept = {"qc": {"accept_qc_failures": True}}
    context = AnalysisSettings(tiny_model, config, accept).build()
    assert (context.qc.min_focus, context.qc.accept_qc_failures) == (10.0, True)
    config.write_text("[qc]\nmin_focus = -1.0\n")
    with pytest.raises(ConfigError, match="min_focus"):
        AnalysisSettings(tiny_model, config).build()


def test_the_qc_line_shows_each_value_with_its_limit_and_which_failed() -> None:
    def check(
        name: str, value: float | None, low: float | None, high: float | None, passed: bool | None
    ) -> dict[str, object]:
        return {"name": name, "value": value, "low": low, "high": high, "passed": passed, "failure": "x"}

    qc = {
        "warning": "QC failed: not lymph node",
        "checks": [
            check("dark_fraction", 0.0016, None, 0.5, True),
            check("od_eosin", 0.0235, -0.0185, 0.0957, True),
            check("focus", None, 300.0, None, None),
            check("lymphoid_score", 0.8712, 1.0, None, False),
        ],
    }
    assert qc_line(qc) == (
        "QC failed: not lymph node (dark_fraction 0.0016 (<= 0.5), od_eosin 0.0235 (-0.0185 to 0.0957), "
        "focus n/a (>= 300: not measured), lymphoid_score 0.8712 (>= 1: FAILED))"
    )
