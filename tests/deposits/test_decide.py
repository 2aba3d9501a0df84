"""The deposit decision (pipeline.deposits.decide): seed, dihedral confirmation, review
candidates, calibrated sizes, and the card fields that carry the rules."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from numpy.typing import NDArray

from pipeline.deposits.confirm import ConfirmModel
from pipeline.deposits.decide import NOT_CONFIRMED, DepositRules, decide_deposits, rules_from_card
from pipeline.deposits.measure import SizeCalibration, calibrated_diameter_mm, find_deposits
from pipeline.detection.heatmap import Heatmap
from pipeline.errors import CheckpointError
from pipeline.models import ModelCard
from pipeline.models.card import card_from_dict, card_to_dict
from pipeline.staging import Category

STRIDE_PX = 32.0
TILE_PX = 96.0
MPP = 1.0


def heatmap(values: NDArray[np.float32]) -> Heatmap:
    rows, cols = values.shape
    size = (int(cols * STRIDE_PX + TILE_PX), int(rows * STRIDE_PX + TILE_PX))
    return Heatmap(values.astype(np.float32), 0.0, 0.0, STRIDE_PX, TILE_PX, MPP, size)


def two_blobs() -> NDArray[np.float32]:
    """A one-cell blob (ITC size) at (2, 2) and a 10 x 10 block (micro size) at rows/cols 8-17."""
    values = np.full((24, 24), 0.1, dtype=np.float32)
    values[2, 2] = 0.97
    values[8:18, 8:18] = 0.96
    return values


def score_by_column(confirmed_min_x: float):  # type: ignore[no-untyped-def]
    """A fake dihedral scorer: tiles right of ``confirmed_min_x`` score 0.99 in every pose, others 0.2."""
    calls: list[int] = []

    def score(xy: NDArray[np.int64]) -> NDArray[np.float32]:
        calls.append(len(xy))
        mean = np.where(xy[:, 0] >= confirmed_min_x, 0.99, 0.2).astype(np.float32)
        return np.repeat(mean[:, None], 8, axis=1)

    return score, calls


def test_without_confirmation_every_seeded_deposit_counts() -> None:
    decision = decide_deposits(heatmap(two_blobs()), DepositRules(0.8, 0.9), None)
    assert len(decision.deposits) == 2
    assert decision.candidates == []


def test_seed_drops_deposits_whose_cells_never_reach_it() -> None:
    values = two_blobs()
    values[2, 2] = 0.85  # above the outline threshold, below the seed
    decision = decide_deposits(heatmap(values), DepositRules(0.8, 0.9), None)
    assert [d.category for d in decision.deposits] == [Category.MICRO]


def test_unconfirmed_itc_becomes_a_candidate_and_confirmed_micro_stays() -> None:
    score, calls = score_by_column(confirmed_min_x=200.0)
    decision = decide_deposits(heatmap(two_blobs()), DepositRules(0.8, 0.9, 0.7), score)
    assert [d.category for d in decision.deposits] == [Category.MICRO]
    assert [d.category for d in decision.candidates] == [Category.ITC]
    assert decision.candidates[0].confirm_probability == pytest.approx(0.2)
    assert decision.deposits[0].confirm_probability == pytest.approx(0.99)
    assert sum(calls) <= 6  # at most CONFIRM_CELLS cells per deposit are rescored


def test_unconfirmed_micro_is_kept_and_flagged_never_dropped() -> None:
    score, _ = score_by_column(confirmed_min_x=1e9)  # nothing confirms
    decision = decide_deposits(heatmap(two_blobs()), DepositRules(0.8, 0.9, 0.7), score)
    assert [d.category for d in decision.deposits] == [Category.MICRO]
    assert decision.deposits[0].review == NOT_CONFIRMED
    assert len(decision.candidates) == 1


# fitted weights of the shape the dev part gave (scripts/node_scale_candidates.py fit)
STAGE = ConfirmModel(intercept=2.9, pose_mean=1.44, pose_min=2.65, ln_size_mm=3.0, threshold=0.46)


def score_poses(poses: list[float]):  # type: ignore[no-untyped-def]
    """A fake dihedral scorer: every tile gets the same 8 pose probabilities."""

    def score(xy: NDArray[np.int64]) -> NDArray[np.float32]:
        return np.tile(np.asarray(poses, dtype=np.float32), (len(xy), 1))

    return score


def blob(side_cells: int) -> NDArray[np.float32]:
    values = np.full((24, 24), 0.1, dtype=np.float32)
    values[8 : 8 + side_cells, 8 : 8 + side_cells] = 0.9
    return values


def test_the_second_stage_confirms_by_size_where_the_poses_are_the_same() -> None:
    steady = score_poses([0.9] * 8)
    rules = DepositRules(0.5, 0.8, size=None, confirm_model=STAGE)
    one_cell = decide_deposits(heatmap(blob(1)), rules, steady)  # 0.045 mm: a look-alike's size
    four_cells = decide_deposits(heatmap(blob(4)), rules, steady)  # 0.18 mm
    assert one_cell.deposits == [] and len(one_cell.candidates) == 1
    assert len(four_cells.deposits) == 1 and four_cells.candidates == []
    size = four_cells.deposits[0].max_diameter_mm
    assert four_cells.deposits[0].confirm_probability == pytest.approx(STAGE.probability(0.9, 0.9, size))
    low, high = one_cell.candidates[0].confirm_probability, four_cells.deposits[0].confirm_probability
    assert low is not None and high is not None and low < STAGE.threshold <= high


def test_the_second_stage_refuses_a_deposit_that_one_pose_does_not_see() -> None:
    rules = DepositRules(0.5, 0.8, confirm_model=STAGE)
    steady = decide_deposits(heatmap(blob(3)), rules, score_poses([0.85] * 8))
    unstable = decide_deposits(heatmap(blob(3)), rules, score_poses([0.98] * 7 + [0.05]))
    assert len(steady.deposits) == 1
    assert unstable.deposits == [] and len(unstable.candidates) == 1  # higher mean, one pose blind
    blind_pose = score_poses([0.98] * 7 + [0.05])
    threshold_only = decide_deposits(heatmap(blob(3)), DepositRules(0.5, 0.8, 0.8), blind_pose)
    assert len(threshold_only.deposits) == 1  # the mean alone (0.86) would have confirmed it


def test_calibrated_size_is_contour_diameter_less_offset_with_measured_error() -> None:
    values = np.full((30, 30), 0.0, dtype=np.float32)
    values[10:20, 10:20] = 1.0  # 10 cells of 32 px: contour at 0.5 runs half way to the zeros
    raw = SizeCalibration(0.5, 0.0, ((9.0, 0.0),))
    (deposit,) = find_deposits(heatmap(values), 0.8, calibration=raw)
    # the level-0.5 contour is a square of side 10 cells (cut corners): diagonal ~ 10 * 32 * sqrt(2)
    assert deposit.max_diameter_mm == pytest.approx(10 * 32 * np.sqrt(2) / 1000, rel=0.05)
    calibrated = SizeCalibration(0.5, 0.1, ((0.2, 0.03), (2.0, 0.05), (9.0, 0.2)))
    (again,) = find_deposits(heatmap(values), 0.8, calibration=calibrated)
    assert again.max_diameter_mm == pytest.approx(deposit.max_diameter_mm - 0.1)
    assert again.max_diameter_uncertainty_mm == 0.05
    assert again.size_calibrated and not deposit.refined
    grid_only = find_deposits(heatmap(values), 0.8)[0]
    assert not grid_only.size_calibrated
    assert grid_only.max_diameter_uncertainty_mm == pytest.approx(32 * np.sqrt(2) / 1000)


def test_size_calibration_error_lookup_and_range_checks() -> None:
    calibration = SizeCalibration(0.5, 0.05, ((0.2, 0.03), (2.0, 0.05)))
    assert calibration.error_for(0.1) == 0.03
    assert calibration.error_for(1.0) == 0.05
    assert calibration.error_for(5.0) == 0.05  # the last covers every larger size
    with pytest.raises(ValueError, match="level"):
        SizeCalibration(1.5, 0.0, ((1.0, 0.1),))
    with pytest.raises(ValueError, match="error_mm"):
        SizeCalibration(0.5, 0.0, ())


def test_size_knots_correct_by_size_and_extend_by_the_end_offsets() -> None:
    knots = ((0.2, 0.12), (0.5, 0.45), (2.0, 2.05))
    calibration = SizeCalibration(0.5, 0.03, ((9.0, 0.05),), knots)
    assert calibrated_diameter_mm(0.2, calibration, 0.01) == pytest.approx(0.12)
    assert calibrated_diameter_mm(0.35, calibration, 0.01) == pytest.approx(0.285)  # halfway
    assert calibrated_diameter_mm(0.15, calibration, 0.01) == pytest.approx(0.07)  # first knot's offset
    assert calibrated_diameter_mm(3.0, calibration, 0.01) == pytest.approx(3.05)  # last knot's offset
    assert calibrated_diameter_mm(0.05, calibration, 0.01) == 0.01  # never below the floor
    assert calibrated_diameter_mm(0.35, SizeCalibration(0.5, 0.03, ((9.0, 0.05),)), 0.01) == pytest.approx(
        0.32
    )
    with pytest.raises(ValueError, match="knots_mm"):
        SizeCalibration(0.5, 0.0, ((9.0, 0.05),), ((0.5, 0.4), (0.3, 0.3)))  # not rising
    card = _card(
        size_calibration={"level": 0.5, "offset_mm": 0.03, "error_mm": [[9.0, 0.05]], "knots_mm": knots}
    )
    assert rules_from_card(card_from_dict(card_to_dict(card))).size == calibration


def _card(**fields: object) -> ModelCard:
    return ModelCard(architecture="pcamnet", tile_size_px=96, mpp=0.972, threshold=0.8, **fields)  # type: ignore[arg-type]


def test_card_carries_the_rules_and_round_trips() -> None:
    size = {"level": 0.6, "offset_mm": 0.04, "error_mm": [[0.2, 0.03], [2.0, 0.06], [9.0, 0.3]]}
    card = _card(seed_threshold=0.95, confirm_threshold=0.9, size_calibration=size)
    again = card_from_dict(card_to_dict(card))
    rules = rules_from_card(again)
    assert rules.threshold == 0.8 and rules.seed_threshold == 0.95 and rules.confirm_threshold == 0.9
    assert rules.size == SizeCalibration(0.6, 0.04, ((0.2, 0.03), (2.0, 0.06), (9.0, 0.3)))
    user = rules_from_card(again, threshold=0.7, seed=0.99)
    assert (user.threshold, user.seed_threshold, user.confirm_threshold) == (0.7, 0.99, 0.9)


def test_card_without_the_new_fields_still_loads() -> None:
    data = card_to_dict(_card())
    del data["confirm_threshold"], data["size_calibration"], data["confirm_model"]
    rules = rules_from_card(card_from_dict(data))
    assert rules.confirm_threshold is None and rules.size is None and rules.confirm_model is None


def test_card_carries_the_second_stage_and_round_trips() -> None:
    card = card_from_dict(card_to_dict(_card(seed_threshold=0.8, confirm_model=STAGE.to_dict())))
    rules = rules_from_card(card)
    assert rules.confirm_model == STAGE and rules.confirms


@pytest.mark.parametrize(
    "fields",
    [
        {"confirm_threshold": 1.5},
        {"confirm_threshold": float("nan")},
        {"size_calibration": {"level": 0.5}},
        {"size_calibration": {"level": 2.0, "offset_mm": 0.0, "error_mm": [[1.0, 0.1]]}},
        {"size_calibration": {"level": 0.5, "offset_mm": 0.0, "error_mm": [["x", 0.1]]}},
        {"confirm_model": {"intercept": 1.0}},
        {"confirm_model": {**STAGE.to_dict(), "threshold": 1.5}},
        {"confirm_model": {**STAGE.to_dict(), "pose_min": float("inf")}},
    ],
)
def test_card_refuses_malformed_rules(fields: dict[str, object]) -> None:
    with pytest.raises(CheckpointError):
        _card(**fields)


def test_rules_are_frozen() -> None:
    rules = DepositRules(0.8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.threshold = 0.5  # type: ignore[misc]


def test_dihedral_poses_are_the_eight_distinct_rotations_and_mirrors() -> None:
    from pipeline.detection.inference import dihedral_poses

    tile = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    poses = dihedral_poses(np.stack([tile, tile[::-1]]))
    assert poses.shape == (16, 4, 4, 3) and poses.flags["C_CONTIGUOUS"]
    first = {pose.tobytes() for pose in poses[:8]}
    assert len(first) == 8  # an asymmetric tile has 8 different poses
    assert first == {pose.tobytes() for pose in poses[8:]}  # a mirrored tile has the same 8
