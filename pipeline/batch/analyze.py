"""One slide end to end: reads a slide file, produces its heatmap, deposits, category,
exports, overlay and ``report.json`` in one folder. ``run_local_batch`` runs it over many
slides through ``pipeline.batch.local`` (manifest, resume, failure isolation). The
``AnalysisContext`` both read is built in ``pipeline.batch.settings``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from pipeline import __version__
from pipeline.batch.folder import REPORT_JSON, manifest_path, read_or_start_manifest
from pipeline.batch.local import SlideOutcome, run_batch
from pipeline.batch.scoring import dihedral_scorer, score_with_facts, score_with_stats
from pipeline.batch.settings import AnalysisContext
from pipeline.detection.heatmap import Heatmap, heatmap_from_scores, save_heatmap
from pipeline.errors import NoTissueError, SlideQCError
from pipeline.outputs import atomic_write_json
from pipeline.review.colors import category_color
from pipeline.review.report import build_report, write_summary_csv
from pipeline.slides.integrity import check_integrity
from pipeline.slides.metadata import plausible_objective_power
from pipeline.slides.qc import ACCEPT_FLAG, QCResult, check_slide
from pipeline.slides.slide import Slide, SlideSource, open_slide_for_user
from pipeline.slides.tiling import TileGrid, plan_tiles, points_grid
from pipeline.slides.tissue import TissueMask, detect_tissue
from pipeline.staging import slide_category

if TYPE_CHECKING:
    from pipeline.deposits.decide import DepositDecision
    from pipeline.deposits.measure import Deposit

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int], None]


class TileProgress(Protocol):
    """Progress of one slide: told its number of tiles once, then counts of tiles scored."""

    def start(self, n_tiles: int) -> None:
        """The slide has ``n_tiles`` tiles to score."""

    def __call__(self, n_scored: int) -> None:
        """``n_scored`` more tiles were scored."""


def _find_and_refine(
    context: AnalysisContext, slide: Slide, grid: TileGrid, heatmap: Heatmap
) -> DepositDecision:
    """Deposits and review candidates (``pipeline.deposits.decide``); deposits of a card without a
    size calibration are refined near the category cut-offs (``pipeline.deposits.refine``)."""
    from pipeline.deposits.decide import DepositDecision, decide_deposits
    from pipeline.deposits.measure import keep_seeded

    rules = context.rules
    decision = decide_deposits(heatmap, rules, dihedral_scorer(context, slide))
    if not (context.deposits.refine and decision.deposits) or rules.size is not None:
        return decision
    from pipeline.deposits.refine import refine_deposits

    def score_points(xy_px: NDArray[np.int64]) -> NDArray[np.float32]:
        if len(xy_px) == 0:
            return np.zeros(0, np.float32)
        return score_with_stats(context, slide, points_grid(grid, xy_px), None)[0]

    refined = refine_deposits(heatmap, decision.deposits, context.threshold, score_points, context.deposits)
    return DepositDecision(keep_seeded(refined, context.seed_threshold), decision.candidates)


def _count_cells(context: AnalysisContext, slide: Slide, deposits: list[Deposit]) -> list[Deposit]:
    if not context.deposits.count_cells:
        return deposits
    from pipeline.deposits.cells import add_cell_counts

    return add_cell_counts(slide, deposits, context.deposits)


def _write_exports(folder: Path, deposits: Sequence[Deposit], candidates: Sequence[Deposit]) -> None:
    from pipeline.review.exports import write_asap_xml, write_camelyon16_csv, write_qupath_geojson

    write_qupath_geojson(deposits, folder / "deposits.geojson", candidates)
    write_asap_xml(deposits, folder / "deposits.xml", candidates)
    write_camelyon16_csv(deposits, folder / "detections.csv")


def _overlay_base(source: SlideSource, heatmap: Heatmap) -> NDArray[np.uint8]:
    """The slow half of the overlay (thumbnail read + heatmap blend), on a slide handle of its
    own (reopened from the main handle's ``slide.source``) so it can run in a thread beside
    cell counting on the main handle."""
    from pipeline.review.overlay import heatmap_over_thumbnail

    with source.open() as slide:
        return heatmap_over_thumbnail(slide, heatmap)


def _write_overlay(
    slide: Slide, blended: NDArray[np.uint8], deposits: Sequence[Deposit], folder: Path, slide_id: str
) -> None:
    from pipeline.review.overlay import overlay_title, write_overlay

    outlines: list[NDArray[np.floating[Any]]] = [d.outline_xy for d in deposits]
    colors = [category_color(str(d.category)) for d in deposits]
    largest = max(deposits, key=lambda d: d.max_diameter_mm, default=None)
    title = overlay_title(
        slide_id,
        str(slide_category(d.category for d in deposits)),
        None if largest is None else largest.max_diameter_mm,
        largest is not None and largest.below_grid,
        sum(1 for d in deposits if d.review),
    )
    write_overlay(blended, slide, folder / "overlay.png", outlines, colors, title)


def _deposits_and_overlay(
    context: AnalysisContext, slide: Slide, grid: TileGrid, heatmap: Heatmap, folder: Path, slide_id: str
) -> tuple[list[Deposit], list[Deposit], float]:
    """Deposits (refined, cells counted), review candidates, their exports and overlay.png; also
    the seconds the deposits took. The overlay's slide read and heatmap blend run in a thread
    meanwhile."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="micromet-overlay") as pool:
        decision = _find_and_refine(context, slide, grid, heatmap)
        # Started only now: scoring (refinement included) forks reader processes, and no
        # thread may be inside a slide read when a process forks.
        overlay_base = pool.submit(_overlay_base, slide.source, heatmap)
        deposits = _count_cells(context, slide, decision.deposits)
        seconds = time.perf_counter() - started
        _write_exports(folder, deposits, decision.candidates)
        _write_overlay(slide, overlay_base.result(), deposits, folder, slide_id)
    return deposits, decision.candidates, seconds


def _slide_facts(slide: Slide, tissue_fraction: float, tissue_area_mm2: float) -> dict[str, Any]:
    facts = slide.info.to_dict()
    facts.pop("level_dimensions", None)
    facts["objective_power"] = plausible_objective_power(slide.path, facts.get("objective_power"))
    facts.update(tissue_fraction=round(tissue_fraction, 5), tissue_area_mm2=round(tissue_area_mm2, 4))
    return facts


def _check_quality(context: AnalysisContext, slide: Slide, tissue: TissueMask, slide_id: str) -> QCResult:
    """Slide QC before scoring; raises SlideQCError for a failing slide unless the user accepts
    QC failures."""
    qc = check_slide(slide, tissue, context.qc, context.card.qc_reference)
    log.info("%s: %s", slide_id, qc.summary_line())
    if not qc.passed and not context.qc.accept_qc_failures:
        raise SlideQCError(f"{slide.path}: {qc.warning}; not scored (add {ACCEPT_FLAG} to score it anyway)")
    return qc


def _whole_slide_mask(tissue: TissueMask) -> TissueMask:
    """A mask calling the whole slide tissue, for ``whole_slide`` scoring."""
    return dataclasses.replace(tissue, mask=np.ones_like(tissue.mask))


def analyze_slide(
    context: AnalysisContext,
    path: Path,
    slide_id: str,
    folder: Path,
    progress: TileProgress | None = None,
) -> dict[str, Any]:
    """Analyse one slide into ``folder``; returns its report dict. ``report.json`` is written
    last, so a folder with a report is complete. Raises MicrometError subclasses on bad input.
    """
    timing: dict[str, float] = {}
    started = time.perf_counter()
    user_mpp, flag = context.user_mpp(slide_id)
    with open_slide_for_user(path, user_mpp, context.force_mpp, flag) as slide:
        tissue = detect_tissue(slide, context.tissue)
        qc = _check_quality(context, slide, tissue, slide_id)
        scored = _whole_slide_mask(tissue) if context.whole_slide else tissue
        try:
            grid = plan_tiles(slide.dimensions, slide.mpp, scored, context.tiling)
        except NoTissueError as exc:
            raise NoTissueError(f"{path}: {exc}") from exc
        qc = check_integrity(
            slide, tissue, None if context.whole_slide else grid, context.tiling.mpp,
            context.card.tile_size_px, qc, context.qc.accept_qc_failures,
        )
        timing["tissue_tiling"] = time.perf_counter() - started
        if progress is not None:
            progress.start(len(grid))
        probabilities, inference_facts = score_with_facts(context, slide, grid, progress)
        timing["inference"] = time.perf_counter() - started - timing["tissue_tiling"]
        heatmap = heatmap_from_scores(grid, probabilities)
        save_heatmap(heatmap, folder)
        deposits, candidates, timing["deposits"] = _deposits_and_overlay(
            context, slide, grid, heatmap, folder, slide_id
        )
        facts = _slide_facts(slide, tissue.tissue_fraction, tissue.tissue_area_mm2)
    category = slide_category(d.category for d in deposits)
    timing["total"] = time.perf_counter() - started
    report = build_report(
        slide_id,
        facts,
        context.model_facts(),
        context.settings(),
        str(category),
        float(np.nanmax(probabilities)) if len(probabilities) else 0.0,
        [d.to_dict() for d in deposits],
        len(grid),
        timing,
    )
    report["candidates"] = [c.to_dict() for c in candidates]
    report["qc"] = qc.to_dict()
    report["inference"] = inference_facts
    atomic_write_json(
        folder / "run.json",
        {"micromet_version": __version__, "settings": context.settings(), "model": context.model_facts()},
    )
    atomic_write_json(folder / REPORT_JSON, report)
    return report


def run_local_batch(
    slides: Sequence[Path],
    out_dir: Path,
    context: AnalysisContext,
    overwrite: bool = False,
    tile_progress: Callable[[str], TileProgress | None] | None = None,
    on_slide_done: Callable[[SlideOutcome], None] | None = None,
) -> list[SlideOutcome]:
    """Analyse ``slides`` into ``out_dir`` on this machine, then write summary.csv (also when
    the run is interrupted: the manifest holds every finished slide).

    tile_progress(slide_id) may return a ``TileProgress`` for that slide.
    """

    def analyze(path: Path, slide_id: str, folder: Path) -> dict[str, Any]:
        callback = tile_progress(slide_id) if tile_progress is not None else None
        return analyze_slide(context, path, slide_id, folder, callback)

    try:
        return run_batch(slides, out_dir, analyze, context.settings(), overwrite, on_slide_done)
    finally:
        if manifest_path(out_dir).is_file():
            write_summary_csv(out_dir, read_or_start_manifest(out_dir))
