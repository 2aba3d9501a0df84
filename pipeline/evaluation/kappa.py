"""Evaluation: reads reference and predicted pN stages and node categories, produces
CAMELYON17 agreement: quadratic-weighted Cohen's kappa, confusion matrices, accuracy.

The CAMELYON17 score is the quadratic-weighted kappa between the reference and the
predicted patient pN stage over the five stages, in the order of the challenge's
evaluation script: pN0 < pN0(i+) < pN1mi < pN1 < pN2. Per-node categories
(negative, itc, micro, macro) are reported as a confusion matrix and an accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import EvaluationError
from pipeline.staging import CAMELYON17_STAGES, CATEGORY_ORDER

# pN0 < pN0(i+) < pN1mi < pN1 < pN2: the order of the CAMELYON17 evaluation script's
# stage_list, which weights the kappa.
PN_STAGES: tuple[str, ...] = tuple(stage.value for stage in CAMELYON17_STAGES)
# Per-node (per-slide) categories, in increasing order of tumor burden.
NODE_CATEGORIES: tuple[str, ...] = tuple(category.value for category in CATEGORY_ORDER)


@dataclasses.dataclass(frozen=True)
class AgreementResult:
    """Agreement between reference and predicted labels of one ordered label set.

    labels: the label order of the matrix rows (reference) and columns (prediction).
    confusion: (L, L) int64 counts. kappa: quadratic-weighted Cohen's kappa (NaN when the
    expected disagreement is zero, i.e. both sides use one and the same label only).
    accuracy: fraction of exact matches. ids: the compared items, in matrix-count order.
    """

    labels: tuple[str, ...]
    confusion: NDArray[np.int64]
    kappa: float
    accuracy: float
    n: int
    ids: tuple[str, ...]


def quadratic_weighted_kappa(confusion: NDArray[np.int64]) -> float:
    """Cohen's kappa with weights (i - j)^2 / (L - 1)^2 from an (L, L) confusion matrix.

    kappa = 1 - sum(w * O) / sum(w * E), with E the outer product of the row and column
    totals divided by the number of items. Returns NaN when sum(w * E) is 0.
    """
    observed = np.asarray(confusion, dtype=np.float64)
    n_labels = observed.shape[0]
    if observed.ndim != 2 or observed.shape != (n_labels, n_labels) or n_labels < 2:
        raise EvaluationError(f"a confusion matrix must be square, at least 2x2; got {observed.shape}")
    total = observed.sum()
    if total == 0:
        raise EvaluationError("kappa needs at least one compared item; the confusion matrix is empty")
    index = np.arange(n_labels)
    weights = (index[:, None] - index[None, :]) ** 2 / (n_labels - 1) ** 2
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total
    expected_disagreement = float((weights * expected).sum())
    if expected_disagreement == 0.0:
        return float("nan")
    return 1.0 - float((weights * observed).sum()) / expected_disagreement


def _canonical(value: str, labels: Sequence[str], item: str, side: str) -> str:
    lookup = {label.lower(): label for label in labels}
    key = value.strip().lower()
    if key not in lookup:
        raise EvaluationError(
            f"{side} label {value!r} of {item!r} is unknown; allowed: {', '.join(labels)}"
        )
    return lookup[key]


def _agreement(
    reference: Mapping[str, str], predicted: Mapping[str, str], labels: tuple[str, ...],
    what: str,
) -> AgreementResult:
    if not reference:
        raise EvaluationError(f"no reference {what} to compare with")
    missing = sorted(set(reference) - set(predicted))
    if missing:
        raise EvaluationError(
            f"{len(missing)} {what} have a reference but no prediction: {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} - run them or drop them from the reference"
        )
    extra = sorted(set(predicted) - set(reference))
    if extra:
        raise EvaluationError(
            f"{len(extra)} predicted {what} have no reference: {extra[:10]}"
            f"{' ...' if len(extra) > 10 else ''} - add their reference or drop them"
        )
    position = {label: i for i, label in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    ids = tuple(sorted(reference))
    for item in ids:
        ref = _canonical(reference[item], labels, item, "reference")
        pred = _canonical(predicted[item], labels, item, "predicted")
        confusion[position[ref], position[pred]] += 1
    return AgreementResult(
        labels=labels,
        confusion=confusion,
        kappa=quadratic_weighted_kappa(confusion),
        accuracy=float(np.trace(confusion) / len(ids)),
        n=len(ids),
        ids=ids,
    )


def evaluate_stage_kappa(
    reference: Mapping[str, str], predicted: Mapping[str, str]
) -> AgreementResult:
    """CAMELYON17 score: quadratic-weighted kappa of patient pN stages.

    reference / predicted: patient id -> stage, one of PN_STAGES (any letter case).
    Raises EvaluationError for an unknown stage or a patient on one side only.
    """
    return _agreement(reference, predicted, PN_STAGES, "patients")


def evaluate_node_categories(
    reference: Mapping[str, str], predicted: Mapping[str, str]
) -> AgreementResult:
    """Per-node agreement of categories (negative, itc, micro, macro).

    reference / predicted: node (slide) id -> category, one of NODE_CATEGORIES.
    Raises EvaluationError for an unknown category or a node on one side only.
    """
    return _agreement(reference, predicted, NODE_CATEGORIES, "nodes")
