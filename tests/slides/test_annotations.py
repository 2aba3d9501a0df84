"""Annotation readers, writers, validation, masks and geometry helpers."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, require_shared_data
from scipy.spatial.distance import pdist

from pipeline.config import CAMELYON_LEVEL0_MPP
from pipeline.errors import AnnotationError, OutputError
from pipeline.slides.annotations import (
    GROUP_LABELS,
    Annotation,
    max_feret_diameter_px,
    polygon_area_px2,
    rasterize_annotations,
    read_annotations,
    read_asap_xml,
    read_camelyon16_json,
    read_geojson,
    write_asap_xml,
    write_geojson,
)

BAD = FIXTURES / "annotations"


def _square(x0: float, y0: float, side: float) -> np.ndarray:
    return np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]], float)


def _assert_same(first: list[Annotation], second: list[Annotation]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert (a.name, a.group, a.label) == (b.name, b.group, b.label)
        np.testing.assert_array_equal(a.vertices_xy, b.vertices_xy)
        assert len(a.holes_xy) == len(b.holes_xy)
        for hole_a, hole_b in zip(a.holes_xy, b.holes_xy, strict=True):
            np.testing.assert_array_equal(hole_a, hole_b)


# --- real files ----------------------------------------------------------------------------


@pytest.mark.shared_data
def test_camelyon17_asap_xml_reads_three_itc_sized_tumor_polygons() -> None:
    path = require_shared_data("annotations/asap_xml/patient_004_node_4.xml")
    annotations = read_asap_xml(path)
    assert [len(a.vertices_xy) for a in annotations] == [8, 15, 12]
    assert {a.label for a in annotations} == {"tumor"}
    np.testing.assert_array_equal(annotations[0].vertices_xy[0], [12711.2998, 88778.1016])
    # The node is labelled itc: every outline is at most 0.2 mm across at ~0.243 µm/px.
    diameters_mm = [max_feret_diameter_px(a.vertices_xy) * CAMELYON_LEVEL0_MPP / 1000 for a in annotations]
    assert all(0.05 < d <= 0.2 for d in diameters_mm)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["Tumor_081.json", "Tumor_098.json", "Tumor_083.json"])
def test_camelyon16_json_converts_to_asap_xml_and_back_unchanged(name: str, tmp_path: Path) -> None:
    path = require_shared_data(f"annotations/camelyon16_ncrf_json/{name}")
    raw = json.loads(path.read_text())
    annotations = read_camelyon16_json(path)
    assert sum(a.label == "tumor" for a in annotations) >= len(raw["positive"])
    assert sum(a.label == "exclude" for a in annotations) == len(raw["negative"])
    first = raw["positive"][0]["vertices"]
    np.testing.assert_array_equal(annotations[0].vertices_xy[0], first[0])
    write_asap_xml(annotations, tmp_path / "converted.xml")
    _assert_same(read_asap_xml(tmp_path / "converted.xml"), annotations)
    assert read_annotations(path)[0].name == annotations[0].name  # .json dispatch


# --- GeoJSON -------------------------------------------------------------------------------


def test_geojson_round_trip_keeps_float_coordinates_holes_and_measurements(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    outer = _square(1000.123456789, 2000.987654321, 500.5) + rng.normal(0, 1e-3, (4, 2))
    annotations = [
        Annotation("deposit 1", "Tumor", "tumor", outer, (_square(1100.25, 2100.75, 50.0),)),
        Annotation("margin", "Exclusion", "exclude", _square(0.1, 0.2, 10.3)),
    ]
    measurements = [{"max_diameter_mm": 0.1234, "area_mm2": 0.01}, {"area_mm2": 0.5}]
    path = tmp_path / "deposits.geojson"
    write_geojson(annotations, path, measurements)
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    feature = data["features"][0]
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["properties"]["classification"]["name"] == "Tumor"
    assert len(feature["properties"]["classification"]["color"]) == 3
    assert feature["properties"]["measurements"] == measurements[0]
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]  # GeoJSON rings are closed
    _assert_same(read_geojson(path), annotations)
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away


def test_geojson_measurement_count_must_match(tmp_path: Path) -> None:
    annotation = Annotation("a", "Tumor", "tumor", _square(0, 0, 10))
    with pytest.raises(ValueError, match="2 measurement dicts for 1 annotations"):
        write_geojson([annotation], tmp_path / "x.geojson", [{}, {}])


def test_geojson_single_multipolygon_feature_gives_one_annotation_per_part() -> None:
    parts = read_annotations(BAD / "multipolygon_feature.geojson")
    assert [a.name for a in parts] == ["two parts part 1", "two parts part 2"]
    assert len(parts[0].holes_xy) == 1
    assert polygon_area_px2(parts[0].vertices_xy, parts[0].holes_xy) == pytest.approx(1500)
    assert {a.label for a in parts} == {"tumor"}


def test_geojson_bare_feature_list_maps_classes_and_skips_points(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        annotations = read_geojson(BAD / "feature_list.geojson")
    assert [(a.name, a.label) for a in annotations] == [
        ("ignored region", "exclude"),
        ("stroma", "other"),
    ]
    assert "'a point' is a Point" in caplog.text


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("truncated.xml", "not a valid ASAP XML file"),
        ("wrong_root.xml", "expected <ASAP_Annotations>"),
        ("bad_coordinate.xml", "'broken' has a coordinate without numeric X and Y"),
        ("truncated.geojson", "not a valid JSON file"),
        ("not_geojson.json", "not GeoJSON"),
        ("bad_geometry.geojson", "'broken' has no list of coordinates"),
        ("all_degenerate.xml", "none of its 1 polygon"),
    ],
)
def test_malformed_files_raise_annotation_error_naming_the_file(name: str, message: str) -> None:
    with pytest.raises(AnnotationError, match=message) as info:
        read_annotations(BAD / name)
    assert name in str(info.value)


def test_missing_file_and_unknown_suffix_raise_annotation_error(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="not found"):
        read_asap_xml(tmp_path / "absent.xml")
    other = tmp_path / "outline.csv"
    other.write_text("x,y\n")
    with pytest.raises(AnnotationError, match=re.escape("unsupported annotation file type '.csv'")):
        read_annotations(other)


def test_xml_entities_are_not_expanded() -> None:
    pytest.importorskip("defusedxml")
    with pytest.raises(AnnotationError, match=re.escape("entity_expansion.xml")):
        read_asap_xml(BAD / "entity_expansion.xml")


def test_polygon_with_two_distinct_points_is_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        annotations = read_asap_xml(BAD / "mixed_degenerate.xml")
    assert [(a.name, a.label) for a in annotations] == [("good", "tumor"), ("excluded", "exclude")]
    np.testing.assert_array_equal(annotations[0].vertices_xy, _square(0, 0, 100))  # by Order
    assert "mixed_degenerate.xml: annotation 'two points' has 2 distinct point(s)" in caplog.text
    assert "'a dot' has type 'Dot'" in caplog.text


def test_empty_annotation_file_is_a_negative_slide() -> None:
    assert read_asap_xml(BAD / "empty.xml") == []


def test_self_intersecting_bow_tie_is_repaired_into_two_triangles(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        parts = read_geojson(BAD / "bowtie.geojson")
    assert "'bow tie' is self-intersecting" in caplog.text
    assert [a.name for a in parts] == ["bow tie part 1", "bow tie part 2"]
    assert [polygon_area_px2(a.vertices_xy) for a in parts] == pytest.approx([2500, 2500])
    import shapely

    assert all(shapely.Polygon(a.vertices_xy).is_valid for a in parts)


def test_group_labels_cover_camelyon_conventions() -> None:
    assert GROUP_LABELS["_0"] == GROUP_LABELS["_1"] == GROUP_LABELS["metastases"] == "tumor"
    assert GROUP_LABELS["_2"] == GROUP_LABELS["exclusion"] == "exclude"


def test_annotation_rejects_fewer_than_three_vertices() -> None:
    with pytest.raises(ValueError, match="expected"):
        Annotation("a", "Tumor", "tumor", np.zeros((2, 2)))


# --- writers -------------------------------------------------------------------------------


def test_asap_xml_writes_holes_as_exclusion_polygons(tmp_path: Path) -> None:
    annotation = Annotation("d", "Tumor", "tumor", _square(0, 0, 100), (_square(40, 40, 10),))
    write_asap_xml([annotation], tmp_path / "d.xml")
    back = read_asap_xml(tmp_path / "d.xml")
    assert [(a.name, a.group, a.label) for a in back] == [
        ("d", "Tumor", "tumor"),
        ("d hole 1", "_2", "exclude"),
    ]


def test_writer_replaces_a_group_that_contradicts_the_label(tmp_path: Path) -> None:
    annotation = Annotation("d", "Stroma", "tumor", _square(0, 0, 10))
    write_asap_xml([annotation], tmp_path / "d.xml")
    assert read_asap_xml(tmp_path / "d.xml")[0].group == "Tumor"


def test_writing_into_a_file_path_raises_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write"):
        write_asap_xml([], blocker / "x.xml")


# --- masks and geometry --------------------------------------------------------------------


@pytest.mark.parametrize("downsample", [1.0, 4.0, 16.0, 7.3])
def test_mask_area_matches_polygon_area_at_any_downsample(downsample: float) -> None:
    theta = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    radius = 1500 * (1 + 0.2 * np.cos(3 * theta))
    outline = np.column_stack([4000 + radius * np.cos(theta), 3000 + radius * np.sin(theta)])
    tumor = Annotation("t", "Tumor", "tumor", outline)
    excluded = Annotation("x", "_2", "exclude", _square(100, 100, 500))
    mask = rasterize_annotations([tumor, excluded], (8001, 6001), downsample)
    assert mask.shape == (math.ceil(6001 / downsample), math.ceil(8001 / downsample))
    expected_px = polygon_area_px2(outline) / downsample**2
    assert mask.sum() == pytest.approx(expected_px, rel=0.02)
    assert not mask[: int(600 / downsample), : int(600 / downsample)].any()  # exclude not drawn
    both = rasterize_annotations([tumor, excluded], (8001, 6001), downsample, ("tumor", "exclude"))
    assert both.sum() > mask.sum()


def test_mask_leaves_holes_empty() -> None:
    annotation = Annotation("t", "Tumor", "tumor", _square(0, 0, 100), (_square(25, 25, 50),))
    mask = rasterize_annotations([annotation], (100, 100), 1.0)
    assert mask.sum() == 100 * 100 - 50 * 50
    assert not mask[50, 50] and mask[10, 10]


def test_max_feret_diameter_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(0, 100, (500, 2))
    assert max_feret_diameter_px(points) == pytest.approx(pdist(points).max())
    assert max_feret_diameter_px(_square(0, 0, 10)) == pytest.approx(math.sqrt(200))
    assert max_feret_diameter_px(np.array([[0, 0], [3, 4], [6, 8.0]])) == pytest.approx(10)
    assert max_feret_diameter_px(np.array([[5.0, 5.0]])) == 0.0


def test_polygon_area_subtracts_holes() -> None:
    assert polygon_area_px2(_square(0, 0, 10)) == pytest.approx(100)
    assert polygon_area_px2(_square(0, 0, 10)[::-1]) == pytest.approx(100)  # orientation-free
    assert polygon_area_px2(_square(0, 0, 10), [_square(2, 2, 2)]) == pytest.approx(96)


# --- hostile files (issue 12) --------------------------------------------------------------


def _geojson_square(values: str) -> str:
    return (
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": '
        '{"name": "t", "classification": {"name": "Tumor"}}, "geometry": {"type": "Polygon", '
        f'"coordinates": [{values}]}}}}]}}'
    )


def _xml_square(x: str, encoding: str = "utf-8") -> str:
    coordinates = "".join(
        f'<Coordinate Order="{i}" X="{cx}" Y="{cy}" />'
        for i, (cx, cy) in enumerate([(x, "0"), (x, "10"), ("0", "10"), ("0", "0")])
    )
    return (
        f'<?xml version="1.0" encoding="{encoding}"?><ASAP_Annotations><Annotations>'
        f'<Annotation Name="t" Type="Polygon" PartOfGroup="Tumor"><Coordinates>{coordinates}'
        "</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )


HUGE_INT = "9" * 400
HOSTILE_ANNOTATIONS = {
    "features_null.geojson": ('{"type": "FeatureCollection", "features": null}', "'features' is"),
    "features_five.geojson": ('{"type": "FeatureCollection", "features": 5}', "'features' is"),
    "positive_null.json": ('{"positive": null, "negative": []}', "'positive' is NoneType"),
    "negative_dict.json": ('{"positive": [], "negative": {}}', "'negative' is dict"),
    "huge_int.geojson": (_geojson_square(f"[[0, 0], [{HUGE_INT}, 0], [0, 10], [0, 0]]"),
                         "too large"),
    "huge_int.json": ('{"positive": [{"name": "a", "vertices": [[0, 0], [' + HUGE_INT
                      + ', 0], [0, 10]]}], "negative": []}', "too large"),
    "deep.json": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "deep.geojson": ('{"type": "FeatureCollection", "features": ' + "[" * 100_000
                     + "]" * 100_000 + "}", "nested too deeply"),
    "klingon.xml": (_xml_square("10", encoding="klingon"), "not a valid ASAP XML file"),
    "e300.geojson": (_geojson_square("[[0, 0], [1e300, 0], [0, 1e300], [0, 0]]"), "1e\\+300"),
    "e15.json": ('{"positive": [{"name": "sq", "vertices": [[0, 0], [1e15, 0], [1e15, 1e15], '
                 '[0, 1e15]]}], "negative": []}', "within ±1e\\+07"),
    "e15.xml": (_xml_square("1e15"), "within ±1e\\+07"),
    "inf.xml": (_xml_square("inf"), "finite"),
    "huge_digits.xml": (_xml_square(HUGE_INT), "finite"),
    "nan.geojson": (_geojson_square("[[0, 0], [NaN, 0], [0, 10], [0, 0]]"), "finite"),
    "booleans.geojson": (_geojson_square("[[0, 0], [true, false], [0, 10], [0, 0]]"),
                         "expected \\[x, y\\] numbers"),
    "booleans.json": ('{"positive": [{"name": "b", "vertices": [[true, true], [false, true], '
                      '[false, false]]}], "negative": []}', "expected \\[x, y\\] numbers"),
    "strings.json": ('{"positive": [{"name": "s", "vertices": [["1", "2"], [5, 2], [5, 9]]}]}',
                     "expected \\[x, y\\] numbers"),
    "vertices_null.json": ('{"positive": [{"name": "n", "vertices": null}]}', "NoneType"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_ANNOTATIONS))
def test_hostile_annotation_files_raise_one_line_annotation_errors(name: str, tmp_path: Path) -> None:
    text, message = HOSTILE_ANNOTATIONS[name]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AnnotationError, match=message) as info:
        read_annotations(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_coordinates_up_to_the_bound_are_accepted(tmp_path: Path) -> None:
    from pipeline.slides.annotations import MAX_COORDINATE_PX

    path = tmp_path / "far.json"
    far = MAX_COORDINATE_PX
    path.write_text(json.dumps({"positive": [{"name": "far", "vertices": [
        [far - 10, far - 10], [far, far - 10], [far, far]]}], "negative": []}))
    assert len(read_annotations(path)) == 1


def test_max_feret_diameter_is_exact_on_random_polygons_and_a_60k_vertex_circle() -> None:
    rng = np.random.default_rng(1)
    for trial in range(500):
        points = rng.uniform(-50, 50, (int(rng.integers(2, 60)), 2))
        if trial % 3 == 0:
            points = np.round(points)  # duplicates and collinear hull points
        if trial % 5 == 0:
            points[:, 1] = 2 * points[:, 0] + 1  # all on one line: no hull
        assert max_feret_diameter_px(points) == pytest.approx(pdist(points).max(), rel=1e-12)
    n = 60_000  # quadratic pairs would be 1.8e9 distances; calipers walk the hull once
    angles = np.arange(n) * 2 * np.pi / n
    circle = np.stack([1000 * np.cos(angles), 1000 * np.sin(angles)], axis=1)
    opposite = float(np.hypot(*(circle[: n // 2] - circle[n // 2 :]).T).max())
    assert max_feret_diameter_px(circle) == pytest.approx(opposite, rel=1e-12)
