"""Refinement: deposits near 0.2 mm / 2.0 mm rescored on finer grids by an oracle scorer."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import pytest
import shapely
from numpy.typing import NDArray

from pipeline.config import DepositConfig
from pipeline.deposits import refine
from pipeline.deposits.measure import Deposit, diameter_uncertainty_mm, find_deposits
from pipeline.deposits.refine import is_ambiguous, refine_deposit, refine_deposits
from pipeline.detection.heatmap import Heatmap
from pipeline.staging import Category

MPP = 0.25
TILE_PX = 896.0  # 224 µm, e.g. a 224 px tile at about 1 µm/px; coarse stride = tile
GRID_CELLS = 24
SLIDE_PX = int(GRID_CELLS * TILE_PX)

ScoreFn = Callable[[NDArray[np.int64]], NDArray[np.float32]]


class Oracle:
    """Scores 1 where the tile centre lies inside any of the shapes, else 0; counts tiles."""

    def __init__(self, shapes: list[shapely.Polygon]) -> None:
        self.shape = shapely.union_all(shapes)
        self.n_tiles = 0
        self.calls: list[NDArray[np.int64]] = []

    def __call__(self, xy_px: NDArray[np.int64]) -> NDArray[np.float32]:
        self.n_tiles += len(xy_px)
        self.calls.append(xy_px)
        centres = xy_px.astype(np.float64) + TILE_PX / 2
        inside = shapely.contains_xy(self.shape, centres[:, 0], centres[:, 1])
        return np.asarray(inside, dtype=np.float32)


def disc(centre_xy: tuple[float, float], diameter_mm: float) -> shapely.Polygon:
    return shapely.Point(centre_xy).buffer(diameter_mm * 1000 / MPP / 2, quad_segs=128)


def coarse_heatmap(oracle: Oracle) -> Heatmap:
    grid_r, grid_c = np.mgrid[0:GRID_CELLS, 0:GRID_CELLS]
    xy = np.column_stack([grid_c.ravel() * TILE_PX, grid_r.ravel() * TILE_PX]).astype(np.int64)
    values = oracle(xy).reshape(GRID_CELLS, GRID_CELLS)
    oracle.n_tiles = 0
    oracle.calls.clear()
    return Heatmap(values, 0.0, 0.0, TILE_PX, TILE_PX, MPP, (SLIDE_PX, SLIDE_PX))


def one_deposit(deposits: list[Deposit]) -> Deposit:
    assert len(deposits) == 1
    return deposits[0]


def _deposit(diameter_mm: float, uncertainty_mm: float) -> Deposit:
    values = np.zeros((3, 3), dtype=np.float32)
    values[1, 1] = 1.0
    base = find_deposits(Heatmap(values, 0, 0, 100.0, 100.0, MPP, (300, 300)), 0.5)[0]
    return dataclasses.replace(base, max_diameter_mm=diameter_mm, max_diameter_uncertainty_mm=uncertainty_mm)


@pytest.mark.parametrize(
    ("diameter_mm", "uncertainty_mm", "ambiguous"),
    [
        (0.25, 0.05, True),
        (0.25, 0.049, False),
        (0.15, 0.05, True),
        (0.1, 0.05, False),
        (1.9, 0.1, True),
        (2.2, 0.1, False),
        (1.0, 0.3, False),
        (2.0, 0.0, True),
    ],
)
def test_ambiguous_when_the_size_interval_contains_a_cut_off(
    diameter_mm: float, uncertainty_mm: float, ambiguous: bool
) -> None:
    assert is_ambiguous(_deposit(diameter_mm, uncertainty_mm)) is ambiguous


# Disc centres near a coarse tile centre (448 + 11 * 896 = 10304), so small discs are seen.
@pytest.mark.parametrize(
    ("diameter_mm", "centre_xy", "expected"),
    [
        (0.19, (10304.0, 10304.0), Category.ITC),
        (0.19, (10404.0, 10330.0), Category.ITC),
        (0.21, (10354.0, 10254.0), Category.MICRO),
        (0.21, (10250.0, 10390.0), Category.MICRO),
        (1.95, (10304.0, 10304.0), Category.MICRO),
        (1.95, (10250.0, 10390.0), Category.MICRO),
        (2.05, (10354.0, 10254.0), Category.MACRO),
        (2.05, (10404.0, 10330.0), Category.MACRO),
    ],
)
def test_discs_near_a_cut_off_land_in_the_right_category_after_refinement(
    diameter_mm: float, centre_xy: tuple[float, float], expected: Category
) -> None:
    oracle = Oracle([disc(centre_xy, diameter_mm)])
    heatmap = coarse_heatmap(oracle)
    coarse = one_deposit(find_deposits(heatmap, 0.5))
    assert is_ambiguous(coarse)  # the coarse grid cannot decide
    refined = one_deposit(refine_deposits(heatmap, [coarse], 0.5, oracle, DepositConfig()))
    assert refined.refined
    assert refined.category is expected
    first_round_um = 0.25 * TILE_PX * MPP  # refine_stride_fraction x tile size
    assert refined.max_diameter_uncertainty_mm <= diameter_uncertainty_mm(first_round_um) + 1e-12
    assert refined.max_diameter_uncertainty_mm < coarse.max_diameter_uncertainty_mm
    assert abs(refined.max_diameter_mm - diameter_mm) <= refined.max_diameter_uncertainty_mm
    assert not is_ambiguous(refined)
    assert refined.id == 1
    assert 0 < oracle.n_tiles <= refine.MAX_REFINE_ROUNDS * refine.MAX_REFINE_TILES


def test_scorer_gets_whole_level0_tile_corners_inside_the_slide() -> None:
    oracle = Oracle([disc((10304.0, 10304.0), 0.21)])
    heatmap = coarse_heatmap(oracle)
    refine_deposits(heatmap, find_deposits(heatmap, 0.5), 0.5, oracle, DepositConfig())
    assert oracle.calls
    for xy in oracle.calls:
        assert xy.dtype == np.int64 and xy.ndim == 2 and xy.shape[1] == 2
        assert (xy >= 0).all() and (xy + TILE_PX <= SLIDE_PX).all()
    # The first round's stride is refine_stride_fraction x tile size.
    first = oracle.calls[0]
    steps = np.diff(np.unique(first[:, 0]))
    assert set(steps.tolist()) == {round(0.25 * TILE_PX)}


def test_one_coarse_deposit_that_is_two_close_discs_splits_into_two() -> None:
    left, right = (10200.0, 10304.0), (10200.0 + 0.19 * 4000, 10304.0)  # 0.04 mm gap
    oracle = Oracle([disc(left, 0.15), disc(right, 0.15)])
    heatmap = coarse_heatmap(oracle)
    coarse = one_deposit(find_deposits(heatmap, 0.5))
    assert coarse.category is Category.MICRO and is_ambiguous(coarse)
    refined = refine_deposits(heatmap, [coarse], 0.5, oracle, DepositConfig())
    assert [d.category for d in refined] == [Category.ITC, Category.ITC]
    assert [d.id for d in refined] == [1, 2]
    assert all(abs(d.max_diameter_mm - 0.15) <= d.max_diameter_uncertainty_mm for d in refined)


def test_decided_deposits_are_kept_and_not_rescored() -> None:
    oracle = Oracle([disc((6000.0, 6000.0), 1.0), disc((15000.0, 15000.0), 3.0)])
    heatmap = coarse_heatmap(oracle)
    deposits = find_deposits(heatmap, 0.5)
    assert not any(is_ambiguous(d) for d in deposits)
    result = refine_deposits(heatmap, deposits, 0.5, oracle, DepositConfig())
    assert oracle.n_tiles == 0
    assert [d.to_dict() for d in result] == [d.to_dict() for d in deposits]


def test_neighbour_inside_the_refined_window_is_not_duplicated() -> None:
    # The big disc's left edge (x = 11600) lies inside the small deposit's refinement window
    # (its coarse cell grown by one tile: tile centres up to x = 11648), one empty coarse
    # column away from it.
    small, big = disc((10304.0, 10304.0), 0.19), disc((13600.0, 10304.0), 1.0)
    oracle = Oracle([small, big])
    heatmap = coarse_heatmap(oracle)
    deposits = find_deposits(heatmap, 0.5)
    assert len(deposits) == 2
    result = refine_deposits(heatmap, deposits, 0.5, oracle, DepositConfig())
    half = TILE_PX / 2
    assert any(
        shapely.contains_xy(big, xy[:, 0] + half, xy[:, 1] + half).any() for xy in oracle.calls
    )  # the window did see the neighbour
    assert len(result) == 2
    assert sorted(d.refined for d in result) == [False, True]
    assert result[-1].category is Category.ITC and result[0].category is Category.MICRO


def test_refinement_disabled_returns_the_deposits_unchanged() -> None:
    oracle = Oracle([disc((10304.0, 10304.0), 0.21)])
    heatmap = coarse_heatmap(oracle)
    deposits = find_deposits(heatmap, 0.5)
    result = refine_deposits(heatmap, deposits, 0.5, oracle, DepositConfig(refine=False))
    assert result == deposits and oracle.n_tiles == 0


def test_scorer_that_finds_nothing_keeps_the_coarse_deposit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    oracle = Oracle([disc((10304.0, 10304.0), 0.21)])
    heatmap = coarse_heatmap(oracle)
    coarse = one_deposit(find_deposits(heatmap, 0.5))

    def nothing(xy_px: NDArray[np.int64]) -> NDArray[np.float32]:
        return np.zeros(len(xy_px), dtype=np.float32)

    with caplog.at_level(logging.WARNING, logger="pipeline.deposits.refine"):
        (kept,) = refine_deposit(heatmap, coarse, 0.5, nothing, 0.25)
    assert kept is coarse and not kept.refined
    assert "found no tumor" in caplog.text


def test_tile_budget_stops_refinement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refine, "MAX_REFINE_TILES", 10)
    oracle = Oracle([disc((10304.0, 10304.0), 0.21)])
    heatmap = coarse_heatmap(oracle)
    coarse = one_deposit(find_deposits(heatmap, 0.5))
    (kept,) = refine_deposit(heatmap, coarse, 0.5, oracle, 0.25)
    assert kept is coarse and oracle.n_tiles == 0


def test_scorer_returning_the_wrong_number_of_scores_is_an_error() -> None:
    oracle = Oracle([disc((10304.0, 10304.0), 0.21)])
    heatmap = coarse_heatmap(oracle)
    coarse = one_deposit(find_deposits(heatmap, 0.5))

    def short(xy_px: NDArray[np.int64]) -> NDArray[np.float32]:
        return np.ones(len(xy_px) - 1, dtype=np.float32)

    with pytest.raises(ValueError, match="one probability per tile"):
        refine_deposit(heatmap, coarse, 0.5, short, 0.25)


def test_single_cell_specks_on_a_fine_grid_are_dropped_but_never_everything() -> None:
    values = np.zeros((12, 12), dtype=np.float32)
    values[2:8, 2:8] = 1.0  # a deposit of 36 fine cells
    values[10, 10] = 1.0  # a one-cell speck (threshold noise at the edge)
    values[0, 11] = 1.0
    fine = Heatmap(values, 0.0, 0.0, 8.0, 64.0, MPP, (400, 400))
    found = find_deposits(fine, 0.5, refined=True)
    assert len(found) == 3
    kept = refine._without_specks(found, fine.stride_um)
    assert len(kept) == 1 and kept[0].area_mm2 == max(d.area_mm2 for d in found)
    only_specks = [d for d in found if d is not kept[0]]
    assert len(refine._without_specks(only_specks[:1], fine.stride_um)) == 1


def test_refinement_stops_at_the_minimum_stride() -> None:
    oracle = Oracle([disc((10304.0, 10304.0), 0.2)])  # exactly on the cut-off: always ambiguous
    heatmap = coarse_heatmap(oracle)
    coarse = one_deposit(find_deposits(heatmap, 0.5))
    refine_deposit(heatmap, coarse, 0.5, oracle, 0.25)
    strides = [float(np.diff(np.unique(call[:, 0])).min()) for call in oracle.calls]
    assert min(strides) >= refine.MIN_REFINE_STRIDE_FRACTION * TILE_PX - 1
