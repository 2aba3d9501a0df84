"""Slide access: a slide as one value (``SlideSource``): pickled to a reader process and
reopened there at the same resolution, and the viewer's pixels-only source."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES

from pipeline.errors import MissingMppError, SlideOpenError
from pipeline.slides.slide import (
    MPP_FROM_METADATA,
    PIXELS_ONLY,
    NoPhysicalResolutionError,
    SlideSource,
    open_slide,
    open_slide_for_user,
)

BAD = FIXTURES / "bad_slides"


def test_a_metadata_source_settles_the_slides_own_mpp_when_opened(tiny_slide: Path) -> None:
    source = SlideSource.from_metadata(tiny_slide)
    assert (source.mpp, source.mpp_from) == (None, MPP_FROM_METADATA)
    with source.open() as slide:
        assert slide.source == SlideSource(tiny_slide, slide.mpp, MPP_FROM_METADATA)
        assert slide.mpp == pytest.approx(0.5, rel=1e-6)
        assert slide.info.mpp_source == "metadata"


def test_a_pickled_source_reopens_the_same_slide_at_the_same_mpp(tiny_slide: Path) -> None:
    with open_slide(tiny_slide) as first:
        source, info = first.source, first.info
        region = first.read_region_at_mpp(600, 400, 64, 48, target_mpp=1.5)
    copy = pickle.loads(pickle.dumps(source))
    assert copy == source and hash(copy) == hash(source)
    with copy.open() as again:
        assert again.source == source
        assert again.info == info  # same mpp, same mpp_source "metadata", same metadata_mpp
        np.testing.assert_array_equal(again.read_region_at_mpp(600, 400, 64, 48, target_mpp=1.5), region)


def test_a_user_mpp_travels_with_the_flag_that_gave_it() -> None:
    path = BAD / "no_resolution.tif"
    with open_slide_for_user(path, 0.25, flag="--mpp-csv") as slide:
        assert slide.source == SlideSource(path, 0.25, "--mpp-csv")
        assert (slide.mpp, slide.info.mpp_source, slide.info.metadata_mpp) == (0.25, "user", None)
    with pickle.loads(pickle.dumps(slide.source)).open() as again:
        assert again.mpp == 0.25 and again.source == slide.source


def test_a_source_opens_with_the_same_errors_as_open_slide(tmp_path: Path) -> None:
    with pytest.raises(MissingMppError, match=r"no_resolution\.tif.*--mpp"):
        SlideSource.from_metadata(BAD / "no_resolution.tif").open()
    with pytest.raises(MissingMppError, match=r"no_resolution\.tif"):
        SlideSource.with_mpp(BAD / "no_resolution.tif", 0.0).open()
    with pytest.raises(SlideOpenError, match=r"missing\.svs: file not found"):
        SlideSource.from_metadata(tmp_path / "missing.svs").open()


def test_a_pixels_only_source_reads_pixels_and_refuses_any_physical_read(tiny_slide: Path) -> None:
    source = SlideSource.pixels_only(tiny_slide)
    with source.open() as slide:
        assert slide.source == source == pickle.loads(pickle.dumps(source))
        assert (slide.info.mpp, slide.info.mpp_source) == (None, PIXELS_ONLY)
        assert slide.read_region_rgb(0, 0, 1, 16, 16).shape == (16, 16, 3)
        with pytest.raises(NoPhysicalResolutionError, match=r"tiny\.tif.*pixels only.*no µm/px"):
            _ = slide.mpp
        with pytest.raises(NoPhysicalResolutionError, match="pixels only"):
            slide.read_region_at_mpp(0, 0, 16, 16, 1.0)
        with pytest.raises(NoPhysicalResolutionError, match="pixels only"):
            slide.thumbnail_at_mpp(8.0)


def test_a_pixels_only_source_opens_a_slide_without_a_resolution() -> None:
    with SlideSource.pixels_only(BAD / "no_resolution.tif").open() as slide:
        assert slide.read_region_rgb(0, 0, 0, 8, 8).dtype == np.uint8


def test_a_source_states_where_its_mpp_comes_from(tiny_slide: Path) -> None:
    with pytest.raises(ValueError, match="mpp_from is empty"):
        SlideSource(tiny_slide, 0.5, "")
    with pytest.raises(ValueError, match="pixels-only source has no µm/px"):
        SlideSource(tiny_slide, 0.5, PIXELS_ONLY)
    with pytest.raises(ValueError, match="'--mpp' needs the µm/px"):
        SlideSource(tiny_slide, None, "--mpp")
    assert SlideSource.for_path(tiny_slide, None) == SlideSource.from_metadata(tiny_slide)
    assert SlideSource.for_path(tiny_slide, 0.3, "slide_mpp") == SlideSource(tiny_slide, 0.3, "slide_mpp")
