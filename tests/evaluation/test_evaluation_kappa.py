"""CAMELYON17 agreement: quadratic-weighted kappa of pN stages, node categories."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from pipeline.errors import EvaluationError
from pipeline.evaluation.kappa import (
    NODE_CATEGORIES,
    PN_STAGES,
    evaluate_node_categories,
    evaluate_stage_kappa,
    quadratic_weighted_kappa,
)


def test_stage_order_is_the_camelyon17_order() -> None:
    assert PN_STAGES == ("pN0", "pN0(i+)", "pN1mi", "pN1", "pN2")
    assert NODE_CATEGORIES == ("negative", "itc", "micro", "macro")


def test_hand_computed_kappa() -> None:
    """Three patients, three labels a < b < c, weights (i - j)^2 / 4: 0, 1/4, 1.

    reference a, b, c; predicted a, c, c. Observed matrix: (a,a), (b,c), (c,c).
    Row totals 1, 1, 1; column totals 1, 0, 2; E = outer / 3.
    sum(w * O) = w(b,c) = 1/4.
    sum(w * E) = (1/3) * [w(a,a)*1 + w(a,c)*2 + w(b,a)*1 + w(b,c)*2 + w(c,a)*1 + w(c,c)*2]
               = (1/3) * [0 + 2 + 1/4 + 1/2 + 1 + 0] = (1/3) * 15/4 = 5/4.
    kappa = 1 - (1/4) / (5/4) = 0.8.
    """
    confusion = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1]], dtype=np.int64)
    assert quadratic_weighted_kappa(confusion) == pytest.approx(0.8)


def test_stage_kappa_matches_sklearn_quadratic_kappa() -> None:
    rng = np.random.default_rng(0)
    patients = [f"patient_{i:03d}" for i in range(60)]
    truth = rng.integers(0, 5, len(patients))
    noisy = np.clip(truth + rng.integers(-1, 2, len(patients)), 0, 4)
    reference = {p: PN_STAGES[t] for p, t in zip(patients, truth, strict=True)}
    predicted = {p: PN_STAGES[t] for p, t in zip(patients, noisy, strict=True)}
    result = evaluate_stage_kappa(reference, predicted)
    expected = cohen_kappa_score(
        [reference[p] for p in patients],
        [predicted[p] for p in patients],
        labels=list(PN_STAGES),
        weights="quadratic",
    )
    assert result.kappa == pytest.approx(expected)
    assert result.accuracy == pytest.approx(float(np.mean(truth == noisy)))
    assert result.confusion.sum() == 60
    assert result.confusion.shape == (5, 5)


def test_stage_names_are_case_insensitive_and_confusion_is_ordered() -> None:
    result = evaluate_stage_kappa(
        {"p1": "pN0", "p2": "pN2", "p3": "pN1mi"}, {"p1": "PN0", "p2": "pn1", "p3": "pN1MI"}
    )
    assert result.confusion[0, 0] == 1  # pN0 -> pN0
    assert result.confusion[4, 3] == 1  # pN2 -> pN1
    assert result.confusion[2, 2] == 1  # pN1mi -> pN1mi
    assert result.accuracy == pytest.approx(2 / 3)


def test_perfect_agreement_is_one_and_single_label_agreement_is_undefined() -> None:
    perfect = evaluate_stage_kappa({"a": "pN0", "b": "pN2"}, {"a": "pN0", "b": "pN2"})
    assert perfect.kappa == pytest.approx(1.0)
    single = evaluate_stage_kappa({"a": "pN1", "b": "pN1"}, {"a": "pN1", "b": "pN1"})
    assert np.isnan(single.kappa)
    assert single.accuracy == 1.0


def test_node_categories_give_confusion_and_accuracy() -> None:
    reference = {"n1": "negative", "n2": "itc", "n3": "micro", "n4": "macro", "n5": "micro"}
    predicted = {"n1": "negative", "n2": "negative", "n3": "micro", "n4": "macro", "n5": "macro"}
    result = evaluate_node_categories(reference, predicted)
    assert result.accuracy == pytest.approx(3 / 5)
    assert result.confusion[1, 0] == 1  # itc called negative
    assert result.confusion[2, 3] == 1  # micro called macro
    assert np.trace(result.confusion) == 3


def test_unknown_stage_lists_the_allowed_ones() -> None:
    with pytest.raises(EvaluationError, match=r"pN0, pN0\(i\+\), pN1mi, pN1, pN2"):
        evaluate_stage_kappa({"a": "pN3"}, {"a": "pN0"})
    with pytest.raises(EvaluationError, match="negative, itc, micro, macro"):
        evaluate_node_categories({"a": "negative"}, {"a": "tumor"})


def test_patients_on_one_side_only_are_errors() -> None:
    with pytest.raises(EvaluationError, match="no prediction"):
        evaluate_stage_kappa({"a": "pN0", "b": "pN1"}, {"a": "pN0"})
    with pytest.raises(EvaluationError, match="no reference"):
        evaluate_stage_kappa({"a": "pN0"}, {"a": "pN0", "z": "pN1"})
    with pytest.raises(EvaluationError, match="no reference"):
        evaluate_stage_kappa({}, {})
