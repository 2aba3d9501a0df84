"""Tests of pipeline/staging.py: deposit categories, slide categories, pN stages, CSV readers."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from pipeline.config import StagingConfig
from pipeline.errors import StagingError
from pipeline.staging import (
    AJCC_STAGES,
    CAMELYON17_STAGES,
    CATEGORY_ORDER,
    ITC_MAX_CELLS,
    ITC_MAX_DIAMETER_MM,
    MICRO_MAX_DIAMETER_MM,
    NO_RESULT,
    UNSTAGEABLE,
    Category,
    CellRule,
    PNStage,
    assign_patients,
    categorize_deposit,
    deposit_review,
    natural_key,
    node_label,
    patient_from_camelyon17_name,
    read_node_categories_csv,
    read_patient_mapping_csv,
    slide_category,
    slide_key,
    stage_patient,
    stage_patients,
)

NEG, ITC, MICRO, MACRO = Category.NEGATIVE, Category.ITC, Category.MICRO, Category.MACRO
CAMELYON17 = StagingConfig(scheme="camelyon17")
AJCC = StagingConfig(scheme="ajcc")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- constants and categories ---------------------------------------------------------------


def test_clinical_constants_match_ajcc_and_camelyon17() -> None:
    assert ITC_MAX_DIAMETER_MM == 0.2
    assert MICRO_MAX_DIAMETER_MM == 2.0
    assert ITC_MAX_CELLS == 200


def test_category_values_are_the_plain_names() -> None:
    assert [c.value for c in CATEGORY_ORDER] == ["negative", "itc", "micro", "macro"]
    assert str(Category.MACRO) == "macro"
    assert f"{Category.ITC}" == "itc"


def test_categories_compare_in_clinical_not_alphabetical_order() -> None:
    assert NEG < ITC < MICRO < MACRO
    assert MACRO > MICRO >= MICRO
    assert max([NEG, MACRO, ITC]) is MACRO  # alphabetically "negative" would win
    assert sorted([MACRO, NEG, MICRO, ITC]) == [NEG, ITC, MICRO, MACRO]
    assert [c.rank for c in CATEGORY_ORDER] == [0, 1, 2, 3]


def test_stage_lists_are_in_increasing_order_per_scheme() -> None:
    assert [str(s) for s in CAMELYON17_STAGES] == ["pN0", "pN0(i+)", "pN1mi", "pN1", "pN2"]
    assert [str(s) for s in AJCC_STAGES] == ["pN0", "pN0(i+)", "pN1mi", "pN1a", "pN2a", "pN3a"]


# --- deposits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_diameter_mm", "cell_count", "expected"),
    [
        # size only (cell count unknown)
        (0.0, None, ITC),
        (0.05, None, ITC),
        (0.2, None, ITC),  # exactly 0.2 mm is ITC (<=)
        (0.2000001, None, MICRO),
        (1.0, None, MICRO),
        (2.0, None, MICRO),  # exactly 2.0 mm is micro (none > 2.0 mm)
        (2.0000001, None, MACRO),
        (12.5, None, MACRO),
        # size first: a count never changes the category, in either direction
        (0.5, 199, MICRO),
        (1.5, 10, MICRO),
        (0.3, 199, MICRO),
        (2.0, 0, MICRO),
        (0.1, 201, ITC),
        (0.2, 500, ITC),
        (0.1, 199, ITC),
        (0.2, 200, ITC),
        (0.2000001, 200, MICRO),
        (2.0, 200, MICRO),
        (2.0000001, 0, MACRO),
        (3.0, 150, MACRO),
        (0.3, 201, MICRO),
    ],
)
def test_categorize_deposit_is_size_first_by_default(
    max_diameter_mm: float, cell_count: int | None, expected: Category
) -> None:
    assert categorize_deposit(max_diameter_mm, cell_count) is expected
    assert categorize_deposit(max_diameter_mm, cell_count, CellRule.SIZE_FIRST) is expected


@pytest.mark.parametrize(
    ("max_diameter_mm", "cell_count", "expected"),
    [
        (0.2, None, ITC),
        (0.2000001, None, MICRO),
        # > 200 cells makes a small deposit micro ("> 0.2 mm and/or > 200 cells")
        (0.1, 201, MICRO),
        (0.2, 500, MICRO),
        # < 200 cells makes a larger deposit ITC ("or < 200 cells")
        (0.3, 199, ITC),
        (0.5, 199, ITC),
        (1.5, 10, ITC),
        (2.0, 0, ITC),
        # exactly 200 cells meets neither cell rule: size decides
        (0.2, 200, ITC),
        (0.2000001, 200, MICRO),
        (2.0, 200, MICRO),
        # > 2.0 mm is macro whatever the count
        (2.0000001, 0, MACRO),
        (3.0, 150, MACRO),
        (3.0, 5000, MACRO),
    ],
)
def test_categorize_deposit_literal_rule_reads_ajcc_literally(
    max_diameter_mm: float, cell_count: int | None, expected: Category
) -> None:
    assert categorize_deposit(max_diameter_mm, cell_count, "literal") is expected


def test_categorize_deposit_rejects_an_unknown_cell_rule() -> None:
    with pytest.raises(ValueError, match="cells-only"):
        categorize_deposit(0.5, 10, "cells-only")


@pytest.mark.parametrize(
    ("max_diameter_mm", "cell_count", "flagged"),
    [
        (0.5, 199, True),  # > 0.2 mm with < 200 counted nuclei
        (1.5, 10, True),
        (3.0, 150, True),
        (0.1, 201, True),  # <= 0.2 mm with > 200
        (0.2, 500, True),
        (0.2000001, 200, False),  # exactly 200 meets neither rule
        (0.2, 200, False),
        (0.5, 250, False),
        (0.1, 50, False),
        (0.5, None, False),  # not counted: nothing to disagree with
    ],
)
def test_deposit_review_flags_size_and_count_disagreement(
    max_diameter_mm: float, cell_count: int | None, flagged: bool
) -> None:
    assert (deposit_review(max_diameter_mm, cell_count) is not None) is flagged
    assert (deposit_review(max_diameter_mm, cell_count, "literal") is not None) is flagged


def test_review_reason_names_size_count_and_the_category_kept() -> None:
    reason = deposit_review(0.5, 199)
    assert reason is not None
    assert "0.500 mm" in reason and "199" in reason and "micro by size" in reason
    literal = deposit_review(0.5, 199, "literal")
    assert literal is not None and "itc by the literal cell rule" in literal
    small = deposit_review(0.1, 201)
    assert small is not None and "201" in small and "itc by size" in small


@pytest.mark.parametrize(
    ("max_diameter_mm", "cell_count", "message"),
    [
        (-0.1, None, "max_diameter_mm=-0.1"),
        (math.nan, None, "max_diameter_mm=nan"),
        (math.inf, None, "max_diameter_mm=inf"),
        (0.5, -1, "cell_count=-1"),
    ],
)
def test_categorize_deposit_rejects_impossible_measurements(
    max_diameter_mm: float, cell_count: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        categorize_deposit(max_diameter_mm, cell_count)


# --- slides ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deposits", "expected"),
    [
        ([], NEG),
        ([ITC], ITC),
        ([ITC, ITC, ITC], ITC),
        ([ITC, MICRO], MICRO),
        ([MICRO, MACRO, ITC], MACRO),
        (["itc", "micro"], MICRO),
    ],
)
def test_slide_takes_its_worst_deposit(deposits: list[Category], expected: Category) -> None:
    assert slide_category(deposits) is expected


def test_separate_small_deposits_are_not_summed_into_a_bigger_category() -> None:
    # Ten 0.2 mm ITC clusters (2 mm together) stay an ITC slide.
    deposits = [categorize_deposit(0.2, None) for _ in range(10)]
    assert slide_category(deposits) is ITC


def test_slide_category_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="big"):
        slide_category(["big"])  # type: ignore[list-item]


# --- patients -------------------------------------------------------------------------------


def nodes(macro: int = 0, micro: int = 0, itc: int = 0, negative: int = 0) -> list[Category]:
    return [MACRO] * macro + [MICRO] * micro + [ITC] * itc + [NEG] * negative


STAGE_CASES = [
    # id, nodes, camelyon17, ajcc, positive
    ("all negative", nodes(negative=5), "pN0", "pN0", 0),
    ("all itc", nodes(itc=5), "pN0(i+)", "pN0(i+)", 0),
    ("one itc", nodes(itc=1, negative=4), "pN0(i+)", "pN0(i+)", 0),
    ("one micro", nodes(micro=1, negative=4), "pN1mi", "pN1mi", 1),
    ("micro and itc", nodes(micro=1, itc=3, negative=1), "pN1mi", "pN1mi", 1),
    ("four micro only", nodes(micro=4, negative=1), "pN1mi", "pN1mi", 4),
    ("ten micro only", nodes(micro=10), "pN1mi", "pN1mi", 10),
    ("one macro", nodes(macro=1, negative=4), "pN1", "pN1a", 1),
    ("three positive", nodes(macro=1, micro=2, negative=2), "pN1", "pN1a", 3),
    ("four positive", nodes(macro=1, micro=3, negative=1), "pN2", "pN2a", 4),
    ("nine positive", nodes(macro=2, micro=7, negative=1), "pN2", "pN2a", 9),
    ("ten positive", nodes(macro=1, micro=9), "pN2", "pN3a", 10),
    ("itc not positive", nodes(macro=1, itc=4), "pN1", "pN1a", 1),
    ("itc not positive 3", nodes(macro=3, itc=2), "pN1", "pN1a", 3),
    ("camelyon17 patient_169", [MACRO, MACRO, MICRO, MICRO, NEG], "pN2", "pN2a", 4),
    ("single node macro", nodes(macro=1), "pN1", "pN1a", 1),
]


@pytest.mark.parametrize(
    ("node_categories", "camelyon17", "ajcc", "positive"),
    [case[1:] for case in STAGE_CASES],
    ids=[case[0] for case in STAGE_CASES],
)
def test_stage_patient_both_schemes(
    node_categories: list[Category], camelyon17: str, ajcc: str, positive: int
) -> None:
    c17 = stage_patient(node_categories, CAMELYON17)
    aj = stage_patient(node_categories, AJCC)
    assert (c17.stage, aj.stage) == (camelyon17, ajcc)
    assert c17.stage in CAMELYON17_STAGES and aj.stage in AJCC_STAGES
    for result in (c17, aj):
        assert result.positive_nodes == positive
        assert result.nodes == len(node_categories)
        assert result.macro_nodes == node_categories.count(MACRO)
        assert result.micro_nodes == node_categories.count(MICRO)
        assert result.itc_nodes == node_categories.count(ITC)
    assert (c17.scheme, aj.scheme) == ("camelyon17", "ajcc")


def test_camelyon17_warns_past_nine_positive_nodes(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.staging"):
        assert stage_patient(nodes(macro=10), CAMELYON17).stage is PNStage.PN2
    assert "stops at pN2" in caplog.text and "ajcc" in caplog.text


def test_stage_patient_without_nodes_is_an_error() -> None:
    with pytest.raises(StagingError, match="at least one node"):
        stage_patient([], CAMELYON17)


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("patient_004_node_4", "patient_004"),
        ("patient_004_node_4.tif", "patient_004"),
        ("/data/centre_0/patient_004_node_4.tif", "patient_004"),
        ("patient_120_node_0.TIF", "patient_120"),
        ("patient_004.zip", None),
        ("patient_004_node_4_extra", "patient_004"),
        ("tumor_001", None),
        ("centre_1_patient_024_node_2", "patient_024"),
        ("centre_1_patient_024_node_2.jpeg", "patient_024"),
        ("Patient_010_Node_3_HE.svs", "Patient_010"),
        ("xpatient_1_node_2", None),
        ("patient_1_node_22x", None),
        ("patient_1_node_2_patient_3_node_1", None),  # two patients: ambiguous
    ],
)
def test_patient_from_camelyon17_name(name: str, expected: str | None) -> None:
    assert patient_from_camelyon17_name(name) == expected


def test_patients_are_found_inside_longer_names_and_nodes_keep_their_short_label() -> None:
    slides = ["centre_1_patient_024_node_2", "centre_1_patient_024_node_10", "centre_3_patient_066_node_1"]
    groups = assign_patients(slides)
    assert groups == {
        "patient_024": ["centre_1_patient_024_node_2", "centre_1_patient_024_node_10"],
        "patient_066": ["centre_3_patient_066_node_1"],
    }
    assert node_label("centre_1_patient_024_node_10", "patient_024") == "node_10"
    assert node_label("xpatient_024_node_1", "patient_024") == "xpatient_024_node_1"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("patient_004_node_4.tif", "patient_004_node_4"),
        (" a/b/slide.SVS ", "slide"),
        ("slide.v2", "slide.v2"),
        (".tif", ".tif"),
        ("plain", "plain"),
    ],
)
def test_slide_key_drops_folder_and_wsi_suffix(name: str, expected: str) -> None:
    assert slide_key(name) == expected


def test_node_label_and_natural_order() -> None:
    assert node_label("patient_004_node_4", "patient_004") == "node_4"
    assert node_label("lymph_a", "p1") == "lymph_a"
    assert sorted(["n_10", "n_2", "n_1"], key=natural_key) == ["n_1", "n_2", "n_10"]


# --- node category CSV ----------------------------------------------------------------------


def test_reads_slide_category_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.csv",
        "\ufeffSlide , Category,score\nn1.tif, MACRO ,0.9\n\nn2,itc,0.2\nn3,negative,\n",
    )
    assert read_node_categories_csv(path) == {"n1": MACRO, "n2": ITC, "n3": NEG}


def test_reads_camelyon17_labels_skipping_patient_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path / "stages.csv",
        "patient,stage,center\n"
        "patient_004.zip,pN0(i+),0\n"
        "patient_004_node_0.tif,negative,0\n"
        "patient_004_node_4.tif,itc,0\n"
        "patient_010.zip,pN1,0\n"
        "patient_010_node_1.tif,macro,0\n",
    )
    assert read_node_categories_csv(path) == {
        "patient_004_node_0": NEG,
        "patient_004_node_4": ITC,
        "patient_010_node_1": MACRO,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty; it needs a header"),
        ("slide,patient\na,p\n", "needs the columns slide,category or patient,stage"),
        ("slide,category\na,huge\n", "line 2: unknown category 'huge' for slide 'a'; use one of"),
        ("slide,category\na,macro\nb,\n", "line 3: no value in column 'category'"),
        ("slide,category\na,macro\n", None),
        ("slide,category\na.tif,macro\nb,itc\na,micro\n", "line 4: slide 'a' is listed again"),
        ("patient,stage\npatient_001.zip,pN0\n", "no slide rows"),
        ("slide,category\n", "no slide rows"),
    ],
)
def test_node_category_csv_errors_name_file_and_line(tmp_path: Path, text: str, message: str | None) -> None:
    path = write(tmp_path / "cats.csv", text)
    if message is None:
        assert read_node_categories_csv(path) == {"a": MACRO}
        return
    with pytest.raises(StagingError, match=message) as info:
        read_node_categories_csv(path)
    assert str(path) in str(info.value)


def test_missing_csv_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="not found"):
        read_node_categories_csv(tmp_path / "nope.csv")
    with pytest.raises(StagingError, match="not found"):
        read_patient_mapping_csv(tmp_path / "nope.csv")


def test_non_utf8_csv_is_a_staging_error(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"slide,category\n\xe9\xff,macro\n")
    with pytest.raises(StagingError, match="UTF-8"):
        read_node_categories_csv(path)


# --- patient mapping CSV --------------------------------------------------------------------


def test_reads_patient_mapping(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "slide,patient,note\na.svs,P1,x\nb,P1,\nc,P2,\n")
    assert read_patient_mapping_csv(path) == {"a": "P1", "b": "P1", "c": "P2"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "slide,category\na,macro\n",
            "needs the columns slide,patient in its header line; found slide,category",
        ),
        ("slide,patient\na,P1\na.tif,P2\n", "line 3: slide 'a' is mapped again"),
        ("slide,patient\na,\n", "line 2: no value in column 'patient'"),
        ("slide,patient\n", "no rows"),
    ],
)
def test_patient_mapping_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "m.csv", text)
    with pytest.raises(StagingError, match=message):
        read_patient_mapping_csv(path)


# --- grouping and rows ----------------------------------------------------------------------


def test_assign_patients_by_camelyon17_name_in_natural_order() -> None:
    slides = ["patient_010_node_1", "patient_002_node_10", "patient_002_node_2"]
    assert assign_patients(slides) == {
        "patient_002": ["patient_002_node_2", "patient_002_node_10"],
        "patient_010": ["patient_010_node_1"],
    }


def test_mapping_comes_before_camelyon17_names() -> None:
    groups = assign_patients(["patient_001_node_0", "x"], {"patient_001_node_0": "P9", "x": "P9"})
    assert groups == {"P9": ["patient_001_node_0", "x"]}


def test_mapping_naming_an_unknown_slide_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "slide,patient\na,P1\nghost.tif,P1\n")
    with pytest.raises(StagingError, match=r"m\.csv: line 3: slide 'ghost' is not among"):
        assign_patients(["a"], read_patient_mapping_csv(path), path)


def test_slide_without_patient_is_an_error() -> None:
    with pytest.raises(StagingError, match=r"no patient for 1 slide.*'tumor_001'.*--patients"):
        assign_patients(["patient_001_node_0", "tumor_001"])


def test_stage_patients_rows_and_unstageable_patient() -> None:
    groups = {"patient_001": ["patient_001_node_0", "patient_001_node_1"], "patient_002": ["x"]}
    categories = {"patient_001_node_0": NEG, "patient_001_node_1": MACRO}
    rows = stage_patients(groups, categories, AJCC, {"x": "status 'failed': truncated TIFF"})
    assert rows[0].csv_values() == [
        "patient_001",
        "pN1a",
        "2",
        "1",
        "1",
        "0",
        "0",
        "node_0:negative;node_1:macro",
        "",
        "",
        "",
    ]
    assert rows[1].stage == UNSTAGEABLE
    assert rows[1].node_categories == f"x:{NO_RESULT}"
    assert rows[1].problems == ("x: status 'failed': truncated TIFF",)


def test_group_by_patient_is_the_grouping_stage_and_the_viewer_share() -> None:
    from pipeline.staging import assign_patients, group_by_patient

    slides = ["patient_010_node_2", "patient_010_node_10", "patient_002_node_0", "scan_7", "scan_8"]
    found = group_by_patient(slides, {"scan_7": "p_x", "gone": "p_x"})
    # natural order of patients and of their nodes; mapping first, then the CAMELYON17 name
    assert list(found.groups) == ["p_x", "patient_002", "patient_010"]
    assert found.groups["patient_010"] == ["patient_010_node_2", "patient_010_node_10"]
    assert found.groups["p_x"] == ["gone", "scan_7"]
    assert found.unassigned == ["scan_8"]
    assert found.not_among_slides == ["gone"]
    # stage refuses what the viewer shows as unassigned or missing
    with pytest.raises(StagingError, match="not among"):
        assign_patients(slides, {"scan_7": "p_x", "scan_8": "p_y", "gone": "p_x"})
    with pytest.raises(StagingError, match="no patient for 1 slide"):
        assign_patients(slides, {"scan_7": "p_x"})
    assert assign_patients(slides, {"scan_7": "p_x", "scan_8": "p_x"})["p_x"] == ["scan_7", "scan_8"]
