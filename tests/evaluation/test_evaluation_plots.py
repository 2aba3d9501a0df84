"""FROC and ROC plots are written as PNG files without touching pyplot state."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import OutputError
from pipeline.evaluation.froc import FrocResult
from pipeline.evaluation.plots import plot_froc, plot_roc
from pipeline.evaluation.slide_auc import BootstrapConfig, evaluate_slide_auc


def _froc() -> FrocResult:
    return FrocResult(
        fps_per_slide=np.array([0.0, 0.25, 0.5, 1.0, 3.0]),
        sensitivities=np.array([0.0, 0.4, 0.5, 0.7, 0.9]),
        thresholds=np.array([np.inf, 0.9, 0.8, 0.5, 0.2]),
        score_nearest=0.7,
        score_interpolated=0.72,
        points={t: (0.5, 0.6) for t in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)},
        n_slides=4,
        n_lesions=10,
        per_slide=(),
    )


def test_plots_are_png_files(tmp_path: Path) -> None:
    froc_path = tmp_path / "sub" / "froc.png"
    plot_froc(_froc(), froc_path)
    auc = evaluate_slide_auc(
        [0, 0, 1, 1, 0, 1], [0.1, 0.6, 0.5, 0.9, 0.2, 0.8], BootstrapConfig(n_resamples=50)
    )
    roc_path = tmp_path / "roc.png"
    plot_roc(auc, roc_path)
    for path in (froc_path, roc_path):
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width > 300 and image.height > 300


def test_plotting_does_not_import_pyplot(tmp_path: Path) -> None:
    if "matplotlib.pyplot" in sys.modules:
        pytest.skip("another test imported pyplot already")
    plot_froc(_froc(), tmp_path / "froc.png")
    assert "matplotlib.pyplot" not in sys.modules


def test_unwritable_plot_path_is_an_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write plot"):
        plot_froc(_froc(), blocker / "froc.png")
