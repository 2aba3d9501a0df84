"""Evaluation: reads predictions and ground truth, produces challenge metrics.

- ``froc``: CAMELYON16 lesion-level FROC (challenge rule and interpolated scores).
- ``slide_auc``: slide-level ROC AUC with a stratified bootstrap confidence interval.
- ``kappa``: CAMELYON17 quadratic-weighted kappa of pN stages, per-node category agreement.
- ``sizes``: matching of measured deposits to true ones, diameter error, category accuracy.
- ``plots``: FROC and ROC PNGs.
- ``inputs``: readers of batch folders and ground-truth files; ``batch``: every metric of
  a batch, written to a folder (used by ``micromet evaluate``).

The metrics are plain functions on plain data. See docs/evaluation.md.
"""

from __future__ import annotations

from pipeline.evaluation.froc import (
    Detection,
    FrocConfig,
    FrocResult,
    LesionMask,
    SlideHits,
    SlideTruth,
    build_lesion_mask,
    evaluate_froc,
    froc_curve,
    score_slide_detections,
    sensitivity_challenge_rule,
    sensitivity_interpolated,
)
from pipeline.evaluation.kappa import (
    NODE_CATEGORIES,
    PN_STAGES,
    AgreementResult,
    evaluate_node_categories,
    evaluate_stage_kappa,
    quadratic_weighted_kappa,
)
from pipeline.evaluation.plots import plot_froc, plot_roc
from pipeline.evaluation.sizes import (
    DepositPair,
    PredictedDeposit,
    SizeMatchConfig,
    SizeResult,
    SlideDeposits,
    TrueDeposit,
    evaluate_deposit_sizes,
    match_slide_deposits,
)
from pipeline.evaluation.slide_auc import AucResult, BootstrapConfig, evaluate_slide_auc

__all__ = [
    "NODE_CATEGORIES",
    "PN_STAGES",
    "AgreementResult",
    "AucResult",
    "BootstrapConfig",
    "DepositPair",
    "Detection",
    "FrocConfig",
    "FrocResult",
    "LesionMask",
    "PredictedDeposit",
    "SizeMatchConfig",
    "SizeResult",
    "SlideDeposits",
    "SlideHits",
    "SlideTruth",
    "TrueDeposit",
    "build_lesion_mask",
    "evaluate_deposit_sizes",
    "evaluate_froc",
    "evaluate_node_categories",
    "evaluate_slide_auc",
    "evaluate_stage_kappa",
    "froc_curve",
    "match_slide_deposits",
    "plot_froc",
    "plot_roc",
    "quadratic_weighted_kappa",
    "score_slide_detections",
    "sensitivity_challenge_rule",
    "sensitivity_interpolated",
]
