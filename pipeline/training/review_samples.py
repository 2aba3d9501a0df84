"""Training: reads batch folders' complete pathologist reviews (``<slide>/review.geojson``,
``pipeline.review.reviews``), produces training tiles from them: tumor tiles inside the
deposits reviewers confirmed, corrected or drew, hard negatives inside the deposits they
rejected (the model's false deposits), as ``PatchSample`` rows of the sample index.

Only complete reviews made on the slide's current report.json train; deposits left pending
are neither tumor nor negative. Tiles are read later from the slide files at the model's
µm/px like every other slide sample. Every review used is recorded (batch, slide, revision,
reviewer, SHA-256 of the file) for the checkpoint's card.

A complete review also says that no tumor lies outside the deposits that stand or are pending:
``review_normal_samples`` mines the rest of such a slide for hard negatives, the heatmap cells
the batch's model scored highest there (kind "review_normal").
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from pipeline.batch.folder import (
    REPORT_JSON,
    ManifestEntry,
    manifest_path,
    read_manifest,
    read_report,
    slide_folder,
)
from pipeline.detection.heatmap import load_heatmap
from pipeline.errors import ConfigError, HeatmapError
from pipeline.review.review_files import read_slide_review
from pipeline.review.reviews import (
    ADDED,
    CONFIRMED,
    CORRECTED,
    PENDING,
    REJECTED,
    REVIEW_GEOJSON,
    SlideReview,
    check_review_matches,
)
from pipeline.training.sampling import PatchSample, SampleKind, SlideRegions, sample_tumor_centres

TUMOR_DECISIONS = (CONFIRMED, CORRECTED, ADDED)


@dataclasses.dataclass(frozen=True)
class ReviewedSlide:
    """A slide with a complete review: the slide file, its result folder in the batch (where
    review.geojson and the heatmap are), the review and its file's SHA-256."""

    batch_dir: Path
    slide_path: Path
    review: SlideReview
    review_sha256: str
    folder: Path

    def provenance(self) -> str:
        """ "BATCH/slide revision N by REVIEWER (sha256 0123456789ab)" for the model card."""
        r = self.review
        return (
            f"{self.batch_dir}/{r.slide_id} revision {r.revision} by {r.reviewer or 'unknown'} "
            f"(sha256 {self.review_sha256[:12]})"
        )


def _slide_path(batch_dir: Path, slide_id: str, entry: ManifestEntry) -> Path:
    raw = entry.path
    if not raw:
        raise ConfigError(f"{manifest_path(batch_dir)}: slide {slide_id!r} records no slide file")
    path = Path(raw) if Path(raw).is_absolute() else batch_dir / raw
    if not path.is_file():
        raise ConfigError(
            f"{path}: the slide file of reviewed slide {slide_id!r} is missing; "
            "training reads its tiles from it - restore the file or drop the batch"
        )
    return path


def find_reviewed_slides(batch_dirs: Sequence[Path]) -> list[ReviewedSlide]:
    """Every slide of ``batch_dirs`` with a complete review of its current result.

    Raises ConfigError for a folder without manifest.json, a batch without any complete
    review, or a reviewed slide whose file is missing; ReviewError for an unreadable review
    or one made on an earlier result of the slide.
    """
    found: list[ReviewedSlide] = []
    for batch_dir in (Path(b) for b in batch_dirs):
        manifest = read_manifest(batch_dir, ConfigError, "pass a batch output folder to --reviews")
        before = len(found)
        for slide_id, entry in manifest.slides.items():
            folder = slide_folder(batch_dir, slide_id, entry)
            review = read_slide_review(folder) if entry.done else None
            if review is None or not review.complete:
                continue
            report = read_report(folder / REPORT_JSON, ConfigError, "")
            check_review_matches(review, report, folder / REVIEW_GEOJSON)
            digest = hashlib.sha256((folder / REVIEW_GEOJSON).read_bytes()).hexdigest()
            path = _slide_path(batch_dir, slide_id, entry)
            found.append(ReviewedSlide(batch_dir, path, review, digest, folder))
        if len(found) == before:
            raise ConfigError(
                f"{batch_dir}: no slide has a complete review; review slides with "
                "`micromet view --review` (mark them complete) before training on them"
            )
    return found


def _polygon(outline_xy: Any) -> Any:
    shape = shapely.Polygon(outline_xy)
    return shape if shape.is_valid else shapely.make_valid(shape)


def _union(review: SlideReview, decisions: Sequence[str]) -> Any:
    shapes = [_polygon(d.outline_xy) for d in review.deposits if d.decision in decisions]
    return shapely.union_all(shapes) if shapes else shapely.Polygon()


def _inside(polygon: Any, avoid: Any, count: int, rng: np.random.Generator) -> Any:
    if polygon.is_empty or polygon.area <= 0:
        return np.zeros((0, 2))
    return sample_tumor_centres(SlideRegions((polygon,), polygon, avoid), count, rng)


def review_tile_samples(
    slides: Sequence[ReviewedSlide], tiles_per_deposit: int, seed: int
) -> list[PatchSample]:
    """``tiles_per_deposit`` tile centres inside each decided deposit of each review (fewer
    for deposits too small to hold them apart from other deposits): label 1 ("tumor") in
    confirmed, corrected and drawn deposits, label 0 ("hard_negative") in rejected ones
    (away from any deposit that stands or is pending). All go to the training split."""
    samples: list[PatchSample] = []
    for slide in slides:
        review = slide.review
        rng = np.random.default_rng([seed, zlib.crc32(f"{slide.slide_path}".encode())])
        pending = _union(review, (PENDING,))
        standing = _union(review, TUMOR_DECISIONS)
        for deposit in review.deposits:
            kind: SampleKind
            if deposit.decision in TUMOR_DECISIONS:
                label, kind, avoid = 1, "tumor", pending
            elif deposit.decision == REJECTED:
                label, kind, avoid = 0, "hard_negative", shapely.union(standing, pending)
            else:
                continue
            centres = _inside(_polygon(deposit.outline_xy), avoid, tiles_per_deposit, rng)
            samples.extend(
                PatchSample(str(slide.slide_path), float(x), float(y), label, "train", kind)
                for x, y in centres
            )
    return samples


def _cell_centres(slide: ReviewedSlide) -> tuple[Any, Any, float]:
    """Level-0 centres and probabilities of the scored cells of the slide's heatmap, and its
    tile side in level-0 px."""
    try:
        heatmap = load_heatmap(slide.folder)
    except HeatmapError as exc:
        raise ConfigError(
            f"{exc}; mining a reviewed slide's tissue needs the heatmap of its result - "
            "re-run `micromet infer` on the batch or leave out --review-negatives-per-slide"
        ) from exc
    rows, cols = np.nonzero(np.isfinite(heatmap.probabilities))
    centres = heatmap.cell_center_xy(np.stack([rows, cols], axis=1).astype(np.float64))
    return centres, heatmap.probabilities[rows, cols], heatmap.tile_size_l0_px


def _outside(points: Any, shape: Any, margin_px: float) -> Any:
    if shape.is_empty:
        return np.ones(len(points), dtype=bool)
    return np.asarray(shapely.distance(points, shape)) > margin_px


def review_normal_samples(slides: Sequence[ReviewedSlide], per_slide: int) -> list[PatchSample]:
    """Hard negatives from the rest of each completely reviewed slide: the ``per_slide`` cells
    of its heatmap that the batch's model scored highest (ties in grid order), leaving out cells
    inside rejected deposits (``review_tile_samples`` samples those) and cells within one tile
    side of any deposit that stands (confirmed, corrected, drawn) or is pending, so no tile
    overlaps tumor the reviewer kept. Label 0, kind "review_normal", all in the training split.
    Raises ConfigError naming the folder when a reviewed slide has no readable heatmap."""
    samples: list[PatchSample] = []
    for slide in slides:
        centres, probabilities, tile_px = _cell_centres(slide)
        points = shapely.points(centres) if len(centres) else np.zeros(0, dtype=object)
        kept_tumor = _union(slide.review, (*TUMOR_DECISIONS, PENDING))
        rejected = _union(slide.review, (REJECTED,))
        free = _outside(points, kept_tumor, tile_px) & _outside(points, rejected, 0.0)
        chosen = np.flatnonzero(free)[np.argsort(-probabilities[free], kind="stable")[:per_slide]]
        samples.extend(
            PatchSample(str(slide.slide_path), float(x), float(y), 0, "train", "review_normal")
            for x, y in centres[np.sort(chosen)]
        )
    return samples


def describe_reviews(slides: Sequence[ReviewedSlide], samples: Sequence[PatchSample]) -> str:
    """For the model card: which reviews trained the model and what they gave."""
    from_reviews = {str(s.slide_path) for s in slides}

    def count(kind: str) -> int:
        return sum(1 for s in samples if s.slide in from_reviews and s.kind == kind)

    mined = count("review_normal")
    tissue = (
        f", {mined} hard negatives from the rest of the reviewed tissue (the heatmap's highest "
        "cells outside every deposit)"
        if mined
        else ""
    )
    return (
        f"pathologist reviews of {len(slides)} slide(s): {count('tumor')} tumor tiles in confirmed, "
        f"corrected and drawn deposits, {count('hard_negative')} hard negatives in rejected "
        f"deposits{tissue}; reviews {'; '.join(s.provenance() for s in slides)}"
    )
