"""Deposits: connected components of a heatmap measured in mm, on drawn shapes of known size."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import shapely
from conftest import require_shared_data
from numpy.typing import NDArray

from pipeline.config import CAMELYON_LEVEL0_MPP
from pipeline.deposits.measure import (
    Deposit,
    deposit_from_dict,
    diameter_uncertainty_mm,
    find_deposits,
    keep_seeded,
    max_feret_diameter,
    with_cell_count,
)
from pipeline.detection.heatmap import Heatmap
from pipeline.errors import HeatmapError
from pipeline.staging import Category

MPP = 0.25
REPORT_FIELDS = {
    "id",
    "category",
    "max_diameter_mm",
    "max_diameter_uncertainty_mm",
    "area_mm2",
    "centroid_x_px",
    "centroid_y_px",
    "centroid_x_mm",
    "centroid_y_mm",
    "bbox_x_px",
    "bbox_y_px",
    "bbox_width_px",
    "bbox_height_px",
    "max_probability",
    "mean_probability",
    "cell_count",
    "refined",
    "outline_xy",
    "review",
    "confirm_probability",
    "size_calibrated",
    "max_diameter_is_upper_bound",
}


def make_heatmap(
    values: NDArray[Any] | list[list[float]],
    stride_px: float = 100.0,
    tile_px: float = 100.0,
    origin_xy: tuple[float, float] = (0.0, 0.0),
    mpp: float = MPP,
) -> Heatmap:
    return Heatmap(
        probabilities=np.asarray(values, dtype=np.float32),
        origin_x_px=origin_xy[0],
        origin_y_px=origin_xy[1],
        stride_l0_px=stride_px,
        tile_size_l0_px=tile_px,
        slide_mpp=mpp,
        slide_dimensions=(10**6, 10**6),
    )


def oracle_heatmap(
    polygon_xy: NDArray[np.float64], stride_px: float, tile_px: float, mpp: float = MPP
) -> Heatmap:
    """1 where a cell's tile centre lies inside the polygon, 0 elsewhere (a perfect model)."""
    low = polygon_xy.min(axis=0) - 2 * stride_px
    high = polygon_xy.max(axis=0) + 2 * stride_px
    cols, rows = (np.ceil((high - low) / stride_px) + 1).astype(int)
    origin = low - tile_px / 2
    grid_r, grid_c = np.mgrid[0:rows, 0:cols]
    centre_x = origin[0] + grid_c * stride_px + tile_px / 2
    centre_y = origin[1] + grid_r * stride_px + tile_px / 2
    inside = shapely.contains_xy(shapely.Polygon(polygon_xy), centre_x, centre_y)
    return make_heatmap(inside.astype(np.float32), stride_px, tile_px, tuple(origin), mpp)


def disc(centre_xy: tuple[float, float], diameter_px: float, n: int = 720) -> NDArray[np.float64]:
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = diameter_px / 2
    return np.column_stack([centre_xy[0] + radius * np.cos(theta), centre_xy[1] + radius * np.sin(theta)])


def ellipse(
    centre_xy: tuple[float, float], major_px: float, minor_px: float, angle: float
) -> NDArray[np.float64]:
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    x, y = major_px / 2 * np.cos(theta), minor_px / 2 * np.sin(theta)
    return np.column_stack(
        [
            centre_xy[0] + x * math.cos(angle) - y * math.sin(angle),
            centre_xy[1] + x * math.sin(angle) + y * math.cos(angle),
        ]
    )


# --- max Feret diameter on known shapes ----------------------------------------------------


def test_feret_of_square_is_its_diagonal() -> None:
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], dtype=np.float64)
    assert max_feret_diameter(square) == pytest.approx(10 * math.sqrt(2))


def test_feret_of_rectangle_and_regular_polygon() -> None:
    rectangle = np.array([[0, 0], [3, 0], [3, 4], [0, 4]], dtype=np.float64)
    assert max_feret_diameter(rectangle) == pytest.approx(5.0)
    assert max_feret_diameter(disc((7.0, -3.0), 50.0, n=360)) == pytest.approx(50.0)


def test_feret_of_ellipse_is_the_major_axis_not_the_sum_of_parts() -> None:
    assert max_feret_diameter(ellipse((0, 0), 80.0, 20.0, 0.3)) == pytest.approx(80.0)


def test_feret_of_degenerate_point_sets() -> None:
    assert max_feret_diameter(np.array([[5.0, 5.0]])) == 0.0
    assert max_feret_diameter(np.array([[5.0, 5.0], [5.0, 5.0]])) == 0.0
    collinear = np.array([[0, 0], [1, 1], [2, 2], [3, 3]], dtype=np.float64)
    assert max_feret_diameter(collinear) == pytest.approx(3 * math.sqrt(2))


# --- exact pixelated shapes --------------------------------------------------------------


def test_block_of_cells_is_measured_exactly() -> None:
    values = np.zeros((8, 9), dtype=np.float32)
    values[2:5, 1:6] = 0.9  # 3 rows x 5 columns
    values[3, 3] = 0.7
    heatmap = make_heatmap(values, stride_px=100.0, tile_px=200.0, origin_xy=(1000.0, 500.0))
    (deposit,) = find_deposits(heatmap, 0.5)
    stride_mm = 100 * MPP / 1000
    assert deposit.max_diameter_mm == pytest.approx(math.hypot(3, 5) * stride_mm)
    assert deposit.area_mm2 == pytest.approx(15 * stride_mm**2)
    # Cell (r, c) is the stride square centred on tile centre origin + (c, r) * 100 + 100.
    assert deposit.bbox_px == (1000 + 100 + 50, 500 + 200 + 50, 500, 300)
    assert (deposit.centroid_x_px, deposit.centroid_y_px) == pytest.approx((1400.0, 900.0))
    assert deposit.centroid_x_mm == pytest.approx(1400.0 * MPP / 1000)
    assert deposit.max_probability == pytest.approx(0.9)
    assert deposit.mean_probability == pytest.approx((14 * 0.9 + 0.7) / 15)
    outline = shapely.Polygon(deposit.outline_xy)
    assert outline.is_valid
    assert outline.bounds == pytest.approx((1150.0, 750.0, 1650.0, 1050.0))
    assert outline.exterior.is_ccw  # counter-clockwise in the x-right/y-up sense (RFC 7946)
    assert deposit.max_diameter_uncertainty_mm == pytest.approx(100 * MPP * math.sqrt(2) / 1000)


def test_cells_touching_at_a_corner_form_one_deposit_with_a_simple_outline() -> None:
    values = np.full((5, 5), np.nan, dtype=np.float32)
    values[1, 1] = values[2, 2] = values[3, 3] = 1.0
    (deposit,) = find_deposits(make_heatmap(values), 0.5)
    assert deposit.area_mm2 == pytest.approx(3 * (100 * MPP / 1000) ** 2)
    assert deposit.max_diameter_mm == pytest.approx(3 * math.sqrt(2) * 100 * MPP / 1000)
    assert shapely.Polygon(deposit.outline_xy).is_valid


def test_separate_deposits_are_not_summed_and_come_largest_first() -> None:
    values = np.zeros((6, 12), dtype=np.float32)
    values[1, 1] = 0.8
    values[1:4, 5:10] = 0.6
    deposits = find_deposits(make_heatmap(values), 0.5)
    assert [d.id for d in deposits] == [1, 2]
    assert deposits[0].area_mm2 == pytest.approx(15 * (100 * MPP / 1000) ** 2)
    assert deposits[0].max_diameter_mm > deposits[1].max_diameter_mm
    assert deposits[1].max_diameter_mm == pytest.approx(math.sqrt(2) * 100 * MPP / 1000)


def test_threshold_is_inclusive_and_nan_is_never_tumor() -> None:
    values = np.array([[0.5, np.nan, 0.49], [np.nan, np.nan, np.nan]], dtype=np.float32)
    deposits = find_deposits(make_heatmap(values), 0.5)
    assert len(deposits) == 1
    assert deposits[0].bbox_px[0] == 0  # the 0.5 cell, not the 0.49 one
    # At threshold 0 both scored cells are tumor, but the NaN between them keeps them apart.
    assert len(find_deposits(make_heatmap(values), 0.0)) == 2


# --- empty and malformed input -----------------------------------------------------------


def test_empty_all_nan_and_negative_heatmaps_have_no_deposits() -> None:
    assert find_deposits(make_heatmap(np.zeros((0, 0))), 0.5) == []
    assert find_deposits(make_heatmap(np.full((4, 4), np.nan)), 0.5) == []
    assert find_deposits(make_heatmap(np.full((4, 4), 0.2)), 0.5) == []


def test_malformed_heatmap_raises_heatmap_error() -> None:
    with pytest.raises(HeatmapError, match="2-D"):
        find_deposits(make_heatmap(np.zeros((2, 2, 2))), 0.5)
    with pytest.raises(HeatmapError, match="stride_l0_px"):
        find_deposits(make_heatmap(np.ones((2, 2)), stride_px=0.0), 0.5)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_threshold_outside_unit_interval_is_rejected(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        find_deposits(make_heatmap(np.ones((2, 2))), threshold)


# --- drawn shapes of known size ------------------------------------------------------------


@pytest.mark.parametrize(
    ("diameter_mm", "stride_um"),
    [(0.15, 8.0), (0.19, 16.0), (0.21, 16.0), (0.6, 32.0), (1.95, 48.0), (2.05, 48.0)],
)
def test_disc_diameter_is_within_the_stated_uncertainty(diameter_mm: float, stride_um: float) -> None:
    stride_px = stride_um / MPP
    polygon = disc((5000.3, 7000.7), diameter_mm * 1000 / MPP)
    (deposit,) = find_deposits(oracle_heatmap(polygon, stride_px, 2 * stride_px), 0.5)
    assert deposit.max_diameter_uncertainty_mm == pytest.approx(diameter_uncertainty_mm(stride_um))
    assert abs(deposit.max_diameter_mm - diameter_mm) <= deposit.max_diameter_uncertainty_mm
    true_area_mm2 = math.pi * (diameter_mm / 2) ** 2
    perimeter_band_mm2 = math.pi * diameter_mm * stride_um / 1000
    assert abs(deposit.area_mm2 - true_area_mm2) <= perimeter_band_mm2
    assert math.hypot(deposit.centroid_x_px - 5000.3, deposit.centroid_y_px - 7000.7) < stride_px


def test_ellipse_is_measured_along_its_major_axis() -> None:
    stride_px = 16.0 / MPP
    polygon = ellipse((4000.0, 4000.0), 1.2 * 1000 / MPP, 0.3 * 1000 / MPP, math.radians(35))
    (deposit,) = find_deposits(oracle_heatmap(polygon, stride_px, stride_px), 0.5)
    assert abs(deposit.max_diameter_mm - 1.2) <= deposit.max_diameter_uncertainty_mm
    assert deposit.category is Category.MICRO


def wobbly_blob(centre_xy: tuple[float, float], radius_px: float) -> NDArray[np.float64]:
    theta = np.linspace(0, 2 * np.pi, 500, endpoint=False)
    r = radius_px * (1 + 0.25 * np.cos(3 * theta) + 0.1 * np.sin(5 * theta + 1.0))
    return np.column_stack([centre_xy[0] + r * np.cos(theta), centre_xy[1] + r * np.sin(theta)])


L_SHAPE = (
    np.array([[0, 0], [2400, 0], [2400, 600], [700, 600], [700, 1800], [0, 1800]], dtype=np.float64) + 3000
)


@pytest.mark.parametrize("polygon", [wobbly_blob((3000.0, 2000.0), 900.0), L_SHAPE])
def test_irregular_polygon_matches_its_exact_feret_diameter(
    polygon: NDArray[np.float64],
) -> None:
    exact_mm = max_feret_diameter(polygon) * MPP / 1000
    for stride_px in (40.0, 120.0):
        (deposit,) = find_deposits(oracle_heatmap(polygon, stride_px, 2 * stride_px), 0.5)
        assert abs(deposit.max_diameter_mm - exact_mm) <= deposit.max_diameter_uncertainty_mm


def test_size_decides_category_at_the_clinical_cut_offs() -> None:
    def category_of_block(n_cells: int) -> Category:
        values = np.zeros((3, n_cells + 2), dtype=np.float32)
        values[1, 1 : n_cells + 1] = 1.0
        # 1 x n cells of 0.01 mm: diameter sqrt(n^2 + 1) * 0.01 mm
        (deposit,) = find_deposits(make_heatmap(values, stride_px=40.0, tile_px=40.0), 0.5)
        return deposit.category

    assert category_of_block(19) is Category.ITC  # 0.1903 mm
    assert category_of_block(20) is Category.MICRO  # 0.2002 mm
    assert category_of_block(199) is Category.MICRO  # 1.990 mm
    assert category_of_block(201) is Category.MACRO  # 2.010 mm


# --- report form -------------------------------------------------------------------------


def _one_deposit() -> Deposit:
    values = np.zeros((5, 5), dtype=np.float32)
    values[1:3, 1:4] = 0.75
    return find_deposits(make_heatmap(values), 0.5)[0]


def test_to_dict_has_exactly_the_report_fields_and_is_json() -> None:
    data = _one_deposit().to_dict()
    assert set(data) == REPORT_FIELDS
    assert data["category"] == "itc"
    assert data["cell_count"] is None
    assert data["refined"] is False
    reloaded = json.loads(json.dumps(data))
    assert reloaded == data
    again = deposit_from_dict(reloaded)
    assert again.to_dict() == data


def test_deposit_from_dict_names_a_missing_field() -> None:
    data = _one_deposit().to_dict()
    del data["area_mm2"]
    with pytest.raises(ValueError, match="area_mm2"):
        deposit_from_dict(data)


def test_cell_count_flags_but_never_changes_the_category_by_default() -> None:
    deposit = _one_deposit()  # 0.09 mm: ITC by size
    counted = with_cell_count(deposit, 250)
    assert counted.category is Category.ITC
    assert counted.cell_count == 250
    assert counted.review is not None and "250" in counted.review
    agreeing = with_cell_count(deposit, 150)
    assert (agreeing.category, agreeing.review) == (Category.ITC, None)


def test_literal_cell_rule_lets_the_count_change_the_category() -> None:
    deposit = _one_deposit()
    counted = with_cell_count(deposit, 250, "literal")
    assert counted.category is Category.MICRO
    assert counted.review is not None and "literal" in counted.review


def test_review_flag_survives_the_report_round_trip() -> None:
    counted = with_cell_count(_one_deposit(), 250)
    data = json.loads(json.dumps(counted.to_dict()))
    assert data["review"] == counted.review
    assert deposit_from_dict(data).review == counted.review
    old = {k: v for k, v in data.items() if k != "review"}  # report.json of an older version
    assert deposit_from_dict(old).review is None


def test_one_cell_deposit_size_is_an_upper_bound() -> None:
    values = np.zeros((5, 5), dtype=np.float32)
    values[2, 2] = 0.9
    (single,) = find_deposits(make_heatmap(values), 0.5)
    assert single.max_diameter_mm == pytest.approx(single.max_diameter_uncertainty_mm)
    assert single.below_grid
    assert single.to_dict()["max_diameter_is_upper_bound"] is True
    assert not _one_deposit().below_grid  # 2 x 3 cells: a measurement +/- its bound
    assert _one_deposit().to_dict()["max_diameter_is_upper_bound"] is False


# --- real CAMELYON16 lesion outlines (0.243 µm/px) ----------------------------------------

# Compact lesions from small annotation files, 0.26-3.0 mm (file, outline name).
COMPACT_LESIONS = [
    ("Tumor_081.json", "Annotation 0"),
    ("Tumor_086.json", "Tumor1"),
    ("Tumor_093.json", "Tumor1"),
    ("Tumor_073.json", "Tumor1"),
    ("Tumor_094.json", "Tumor1"),
    ("Tumor_107.json", "Tumor1"),
]


def _outlines(file_name: str) -> dict[str, NDArray[np.float64]]:
    folder = require_shared_data("annotations/camelyon16_ncrf_json")
    data = json.loads((folder / file_name).read_text())
    return {o["name"]: np.asarray(o["vertices"], dtype=np.float64) for o in data["positive"]}


@pytest.mark.shared_data
@pytest.mark.parametrize(("file_name", "name"), COMPACT_LESIONS)
def test_real_lesion_outline_diameter_within_uncertainty(file_name: str, name: str) -> None:
    vertices = _outlines(file_name)[name]
    exact_mm = max_feret_diameter(vertices) * CAMELYON_LEVEL0_MPP / 1000
    stride_px = 32.0 / CAMELYON_LEVEL0_MPP
    heatmap = oracle_heatmap(vertices, stride_px, 2 * stride_px, CAMELYON_LEVEL0_MPP)
    deposits = find_deposits(heatmap, 0.5)
    assert len(deposits) == 1
    assert abs(deposits[0].max_diameter_mm - exact_mm) <= deposits[0].max_diameter_uncertainty_mm


@pytest.mark.shared_data
def test_real_lesions_are_never_overestimated_beyond_the_bound() -> None:
    """Thin lesions may break up on a coarse grid (underestimate), but no measured deposit is
    ever larger than the lesion it comes from plus the uncertainty."""
    for file_name in ("Tumor_098.json", "Tumor_100.json", "Tumor_017.json"):
        for vertices in _outlines(file_name).values():
            exact_mm = max_feret_diameter(vertices) * CAMELYON_LEVEL0_MPP / 1000
            stride_px = 64.0 / CAMELYON_LEVEL0_MPP
            heatmap = oracle_heatmap(vertices, stride_px, stride_px, CAMELYON_LEVEL0_MPP)
            for deposit in find_deposits(heatmap, 0.5):
                assert deposit.max_diameter_mm <= exact_mm + deposit.max_diameter_uncertainty_mm


def test_hysteresis_keeps_only_deposits_with_a_cell_at_the_seed_threshold() -> None:
    # A strong deposit whose weaker rim is outlined by the low threshold, and an isolated weak cell.
    values = np.zeros((8, 8), np.float32)
    values[1:4, 1:4] = 0.85
    values[2, 2] = 0.97
    values[6, 6] = 0.86
    found = find_deposits(make_heatmap(values), 0.8)
    assert len(found) == 2
    kept = keep_seeded(found, 0.9)
    assert len(kept) == 1 and kept[0].id == 1
    assert kept[0].max_probability == pytest.approx(0.97) and kept[0].area_mm2 == found[0].area_mm2
    assert keep_seeded(found, None) == found
    assert keep_seeded(found, 0.99) == []
