"""Evaluation: reads FROC and ROC results, produces PNG plots.

Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot, so
plotting selects no backend and changes no global matplotlib state.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import OutputError
from pipeline.evaluation.froc import FrocResult
from pipeline.evaluation.slide_auc import AucResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_DPI = 120


def _save(figure: Figure, path: Path) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=_DPI, format="png")
    except OSError as exc:
        raise OutputError(f"cannot write plot {path}: {exc}; check the folder is writable") from exc


def plot_froc(result: FrocResult, path: Path) -> None:
    """Write the FROC curve (log FP axis) with the target points marked, as a PNG.

    Raises OutputError if the file cannot be written.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 4.5))
    ax = figure.add_subplot()
    targets = sorted(result.points)
    # points at 0 FPs cannot sit on a log axis: the curve starts at the left edge with the
    # best sensitivity reached without a false positive
    left = min(targets) / 2.0
    zero = result.fps_per_slide <= 0
    start = float(result.sensitivities[zero].max()) if zero.any() else 0.0
    ax.plot(np.concatenate([[left], result.fps_per_slide[~zero]]),
            np.concatenate([[start], result.sensitivities[~zero]]), color="#222222",
            label="FROC")
    ax.plot(targets, [result.points[t][0] for t in targets], "o", color="#d62728",
            label=f"challenge rule (score {result.score_nearest:.3f})")
    ax.plot(targets, [result.points[t][1] for t in targets], "s", mfc="none", color="#1f77b4",
            label=f"interpolated (score {result.score_interpolated:.3f})")
    ax.set_xscale("log")
    ax.set_xlim(left, max(targets) * 2.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("average false positives per slide")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title(f"FROC: {result.n_lesions} lesions, {result.n_slides} slides")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    figure.tight_layout()
    _save(figure, path)


def plot_roc(result: AucResult, path: Path) -> None:
    """Write the slide-level ROC curve with its AUC and confidence interval, as a PNG.

    Raises OutputError if the file cannot be written.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.8, 4.8))
    ax = figure.add_subplot()
    ax.plot(result.fpr, result.tpr, color="#222222",
            label=f"AUC {result.auc:.3f} ({100 * result.confidence_level:.0f}% CI "
                  f"{result.ci_low:.3f}-{result.ci_high:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="#999999", linewidth=0.8)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("false positive rate (normal slides)")
    ax.set_ylabel("true positive rate (tumor slides)")
    ax.set_title(f"slide ROC: {result.n_pos} tumor, {result.n_neg} normal")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    figure.tight_layout()
    _save(figure, path)
