"""Slides for tests and benchmarks built in the package (pipeline/synthetic/pyramid_tiff.py,
real_slides.py): the pyramid TIFF's µm/px reaches OpenSlide, missing reference data is one
clear error, transparent patches are composited onto white, and no script imports tests/."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.slides.slide import open_slide
from pipeline.synthetic import real_slides
from pipeline.synthetic.pyramid_tiff import draw_tissue_rgb, write_pyramid_tiff

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_a_pyramid_tiff_opens_with_its_mpp_and_halving_levels(tmp_path: Path) -> None:
    path = write_pyramid_tiff(tmp_path / "s.tif", draw_tissue_rgb(600, 400), mpp=0.25, n_levels=3)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.25)
        assert slide.dimensions == (600, 400)
        assert [round(f) for f in slide.info.level_downsamples] == [1, 2, 4]


def test_missing_reference_tissue_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(real_slides, "C17_TILE_DIR", tmp_path / "camelyon17_tiles")
    with pytest.raises(ConfigError, match=r"camelyon17_tiles/centre_3_patient_066_node_1\.jpeg: not found"):
        real_slides.write_c17_slide("centre_3", tmp_path / "c17.tif")
    assert not (tmp_path / "c17.tif").exists()


def test_too_few_tumor_patches_say_how_many(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(real_slides, "C16_TUMOR_DIR", tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(ConfigError, match=r"at least 2 tumor patches, found 1"):
        real_slides.c16_tumor_patches(2)


def test_transparent_patch_pixels_read_as_white(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(real_slides, "C16_TUMOR_DIR", tmp_path)
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 50, 100)
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "p.png")
    (patch,) = real_slides.c16_tumor_patches(1)
    assert patch.shape == (4, 4, 3)
    assert (patch[:2] == (200, 50, 100)).all() and (patch[2:] == 255).all()


def _imports_tests(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        found += [n for n in names if n.split(".")[0] in ("tests", "conftest")]
    return found


def test_no_script_imports_the_test_suite() -> None:
    found = {p.name: names for p in sorted(SCRIPTS.glob("*.py")) if (names := _imports_tests(p))}
    assert not found, f"scripts import tests/ (use pipeline.synthetic.real_slides / pyramid_tiff): {found}"
