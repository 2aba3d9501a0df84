"""Test helper: a small batch output folder for the viewer and static-report tests.

One synthetic slide (``pipeline.synthetic.generate``, generated once per test session) is listed
three times in the manifest: a finished slide with a micrometastasis and an ITC, a
finished negative slide whose id is an HTML injection attempt, and a failed slide with an
error. Heatmaps are drawn from the ground truth; reports follow docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.path import Path as PolygonPath

from pipeline.detection.heatmap import Heatmap, save_heatmap
from pipeline.review.report import build_report
from pipeline.synthetic.generate import (
    DepositTruth,
    PlantedDeposit,
    SynthConfig,
    SynthResult,
    generate_slide,
    read_truth,
)

SLIDE_CONFIG = SynthConfig(
    width_px=1100,
    height_px=900,
    mpp=2.0,
    seed=3,
    deposits=(PlantedDeposit(0.8), PlantedDeposit(0.15)),
)
HEATMAP_TILE_PX = 64  # level 0
HEATMAP_STRIDE_PX = 32  # level 0; overlapping tiles, so cells are offset by 16 px
TUMOR_PROBABILITY = 0.95
TISSUE_PROBABILITY = 0.1

GOOD_ID = "node_micro"
XSS_ID = "<script>alert(1)</script>"
XSS_FOLDER = "xss_slide"
FAILED_ID = "node_failed"
FAILED_ERROR = "node_failed.svs: cannot open the slide, the file looks truncated or corrupt"


@dataclasses.dataclass(frozen=True)
class ViewerBatch:
    """A batch folder built for tests and the slide it points at."""

    root: Path
    slide: SynthResult
    good_report: dict[str, Any]


def synthetic_slide(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    """The session's synthetic slide (written on first use, then reloaded from its truth)."""
    folder = tmp_path_factory.getbasetemp() / "viewer-synthetic-slide"
    truth = folder / "node.truth.json"
    if truth.is_file():
        return read_truth(truth)
    return generate_slide(SLIDE_CONFIG, folder / "node.tif")


def truth_heatmap(slide: SynthResult, with_tumor: bool) -> Heatmap:
    """A heatmap scoring the planted deposits high, other tissue low, glass NaN."""
    cols = (slide.width_px - HEATMAP_TILE_PX) // HEATMAP_STRIDE_PX + 1
    rows = (slide.height_px - HEATMAP_TILE_PX) // HEATMAP_STRIDE_PX + 1
    rr, cc = np.mgrid[0:rows, 0:cols]
    centres = np.stack(
        [
            cc.ravel() * HEATMAP_STRIDE_PX + HEATMAP_TILE_PX / 2,
            rr.ravel() * HEATMAP_STRIDE_PX + HEATMAP_TILE_PX / 2,
        ],
        axis=1,
    )
    values = np.full(rows * cols, np.nan, dtype=np.float32)
    for tissue in slide.tissue_xy:
        values[PolygonPath(tissue).contains_points(centres)] = TISSUE_PROBABILITY
    if with_tumor:
        for deposit in slide.deposits:
            inside = PolygonPath(deposit.vertices_xy).contains_points(centres, radius=16.0)
            values[inside] = TUMOR_PROBABILITY
    mpp = slide.mpp if slide.mpp is not None else slide.render_mpp
    return Heatmap(
        probabilities=values.reshape(rows, cols),
        origin_x_px=0.0,
        origin_y_px=0.0,
        stride_l0_px=float(HEATMAP_STRIDE_PX),
        tile_size_l0_px=float(HEATMAP_TILE_PX),
        slide_mpp=mpp,
        slide_dimensions=(slide.width_px, slide.height_px),
    )


def deposit_entry(deposit: DepositTruth, mpp: float) -> dict[str, Any]:
    """A report.json deposit (docs/architecture.md) from a planted deposit."""
    vertices = deposit.vertices_xy
    x0, y0 = np.floor(vertices.min(axis=0))
    x1, y1 = np.ceil(vertices.max(axis=0))
    cx, cy = deposit.centroid_xy
    return {
        "id": deposit.id,
        "category": deposit.category,
        "max_diameter_mm": round(deposit.diameter_mm, 4),
        "max_diameter_uncertainty_mm": round(2 * HEATMAP_STRIDE_PX * mpp / 1000 / math.sqrt(3), 4),
        "area_mm2": round(deposit.area_mm2, 5),
        "centroid_x_px": cx,
        "centroid_y_px": cy,
        "centroid_x_mm": cx * mpp / 1000,
        "centroid_y_mm": cy * mpp / 1000,
        "bbox_x_px": int(x0),
        "bbox_y_px": int(y0),
        "bbox_width_px": int(x1 - x0),
        "bbox_height_px": int(y1 - y0),
        "max_probability": TUMOR_PROBABILITY,
        "mean_probability": 0.9,
        "cell_count": deposit.n_tumor_nuclei,
        "refined": False,
        "outline_xy": vertices.round(1).tolist(),
    }


def _slide_report(slide_id: str, slide: SynthResult, deposits: list[dict[str, Any]]) -> dict[str, Any]:
    mpp = slide.mpp if slide.mpp is not None else slide.render_mpp
    facts = {
        "path": str(slide.slide_path),
        "vendor": "generic-tiff",
        "dimensions": [slide.width_px, slide.height_px],
        "mpp": mpp,
        "mpp_source": "metadata",
        "objective_power": None,
        "level_count": len(slide.level_dimensions),
        "tissue_fraction": 0.42,
        "tissue_area_mm2": 1.66,
    }
    model = {
        "path": "models/test.pt",
        "sha256": "0" * 64,
        "architecture": "micronet",
        "tile_size_px": 64,
        "mpp": mpp,
        "threshold": 0.5,
    }
    categories = [d["category"] for d in deposits]
    category = next((c for c in ("macro", "micro", "itc") if c in categories), "negative")
    score = TUMOR_PROBABILITY if deposits else TISSUE_PROBABILITY
    return build_report(
        slide_id,
        facts,
        model,
        {},
        category,
        score,
        deposits,
        812,
        {"tissue": 0.1, "inference": 1.0, "deposits": 0.1},
    )


def _write_slide_output(folder: Path, report: dict[str, Any], heatmap: Heatmap) -> None:
    folder.mkdir(parents=True)
    save_heatmap(heatmap, folder)
    (folder / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")


def build_viewer_batch(root: Path, slide: SynthResult) -> ViewerBatch:
    """Write manifest.json and two slide output folders under ``root``."""
    mpp = slide.mpp if slide.mpp is not None else slide.render_mpp
    deposits = [deposit_entry(d, mpp) for d in slide.deposits]
    good = _slide_report(GOOD_ID, slide, deposits)
    _write_slide_output(root / GOOD_ID, good, truth_heatmap(slide, with_tumor=True))
    negative = _slide_report(XSS_ID, slide, [])
    _write_slide_output(root / XSS_FOLDER, negative, truth_heatmap(slide, with_tumor=False))
    path = str(slide.slide_path)
    manifest = {
        "micromet_version": "0.1.0",
        "slides": {
            GOOD_ID: {"path": path, "status": "done", "error": None, "output_dir": GOOD_ID},
            XSS_ID: {"path": path, "status": "done", "error": None, "output_dir": XSS_FOLDER},
            FAILED_ID: {
                "path": str(root.parent / "node_failed.svs"),
                "status": "failed",
                "error": FAILED_ERROR,
                "output_dir": FAILED_ID,
            },
        },
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return ViewerBatch(root=root, slide=slide, good_report=good)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (symlinks not followed) -> (mtime_ns, size)."""
    listing = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        listing[str(path.relative_to(root))] = (stat.st_mtime_ns, stat.st_size)
    stat = root.stat()
    listing["."] = (stat.st_mtime_ns, stat.st_size)
    return listing
