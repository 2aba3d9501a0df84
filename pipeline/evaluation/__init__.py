"""Evaluation: reads predictions and ground truth, produces challenge metrics.

- ``froc``: CAMELYON16 lesion-level FROC (challenge rule and interpolated scores).
- ``slide_auc``: ROC AUC (``rank_auc``, micromet's one AUC, also for patches) and the
  slide-level AUC with a stratified bootstrap confidence interval.
- ``kappa``: CAMELYON17 quadratic-weighted kappa of pN stages, per-node category agreement.
- ``sizes``: matching of measured deposits to true ones, diameter error, category accuracy.
- ``plots``: FROC and ROC PNGs.
- ``inputs``: readers of batch folders and ground-truth files; ``batch``: every metric of
  a batch, written to a folder (used by ``micromet evaluate``).

The metrics are plain functions on plain data, imported from their modules (this package
re-exports nothing, so reading one metric loads no other). See docs/evaluation.md.
"""


# The package's public modules (imported on use, so importing the package stays cheap).
__all__ = [
    "batch",
    "froc",
    "inputs",
    "kappa",
    "node_scale",
    "plots",
    "reviews",
    "sizes",
    "slide_auc",
]
