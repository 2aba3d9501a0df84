"""Evaluation: reads tumor outlines and lesion detections, produces the CAMELYON16 lesion FROC.

The definition follows the CAMELYON16 challenge (Bejnordi et al., JAMA 2017; the
``Evaluation_FROC.py`` scripts of the Radboud Computational Pathology Group):

- Tumor outlines (level-0 px, minus exclusion outlines) are rasterised at a low
  level (downsample 32, "level 5"), each outline grown outward by half of 75 µm
  with a Euclidean distance transform (75 µm is added to every diameter, about 5
  tumor cells), holes filled, and the result labelled with 8-connectivity.
- A labelled region whose major axis is under 200 + 75 = 275 µm is an isolated
  tumor cell cluster (ITC): a detection on it is neither a true nor a false positive
  and it is not counted as a lesion to find.
- A detection (confidence, X, Y in level-0 px) in a lesion is a hit; only the
  highest-confidence hit of each lesion counts, further hits are ignored.
  A detection outside every region is a false positive, and so is every detection
  on a slide without tumor.
- The FROC curve is the overall sensitivity against the mean number of false
  positives per slide as the confidence threshold falls; the score is the mean
  sensitivity at 1/4, 1/2, 1, 2, 4 and 8 false positives per slide.

Unlike the challenge scripts, which hard-code 0.243 µm/px, the growth and the ITC
cut-off use each slide's own mpp. docs/evaluation.md lists every difference.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import EvaluationError
from pipeline.slides.annotation_geometry import polygon_mask

logger = logging.getLogger(__name__)

# CAMELYON16 evaluation constants (Bejnordi et al., JAMA 2017, and the challenge's
# Evaluation_FROC.py): mask level 5 of a 2x pyramid, 75 µm growth, ITC under 200 µm,
# sensitivity read at these average false-positive counts per slide.
CAMELYON16_DOWNSAMPLE = 32.0
CAMELYON16_GROW_UM = 75.0
CAMELYON16_ITC_MAX_DIAMETER_UM = 200.0
CAMELYON16_TARGET_FPS_PER_SLIDE = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclasses.dataclass(frozen=True)
class FrocConfig:
    """Settings of the lesion-level FROC; the defaults are the CAMELYON16 ones.

    downsample: level-0 px per evaluation-mask px (CAMELYON16: 32).
    grow_um: added to every lesion diameter before labelling (half of it on each side).
    itc_max_diameter_um: lesions whose grown major axis is under this + grow_um are ITCs.
    target_fps_per_slide: average false positives per slide where sensitivity is read.
    """

    downsample: float = CAMELYON16_DOWNSAMPLE
    grow_um: float = CAMELYON16_GROW_UM
    itc_max_diameter_um: float = CAMELYON16_ITC_MAX_DIAMETER_UM
    target_fps_per_slide: tuple[float, ...] = CAMELYON16_TARGET_FPS_PER_SLIDE

    def __post_init__(self) -> None:
        if not (1.0 <= self.downsample <= 1024.0):
            raise ValueError(f"downsample={self.downsample!r} is out of range; allowed 1 to 1024")
        if not (0.0 <= self.grow_um <= 1000.0):
            raise ValueError(f"grow_um={self.grow_um!r} is out of range; allowed 0 to 1000")
        if not (0.0 <= self.itc_max_diameter_um <= 10000.0):
            raise ValueError(
                f"itc_max_diameter_um={self.itc_max_diameter_um!r} is out of range; "
                "allowed 0 to 10000"
            )
        targets = self.target_fps_per_slide
        if not targets or any(not (0.0 < t < math.inf) for t in targets):
            raise ValueError(
                f"target_fps_per_slide={targets!r} is invalid; allowed: a non-empty tuple "
                "of positive finite numbers"
            )


@dataclasses.dataclass(frozen=True)
class Detection:
    """One detected lesion: a confidence and a point (x_px, y_px) in level-0 px."""

    confidence: float
    x_px: float
    y_px: float


@dataclasses.dataclass(frozen=True)
class SlideTruth:
    """The reference of one slide.

    lesion_polygons_xy: tumor outlines, each an (N, 2) float array of level-0 (x, y) px;
    empty for a slide without tumor. exclude_polygons_xy: regions cut out of the tumor
    outlines (CAMELYON16 "_2" groups). size_wh_px: level-0 (width, height). mpp: µm/px.
    """

    slide_id: str
    lesion_polygons_xy: Sequence[NDArray[np.float64]]
    exclude_polygons_xy: Sequence[NDArray[np.float64]]
    size_wh_px: tuple[int, int]
    mpp: float


@dataclasses.dataclass(frozen=True)
class LesionMask:
    """Labelled, grown lesions of one slide at the evaluation level.

    labels_rc: int32 labels in a window of the evaluation mask (0 = no lesion); the window's
    top-left is origin_rc (row, col in mask px). itc_labels: labels that are ITCs.
    downsample: level-0 px per mask px.
    """

    labels_rc: NDArray[np.int32]
    origin_rc: tuple[int, int]
    itc_labels: frozenset[int]
    downsample: float

    @property
    def n_regions(self) -> int:
        """Number of labelled regions, ITCs included."""
        return int(self.labels_rc.max()) if self.labels_rc.size else 0

    @property
    def n_lesions(self) -> int:
        """Number of lesions to find (regions that are not ITCs)."""
        return self.n_regions - len(self.itc_labels)

    def label_at(self, x_px: float, y_px: float) -> int:
        """The region label under a level-0 point (0 outside every region)."""
        row = math.floor(y_px / self.downsample) - self.origin_rc[0]
        col = math.floor(x_px / self.downsample) - self.origin_rc[1]
        rows, cols = self.labels_rc.shape
        if 0 <= row < rows and 0 <= col < cols:
            return int(self.labels_rc[row, col])
        return 0


@dataclasses.dataclass(frozen=True)
class SlideHits:
    """Detections of one slide sorted into hits and false positives.

    lesion_confidences: per lesion to find, the confidence of its best hit, NaN if missed.
    fp_confidences: confidences of the false positives. n_itc_hits / n_repeat_hits:
    detections ignored because they fell on an ITC or on an already hit lesion.
    """

    slide_id: str
    lesion_confidences: NDArray[np.float64]
    fp_confidences: NDArray[np.float64]
    n_itc: int
    n_itc_hits: int
    n_repeat_hits: int

    @property
    def n_lesions(self) -> int:
        """Lesions to find on this slide."""
        return int(self.lesion_confidences.size)

    @property
    def n_hit(self) -> int:
        """Lesions with at least one detection."""
        return int(np.count_nonzero(~np.isnan(self.lesion_confidences)))


@dataclasses.dataclass(frozen=True)
class FrocResult:
    """The FROC curve and its scores.

    fps_per_slide, sensitivities, thresholds: the curve, one point per distinct confidence
    from the highest down, after a first point (0, 0) at threshold +inf; fps_per_slide and
    sensitivities never decrease along it. score_nearest: the challenge rule (sensitivity at
    the first point whose average FPs reach each target). score_interpolated: linear
    interpolation along the curve. points: target FPs per slide -> (challenge-rule
    sensitivity, interpolated sensitivity). per_slide: the hit counts of every slide.
    """

    fps_per_slide: NDArray[np.float64]
    sensitivities: NDArray[np.float64]
    thresholds: NDArray[np.float64]
    score_nearest: float
    score_interpolated: float
    points: dict[float, tuple[float, float]]
    n_slides: int
    n_lesions: int
    per_slide: tuple[SlideHits, ...]


def _as_vertices(polygon: NDArray[np.float64], slide_id: str, what: str) -> NDArray[np.float64]:
    vertices = np.asarray(polygon, dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 2 or vertices.shape[0] < 3:
        raise EvaluationError(
            f"slide {slide_id!r}: a {what} polygon has shape {vertices.shape}; expected (N, 2) "
            "level-0 (x, y) px with N >= 3 - fix or drop that outline in the ground truth"
        )
    if not np.all(np.isfinite(vertices)):
        raise EvaluationError(
            f"slide {slide_id!r}: a {what} polygon has non-finite coordinates - fix the outline"
        )
    return vertices


def _check_truth(truth: SlideTruth) -> None:
    width_px, height_px = truth.size_wh_px
    if width_px <= 0 or height_px <= 0:
        raise EvaluationError(
            f"slide {truth.slide_id!r}: size {truth.size_wh_px} px is not positive; "
            "pass the level-0 (width, height) of the slide"
        )
    if not (math.isfinite(truth.mpp) and truth.mpp > 0):
        raise EvaluationError(
            f"slide {truth.slide_id!r}: mpp={truth.mpp!r} is not a positive number; "
            "pass the slide's level-0 µm/px"
        )


def _grow_radius_px(mpp: float, config: FrocConfig) -> float:
    """Growth on each side of an outline, in evaluation-mask px."""
    return (config.grow_um / 2.0) / (mpp * config.downsample)


def _window_rc(
    polygons: Sequence[NDArray[np.float64]], mask_shape: tuple[int, int], margin_px: int,
    downsample: float,
) -> tuple[int, int, int, int]:
    """Rows r0:r1, cols c0:c1 of the evaluation mask that hold every lesion after growth.

    Working in this window gives the same labels as the full mask: every foreground pixel
    and every pixel the growth can reach lies inside it, and background touching the window
    border reaches the slide border through background, so no hole is created or lost.
    """
    stacked = np.concatenate(polygons, axis=0) / downsample
    c0 = max(0, math.floor(float(stacked[:, 0].min())) - margin_px)
    r0 = max(0, math.floor(float(stacked[:, 1].min())) - margin_px)
    c1 = min(mask_shape[1], math.floor(float(stacked[:, 0].max())) + margin_px + 1)
    r1 = min(mask_shape[0], math.floor(float(stacked[:, 1].max())) + margin_px + 1)
    return r0, r1, c0, c1


def _itc_labels(labels_rc: NDArray[np.int32], mpp: float, config: FrocConfig) -> frozenset[int]:
    from skimage.measure import regionprops

    cutoff_um = config.itc_max_diameter_um + config.grow_um
    um_per_mask_px = mpp * config.downsample
    return frozenset(
        int(region.label)
        for region in regionprops(labels_rc)
        if float(region.axis_major_length) * um_per_mask_px < cutoff_um
    )


def build_lesion_mask(truth: SlideTruth, config: FrocConfig) -> LesionMask:
    """Rasterise, grow, fill and label a slide's tumor outlines at the evaluation level.

    Returns a LesionMask (labels in a window around the lesions) whose ITC labels are
    those with a grown major axis under config.itc_max_diameter_um + config.grow_um.
    Raises EvaluationError on a malformed polygon, size or mpp.
    """
    from scipy.ndimage import binary_fill_holes, distance_transform_edt
    from skimage.measure import label

    _check_truth(truth)
    lesions = [_as_vertices(p, truth.slide_id, "tumor") for p in truth.lesion_polygons_xy]
    excludes = [_as_vertices(p, truth.slide_id, "exclusion") for p in truth.exclude_polygons_xy]
    empty = LesionMask(np.zeros((0, 0), np.int32), (0, 0), frozenset(), config.downsample)
    if not lesions:
        return empty
    width_px, height_px = truth.size_wh_px
    mask_shape = (math.ceil(height_px / config.downsample), math.ceil(width_px / config.downsample))
    radius_px = _grow_radius_px(truth.mpp, config)
    r0, r1, c0, c1 = _window_rc(lesions, mask_shape, math.ceil(radius_px) + 2, config.downsample)
    if r1 <= r0 or c1 <= c0:
        logger.warning("slide %s: every tumor outline lies outside the slide", truth.slide_id)
        return empty
    shape, origin = (r1 - r0, c1 - c0), (r0, c0)
    # Each pixel tests the level-0 point at its top-left corner: ASAP drew the masks at level 0
    # and its pyramid keeps the top-left pixel of every 2 x 2 block (docs/evaluation.md).
    tumor = polygon_mask(lesions, shape, origin, config.downsample, holes_xy=excludes,
                         point_offset_px=0.0)
    if not tumor.any():
        return empty
    distance_px = distance_transform_edt(~tumor)
    grown = binary_fill_holes(distance_px < radius_px)
    labels_rc = label(grown, connectivity=2).astype(np.int32)
    return LesionMask(labels_rc, origin, _itc_labels(labels_rc, truth.mpp, config),
                      config.downsample)


def _check_detections(slide_id: str, size_wh_px: tuple[int, int],
                      detections: Sequence[Detection]) -> None:
    width_px, height_px = size_wh_px
    for det in detections:
        if not all(math.isfinite(v) for v in (det.confidence, det.x_px, det.y_px)):
            raise EvaluationError(
                f"slide {slide_id!r}: detection {det} has a non-finite value; "
                "every confidence, X and Y must be a number"
            )
        if not (0 <= det.x_px < width_px and 0 <= det.y_px < height_px):
            raise EvaluationError(
                f"slide {slide_id!r}: detection at ({det.x_px}, {det.y_px}) px lies outside the "
                f"slide (0 <= X < {width_px}, 0 <= Y < {height_px}); detections must be in "
                "level-0 px of this slide"
            )


def score_slide_detections(
    truth: SlideTruth, detections: Sequence[Detection], config: FrocConfig
) -> SlideHits:
    """Sort one slide's detections into lesion hits, false positives and ignored hits.

    Raises EvaluationError if a detection lies outside the slide or the truth is malformed.
    """
    _check_truth(truth)
    _check_detections(truth.slide_id, truth.size_wh_px, detections)
    mask = build_lesion_mask(truth, config)
    best = np.full(mask.n_regions + 1, np.nan)
    false_positives: list[float] = []
    n_itc_hits = n_repeat_hits = 0
    for det in detections:
        region = mask.label_at(det.x_px, det.y_px)
        if region == 0:
            false_positives.append(det.confidence)
        elif region in mask.itc_labels:
            n_itc_hits += 1
        elif np.isnan(best[region]):
            best[region] = det.confidence
        else:
            n_repeat_hits += 1
            best[region] = max(best[region], det.confidence)
    keep = [r for r in range(1, mask.n_regions + 1) if r not in mask.itc_labels]
    return SlideHits(
        slide_id=truth.slide_id,
        lesion_confidences=best[keep],
        fp_confidences=np.asarray(false_positives, dtype=np.float64),
        n_itc=len(mask.itc_labels),
        n_itc_hits=n_itc_hits,
        n_repeat_hits=n_repeat_hits,
    )


def froc_curve(
    slides: Sequence[SlideHits],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The FROC curve: (fps_per_slide, sensitivities, thresholds), each of length K + 1.

    Point 0 is (0, 0) at threshold +inf; point k counts every hit and false positive with
    confidence >= the k-th highest distinct confidence. Raises EvaluationError when there is
    no slide or no lesion to find.
    """
    if not slides:
        raise EvaluationError("FROC needs at least one slide; got none")
    lesions = np.concatenate([s.lesion_confidences for s in slides])
    n_lesions = lesions.size
    if n_lesions == 0:
        raise EvaluationError(
            f"FROC needs at least one lesion that is not an ITC; the {len(slides)} slides have "
            "none - check that the tumor slides' ground truth was found"
        )
    hits = np.sort(lesions[~np.isnan(lesions)])
    fps = np.sort(np.concatenate([s.fp_confidences for s in slides]))
    thresholds = np.unique(np.concatenate([hits, fps]))[::-1]
    # count of values >= t in an ascending array is len - searchsorted(t, "left")
    n_fp = fps.size - np.searchsorted(fps, thresholds, side="left")
    n_tp = hits.size - np.searchsorted(hits, thresholds, side="left")
    fps_per_slide = np.concatenate([[0.0], n_fp / len(slides)])
    sensitivities = np.concatenate([[0.0], n_tp / n_lesions])
    return fps_per_slide, sensitivities, np.concatenate([[np.inf], thresholds])


def sensitivity_challenge_rule(
    fps_per_slide: NDArray[np.float64], sensitivities: NDArray[np.float64], target_fps: float
) -> float:
    """Sensitivity at the first curve point whose average FPs per slide reach target_fps.

    This is the rule of the CAMELYON16 evaluation script's ``compute_score``: along the
    curve from the strictest threshold, take the first point with FPs >= target (a
    ``bisect_left``); if no point reaches the target, the last (most permissive) point.
    """
    index = bisect.bisect_left(fps_per_slide.tolist(), target_fps)
    return float(sensitivities[min(index, len(sensitivities) - 1)])


def sensitivity_interpolated(
    fps_per_slide: NDArray[np.float64], sensitivities: NDArray[np.float64], target_fps: float
) -> float:
    """Sensitivity at target_fps by linear interpolation along the curve.

    Between the last point with FPs <= target and the next one (the convention of
    ``numpy.interp``, as NCRF and MONAI apply it); past the last point, its sensitivity.
    """
    if target_fps >= fps_per_slide[-1]:
        return float(sensitivities[-1])
    j = int(np.searchsorted(fps_per_slide, target_fps, side="right")) - 1
    x0, x1 = fps_per_slide[j], fps_per_slide[j + 1]
    y0, y1 = sensitivities[j], sensitivities[j + 1]
    return float(y0 + (y1 - y0) * (target_fps - x0) / (x1 - x0))


def evaluate_froc(
    truths: Sequence[SlideTruth],
    detections: Mapping[str, Sequence[Detection]],
    config: FrocConfig,
) -> FrocResult:
    """CAMELYON16 lesion-level FROC over a set of slides.

    truths: every evaluated slide, tumor and normal. detections: slide_id -> detections;
    a slide missing from it has no detections (its lesions are missed).
    Raises EvaluationError for detections of an unknown slide, detections outside their
    slide, duplicate slide ids, or a set without any lesion to find.
    """
    ids = [t.slide_id for t in truths]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise EvaluationError(f"slide ids appear twice in the ground truth: {duplicates}")
    unknown = sorted(set(detections) - set(ids))
    if unknown:
        raise EvaluationError(
            f"detections for slides without ground truth: {unknown[:10]}; known slides: "
            f"{sorted(ids)[:10]}{' ...' if len(ids) > 10 else ''} - add their reference or "
            "drop their detections"
        )
    per_slide = tuple(
        score_slide_detections(t, detections.get(t.slide_id, ()), config) for t in truths
    )
    fps, sens, thresholds = froc_curve(per_slide)
    points = {
        target: (sensitivity_challenge_rule(fps, sens, target),
                 sensitivity_interpolated(fps, sens, target))
        for target in config.target_fps_per_slide
    }
    return FrocResult(
        fps_per_slide=fps,
        sensitivities=sens,
        thresholds=thresholds,
        score_nearest=float(np.mean([p[0] for p in points.values()])),
        score_interpolated=float(np.mean([p[1] for p in points.values()])),
        points=points,
        n_slides=len(per_slide),
        n_lesions=sum(s.n_lesions for s in per_slide),
        per_slide=per_slide,
    )
