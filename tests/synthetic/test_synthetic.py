"""Synthetic slide generator: files OpenSlide can read, exact ground truth, determinism."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
from scipy.spatial.distance import pdist

from pipeline.cli import main
from pipeline.errors import ConfigError, MissingMppError
from pipeline.slides.annotations import read_asap_xml
from pipeline.slides.slide import read_mpp
from pipeline.synthetic.generate import (
    PlantedDeposit,
    SynthConfig,
    SynthResult,
    deposit_category,
    generate_slide,
    read_truth,
)

TIF_CONFIG = SynthConfig(
    width_px=2400,
    height_px=1800,
    mpp=0.5,
    seed=7,
    deposits=(PlantedDeposit(0.15), PlantedDeposit(0.35)),
)
SVS_CONFIG = SynthConfig(
    width_px=2000, height_px=1600, mpp=0.25, seed=7, format="svs", deposits=(PlantedDeposit(0.1),)
)
SMALL = {"width_px": 1024, "height_px": 800, "mpp": 1.0}


@pytest.fixture(scope="module")
def tif_slide(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return generate_slide(TIF_CONFIG, tmp_path_factory.mktemp("synth") / "node.tif")


@pytest.fixture(scope="module")
def svs_slide(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return generate_slide(SVS_CONFIG, tmp_path_factory.mktemp("synth") / "node.svs")


def _glass_like(rgb: np.ndarray) -> bool:
    return bool(np.all(np.abs(rgb.reshape(-1, 3).mean(axis=0) - 240) < 6))


# --- the file ------------------------------------------------------------------------------


def test_openslide_reads_the_tif_with_mpp_levels_and_dimensions(tif_slide: SynthResult) -> None:
    with openslide.OpenSlide(str(tif_slide.slide_path)) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.5)
        assert slide.level_dimensions == ((2400, 1800), (1200, 900), (600, 450))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert slide.properties["tiff.ResolutionUnit"] == "centimeter"
    assert tif_slide.level_dimensions == ((2400, 1800), (1200, 900), (600, 450))


def test_svs_is_read_as_aperio_with_mpp_objective_and_thumbnail(svs_slide: SynthResult) -> None:
    with openslide.OpenSlide(str(svs_slide.slide_path)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert slide.properties["openslide.objective-power"] == "40"
        assert slide.level_dimensions == ((2000, 1600), (1000, 800))
        assert "thumbnail" in slide.associated_images
        assert slide.properties["tiff.ImageDescription"].startswith("Aperio Image Library")


def test_odd_sizes_give_rounded_up_levels(tmp_path: Path) -> None:
    config = SynthConfig(width_px=2501, height_px=1333, mpp=1.0, seed=1, n_levels=3)
    result = generate_slide(config, tmp_path / "odd.tif")
    with openslide.OpenSlide(str(result.slide_path)) as slide:
        assert slide.level_dimensions == ((2501, 1333), (1251, 667), (626, 334))


def test_lower_levels_are_downsampled_level_0(tif_slide: SynthResult) -> None:
    with openslide.OpenSlide(str(tif_slide.slide_path)) as slide:
        full = np.asarray(slide.read_region((0, 0), 0, (2400, 1800)).convert("RGB"), float)
        level1 = np.asarray(slide.read_region((0, 0), 1, (1200, 900)).convert("RGB"), float)
    box = full.reshape(900, 2, 1200, 2, 3).mean(axis=(1, 3))
    assert np.abs(box - level1).mean() < 4  # JPEG noise only


def test_level_0_is_glass_outside_the_tissue_and_stained_inside(tif_slide: SynthResult) -> None:
    tissue = shapely.Polygon(tif_slide.tissue_xy[0])
    with openslide.OpenSlide(str(tif_slide.slide_path)) as slide:
        corner = np.asarray(slide.read_region((0, 0), 0, (64, 64)).convert("RGB"))
        x, y = (int(v) for v in tissue.centroid.coords[0])
        inside = np.asarray(slide.read_region((x - 150, y - 150), 0, (300, 300)).convert("RGB"))
    assert _glass_like(corner)
    assert not _glass_like(inside)
    assert (inside[..., 1] < 215).mean() > 0.5  # eosin and haematoxylin absorb green


# --- ground truth --------------------------------------------------------------------------


def test_truth_diameters_match_the_request_within_a_pixel(tif_slide: SynthResult) -> None:
    for deposit in tif_slide.deposits:
        feret_px = pdist(deposit.vertices_xy).max()
        assert feret_px * 0.5 / 1000 == pytest.approx(deposit.diameter_mm, abs=1e-9)
        error_px = abs(deposit.diameter_mm - deposit.requested_diameter_mm) * 1000 / 0.5
        assert error_px < 1.0


def test_truth_categories_area_and_node_category(tif_slide: SynthResult) -> None:
    assert [d.category for d in tif_slide.deposits] == ["itc", "micro"]
    assert tif_slide.node_category == "micro"
    for deposit in tif_slide.deposits:
        area_mm2 = shapely.Polygon(deposit.vertices_xy).area * (0.5 / 1000) ** 2
        assert deposit.area_mm2 == pytest.approx(area_mm2)
        assert deposit.centroid_xy == pytest.approx(tuple(deposit.vertices_xy.mean(axis=0)))


def test_category_cutoffs_are_the_staging_constants() -> None:
    assert deposit_category(0.2) == "itc"
    assert deposit_category(0.2000001) == "micro"
    assert deposit_category(2.0) == "micro"
    assert deposit_category(2.0000001) == "macro"


def test_deposits_lie_inside_the_tissue_apart_from_each_other(tif_slide: SynthResult) -> None:
    tissue = shapely.union_all([shapely.Polygon(t) for t in tif_slide.tissue_xy])
    polygons = [shapely.Polygon(d.vertices_xy) for d in tif_slide.deposits]
    assert all(tissue.contains(p) for p in polygons)
    assert polygons[0].distance(polygons[1]) * 0.5 >= 100  # µm apart


def test_tumor_nuclei_count_fits_the_deposit_area(tif_slide: SynthResult) -> None:
    for deposit in tif_slide.deposits:
        cells_per_mm2 = deposit.n_tumor_nuclei / deposit.area_mm2
        assert 2500 < cells_per_mm2 < 6000  # one cell per ~250 µm², as in carcinoma


def test_deposit_pixels_look_different_from_lymph_node(tif_slide: SynthResult) -> None:
    """Tumor: fewer very dark (lymphocyte) pixels, more mid-tone purple."""
    big = tif_slide.deposits[1]
    x, y = (int(v) for v in shapely.Polygon(big.vertices_xy).representative_point().coords[0])
    tissue = shapely.Polygon(tif_slide.tissue_xy[0]).buffer(-100)
    lymph_point = tissue.difference(shapely.Polygon(big.vertices_xy).buffer(150)).centroid
    with openslide.OpenSlide(str(tif_slide.slide_path)) as slide:
        tumor = np.asarray(slide.read_region((x - 16, y - 16), 0, (32, 32)).convert("L"))
        lx, ly = int(lymph_point.x), int(lymph_point.y)
        lymph = np.asarray(slide.read_region((lx - 16, ly - 16), 0, (32, 32)).convert("L"))
    assert (tumor < 90).mean() < (lymph < 90).mean()


def test_asap_xml_of_the_truth_reloads_to_the_same_polygons(tif_slide: SynthResult) -> None:
    annotations = read_asap_xml(tif_slide.xml_path)
    assert [a.label for a in annotations] == ["tumor", "tumor"]
    assert [a.group for a in annotations] == ["Tumor", "Tumor"]
    for annotation, deposit in zip(annotations, tif_slide.deposits, strict=True):
        np.testing.assert_array_equal(annotation.vertices_xy, deposit.vertices_xy)


def test_truth_json_reloads_exactly(tif_slide: SynthResult) -> None:
    again = read_truth(tif_slide.truth_path)
    assert again.slide_path == tif_slide.slide_path
    assert again.node_category == tif_slide.node_category
    assert again.level_dimensions == tif_slide.level_dimensions
    for a, b in zip(again.deposits, tif_slide.deposits, strict=True):
        assert (a.id, a.diameter_mm, a.n_tumor_nuclei, a.category) == (
            b.id,
            b.diameter_mm,
            b.n_tumor_nuclei,
            b.category,
        )
        np.testing.assert_array_equal(a.vertices_xy, b.vertices_xy)
    raw = json.loads(tif_slide.truth_path.read_text())
    assert raw["mpp"] == 0.5 and raw["category_cutoffs_mm"] == {"itc_max": 0.2, "micro_max": 2.0}


def test_read_truth_of_a_broken_file_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "x.truth.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match=re.escape("x.truth.json")):
        read_truth(bad)


# --- determinism and metadata options -------------------------------------------------------


def _level0(result: SynthResult) -> np.ndarray:
    with openslide.OpenSlide(str(result.slide_path)) as slide:
        return np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))


def test_same_seed_gives_the_same_slide_and_another_seed_does_not(tmp_path: Path) -> None:
    deposits = (PlantedDeposit(0.1),)
    first = generate_slide(SynthConfig(**SMALL, seed=3, deposits=deposits), tmp_path / "a.tif")
    again = generate_slide(SynthConfig(**SMALL, seed=3, deposits=deposits), tmp_path / "b.tif")
    other = generate_slide(SynthConfig(**SMALL, seed=4, deposits=deposits), tmp_path / "c.tif")
    np.testing.assert_array_equal(_level0(first), _level0(again))
    np.testing.assert_array_equal(first.deposits[0].vertices_xy, again.deposits[0].vertices_xy)
    assert first.deposits[0].n_tumor_nuclei == again.deposits[0].n_tumor_nuclei
    assert not np.array_equal(_level0(first), _level0(other))


def test_no_mpp_writes_no_resolution_metadata(tmp_path: Path) -> None:
    result = generate_slide(SynthConfig(**{**SMALL, "mpp": None}, seed=1), tmp_path / "n.tif")
    svs = generate_slide(SynthConfig(**{**SMALL, "mpp": None}, seed=1, format="svs"), tmp_path / "n.svs")
    for path in (result.slide_path, svs.slide_path):
        with openslide.OpenSlide(str(path)) as slide:
            properties = dict(slide.properties)
        assert "openslide.mpp-x" not in properties
        assert properties.get("tiff.ResolutionUnit", "none") not in ("centimeter", "inch")
        with pytest.raises(MissingMppError, match="--mpp"):
            read_mpp(path, properties)
    assert json.loads(result.truth_path.read_text())["mpp"] is None
    assert result.render_mpp == 0.25


# --- bad settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width_px": 10}, "width_px=10"),
        ({"mpp": 5.0}, "mpp=5.0"),
        ({"tile_size_px": 100}, "tile_size_px=100 is not a multiple of 16"),
        ({"jpeg_quality": 0}, "jpeg_quality=0"),
        ({"format": "png"}, "format='png'"),
        ({"n_levels": 30}, "n_levels=30"),
        ({"deposits": (PlantedDeposit(0.5),)}, r"deposits\[0\].diameter_mm=0.5 does not fit"),
        ({"seed": -1}, "seed=-1"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_field(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthConfig(**{**SMALL, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize("diameter_mm", [0.0, -1.0, math.nan, 0.01])
def test_planted_deposit_rejects_sizes_below_two_cells(diameter_mm: float) -> None:
    with pytest.raises(ValueError, match="diameter_mm"):
        PlantedDeposit(diameter_mm)


def test_deposits_that_cannot_all_be_placed_raise_config_error(tmp_path: Path) -> None:
    config = SynthConfig(**SMALL, deposits=(PlantedDeposit(0.25),) * 6)
    with pytest.raises(ConfigError, match="could not place 6 deposit"):
        generate_slide(config, tmp_path / "full.tif")
    assert not list(tmp_path.iterdir())


def test_suffix_must_match_the_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs the suffix \.svs"):
        generate_slide(SynthConfig(**SMALL, format="svs"), tmp_path / "x.tif")


# --- command line --------------------------------------------------------------------------


def test_synth_command_writes_slide_truth_and_lists_deposits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "synth",
            "--out",
            str(tmp_path),
            "--width",
            "1600",
            "--height",
            "1200",
            "--mpp",
            "1.0",
            "--seed",
            "2",
            "--deposit",
            "0.1",
            "--deposit",
            "0.5",
            "--name",
            "cli",
            "--list",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert {p.name for p in tmp_path.iterdir()} == {"cli.tif", "cli.truth.json", "cli.xml"}
    assert "node category: micro" in out
    assert out.count(" itc ") == 1 and out.count(" micro ") == 1


def test_synth_command_reports_bad_values_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["synth", "--out", str(tmp_path), "--width", "1024", "--height", "800", "--deposit", "3.0"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1
    assert err.startswith("micromet synth: error: deposits[0].diameter_mm=3 does not fit")


def test_synth_command_rejects_mpp_with_no_mpp(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["synth", "--out", str(tmp_path), "--mpp", "0.5", "--no-mpp"])
    assert info.value.code == 2


def test_truth_category_is_size_first_like_the_pipeline() -> None:
    # Size decides by default; the count never lowers (or raises) the category.
    assert deposit_category(0.3, 150) == "micro"
    assert deposit_category(0.3, 250) == "micro"
    assert deposit_category(0.15, 250) == "itc"
    assert deposit_category(2.5, 10) == "macro"


def test_truth_category_follows_the_literal_cell_rule_when_asked() -> None:
    # The AJCC wording read literally: < 200 cells ITC, > 200 micro, up to 2.0 mm.
    assert deposit_category(0.3, 150, "literal") == "itc"
    assert deposit_category(0.15, 250, "literal") == "micro"
    assert deposit_category(2.5, 10, "literal") == "macro"
