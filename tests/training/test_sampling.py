"""Patch sampling: tumor centres inside outlines, normal centres outside, splits by slide."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import draw_tissue_rgb, write_pyramid_tiff

from pipeline.errors import ConfigError
from pipeline.slides.annotations import Annotation, write_asap_xml, write_geojson
from pipeline.slides.slide import SlideSource
from pipeline.training.sampling import (
    AnnotatedSlide,
    PatchSample,
    SampleConfig,
    assign_splits,
    balance_classes,
    build_sample_index,
    find_slides,
    read_sample_index,
    sample_negative_candidates,
    sample_slide,
    split_by_slide,
    write_sample_index,
)

SLIDE_W_PX, SLIDE_H_PX, SLIDE_MPP = 1500, 1100, 0.5
# Axis-aligned rectangles (x0, y0, x1, y1) in level-0 px, inside the tissue ellipse.
TUMOR_BIG = (600.0, 400.0, 900.0, 700.0)
TUMOR_SMALL = (450.0, 500.0, 490.0, 540.0)
EXCLUDED = (700.0, 500.0, 800.0, 600.0)  # a hole of normal tissue inside the big tumor


def _rect(name: str, group: str, label: str, box: tuple[float, float, float, float]) -> Annotation:
    x0, y0, x1, y1 = box
    vertices = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    return Annotation(name=name, group=group, label=label, vertices_xy=vertices)  # type: ignore[arg-type]


def _in_box(xy: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return (xy[:, 0] > x0) & (xy[:, 0] < x1) & (xy[:, 1] > y0) & (xy[:, 1] < y1)


def _box_distance(xy: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = box
    dx = np.maximum(np.maximum(x0 - xy[:, 0], 0), xy[:, 0] - x1)
    dy = np.maximum(np.maximum(y0 - xy[:, 1], 0), xy[:, 1] - y1)
    return np.hypot(dx, dy)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An annotated slide (ASAP XML beside it) and a normal slide without annotations."""
    folder = tmp_path_factory.mktemp("sampling")
    tumor = write_pyramid_tiff(folder / "tumor_slide.tif", draw_tissue_rgb(SLIDE_W_PX, SLIDE_H_PX), SLIDE_MPP)
    annotations = [
        _rect("big", "Tumor", "tumor", TUMOR_BIG),
        _rect("small", "Tumor", "tumor", TUMOR_SMALL),
        _rect("hole", "Exclusion", "exclude", EXCLUDED),
    ]
    write_asap_xml(annotations, folder / "tumor_slide.xml")
    normal = folder / "normal_slide.tif"
    shutil.copy(tumor, normal)
    return {"tumor": tumor, "normal": normal, "folder": folder}


def _centres(samples: list[PatchSample], label: int) -> np.ndarray:
    return np.array([[s.x_px, s.y_px] for s in samples if s.label == label]).reshape(-1, 2)


def test_tumor_centres_lie_inside_tumor_outlines_and_outside_excluded_regions(
    slides: dict[str, Path],
) -> None:
    source = AnnotatedSlide(slides["tumor"], slides["folder"] / "tumor_slide.xml")
    samples = sample_slide(source, SampleConfig(tumor_per_slide=300, normal_per_slide=0, seed=1))
    tumor = _centres(samples, 1)
    assert len(tumor) == 300
    assert np.all(_in_box(tumor, TUMOR_BIG) | _in_box(tumor, TUMOR_SMALL))
    assert not np.any(_in_box(tumor, EXCLUDED))
    assert all(s.kind == "tumor" for s in samples)
    # sqrt-area weighting: the small lesion (1/56 of the area) still gets a fair share
    assert _in_box(tumor, TUMOR_SMALL).sum() >= 20


def test_normal_centres_lie_on_tissue_away_from_tumor_and_outside_excluded_regions(
    slides: dict[str, Path],
) -> None:
    source = AnnotatedSlide(slides["tumor"], slides["folder"] / "tumor_slide.xml")
    margin_um = 20.0
    config = SampleConfig(tumor_per_slide=0, normal_per_slide=400, normal_margin_um=margin_um, seed=2)
    normal = _centres(sample_slide(source, config), 0)
    assert len(normal) == 400
    margin_px = margin_um / SLIDE_MPP
    assert np.all(_box_distance(normal, TUMOR_BIG) > margin_px)
    assert np.all(_box_distance(normal, TUMOR_SMALL) > margin_px)
    assert not np.any(_in_box(normal, EXCLUDED))
    # on tissue: inside the drawn ellipse, give or take one 8 µm mask pixel (16 level-0 px)
    cx, cy, rx, ry = SLIDE_W_PX / 2, SLIDE_H_PX / 2, SLIDE_W_PX * 0.35 + 16, SLIDE_H_PX * 0.35 + 16
    assert np.all(((normal[:, 0] - cx) / rx) ** 2 + ((normal[:, 1] - cy) / ry) ** 2 <= 1.0)


def test_slide_mpp_opens_the_slide_at_that_resolution(slides: dict[str, Path]) -> None:
    source = AnnotatedSlide(slides["tumor"], slides["folder"] / "tumor_slide.xml")
    assert source.slide_source(None) == SlideSource.from_metadata(slides["tumor"])
    assert source.slide_source(0.25) == SlideSource(slides["tumor"], 0.25, "--slide-mpp")
    config = SampleConfig(tumor_per_slide=0, normal_per_slide=300, normal_margin_um=20.0, seed=2)
    normal = _centres(sample_slide(source, config, slide_mpp=0.25), 0)
    assert len(normal) == 300
    # 20 µm is 80 level-0 px at 0.25 µm/px (40 px at the file's own 0.5 µm/px)
    assert np.all(_box_distance(normal, TUMOR_BIG) > 20.0 / 0.25)


def test_a_slide_without_annotations_gives_only_normal_samples_anywhere_on_tissue(
    slides: dict[str, Path],
) -> None:
    samples = sample_slide(
        AnnotatedSlide(slides["normal"]), SampleConfig(tumor_per_slide=50, normal_per_slide=200)
    )
    assert len(samples) == 200
    assert {s.label for s in samples} == {0}
    normal = _centres(samples, 0)
    # no tumor to avoid: some normal centres fall where the other slide has its lesion
    assert _in_box(normal, TUMOR_BIG).sum() > 0


def test_sampling_is_reproducible_and_mining_rounds_draw_fresh_normal_centres(
    slides: dict[str, Path],
) -> None:
    source = AnnotatedSlide(slides["tumor"], slides["folder"] / "tumor_slide.xml")
    config = SampleConfig(tumor_per_slide=20, normal_per_slide=20, seed=5)
    assert sample_slide(source, config) == sample_slide(source, config)
    first = sample_negative_candidates(source, config, 30, round_index=1)
    second = sample_negative_candidates(source, config, 30, round_index=2)
    assert {s.kind for s in first} == {"hard_negative"} and {s.label for s in first} == {0}
    assert first != second
    assert np.all(_box_distance(_centres(first, 0), TUMOR_BIG) > config.normal_margin_um / SLIDE_MPP)


def test_split_by_slide_keeps_every_slide_whole_and_validates_both_kinds() -> None:
    tumor = [f"/s/tumor_{i}.tif" for i in range(5)]
    slides = tumor + [f"/s/normal_{i}.tif" for i in range(4)]
    splits = split_by_slide(slides, set(tumor), val_fraction=0.25, seed=0)
    assert set(splits) == set(slides)
    val = [path for path, split in splits.items() if split == "val"]
    assert any("tumor" in p for p in val) and any("normal" in p for p in val)
    assert sum("tumor" in p for p in val) == 1 and sum("normal" in p for p in val) == 1
    samples = [PatchSample(slide, float(i), 0.0, i % 2) for slide in slides for i in range(6)]
    by_slide: dict[str, set[str]] = {}
    for sample in assign_splits(samples, splits):
        by_slide.setdefault(sample.slide, set()).add(sample.split)
    assert all(len(kinds) == 1 for kinds in by_slide.values())
    assert split_by_slide(slides, set(tumor), 0.25, seed=0) == splits


def test_split_fraction_out_of_range_names_the_value() -> None:
    with pytest.raises(ValueError, match=r"val_fraction=0\.95"):
        split_by_slide([], set(), 0.95, 0)


def test_build_sample_index_stratifies_by_tumor_content_not_by_annotation_file(
    slides: dict[str, Path],
) -> None:
    # the normal slide has an annotation file too, but no tumor in it
    sources = [
        AnnotatedSlide(slides["tumor"], slides["folder"] / "tumor_slide.xml"),
        AnnotatedSlide(slides["normal"], slides["folder"] / "empty.xml"),
    ]
    write_asap_xml([], slides["folder"] / "empty.xml")
    samples = build_sample_index(sources, SampleConfig(tumor_per_slide=5, normal_per_slide=5), 0.5)
    assert len(samples) == 15
    # one slide per group: neither group gives up its only slide to validation
    assert {s.split for s in samples} == {"train"}


def test_balance_classes_repeats_the_rarer_class_until_equal() -> None:
    samples = [PatchSample("a", float(i), 0.0, 1 if i < 3 else 0) for i in range(10)]
    balanced = balance_classes(samples, seed=0)
    assert sum(s.label == 1 for s in balanced) == sum(s.label == 0 for s in balanced) == 7
    assert balanced[:10] == samples
    assert balance_classes(samples[3:], seed=0) == samples[3:]  # one class: unchanged


def test_sample_index_round_trips_exactly(tmp_path: Path) -> None:
    samples = [
        PatchSample("/x/a b.tif", 0.1 + 0.2, 1e-7, 1, "val", "tumor"),
        PatchSample("/x/é.svs", 12345.678901234, 3.0, 0, "train", "hard_negative"),
    ]
    path = write_sample_index(tmp_path / "samples.csv", samples)
    assert read_sample_index(path) == samples


def test_bad_index_row_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "samples.csv"
    path.write_text("slide,x_px,y_px,label,split,kind\na.tif,1,2,1,train,tumor\na.tif,1,2,7,train,tumor\n")
    with pytest.raises(ConfigError, match=r"samples.csv: line 3.*label=7"):
        read_sample_index(path)


def test_find_slides_matches_annotations_beside_or_in_a_folder_case_insensitively(tmp_path: Path) -> None:
    (tmp_path / "training" / "tumor").mkdir(parents=True)
    (tmp_path / "training" / "normal").mkdir()
    (tmp_path / "lesion_annotations").mkdir()
    (tmp_path / "beside").mkdir()
    for name in ("training/tumor/tumor_001.tif", "training/normal/normal_001.tif", "beside/node.svs"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "lesion_annotations" / "Tumor_001.xml").write_text("<x/>")
    write_geojson([], tmp_path / "beside" / "node.geojson")
    (tmp_path / "beside" / "node.truth.json").write_text("{}")
    sources = find_slides([tmp_path / "training", tmp_path / "beside"], [tmp_path / "lesion_annotations"])
    found = {s.slide_path.name: s.annotation_path and s.annotation_path.name for s in sources}
    assert found == {"tumor_001.tif": "Tumor_001.xml", "normal_001.tif": None, "node.svs": "node.geojson"}


def test_find_slides_reports_missing_paths_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere"):
        find_slides([tmp_path / "nowhere"])
    with pytest.raises(ConfigError, match="no slide files"):
        find_slides([tmp_path])
    with pytest.raises(ConfigError, match="annotation folder not found"):
        find_slides([tmp_path], [tmp_path / "missing"])


def test_outlines_entirely_outside_the_slide_are_reported(
    slides: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = (SLIDE_W_PX + 100.0, 10.0, SLIDE_W_PX + 400.0, 300.0)  # right of the slide
    xml = tmp_path / "tumor_slide.xml"
    write_asap_xml([_rect("in", "Tumor", "tumor", TUMOR_BIG), _rect("out", "Tumor", "tumor", outside)], xml)
    with caplog.at_level("WARNING"):
        config = SampleConfig(tumor_per_slide=4, normal_per_slide=0)
        sample_slide(AnnotatedSlide(slides["tumor"], xml), config)
    assert f"{xml}: 1 of 2 tumor outline(s) lie entirely outside the slide (1500 x 1100" in caplog.text
