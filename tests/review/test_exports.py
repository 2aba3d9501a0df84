"""Exports: QuPath GeoJSON, ASAP XML and CAMELYON16 CSV of deposits, written and read back."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely

from pipeline.deposits.measure import Deposit, find_deposits, with_cell_count
from pipeline.detection.heatmap import Heatmap
from pipeline.errors import AnnotationError, OutputError
from pipeline.review.exports import (
    detection_point_xy,
    read_camelyon16_csv,
    write_asap_xml,
    write_camelyon16_csv,
    write_qupath_geojson,
)
from pipeline.slides.annotations import read_asap_xml, read_geojson

MPP = 0.25


def make_deposits() -> list[Deposit]:
    """A 9 x 12-cell micro deposit (C-shaped: centroid outside it), a block and a single cell."""
    values = np.zeros((16, 30), dtype=np.float32)
    values[1:10, 1:13] = 0.9
    values[3:8, 4:13] = 0.0  # open to the right: a "C"
    values[12:14, 20:23] = 0.7
    values[2, 25] = 0.55
    heatmap = Heatmap(values, 500.0, 300.0, 200.0, 400.0, MPP, (20_000, 20_000))
    deposits = find_deposits(heatmap, 0.5)
    deposits[1] = with_cell_count(deposits[1], 57)
    return deposits


def check_rfc7946_polygon_collection(data: Any) -> None:
    """Structural checks of RFC 7946 for a FeatureCollection of Polygon Features."""
    assert data["type"] == "FeatureCollection"
    assert isinstance(data["features"], list)
    for feature in data["features"]:
        assert feature["type"] == "Feature"
        assert isinstance(feature["properties"], dict)
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon"
        rings = geometry["coordinates"]
        assert isinstance(rings, list) and rings
        for ring in rings:
            assert len(ring) >= 4, "a linear ring has at least four positions"
            assert ring[0] == ring[-1], "a linear ring is closed"
            for position in ring:
                assert len(position) == 2
                assert all(isinstance(v, int | float) and math.isfinite(v) for v in position)
        # RFC 7946 3.1.6: exterior rings are counter-clockwise.
        assert shapely.LinearRing(rings[0]).is_ccw
        assert shapely.Polygon(rings[0], rings[1:]).is_valid


def test_qupath_geojson_is_valid_and_reloads_to_the_same_polygons(tmp_path: Path) -> None:
    deposits = make_deposits()
    path = tmp_path / "deposits.geojson"
    write_qupath_geojson(deposits, path)
    data = json.loads(path.read_text())
    check_rfc7946_polygon_collection(data)
    assert len(data["features"]) == 3
    first = data["features"][0]["properties"]
    assert first["objectType"] == "annotation"
    assert first["classification"]["name"] == "Tumor"
    assert len(first["classification"]["color"]) == 3
    assert first["name"] == "deposit 1 (micro)"
    assert first["measurements"]["max_diameter_mm"] == pytest.approx(deposits[0].max_diameter_mm)
    assert first["measurements"]["area_mm2"] == pytest.approx(deposits[0].area_mm2)
    assert "cell_count" not in first["measurements"]
    assert data["features"][1]["properties"]["measurements"]["cell_count"] == 57
    reloaded = read_geojson(path)
    assert [a.name for a in reloaded] == ["deposit 1 (micro)", "deposit 2 (itc)", "deposit 3 (itc)"]
    assert all(a.label == "tumor" for a in reloaded)
    for annotation, deposit in zip(reloaded, deposits, strict=True):
        np.testing.assert_array_equal(annotation.vertices_xy, deposit.outline_xy)


def test_asap_xml_reloads_to_the_same_polygons(tmp_path: Path) -> None:
    deposits = make_deposits()
    path = tmp_path / "deposits.xml"
    write_asap_xml(deposits, path)
    reloaded = read_asap_xml(path)
    assert [a.group for a in reloaded] == ["Tumor"] * 3
    assert [a.label for a in reloaded] == ["tumor"] * 3
    for annotation, deposit in zip(reloaded, deposits, strict=True):
        np.testing.assert_array_equal(annotation.vertices_xy, deposit.outline_xy)


def test_camelyon16_csv_has_one_row_per_deposit_inside_it(tmp_path: Path) -> None:
    deposits = make_deposits()
    path = tmp_path / "detections.csv"
    write_camelyon16_csv(deposits, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "confidence,X,Y"
    assert len(lines) == 1 + len(deposits)
    for line in lines[1:]:
        confidence_text, x_text, y_text = line.split(",")
        int(x_text), int(y_text)  # the official script parses X and Y with int()
        assert 0.0 <= float(confidence_text) <= 1.0
    rows = read_camelyon16_csv(path)
    for (confidence, x_px, y_px), deposit in zip(rows, deposits, strict=True):
        assert confidence == deposit.max_probability
        assert shapely.Polygon(deposit.outline_xy).contains(shapely.Point(x_px, y_px))


def test_detection_point_is_the_centroid_unless_that_lies_outside() -> None:
    c_shape, block, _ = make_deposits()
    assert detection_point_xy(block) == (block.centroid_x_px, block.centroid_y_px)
    outline = shapely.Polygon(c_shape.outline_xy)
    assert not outline.contains(shapely.Point(c_shape.centroid_x_px, c_shape.centroid_y_px))
    x_px, y_px = detection_point_xy(c_shape)
    assert outline.contains(shapely.Point(x_px, y_px))
    # ... and as close to the centroid as the shape allows: on the C's inner rim.
    assert math.hypot(x_px - c_shape.centroid_x_px, y_px - c_shape.centroid_y_px) < 600


def test_no_deposits_give_valid_empty_files(tmp_path: Path) -> None:
    write_qupath_geojson([], tmp_path / "d.geojson")
    write_asap_xml([], tmp_path / "d.xml")
    write_camelyon16_csv([], tmp_path / "d.csv")
    check_rfc7946_polygon_collection(json.loads((tmp_path / "d.geojson").read_text()))
    assert read_geojson(tmp_path / "d.geojson") == []
    assert read_asap_xml(tmp_path / "d.xml") == []
    assert (tmp_path / "d.csv").read_text() == "confidence,X,Y\n"
    assert read_camelyon16_csv(tmp_path / "d.csv") == []


def test_writes_replace_files_atomically_and_leave_no_temporaries(tmp_path: Path) -> None:
    deposits = make_deposits()
    target = tmp_path / "detections.csv"
    target.write_text("old content\n")
    write_camelyon16_csv(deposits[:1], target)
    write_qupath_geojson(deposits, tmp_path / "deposits.geojson")
    write_asap_xml(deposits, tmp_path / "deposits.xml")
    assert target.read_text().startswith("confidence,X,Y\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "deposits.geojson",
        "deposits.xml",
        "detections.csv",
    ]


def test_unwritable_destination_raises_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(OutputError, match="not_a_folder"):
        write_camelyon16_csv(make_deposits(), blocker / "detections.csv")


def test_reading_a_bad_detection_csv_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("confidence,X,Y\n0.9,10,20\n0.8,abc,5\n")
    with pytest.raises(AnnotationError, match="line 3"):
        read_camelyon16_csv(path)
    with pytest.raises(AnnotationError, match="not found"):
        read_camelyon16_csv(tmp_path / "missing.csv")
    headerless = tmp_path / "plain.csv"
    headerless.write_text("0.9,10,20\n0.5,1.6,2.4\n")
    assert read_camelyon16_csv(headerless) == [(0.9, 10, 20), (0.5, 2, 2)]


def test_review_flag_is_in_geojson_properties_and_the_asap_name(tmp_path: Path) -> None:
    deposits = make_deposits()
    deposits[0] = with_cell_count(deposits[0], 40)  # micro by size, 40 nuclei counted
    assert deposits[0].review is not None
    write_qupath_geojson(deposits, tmp_path / "d.geojson")
    write_asap_xml(deposits, tmp_path / "d.xml")
    properties = [f["properties"] for f in json.loads((tmp_path / "d.geojson").read_text())["features"]]
    assert [p["category"] for p in properties] == ["micro", "itc", "itc"]
    assert properties[0]["review"] == deposits[0].review
    assert properties[1]["review"] is None and properties[2]["review"] is None
    names = [a.name for a in read_asap_xml(tmp_path / "d.xml")]
    assert names[0] == f"deposit 1 (micro, review: {deposits[0].review})"
    assert names[1:] == ["deposit 2 (itc)", "deposit 3 (itc)"]
    write_camelyon16_csv(deposits, tmp_path / "d.csv")  # the CAMELYON16 format stays 3 columns
    assert all(len(line.split(",")) == 3 for line in (tmp_path / "d.csv").read_text().splitlines())


def test_candidates_for_review_are_a_separate_class_in_geojson_and_group_in_asap(tmp_path: Path) -> None:
    deposits = make_deposits()
    candidate = dataclasses.replace(deposits[2], id=1, confirm_probability=0.31)
    write_qupath_geojson(deposits[:2], tmp_path / "d.geojson", [candidate])
    write_asap_xml(deposits[:2], tmp_path / "d.xml", [candidate])
    data = json.loads((tmp_path / "d.geojson").read_text())
    check_rfc7946_polygon_collection(data)
    properties = [f["properties"] for f in data["features"]]
    assert [p["classification"]["name"] for p in properties] == ["Tumor", "Tumor", "Candidate"]
    assert properties[2]["name"] == "candidate 1 (for review, not counted)"
    assert properties[2]["candidate"] is True and "candidate" not in properties[0]
    assert properties[2]["measurements"]["confirm_probability"] == pytest.approx(0.31)
    assert "confirm_probability" not in properties[0]["measurements"]  # not rescored
    reloaded = read_geojson(tmp_path / "d.geojson")
    assert [a.label for a in reloaded] == ["tumor", "tumor", "other"]  # never read back as tumor
    np.testing.assert_array_equal(reloaded[2].vertices_xy, candidate.outline_xy)
    groups = [(a.name, a.group, a.label) for a in read_asap_xml(tmp_path / "d.xml")]
    assert groups == [
        ("deposit 1 (micro)", "Tumor", "tumor"),
        ("deposit 2 (itc)", "Tumor", "tumor"),
        ("candidate 1 (for review, not counted)", "Candidate", "other"),
    ]
    write_qupath_geojson(deposits[:2], tmp_path / "none.geojson")  # without candidates: as before
    assert len(json.loads((tmp_path / "none.geojson").read_text())["features"]) == 2
