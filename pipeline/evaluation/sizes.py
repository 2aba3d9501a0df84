"""Evaluation: reads true deposit outlines and predicted deposits, produces size accuracy.

Each predicted deposit is matched to at most one true deposit and vice versa: a pair is
allowed when the predicted centroid lies inside the true outline or within
``tolerance_um`` of it, and among the allowed pairs an optimal assignment (Hungarian
method) first maximises the number of pairs, then minimises the summed distance. For each
pair the longest-diameter error (mm) and the category (itc, micro, macro) are compared;
unmatched true deposits are missed, unmatched predictions spurious.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import EvaluationError

DEPOSIT_CATEGORIES: tuple[str, ...] = ("itc", "micro", "macro")
# Weight of the centroid-to-centroid distance in the matching cost: only breaks ties
# between predictions that all lie inside one outline (distance 0).
_CENTROID_TIE_BREAK = 1e-3


@dataclasses.dataclass(frozen=True)
class SizeMatchConfig:
    """tolerance_um: largest distance from a predicted centroid to a true outline for a match."""

    tolerance_um: float = 100.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.tolerance_um <= 10_000.0):
            raise ValueError(
                f"tolerance_um={self.tolerance_um!r} is out of range; allowed 0 to 10000"
            )


@dataclasses.dataclass(frozen=True)
class TrueDeposit:
    """A reference deposit: outline_xy (N, 2) level-0 (x, y) px, its longest diameter, category."""

    deposit_id: str
    outline_xy: NDArray[np.float64]
    max_diameter_mm: float
    category: str


@dataclasses.dataclass(frozen=True)
class PredictedDeposit:
    """A measured deposit: centroid in level-0 px, longest diameter in mm, category."""

    centroid_x_px: float
    centroid_y_px: float
    max_diameter_mm: float
    category: str


@dataclasses.dataclass(frozen=True)
class SlideDeposits:
    """True and predicted deposits of one slide; mpp (µm/px) converts the tolerance."""

    slide_id: str
    mpp: float
    truths: Sequence[TrueDeposit]
    predictions: Sequence[PredictedDeposit]


@dataclasses.dataclass(frozen=True)
class DepositPair:
    """A matched pair; error_mm = predicted - true diameter; distance_um centroid to outline."""

    slide_id: str
    true_id: str
    predicted_index: int
    true_diameter_mm: float
    predicted_diameter_mm: float
    error_mm: float
    true_category: str
    predicted_category: str
    distance_um: float


@dataclasses.dataclass(frozen=True)
class SizeResult:
    """Size and category accuracy over all slides.

    mean_abs_error_mm, category_accuracy: over matched pairs, NaN when there is none.
    category_confusion: (3, 3) counts, rows true, columns predicted, in DEPOSIT_CATEGORIES
    order. missed: (slide_id, true_id) of unmatched true deposits. spurious: (slide_id,
    index) of unmatched predictions.
    """

    pairs: tuple[DepositPair, ...]
    mean_abs_error_mm: float
    category_accuracy: float
    category_confusion: NDArray[np.int64]
    n_true: int
    n_predicted: int
    missed: tuple[tuple[str, str], ...]
    spurious: tuple[tuple[str, int], ...]

    @property
    def n_missed(self) -> int:
        """True deposits without a matching prediction."""
        return len(self.missed)

    @property
    def n_spurious(self) -> int:
        """Predictions without a matching true deposit."""
        return len(self.spurious)


def point_polygon_distance_px(x_px: float, y_px: float, vertices: NDArray[np.float64]) -> float:
    """Distance from a point to a polygon's area in px: 0 inside, else to the nearest edge."""
    from skimage.measure import points_in_poly

    if bool(points_in_poly(np.array([[x_px, y_px]]), vertices)[0]):
        return 0.0
    start = vertices
    end = np.roll(vertices, -1, axis=0)
    edge = end - start
    length2 = np.maximum((edge**2).sum(axis=1), 1e-12)
    point = np.array([x_px, y_px])
    t = np.clip(((point - start) * edge).sum(axis=1) / length2, 0.0, 1.0)
    nearest = start + t[:, None] * edge
    return float(np.sqrt(((nearest - point) ** 2).sum(axis=1)).min())


def _category(value: str, slide_id: str, what: str) -> str:
    key = value.strip().lower()
    if key not in DEPOSIT_CATEGORIES:
        raise EvaluationError(
            f"slide {slide_id!r}: {what} category {value!r} is unknown; allowed: "
            f"{', '.join(DEPOSIT_CATEGORIES)}"
        )
    return key


def _check_slide(slide: SlideDeposits) -> None:
    if not (math.isfinite(slide.mpp) and slide.mpp > 0):
        raise EvaluationError(f"slide {slide.slide_id!r}: mpp={slide.mpp!r} must be positive")
    for truth in slide.truths:
        outline = np.asarray(truth.outline_xy)
        if outline.ndim != 2 or outline.shape[1] != 2 or outline.shape[0] < 3:
            raise EvaluationError(
                f"slide {slide.slide_id!r}: deposit {truth.deposit_id!r} outline has shape "
                f"{outline.shape}; expected (N, 2) level-0 px with N >= 3"
            )
        _category(truth.category, slide.slide_id, f"deposit {truth.deposit_id!r}")
    for j, pred in enumerate(slide.predictions):
        _category(pred.category, slide.slide_id, f"predicted deposit {j}")


def _cost_matrix_um(slide: SlideDeposits) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(distance, cost) in µm, shape (n_true, n_predicted)."""
    n_true, n_pred = len(slide.truths), len(slide.predictions)
    distance = np.zeros((n_true, n_pred))
    cost = np.zeros((n_true, n_pred))
    for i, truth in enumerate(slide.truths):
        outline = np.asarray(truth.outline_xy, dtype=np.float64)
        centre = outline.mean(axis=0)
        for j, pred in enumerate(slide.predictions):
            d_px = point_polygon_distance_px(pred.centroid_x_px, pred.centroid_y_px, outline)
            c_px = math.hypot(pred.centroid_x_px - centre[0], pred.centroid_y_px - centre[1])
            distance[i, j] = d_px * slide.mpp
            cost[i, j] = (d_px + _CENTROID_TIE_BREAK * c_px) * slide.mpp
    return distance, cost


def match_slide_deposits(
    slide: SlideDeposits, config: SizeMatchConfig
) -> tuple[list[tuple[int, int, float]], list[int], list[int]]:
    """Optimal one-to-one matching of a slide's deposits.

    Returns (pairs as (true index, predicted index, distance µm), unmatched true indices,
    unmatched predicted indices). Raises EvaluationError on a malformed outline or mpp.
    """
    from scipy.optimize import linear_sum_assignment

    _check_slide(slide)
    n_true, n_pred = len(slide.truths), len(slide.predictions)
    if n_true == 0 or n_pred == 0:
        return [], list(range(n_true)), list(range(n_pred))
    distance, cost = _cost_matrix_um(slide)
    allowed = distance <= config.tolerance_um
    # a forbidden pair costs more than any full set of allowed pairs, so the assignment
    # takes as many allowed pairs as possible before it looks at distances
    forbidden_cost = float(cost[allowed].sum()) + 1.0 if allowed.any() else 1.0
    rows, cols = linear_sum_assignment(np.where(allowed, cost, forbidden_cost))
    pairs = [(int(i), int(j), float(distance[i, j])) for i, j in zip(rows, cols, strict=True)
             if allowed[i, j]]
    matched_true = {i for i, _, _ in pairs}
    matched_pred = {j for _, j, _ in pairs}
    return (pairs, [i for i in range(n_true) if i not in matched_true],
            [j for j in range(n_pred) if j not in matched_pred])


def _pair(slide: SlideDeposits, i: int, j: int, distance_um: float) -> DepositPair:
    truth, pred = slide.truths[i], slide.predictions[j]
    return DepositPair(
        slide_id=slide.slide_id,
        true_id=truth.deposit_id,
        predicted_index=j,
        true_diameter_mm=float(truth.max_diameter_mm),
        predicted_diameter_mm=float(pred.max_diameter_mm),
        error_mm=float(pred.max_diameter_mm - truth.max_diameter_mm),
        true_category=_category(truth.category, slide.slide_id, "true"),
        predicted_category=_category(pred.category, slide.slide_id, "predicted"),
        distance_um=distance_um,
    )


def evaluate_deposit_sizes(
    slides: Sequence[SlideDeposits], config: SizeMatchConfig
) -> SizeResult:
    """Match deposits slide by slide and summarise diameter error and category accuracy.

    Raises EvaluationError on a malformed outline, mpp or category.
    """
    pairs: list[DepositPair] = []
    missed: list[tuple[str, str]] = []
    spurious: list[tuple[str, int]] = []
    for slide in slides:
        matched, lost, extra = match_slide_deposits(slide, config)
        pairs.extend(_pair(slide, i, j, d) for i, j, d in matched)
        missed.extend((slide.slide_id, slide.truths[i].deposit_id) for i in lost)
        spurious.extend((slide.slide_id, j) for j in extra)
    position = {c: k for k, c in enumerate(DEPOSIT_CATEGORIES)}
    confusion = np.zeros((3, 3), dtype=np.int64)
    for pair in pairs:
        confusion[position[pair.true_category], position[pair.predicted_category]] += 1
    errors = np.array([abs(p.error_mm) for p in pairs])
    return SizeResult(
        pairs=tuple(pairs),
        mean_abs_error_mm=float(errors.mean()) if pairs else math.nan,
        category_accuracy=float(np.trace(confusion) / len(pairs)) if pairs else math.nan,
        category_confusion=confusion,
        n_true=sum(len(s.truths) for s in slides),
        n_predicted=sum(len(s.predictions) for s in slides),
        missed=tuple(missed),
        spurious=tuple(spurious),
    )
