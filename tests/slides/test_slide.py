"""Slide access: metadata, mpp, reads at a physical resolution, and every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, draw_tissue_rgb, require_shared_data, write_pyramid_tiff

from pipeline.errors import MissingMppError, SlideOpenError
from pipeline.slides.slide import open_slide, read_mpp

BAD = FIXTURES / "bad_slides"


def test_tiny_slide_reports_size_levels_and_mpp(tiny_slide: Path) -> None:
    with open_slide(tiny_slide) as slide:
        assert slide.dimensions == (1500, 1100)
        assert slide.info.level_count == 3
        assert slide.mpp == pytest.approx(0.5, rel=1e-6)
        assert slide.info.mpp_source == "metadata"
        assert slide.info.level_downsamples[1] == pytest.approx(2.0, rel=0.01)


def test_best_level_is_the_coarsest_at_or_finer_than_target(tiny_slide: Path) -> None:
    with open_slide(tiny_slide) as slide:
        assert slide.best_level_for_mpp(0.5) == 0
        assert slide.best_level_for_mpp(0.9) == 0  # level 1 is 1.0 µm/px: too coarse
        assert slide.best_level_for_mpp(1.0) == 1
        assert slide.best_level_for_mpp(1.5) == 1
        assert slide.best_level_for_mpp(50.0) == 2


def test_read_at_mpp_returns_requested_size_and_content(tiny_slide: Path) -> None:
    with open_slide(tiny_slide) as slide:
        region = slide.read_region_at_mpp(600, 400, 64, 48, target_mpp=1.5)
        assert region.shape == (48, 64, 3)
        assert region.dtype == np.uint8
        # The region is inside the pink blob, not white glass.
        assert region.mean() < 225


def test_read_outside_the_slide_is_white(tiny_slide: Path) -> None:
    with open_slide(tiny_slide) as slide:
        region = slide.read_region_rgb(1490, 1090, 0, 40, 40)
        assert region.shape == (40, 40, 3)
        assert (region[20:, 20:] == 255).all()


def test_mpp_override_replaces_missing_metadata() -> None:
    with open_slide(BAD / "no_resolution.tif", mpp_override=0.25) as slide:
        assert slide.mpp == 0.25
        assert slide.info.mpp_source == "user"


def test_missing_mpp_names_the_file_and_the_override() -> None:
    with pytest.raises(MissingMppError, match=r"no_resolution\.tif.*--mpp"):
        open_slide(BAD / "no_resolution.tif")


@pytest.mark.parametrize("mpp", [0.0, -1.0, 1e-4, 500.0])
def test_implausible_override_is_refused(mpp: float) -> None:
    with pytest.raises(MissingMppError, match="implausible"):
        open_slide(BAD / "no_resolution.tif", mpp_override=mpp)


def test_anisotropic_metadata_is_refused() -> None:
    props = {"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.5"}
    with pytest.raises(MissingMppError, match="differ"):
        read_mpp(Path("x.svs"), props)


def test_mpp_falls_back_to_tiff_resolution_tags() -> None:
    props = {"tiff.ResolutionUnit": "centimeter", "tiff.XResolution": "40000", "tiff.YResolution": "40000"}
    assert read_mpp(Path("x.tif"), props) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("empty.svs", "empty"),
        ("text_named.svs", "cannot read"),
        ("random_bytes.svs", "cannot read"),
        ("truncated.tif", "cannot read|truncated"),
    ],
)
def test_bad_files_raise_one_clear_error_naming_the_file(name: str, message: str) -> None:
    with pytest.raises(SlideOpenError, match=message) as info:
        open_slide(BAD / name)
    assert name in str(info.value)
    assert "\n" not in str(info.value)


def test_a_png_named_tif_is_read_as_the_png_it_is() -> None:
    """Recognised by its bytes, not its name: a plain image needs --mpp, and is not called an
    unsupported slide format."""
    with pytest.raises(MissingMppError, match=r"plain PNG image .*--mpp") as info:
        open_slide(BAD / "png_renamed.tif")
    assert "png_renamed.tif" in str(info.value) and "not a supported" not in str(info.value)
    with open_slide(BAD / "png_renamed.tif", mpp_override=0.5) as slide:
        assert slide.info.vendor == "plain-png"


def test_missing_file_and_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SlideOpenError, match="not found"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideOpenError, match="not a file"):
        open_slide(tmp_path)


def test_non_ascii_file_name_opens() -> None:
    path = next(BAD.glob("lymphknoten_*"))
    with open_slide(path) as slide:
        assert slide.dimensions == (400, 300)


def test_closed_slide_refuses_reads(tiny_slide: Path) -> None:
    slide = open_slide(tiny_slide)
    slide.close()
    slide.close()
    with pytest.raises(SlideOpenError, match="closed"):
        slide.read_region_rgb(0, 0, 0, 8, 8)


def test_level_downsamples_come_from_the_slide_not_powers_of_two(tmp_path: Path) -> None:
    path = write_pyramid_tiff(tmp_path / "odd.tif", draw_tissue_rgb(1001, 777), mpp=0.25)
    with open_slide(path) as slide:
        assert slide.info.level_dimensions[1] == (501, 389)
        assert slide.level_mpp(1) == pytest.approx(0.25 * slide.info.level_downsamples[1])


@pytest.mark.shared_data
def test_real_aperio_jpeg_slide_reports_its_mpp() -> None:
    path = require_shared_data("slides/cmu_small_region.svs")
    with open_slide(path) as slide:
        assert slide.info.vendor == "aperio"
        assert slide.mpp == pytest.approx(0.499, abs=0.01)
        assert slide.info.objective_power == 20
        thumb = slide.thumbnail_at_mpp(8.0)
        assert thumb.shape[0] == pytest.approx(2967 * 0.499 / 8.0, abs=2)


@pytest.mark.shared_data
def test_real_jpeg2000_slide_opens_and_asks_for_mpp() -> None:
    # This TCGA file records no resolution at all: it must not be guessed.
    path = require_shared_data("slides/tcga_cr_7395_jp2k.svs")
    with pytest.raises(MissingMppError, match="--mpp"):
        open_slide(path)
    with open_slide(path, mpp_override=0.5) as slide:
        assert slide.info.vendor == "aperio"
        assert slide.info.level_count == 2
        region = slide.read_region_at_mpp(2000, 1500, 128, 128, 1.0)
        assert region.shape == (128, 128, 3)
        assert region.std() > 5  # decoded JPEG 2000 pixels, not a blank


def test_reads_return_writable_arrays(tiny_slide: Path) -> None:
    with open_slide(tiny_slide) as slide:
        region = slide.read_region_rgb(100, 100, 0, 32, 32)
        assert region.flags.writeable
        region[0, 0] = 0  # callers (augmentation, normalisation) may edit tiles in place


def _patch_first_directory_size(source: Path, target: Path, width: int, height: int) -> Path:
    """A copy of ``source`` whose first TIFF directory says it is ``width`` x ``height`` px."""
    import tifffile

    data = bytearray(source.read_bytes())
    with tifffile.TiffFile(source) as tif:
        tags = tif.pages[0].tags
        for code, value in ((256, width), (257, height)):
            tag = tags[code]
            size = 2 if tag.dtype == 3 else 4  # SHORT or LONG, stored in the entry itself
            data[tag.valueoffset : tag.valueoffset + size] = value.to_bytes(size, "little")
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize(("width", "height"), [(1, 1), (700, 1), (2, 560)])
def test_corrupt_level0_header_is_refused_not_read_at_half_scale(
    tmp_path: Path, width: int, height: int
) -> None:
    good = write_pyramid_tiff(tmp_path / "good.tif", draw_tissue_rgb(700, 560), mpp=0.5, tile_px=128)
    bad = _patch_first_directory_size(good, tmp_path / "bad.tif", width, height)
    with pytest.raises(SlideOpenError) as caught:
        open_slide(bad)
    message = str(caught.value)
    assert message.startswith(f"{bad}: corrupt level-0 header") and "\n" not in message
    with open_slide(good) as slide:
        assert slide.dimensions == (700, 560)


def test_a_level_larger_than_level0_is_refused() -> None:
    from pipeline.slides.slide import check_level_sizes

    check_level_sizes(Path("ok.svs"), ((800, 600), (400, 300)), "unknown")
    with pytest.raises(SlideOpenError, match=r"x\.svs: corrupt level-0 header: level 0 is 1 x 1 px"):
        check_level_sizes(Path("x.svs"), ((1, 1), (400, 300)), "unknown")


@pytest.mark.shared_data
def test_aperio_slide_with_a_damaged_first_directory_is_refused(tmp_path: Path) -> None:
    source = require_shared_data("slides/cmu_small_region.svs")
    bad = _patch_first_directory_size(source, tmp_path / "bad.svs", 1, 1)
    with pytest.raises(SlideOpenError, match="corrupt level-0 header"):
        open_slide(bad)
