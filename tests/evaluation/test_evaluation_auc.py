"""Slide-level ROC AUC and its stratified bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.errors import EvaluationError
from pipeline.evaluation.slide_auc import BootstrapConfig, evaluate_slide_auc, rank_auc

CONFIG = BootstrapConfig(n_resamples=1000, seed=7)


def _overlapping_scores(n_pos: int, n_neg: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.ones(n_pos, np.int64), np.zeros(n_neg, np.int64)])
    scores = np.concatenate([rng.normal(1.0, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)])
    return labels, scores


def test_auc_matches_sklearn_and_ci_contains_it() -> None:
    labels, scores = _overlapping_scores(40, 60, seed=1)
    result = evaluate_slide_auc(labels, scores, CONFIG)
    assert result.auc == pytest.approx(roc_auc_score(labels, scores))
    assert result.ci_low < result.auc < result.ci_high
    assert 0.5 < result.auc < 1.0
    assert (result.n_pos, result.n_neg) == (40, 60)
    assert result.fpr[0] == 0.0 and result.fpr[-1] == 1.0
    assert np.all(np.diff(result.tpr) >= 0)


def test_hand_computed_auc_with_a_tie() -> None:
    # pairs (pos, neg): 0.8>0.1, 0.8>0.4, 0.4=0.4 (half), 0.4>0.1 -> 3.5 / 4
    result = evaluate_slide_auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1], CONFIG)
    assert result.auc == pytest.approx(0.875)


def test_perfect_separation_gives_a_degenerate_interval_at_one() -> None:
    result = evaluate_slide_auc([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9], CONFIG)
    assert (result.auc, result.ci_low, result.ci_high) == (1.0, 1.0, 1.0)


def test_bootstrap_is_reproducible_with_a_seed_and_varies_without_it() -> None:
    labels, scores = _overlapping_scores(20, 20, seed=2)
    first = evaluate_slide_auc(labels, scores, BootstrapConfig(seed=3))
    again = evaluate_slide_auc(labels, scores, BootstrapConfig(seed=3))
    other = evaluate_slide_auc(labels, scores, BootstrapConfig(seed=4))
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)


def test_wider_confidence_level_gives_a_wider_interval() -> None:
    labels, scores = _overlapping_scores(30, 30, seed=5)
    narrow = evaluate_slide_auc(labels, scores, BootstrapConfig(confidence_level=0.8))
    wide = evaluate_slide_auc(labels, scores, BootstrapConfig(confidence_level=0.99))
    assert wide.ci_low < narrow.ci_low
    assert wide.ci_high > narrow.ci_high


def test_rank_auc_equals_sklearn_row_by_row() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([1, 0, 1, 1, 0, 0, 0, 1], dtype=np.int64)
    scores = np.round(rng.uniform(0, 1, (20, labels.size)), 1)  # rounding makes ties
    expected = [roc_auc_score(labels, row) for row in scores]
    np.testing.assert_allclose(rank_auc(labels, scores), expected)


def test_single_class_is_an_error() -> None:
    with pytest.raises(EvaluationError, match="tumor and normal"):
        evaluate_slide_auc([1, 1, 1], [0.2, 0.5, 0.9], CONFIG)
    with pytest.raises(EvaluationError, match="tumor and normal"):
        evaluate_slide_auc([0, 0], [0.2, 0.5], CONFIG)


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(EvaluationError, match="same length"):
        evaluate_slide_auc([0, 1, 1], [0.2, 0.5], CONFIG)
    with pytest.raises(EvaluationError, match="0 \\(normal\\) or 1"):
        evaluate_slide_auc([0, 2], [0.2, 0.5], CONFIG)
    with pytest.raises(EvaluationError, match="finite"):
        evaluate_slide_auc([0, 1], [0.2, float("nan")], CONFIG)


@pytest.mark.parametrize(
    ("field", "value"), [("n_resamples", 5), ("confidence_level", 1.0), ("confidence_level", 0.2)]
)
def test_bad_bootstrap_config_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        BootstrapConfig(**{field: value})  # type: ignore[arg-type]
