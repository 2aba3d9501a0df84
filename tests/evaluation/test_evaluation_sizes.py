"""Matching measured deposits to drawn true deposits of known size."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.errors import EvaluationError
from pipeline.evaluation.sizes import (
    PredictedDeposit,
    SizeMatchConfig,
    SlideDeposits,
    TrueDeposit,
    evaluate_deposit_sizes,
    match_slide_deposits,
    point_polygon_distance_px,
)

MPP = 0.5
CONFIG = SizeMatchConfig(tolerance_um=100.0)


def square(x0: float, y0: float, side_px: float) -> np.ndarray:
    return np.array(
        [[x0, y0], [x0 + side_px, y0], [x0 + side_px, y0 + side_px], [x0, y0 + side_px]], dtype=np.float64
    )


# 1 mm square (diameter sqrt(2) mm, macro) and a 0.15 mm square (0.21 mm, micro)
BIG = TrueDeposit("big", square(1000, 1000, 2000), math.sqrt(2.0), "macro")
SMALL = TrueDeposit("small", square(6000, 1000, 300), 0.212, "micro")


def test_point_polygon_distance() -> None:
    outline = square(0, 0, 10)
    assert point_polygon_distance_px(5, 5, outline) == 0.0
    assert point_polygon_distance_px(13, 5, outline) == pytest.approx(3.0)
    assert point_polygon_distance_px(13, 14, outline) == pytest.approx(5.0)


def test_pairs_errors_and_category_accuracy() -> None:
    predictions = [
        PredictedDeposit(6150, 1150, 0.25, "micro"),  # inside SMALL: +0.038 mm
        PredictedDeposit(2000, 2000, 1.30, "macro"),  # inside BIG: -0.114 mm
    ]
    result = evaluate_deposit_sizes([SlideDeposits("s1", MPP, [BIG, SMALL], predictions)], CONFIG)
    by_id = {p.true_id: p for p in result.pairs}
    assert by_id["small"].predicted_index == 0
    assert by_id["big"].predicted_index == 1
    assert by_id["small"].error_mm == pytest.approx(0.038)
    assert by_id["big"].error_mm == pytest.approx(1.30 - math.sqrt(2.0))
    assert result.mean_abs_error_mm == pytest.approx((0.038 + abs(1.30 - math.sqrt(2.0))) / 2)
    assert result.category_accuracy == 1.0
    assert (result.n_missed, result.n_spurious) == (0, 0)


def test_prediction_beyond_the_tolerance_is_spurious_and_the_truth_missed() -> None:
    # 250 px = 125 µm right of SMALL's edge: over the 100 µm tolerance
    far = PredictedDeposit(6550, 1150, 0.2, "micro")
    result = evaluate_deposit_sizes([SlideDeposits("s1", MPP, [SMALL], [far])], CONFIG)
    assert result.pairs == ()
    assert result.missed == (("s1", "small"),)
    assert result.spurious == (("s1", 0),)
    assert math.isnan(result.mean_abs_error_mm)
    assert math.isnan(result.category_accuracy)
    # 150 px = 75 µm away: within the tolerance, a match at that distance
    near = PredictedDeposit(6450, 1150, 0.2, "itc")
    result = evaluate_deposit_sizes([SlideDeposits("s1", MPP, [SMALL], [near])], CONFIG)
    assert result.pairs[0].distance_um == pytest.approx(75.0)
    assert result.category_accuracy == 0.0
    assert result.category_confusion[1, 0] == 1  # micro called itc


def test_two_predictions_in_one_deposit_keep_the_one_nearer_its_centre() -> None:
    fragments = [PredictedDeposit(1100, 1100, 0.3, "micro"), PredictedDeposit(2050, 1950, 1.3, "macro")]
    pairs, missed, spurious = match_slide_deposits(SlideDeposits("s1", MPP, [BIG], fragments), CONFIG)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]
    assert (missed, spurious) == ([], [0])


def test_matching_maximises_pairs_over_greedy_nearest() -> None:
    # the closest pair is prediction 0 - A (60 µm), but taking it would leave B unmatched:
    # prediction 0 is the only one near B, prediction 1 is near A only
    a = TrueDeposit("a", square(0, 0, 100), 0.07, "itc")
    b = TrueDeposit("b", square(400, 0, 100), 0.07, "itc")
    predictions = [
        PredictedDeposit(220, 50, 0.07, "itc"),  # 60 µm from A, 90 µm from B
        PredictedDeposit(50, 250, 0.07, "itc"),
    ]  # 75 µm from A, 190 µm from B
    pairs, missed, spurious = match_slide_deposits(SlideDeposits("s1", MPP, [a, b], predictions), CONFIG)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 1), (1, 0)]
    assert (missed, spurious) == ([], [])


def test_empty_sides() -> None:
    result = evaluate_deposit_sizes(
        [SlideDeposits("s1", MPP, [], []), SlideDeposits("s2", MPP, [BIG], [])], CONFIG
    )
    assert result.n_true == 1
    assert result.missed == (("s2", "big"),)


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(EvaluationError, match="category"):
        evaluate_deposit_sizes(
            [SlideDeposits("s1", MPP, [BIG], [PredictedDeposit(1, 1, 0.1, "tiny")])], CONFIG
        )
    with pytest.raises(EvaluationError, match="outline"):
        bad = TrueDeposit("x", np.zeros((2, 2)), 0.1, "itc")
        evaluate_deposit_sizes([SlideDeposits("s1", MPP, [bad], [])], CONFIG)
    with pytest.raises(EvaluationError, match="mpp"):
        evaluate_deposit_sizes([SlideDeposits("s1", 0.0, [BIG], [])], CONFIG)
    with pytest.raises(ValueError, match="tolerance_um"):
        SizeMatchConfig(tolerance_um=-1.0)
