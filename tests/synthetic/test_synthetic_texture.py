"""Synthetic slides painted from real texture: exact ground truth, deposits from tumor texture,
tissue from lymph-node texture, physical resampling, seeded and block-independent rendering."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
from PIL import Image

from pipeline.cli import demo, main
from pipeline.config import CAMELYON_LEVEL0_MPP
from pipeline.errors import ConfigError
from pipeline.synthetic.generate import PlantedDeposit, SynthConfig, SynthResult, generate_slide
from pipeline.synthetic.layout import build_scene
from pipeline.synthetic.texture import (
    BACKGROUND_TILES,
    BUNDLED_BACKGROUND_TILES,
    BUNDLED_TUMOR_PATCHES,
    TUMOR_PATCHES,
    load_textures,
    render_textured_block,
)
from tests.conftest import require_shared_data

# Flat, distinct colours make "painted from which source" measurable on the written slide.
FAKE_BACKGROUND_RGB = (70, 150, 80)
FAKE_TUMOR_RGB = (210, 60, 50)
SLIDE = {"width_px": 2400, "height_px": 1800, "mpp": 0.5, "seed": 11}
DEPOSITS = (PlantedDeposit(0.35), PlantedDeposit(0.12))


def _noisy(rgb: tuple[int, int, int], side: int, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-12, 13, (side, side, 1))
    return np.clip(np.array(rgb)[None, None, :] + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def fake_texture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A texture folder laid out like ../shared/data, with flat green tiles and red patches."""
    folder = tmp_path_factory.mktemp("texture")
    for index, (relative, _, _) in enumerate(BACKGROUND_TILES):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_noisy(FAKE_BACKGROUND_RGB, 2048, index)).save(folder / relative, quality=95)
    (folder / TUMOR_PATCHES).mkdir(parents=True)
    for index in range(6):
        rgba = np.dstack([_noisy(FAKE_TUMOR_RGB, 256, 100 + index), np.full((256, 256), 255, np.uint8)])
        Image.fromarray(rgba, "RGBA").save(folder / TUMOR_PATCHES / f"tumor_{index}.png")
    return folder


def _level0(path: Path) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as slide:
        return np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))


def _pixels_in(rgb: np.ndarray, region: shapely.Geometry) -> np.ndarray:
    """RGB of the pixels whose centre lies in ``region`` (level-0 px), (n, 3)."""
    yy, xx = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]]
    inside = shapely.contains_xy(region, xx.ravel() + 0.5, yy.ravel() + 0.5)
    return rgb.reshape(-1, 3)[inside]


def _regions(result: SynthResult, margin_um: float) -> tuple[shapely.Geometry, shapely.Geometry]:
    """Deposit interiors and tissue away from capsule and deposits, shrunk by margin_um."""
    margin_px = margin_um / result.render_mpp
    deposits = shapely.union_all([shapely.Polygon(d.vertices_xy) for d in result.deposits])
    tissue = shapely.union_all([shapely.Polygon(t) for t in result.tissue_xy])
    interior = tissue.buffer(-(30 + margin_um) / result.render_mpp).difference(deposits.buffer(margin_px))
    return deposits.buffer(-margin_px), interior


@pytest.fixture(scope="module")
def fake_slide(fake_texture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    config = SynthConfig(**SLIDE, deposits=DEPOSITS, texture="real", texture_dir=fake_texture_dir)
    return generate_slide(config, tmp_path_factory.mktemp("fake") / "node.tif")


# --- painting from the texture sources ----------------------------------------------------------


def test_deposits_take_tumor_texture_and_tissue_takes_background_texture(fake_slide: SynthResult) -> None:
    rgb = _level0(fake_slide.slide_path)
    inside, outside = _regions(fake_slide, margin_um=4.0)
    tumor, tissue = _pixels_in(rgb, inside), _pixels_in(rgb, outside)
    assert len(tumor) > 1000 and len(tissue) > 10000
    np.testing.assert_allclose(np.median(tumor, axis=0), FAKE_TUMOR_RGB, atol=8)
    # Fat vacuoles (white, drawn) lie in the tissue too; the median is the texture's.
    np.testing.assert_allclose(np.median(tissue, axis=0), FAKE_BACKGROUND_RGB, atol=8)


def test_deposit_edge_blends_over_a_few_micrometres(fake_slide: SynthResult) -> None:
    rgb = _level0(fake_slide.slide_path).astype(np.float64)
    outline = shapely.Polygon(fake_slide.deposits[0].vertices_xy)
    mpp = fake_slide.render_mpp

    def redness(distance_um: float) -> float:
        ring = outline.buffer(distance_um / mpp + 0.4).difference(outline.buffer(distance_um / mpp - 0.4))
        return float(np.mean(_pixels_in(rgb, ring)[:, 0]))

    # Fully tumor 3 µm inside, fully background 3 µm outside, in between on the outline.
    assert redness(-3.0) == pytest.approx(FAKE_TUMOR_RGB[0], abs=12)
    assert redness(3.0) == pytest.approx(FAKE_BACKGROUND_RGB[0], abs=12)
    assert redness(3.0) + 40 < redness(0.0) < redness(-3.0) - 40


def test_texture_never_changes_the_layout_or_ground_truth(fake_slide: SynthResult, tmp_path: Path) -> None:
    cartoon = generate_slide(SynthConfig(**SLIDE, deposits=DEPOSITS), tmp_path / "cartoon.tif")
    for real, drawn in zip(fake_slide.deposits, cartoon.deposits, strict=True):
        np.testing.assert_array_equal(real.vertices_xy, drawn.vertices_xy)
        assert (real.diameter_mm, real.category, real.n_tumor_nuclei) == (
            drawn.diameter_mm,
            drawn.category,
            drawn.n_tumor_nuclei,
        )
    for requested, truth in zip(DEPOSITS, fake_slide.deposits, strict=True):
        assert truth.diameter_mm == pytest.approx(requested.diameter_mm, abs=1e-9)
    assert fake_slide.xml_path.read_bytes() == cartoon.xml_path.read_bytes()
    raw = json.loads(fake_slide.truth_path.read_text())
    assert raw["texture"] == "real" and json.loads(cartoon.truth_path.read_text())["texture"] == "cartoon"
    assert raw["texture_sources"][0].startswith("camelyon17_tiles/")
    assert any(s.startswith(TUMOR_PATCHES) for s in raw["texture_sources"])


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_gives_the_same_real_texture_slide_and_another_seed_does_not(
    fake_texture_dir: Path, fake_slide: SynthResult, tmp_path: Path
) -> None:
    config = SynthConfig(**SLIDE, deposits=DEPOSITS, texture="real", texture_dir=fake_texture_dir)
    again = generate_slide(config, tmp_path / "again.tif")
    other = generate_slide(
        SynthConfig(**{**SLIDE, "seed": 12}, deposits=DEPOSITS, texture="real", texture_dir=fake_texture_dir),
        tmp_path / "other.tif",
    )
    first = _level0(fake_slide.slide_path)
    np.testing.assert_array_equal(first, _level0(again.slide_path))
    assert not np.array_equal(first, _level0(other.slide_path))


def test_any_block_layout_gives_the_same_pixels(fake_texture_dir: Path) -> None:
    config = SynthConfig(**SLIDE, deposits=DEPOSITS, texture="real", texture_dir=fake_texture_dir)
    scene, layout, _ = build_scene(config)
    library = load_textures(fake_texture_dir, config.render_mpp)
    cx, cy = layout.deposits_xy[0].mean(axis=0)
    # A window (at most one render block) across the deposit's edge and mosaic seams.
    width, height = 1024, 256
    x0 = min(max(int(cx) // 8 * 8 - 512, 0), SLIDE["width_px"] - width)
    y0 = int(cy) // 8 * 8 - 128
    whole = render_textured_block(scene, library, x0, y0, width, height)
    pieces = np.empty_like(whole)
    for r0, r1 in ((0, 136), (136, 256)):
        for c0, c1 in ((0, 520), (520, 776), (776, 1024)):
            pieces[r0:r1, c0:c1] = render_textured_block(scene, library, x0 + c0, y0 + r0, c1 - c0, r1 - r0)
    np.testing.assert_array_equal(whole, pieces)
    assert (np.abs(whole.astype(int) - FAKE_TUMOR_RGB).sum(axis=2) < 40).any()  # the deposit is in it


# --- texture sources and settings ---------------------------------------------------------------


def test_textures_are_resampled_by_physical_scale(fake_texture_dir: Path) -> None:
    library = load_textures(fake_texture_dir, 0.5)
    scale = CAMELYON_LEVEL0_MPP / 0.5
    assert library.background[0].shape == (round(2048 * scale), round(2048 * scale), 3)
    assert library.background[2].shape == (round(2048 * scale), round(1024 * scale), 3)  # right half
    assert {t.shape for t in library.tumor} == {(round(256 * scale), round(256 * scale), 3)}
    assert "columns 0.5-1" in library.background_names[2]


def test_negative_node_background_takes_only_the_negative_nodes_tile(
    fake_texture_dir: Path, tmp_path: Path
) -> None:
    library = load_textures(fake_texture_dir, 0.5, "negative-node")
    assert library.background_names == (f"{BACKGROUND_TILES[2][0]} (columns 0.5-1)",)
    config = SynthConfig(
        width_px=1024,
        height_px=800,
        mpp=0.5,
        texture="real",
        texture_dir=fake_texture_dir,
        texture_background="negative-node",
    )
    result = generate_slide(config, tmp_path / "neg.tif")
    assert result.texture_sources == library.background_names
    assert json.loads(result.truth_path.read_text())["texture_background"] == "negative-node"


def test_missing_texture_folder_is_a_one_line_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no_such_data"
    size = ["--width", "1024", "--height", "800"]
    texture = ["--texture", "real", "--texture-data", str(missing)]
    code = main(["synth", "--out", str(tmp_path / "o"), *size, *texture])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert str(missing) in err and "--texture-data" in err and "--texture cartoon" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_texture_folder_without_tumor_patches_names_what_is_missing(
    fake_texture_dir: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(fake_texture_dir / "camelyon17_tiles", partial / "camelyon17_tiles")
    config = SynthConfig(width_px=1024, height_px=800, mpp=0.5, texture="real", texture_dir=partial)
    with pytest.raises(ConfigError, match=f"{TUMOR_PATCHES}/\\*.png"):
        generate_slide(config, tmp_path / "x.tif")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"texture": "photo"}, "texture='photo' is not allowed"),
        ({"texture_dir": Path("/data")}, "texture_dir='/data' is only used with texture='real'"),
        ({"texture": "real", "mpp": 1.5}, "mpp=1.5 is too coarse for texture='real'"),
        ({"texture": "real", "texture_background": "centre_1"}, "texture_background='centre_1' is not"),
        ({"texture_background": "negative-node"}, "only used with texture='real'"),
    ],
)
def test_bad_texture_settings_raise_value_error_naming_the_field(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SynthConfig(width_px=1024, height_px=800, **changes)  # type: ignore[arg-type]


def test_demo_falls_back_to_cartoon_with_a_one_line_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("pipeline.synthetic.texture.DEFAULT_TEXTURE_DIR", tmp_path / "absent")
    monkeypatch.setattr("pipeline.synthetic.texture.BUNDLED_TEXTURE_DIR", tmp_path / "absent")
    assert demo.choose_texture(None) == ("cartoon", None)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(tmp_path / "absent") in err and "does not recognise cartoon tumor" in err


def test_a_fresh_clone_paints_the_demo_from_the_bundled_real_texture_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.synthetic.texture import BUNDLED_TEXTURE_DIR, load_textures

    monkeypatch.setattr("pipeline.synthetic.texture.DEFAULT_TEXTURE_DIR", tmp_path / "no_shared_data")
    assert demo.choose_texture(None) == ("real", BUNDLED_TEXTURE_DIR)
    assert BUNDLED_TEXTURE_DIR.parent.name == "data" and (BUNDLED_TEXTURE_DIR.parent / "README.md").is_file()
    library = load_textures(BUNDLED_TEXTURE_DIR, 1.0, "negative-node")  # the pack loads as the demo needs
    assert library.background_names == (BUNDLED_BACKGROUND_TILES[BACKGROUND_TILES[2][0]],)
    assert len(library.tumor) >= 10 and all(n.startswith(BUNDLED_TUMOR_PATCHES) for n in library.tumor_names)
    assert len(load_textures(BUNDLED_TEXTURE_DIR, 0.243).background) == 3  # every tile, at the finest mpp
    size_bytes = sum(p.stat().st_size for p in BUNDLED_TEXTURE_DIR.rglob("*") if p.is_file())
    assert size_bytes < 6_000_000  # a few MB in the repository


@pytest.mark.shared_data
def test_the_texture_pack_holds_crops_of_the_reference_files_never_copies() -> None:
    """The pack's files are re-encoded crops named by their corner: none has the bytes of a
    reference file, and each matches the region of its source it names (JPEG loss aside)."""
    from pipeline.synthetic.texture import BUNDLED_TEXTURE_DIR

    data = require_shared_data()
    pack = [p for p in BUNDLED_TEXTURE_DIR.rglob("*") if p.is_file()]
    sizes = {p.stat().st_size for p in pack}  # only a file of the same size can be a copy
    same_size = [p for p in data.rglob("*") if p.is_file() and p.stat().st_size in sizes]
    reference = {hashlib.sha256(p.read_bytes()).hexdigest() for p in same_size}
    assert pack and not {hashlib.sha256(p.read_bytes()).hexdigest() for p in pack} & reference
    for tile, crop in BUNDLED_BACKGROUND_TILES.items():
        x, y = (int(part[1:]) for part in Path(crop).stem.split("_")[-2:])
        pixels = np.asarray(Image.open(BUNDLED_TEXTURE_DIR / crop).convert("RGB"), dtype=np.float64)
        source = np.asarray(Image.open(data / tile).convert("RGB"), dtype=np.float64)
        region = source[y : y + pixels.shape[0], x : x + pixels.shape[1]]
        assert region.shape == pixels.shape and np.abs(region - pixels).mean() < 4, crop
    for patch in BUNDLED_TEXTURE_DIR.glob(f"{BUNDLED_TUMOR_PATCHES}/*.png"):
        slide, x, y = patch.stem.rsplit("_", 2)
        pixels = np.asarray(Image.open(patch).convert("RGB"), dtype=np.int16)
        name = f"{slide}_{int(x) - 2}_{int(y) - 2}.png"
        source = np.asarray(Image.open(data / TUMOR_PATCHES / name).convert("RGB"), dtype=np.int16)
        np.testing.assert_array_equal(pixels, source[2:254, 2:254])


def test_demo_uses_real_texture_when_the_folder_exists(fake_texture_dir: Path) -> None:
    assert demo.choose_texture(fake_texture_dir) == ("real", fake_texture_dir)
    with pytest.raises(ConfigError, match=r"--texture-data .*folder not found"):
        demo.choose_texture(fake_texture_dir / "missing")


# --- the real reference texture -------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_slide(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    data = require_shared_data("camelyon16_patches")
    config = SynthConfig(**SLIDE, deposits=DEPOSITS, texture="real", texture_dir=data.parent)
    return generate_slide(config, tmp_path_factory.mktemp("real") / "node.tif")


def _grey_texture_std(rgb: np.ndarray) -> float:
    """Standard deviation of grey level: how much nuclear/stromal contrast a texture has."""
    return float(rgb.astype(np.float64).mean(axis=-1).std())


@pytest.mark.shared_data
def test_real_texture_slide_has_exact_ground_truth(real_slide: SynthResult) -> None:
    for requested, truth in zip(DEPOSITS, real_slide.deposits, strict=True):
        assert truth.diameter_mm == pytest.approx(requested.diameter_mm, abs=1e-9)
    assert [d.category for d in real_slide.deposits] == ["micro", "itc"]
    assert real_slide.node_category == "micro" and real_slide.texture == "real"


@pytest.mark.shared_data
def test_real_deposits_look_like_the_tumor_patches_and_tissue_like_the_tile(real_slide: SynthResult) -> None:
    library = load_textures(require_shared_data(), real_slide.render_mpp)
    background_name = real_slide.texture_sources[0]
    source = library.background[library.background_names.index(background_name)]
    tumor_source = np.concatenate([t.reshape(-1, 3) for t in library.tumor])
    rgb = _level0(real_slide.slide_path)
    inside, outside = _regions(real_slide, margin_um=4.0)
    tumor, tissue = _pixels_in(rgb, inside), _pixels_in(rgb, outside)
    # Mean colour of each region matches its source (JPEG and mosaic sampling aside) ...
    np.testing.assert_allclose(tumor.mean(axis=0), tumor_source.mean(axis=0), atol=15)
    tissue = tissue[tissue.mean(axis=1) < 225]  # drop the drawn fat vacuoles
    np.testing.assert_allclose(tissue.mean(axis=0), source.reshape(-1, 3).mean(axis=0), atol=12)
    # ... and so does its contrast, which a flat fill would not have.
    assert _grey_texture_std(tumor) == pytest.approx(_grey_texture_std(tumor_source), rel=0.3)
    assert _grey_texture_std(tissue) == pytest.approx(_grey_texture_std(source), rel=0.3)
    assert np.abs(tumor.mean(axis=0) - tissue.mean(axis=0)).max() > 15


# --- the demo with the default model ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.shared_data
def test_demo_nodes_come_out_as_planted_with_the_default_model(tmp_path: Path) -> None:
    """`micromet demo` paints real texture; the real-data default model must find its planted
    deposits: every node category as planted, every micro/macro deposit found where planted."""
    data = require_shared_data("camelyon17_tiles")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--texture-data", str(data.parent)]) == 0
    for name, *_ in demo.DEMO_SLIDES:
        truth = json.loads((out / "slides" / f"{name}.truth.json").read_text())
        report = json.loads((out / "batch" / name / "report.json").read_text())
        assert truth["texture"] == "real"
        assert report["category"] == truth["node_category"], name
        found = [shapely.Point(d["centroid_x_px"], d["centroid_y_px"]) for d in report["deposits"]]
        for planted in truth["deposits"]:
            outline = shapely.Polygon(planted["vertices_xy"]).buffer(50 / truth["render_mpp"])
            assert any(outline.contains(p) for p in found), (name, planted["id"])
        assert len(found) == len(truth["deposits"]), name  # nothing found in the background
