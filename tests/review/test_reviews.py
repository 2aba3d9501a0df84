"""Pathologist reviews (pipeline/review/reviews.py, review_import.py): edits, revisions,
review.geojson, ASAP XML, QuPath / ASAP import, measurements of drawn outlines."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.batch.local import run_slide_safely
from pipeline.deposits.measure import Deposit, max_feret_diameter
from pipeline.errors import AnnotationError, ReviewConflictError, ReviewError
from pipeline.review.review_files import read_review, read_slide_review, write_review
from pipeline.review.review_import import import_review
from pipeline.review.reviews import (
    REVIEW_GEOJSON,
    REVIEW_XML,
    SlideReview,
    apply_edit,
    check_review_matches,
    measure_outline,
    new_review,
)
from pipeline.staging import Category

MPP = 0.5  # µm/px: 1,000 px = 0.5 mm
MICRO_SQUARE = [[1000.0, 1000.0], [2000.0, 1000.0], [2000.0, 2000.0], [1000.0, 2000.0]]  # 0.707 mm
ITC_SQUARE = [[5000.0, 5000.0], [5200.0, 5000.0], [5200.0, 5200.0], [5000.0, 5200.0]]  # 0.141 mm
T = "2026-01-02T03:04:05+00:00"


def _deposit(deposit_id: int, category: str, outline: list[list[float]]) -> dict[str, Any]:
    """A full report.json entry (``Deposit.to_dict``) of a square outline (level-0 px at MPP)."""
    xy = np.asarray(outline, dtype=np.float64)
    side_mm = float(xy[1, 0] - xy[0, 0]) * MPP / 1000
    (x0, y0), (x1, y1) = xy.min(axis=0).tolist(), xy.max(axis=0).tolist()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bbox = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
    deposit = Deposit(deposit_id, Category(category), side_mm * math.sqrt(2), 0.01, side_mm**2, cx, cy,
                      cx * MPP / 1000, cy * MPP / 1000, bbox, 0.95, 0.9, None, False, xy)
    return deposit.to_dict()


def _report() -> dict[str, Any]:
    return {
        "slide": {"mpp": MPP, "dimensions": [10_000, 8_000]},
        "category": "micro",
        "cell_rule": "size-first",
        "deposits": [_deposit(1, "micro", MICRO_SQUARE), _deposit(2, "itc", ITC_SQUARE)],
    }


def _edit(review: SlideReview, edit: dict[str, Any]) -> SlideReview:
    return apply_edit(review, edit, review.revision, "Dr Ana", T)


def test_a_new_review_keeps_the_models_deposits_pending_and_its_category() -> None:
    review = new_review("n1", _report())
    assert review.revision == 0 and review.status == "in progress"
    assert [(d.key, d.decision, d.category) for d in review.deposits] == [
        ("deposit 1", "pending", "micro"),
        ("deposit 2", "pending", "itc"),
    ]
    assert review.reviewed_category == "micro" == review.automated_category


def test_rejecting_the_micro_deposit_makes_the_slide_itc_and_records_history() -> None:
    review = _edit(new_review("n1", _report()), {"op": "decide", "key": "deposit 1", "decision": "rejected"})
    assert review.revision == 1 and review.reviewed_category == "itc"
    entry = {"revision": 1, "time": T, "reviewer": "Dr Ana", "action": "rejected deposit 1"}
    assert review.history == (entry,)
    review = _edit(review, {"op": "decide", "key": "deposit 2", "decision": "rejected"})
    assert review.reviewed_category == "negative"
    assert review.automated_category == "micro"  # the model's answer is kept beside it


def test_a_drawn_deposit_is_measured_like_an_automated_one() -> None:
    outline = [[3000.0, 3000.0], [8000.0, 3000.0], [8000.0, 6000.0], [3000.0, 6000.0]]  # 2.5 x 1.5 mm
    review = _edit(new_review("n1", _report()), {"op": "draw", "outline_xy": outline})
    drawn = review.deposit("drawn 1")
    expected_mm = max_feret_diameter(np.array(outline)) * MPP / 1000
    assert drawn.decision == "added"
    assert drawn.max_diameter_mm == pytest.approx(expected_mm) == pytest.approx(math.hypot(2.5, 1.5))
    assert drawn.area_mm2 == pytest.approx(2.5 * 1.5)
    assert drawn.category == "macro" and review.reviewed_category == "macro"


@pytest.mark.parametrize(
    ("side_px", "category"),
    [
        (0.2 / math.sqrt(2) * 2000, "itc"),
        (0.2 / math.sqrt(2) * 2000 + 1, "micro"),
        (2.0 / math.sqrt(2) * 2000, "micro"),
        (2.0 / math.sqrt(2) * 2000 + 1, "macro"),
    ],
)
def test_drawn_sizes_use_the_clinical_cut_offs_exactly(side_px: float, category: str) -> None:
    square = np.array([[0, 0], [side_px, 0], [side_px, side_px], [0, side_px]], dtype=np.float64)
    assert measure_outline(square, MPP, "size-first")[2] == category


def test_a_stale_edit_is_refused_as_a_conflict_and_changes_nothing() -> None:
    base = new_review("n1", _report())
    first = apply_edit(base, {"op": "decide", "key": "deposit 1", "decision": "rejected"}, 0, "tab 1", T)
    with pytest.raises(ReviewConflictError, match=r"revision 1 by tab 1.*revision 0 you edited.*NOT saved"):
        apply_edit(first, {"op": "decide", "key": "deposit 1", "decision": "confirmed"}, 0, "tab 2", T)
    assert first.deposit("deposit 1").decision == "rejected"


@pytest.mark.parametrize(
    ("edit", "reviewer", "message"),
    [
        ({"op": "decide", "key": "deposit 9", "decision": "rejected"}, "A", "no deposit 'deposit 9'"),
        ({"op": "decide", "key": "deposit 1", "decision": "maybe"}, "A", "decision 'maybe'"),
        ({"op": "draw", "outline_xy": [[0, 0], [1, 1]]}, "A", "3 to"),
        ({"op": "draw", "outline_xy": [[0, 0], [10, 0], [20, 0]]}, "A", "encloses no area"),
        ({"op": "draw", "outline_xy": [[0, 0], [10, 0], [10, 9000]]}, "A", "leaves the slide"),
        ({"op": "draw", "outline_xy": [[0, 0], ["a", 0], [10, 10]]}, "A", "not a list of"),
        ({"op": "delete", "key": "deposit 1"}, "A", "unknown edit"),
        ({"op": "status", "status": "done"}, "A", "status 'done'"),
        ({"op": "decide", "key": "deposit 1", "decision": "rejected"}, "  ", "reviewer is empty"),
    ],
)
def test_bad_edits_say_what_is_wrong(edit: dict[str, Any], reviewer: str, message: str) -> None:
    with pytest.raises(ReviewError, match=message):
        apply_edit(new_review("n1", _report()), edit, 0, reviewer, T)


def test_report_without_mpp_cannot_be_reviewed() -> None:
    report = _report()
    del report["slide"]["mpp"]
    with pytest.raises(ReviewError, match=r"no valid µm/px.*--mpp"):
        new_review("n1", report)


@pytest.mark.parametrize("field", ["deposits", "candidates"])
def test_a_partial_deposit_in_the_report_names_the_file_and_entry(field: str) -> None:
    report = _report()
    partial = {k: v for k, v in _deposit(1, "micro", MICRO_SQUARE).items() if k != "centroid_x_px"}
    report[field] = [partial]
    with pytest.raises(ReviewError, match=rf"n1/report.json: {field}\[0\]: .*centroid_x_px.*re-run"):
        new_review("n1", report)


def _reviewed(tmp_path: Path) -> SlideReview:
    review = new_review("n1", _report())
    review = _edit(review, {"op": "decide", "key": "deposit 1", "decision": "rejected"})
    review = _edit(review, {"op": "decide", "key": "deposit 2", "decision": "confirmed"})
    review = _edit(review, {"op": "draw", "outline_xy": [[7000.5, 7000.25], [7400, 7000], [7200, 7600.75]]})
    review = _edit(review, {"op": "status", "status": "complete", "note": "one false deposit"})
    write_review(tmp_path, review)
    return review


def test_review_geojson_is_a_qupath_feature_collection_that_reads_back(tmp_path: Path) -> None:
    review = _reviewed(tmp_path)
    data = json.loads((tmp_path / REVIEW_GEOJSON).read_text(encoding="utf-8"))
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 3
    for feature in data["features"]:
        properties = feature["properties"]
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1]  # closed, as GeoJSON requires
        assert properties["objectType"] == "annotation"
        assert set(properties["classification"]) == {"name", "color"}
        assert {"max_diameter_um", "max_diameter_mm", "area_mm2"} <= set(properties["measurements"])
        assert {"reviewer", "time", "decision"} <= set(properties)
    classes = [f["properties"]["classification"]["name"] for f in data["features"]]
    assert classes == ["Rejected", "Tumor", "Tumor"]
    assert data["micromet_review"]["reviewed_category"] == review.reviewed_category == "micro"
    again = read_review(tmp_path / REVIEW_GEOJSON)
    assert again.revision == 4 and again.complete and again.note == "one false deposit"
    assert [(d.key, d.decision) for d in again.deposits] == [(d.key, d.decision) for d in review.deposits]
    assert again.reviewed_category == "micro"
    assert [h["action"] for h in again.history][-1] == "marked complete; note: one false deposit"


def test_review_xml_opens_as_asap_with_decision_groups(tmp_path: Path) -> None:
    _reviewed(tmp_path)
    root = ET.parse(tmp_path / REVIEW_XML).getroot()
    annotations = root.findall("./Annotations/Annotation")
    assert [(a.get("Name"), a.get("PartOfGroup")) for a in annotations] == [
        ("deposit 1 (micro)", "Rejected"),
        ("deposit 2 (itc)", "Tumor"),
        ("drawn 1 (micro)", "Tumor"),
    ]


def test_a_broken_review_file_names_itself(tmp_path: Path) -> None:
    (tmp_path / REVIEW_GEOJSON).write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(ReviewError, match=r"review.geojson: not a micromet review.*fix or delete"):
        read_slide_review(tmp_path)
    (tmp_path / REVIEW_GEOJSON).write_text("{")
    with pytest.raises(ReviewError, match="cannot read the review"):
        read_slide_review(tmp_path)
    assert read_slide_review(tmp_path / "elsewhere") is None


# --- import: QuPath GeoJSON and ASAP XML round trips -----------------------------------------


def _outlines(review: SlideReview) -> dict[str, np.ndarray]:
    return {d.key: d.outline_xy for d in review.deposits}


@pytest.mark.parametrize("name", [REVIEW_GEOJSON, REVIEW_XML])
def test_an_unchanged_export_imports_back_as_the_same_review(tmp_path: Path, name: str) -> None:
    review = _reviewed(tmp_path)
    imported = import_review(review, tmp_path / name, "Dr Ben", complete=True, time=T)
    assert [(d.key, d.decision, d.category) for d in imported.deposits] == [
        (d.key, d.decision, d.category) for d in review.deposits
    ]
    for key, outline in _outlines(review).items():
        assert np.abs(_outlines(imported)[key] - outline).max() <= 1.0  # within one pixel
    assert imported.revision == review.revision + 1 and imported.reviewer == "Dr Ben"


def _qupath_feature(name: str, cls: str, ring: list[list[float]]) -> dict[str, Any]:
    """A feature as QuPath 0.5 exports it (id, closed ring, classification with an int colour)."""
    return {
        "type": "Feature",
        "id": "7b9c0d4e-0000-4000-8000-000000000000",
        "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
        "properties": {
            "objectType": "annotation",
            "name": name,
            "isLocked": False,
            "classification": {"name": cls, "color": [200, 0, 0]},
        },
    }


def test_a_qupath_edited_geojson_rejects_deleted_corrects_moved_and_adds_new(tmp_path: Path) -> None:
    review = new_review("n1", _report())
    moved = [[x + 40.25, y - 3.5] for x, y in ITC_SQUARE] + [[4990.25, 5096.5]]  # a new corner
    new = [[3000.0, 3000.0], [3900.5, 3000.0], [3900.5, 3300.0], [3000.0, 3300.0]]
    path = tmp_path / "edited.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    _qupath_feature("deposit 2 (itc)", "Tumor", moved),
                    _qupath_feature("", "Tumor", new),
                ],
            }
        )
    )
    imported = import_review(review, path, "Dr Ana", complete=True, time=T)
    decisions = {d.key: d.decision for d in imported.deposits}
    assert decisions == {"deposit 1": "rejected", "deposit 2": "corrected", "drawn 1": "added"}
    assert np.abs(imported.deposit("deposit 2").outline_xy - np.array(moved)).max() <= 1.0
    assert np.abs(imported.deposit("drawn 1").outline_xy - np.array(new)).max() <= 1.0
    assert imported.deposit("drawn 1").max_diameter_mm == pytest.approx(math.hypot(900.5, 300) * MPP / 1000)
    assert imported.complete and imported.reviewed_category == "micro"


def test_an_asap_edited_xml_with_a_rejected_group_and_a_new_polygon_imports(tmp_path: Path) -> None:
    _reviewed(tmp_path)
    tree = ET.parse(tmp_path / REVIEW_XML)
    annotations = tree.getroot().find("Annotations")
    assert annotations is not None
    annotations[1].set("PartOfGroup", "Rejected")  # deposit 2 rejected in ASAP
    added = ET.SubElement(annotations, "Annotation", Name="Annotation 7", Type="Polygon", PartOfGroup="_0")
    coordinates = ET.SubElement(added, "Coordinates")
    ring = [(100.5, 100.0), (900.0, 100.0), (900.0, 700.25)]
    for order, (x, y) in enumerate(ring):
        ET.SubElement(coordinates, "Coordinate", Order=str(order), X=str(x), Y=str(y))
    path = tmp_path / "edited.xml"
    tree.write(path)
    imported = import_review(read_review(tmp_path / REVIEW_GEOJSON), path, "Dr Ana", complete=True, time=T)
    decisions = {d.key: d.decision for d in imported.deposits}
    assert decisions == {
        "deposit 1": "rejected",
        "deposit 2": "rejected",
        "drawn 1": "added",
        "drawn 2": "added",
    }
    assert np.abs(imported.deposit("drawn 2").outline_xy - np.array(ring)).max() <= 1.0


def test_import_of_a_bad_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text("[{")
    with pytest.raises(AnnotationError, match=r"bad\.geojson"):
        import_review(new_review("n1", _report()), path, "Dr Ana", complete=False)
    outside = tmp_path / "outside.geojson"
    outside.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [_qupath_feature("x", "Tumor", [[0, 0], [20_000, 0], [20_000, 10]])],
            }
        )
    )
    with pytest.raises(AnnotationError, match=r"outside\.geojson.*leaves the slide"):
        import_review(new_review("n1", _report()), outside, "Dr Ana", complete=False)


def test_a_review_of_an_earlier_result_of_the_slide_is_refused(tmp_path: Path) -> None:
    review = _reviewed(tmp_path)
    check_review_matches(review, _report(), tmp_path / REVIEW_GEOJSON)  # the same result: fine
    rerun = _report()
    rerun["deposits"][0]["max_diameter_mm"] = 0.9
    with pytest.raises(ReviewError, match=r"review.geojson: this review was made on an earlier result"):
        check_review_matches(read_review(tmp_path / REVIEW_GEOJSON), rerun, tmp_path / REVIEW_GEOJSON)


def test_analysing_a_reviewed_slide_again_keeps_its_review_as_superseded(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "n1"
    folder.mkdir(parents=True)
    _reviewed(folder)
    before = (folder / REVIEW_GEOJSON).read_bytes()

    def analyze(path: Path, slide_id: str, staging: Path) -> dict[str, Any]:
        (staging / "report.json").write_text(json.dumps(_report()))
        return _report()

    report, error = run_slide_safely(analyze, tmp_path / "n1.tif", "n1", tmp_path / "out")
    assert error is None and report is not None
    assert not (folder / REVIEW_GEOJSON).exists()  # the new result starts unreviewed
    (kept,) = folder.glob("review.superseded-*.geojson")
    assert kept.read_bytes() == before and kept.with_suffix(".xml").is_file()
