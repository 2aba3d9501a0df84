"""CAMELYON16 lesion-level FROC on drawn lesions of known size.

Geometry used throughout: mpp 0.25 µm/px and the challenge's downsample 32, so one
evaluation-mask pixel is 8 µm; lesions grow by 37.5 µm on each side (4.69 mask px) and
a grown region is an ITC when its major axis is under 275 µm.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from pipeline.config import CAMELYON_LEVEL0_MPP
from pipeline.errors import EvaluationError
from pipeline.evaluation.froc import (
    Detection,
    FrocConfig,
    SlideTruth,
    build_lesion_mask,
    evaluate_froc,
    froc_curve,
    score_slide_detections,
    sensitivity_challenge_rule,
    sensitivity_interpolated,
)

MPP = 0.25
CONFIG = FrocConfig()


def square(x0: float, y0: float, side_px: float) -> NDArray[np.float64]:
    return np.array(
        [[x0, y0], [x0 + side_px, y0], [x0 + side_px, y0 + side_px], [x0, y0 + side_px]],
        dtype=np.float64,
    )


def rectangle(x0: float, y0: float, x1: float, y1: float) -> NDArray[np.float64]:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def disc(cx: float, cy: float, diameter_px: float, n: int = 64) -> NDArray[np.float64]:
    angle = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    r = diameter_px / 2.0
    return np.stack([cx + r * np.cos(angle), cy + r * np.sin(angle)], axis=1)


def tumor_slide(
    slide_id: str,
    lesions: list[NDArray[np.float64]],
    excludes: list[NDArray[np.float64]] | None = None,
    mpp: float = MPP,
    size: tuple[int, int] = (20000, 16000),
) -> SlideTruth:
    return SlideTruth(slide_id, lesions, excludes or [], size, mpp)


def normal_slide(slide_id: str) -> SlideTruth:
    return SlideTruth(slide_id, [], [], (20000, 16000), MPP)


def det(confidence: float, x: float, y: float) -> Detection:
    return Detection(confidence=confidence, x_px=x, y_px=y)


# 1000 µm and 750 µm squares (macro-sized) on a 5 x 4 mm slide
LESION_A = square(2000, 2000, 4000)
LESION_B = square(12000, 8000, 3000)
LESION_C = square(4000, 4000, 4000)


def test_perfect_detections_score_one() -> None:
    truths = [tumor_slide("t1", [LESION_A, LESION_B]), tumor_slide("t2", [LESION_C]), normal_slide("n1")]
    detections = {"t1": [det(0.9, 4000, 4000), det(0.8, 13500, 9500)], "t2": [det(0.7, 6000, 6000)]}
    result = evaluate_froc(truths, detections, CONFIG)
    assert result.n_lesions == 3
    assert result.score_nearest == 1.0
    assert result.score_interpolated == 1.0
    assert result.fps_per_slide[-1] == 0.0


def test_every_detection_on_a_normal_slide_is_a_false_positive() -> None:
    truths = [tumor_slide("t1", [LESION_A]), normal_slide("n1"), normal_slide("n2")]
    # on n1 these points lie where t1 has its lesion: a normal slide has no lesion to hit
    detections = {"n1": [det(0.9, 4000, 4000), det(0.5, 100, 100)], "n2": [det(0.7, 3000, 3000)]}
    result = evaluate_froc(truths, detections, CONFIG)
    assert [s.fp_confidences.size for s in result.per_slide] == [0, 2, 1]
    np.testing.assert_allclose(result.fps_per_slide, [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_array_equal(result.sensitivities, [0, 0, 0, 0])
    assert result.score_nearest == 0.0
    assert result.score_interpolated == 0.0


def test_no_detections_give_zero_sensitivity() -> None:
    result = evaluate_froc([tumor_slide("t1", [LESION_A]), normal_slide("n1")], {}, CONFIG)
    np.testing.assert_array_equal(result.fps_per_slide, [0.0])
    np.testing.assert_array_equal(result.sensitivities, [0.0])
    assert result.score_nearest == 0.0
    assert result.score_interpolated == 0.0


def test_itc_sized_lesion_is_not_counted_and_its_hit_is_ignored() -> None:
    itc = disc(15000, 4000, 400)  # 100 µm across, 175 µm once grown: an ITC
    truth = tumor_slide("t1", [LESION_A, itc])
    hits = score_slide_detections(truth, [det(0.9, 15000, 4000), det(0.6, 4000, 4000)], CONFIG)
    assert hits.n_lesions == 1
    assert hits.n_itc == 1
    assert hits.n_itc_hits == 1
    assert hits.fp_confidences.size == 0
    np.testing.assert_array_equal(hits.lesion_confidences, [0.6])


def test_itc_cutoff_uses_the_grown_major_axis() -> None:
    # 180 µm grows to about 255 µm (< 275: ITC); 240 µm grows to about 315 µm (a lesion)
    small = build_lesion_mask(tumor_slide("s", [disc(8000, 8000, 720)]), CONFIG)
    large = build_lesion_mask(tumor_slide("l", [disc(8000, 8000, 960)]), CONFIG)
    assert (small.n_regions, small.n_lesions) == (1, 0)
    assert (large.n_regions, large.n_lesions) == (1, 1)


def test_outline_smaller_than_a_mask_pixel_counts_only_where_it_holds_a_sample_point() -> None:
    # 3 µm specks, far below one 8 µm mask pixel. As in the ASAP-drawn masks, mask pixel
    # (r, c) is the level-0 point (32 c, 32 r): a speck around (10016, 10016) holds one and
    # becomes an ITC; one around (10000, 10000) holds none and leaves no region.
    on_grid = disc(10016, 10016, 12)
    hits = score_slide_detections(tumor_slide("t1", [LESION_A, on_grid]), [det(0.5, 10016, 10016)], CONFIG)
    assert (hits.n_itc, hits.n_itc_hits, hits.fp_confidences.size) == (1, 1, 0)
    between = disc(10000, 10000, 12)
    hits = score_slide_detections(tumor_slide("t1", [LESION_A, between]), [det(0.5, 10000, 10000)], CONFIG)
    assert (hits.n_itc, hits.n_itc_hits, hits.fp_confidences.size) == (0, 0, 1)


def test_repeated_hits_on_one_lesion_count_once_with_the_best_confidence() -> None:
    truth = tumor_slide("t1", [LESION_A])
    detections = [det(0.4, 3000, 3000), det(0.9, 4000, 4000), det(0.7, 5000, 5000)]
    hits = score_slide_detections(truth, detections, CONFIG)
    assert hits.n_repeat_hits == 2
    assert hits.fp_confidences.size == 0
    np.testing.assert_array_equal(hits.lesion_confidences, [0.9])
    result = evaluate_froc([truth], {"t1": detections}, CONFIG)
    # the ignored hits add no threshold: the curve is (0, 0) then (0, 1) at 0.9
    np.testing.assert_array_equal(result.thresholds, [np.inf, 0.9])
    np.testing.assert_array_equal(result.sensitivities, [0.0, 1.0])


def test_detection_in_the_grown_border_is_a_hit() -> None:
    # 25 µm outside the outline: inside the 37.5 µm growth
    hits = score_slide_detections(tumor_slide("t1", [LESION_A]), [det(0.5, 6100, 4000)], CONFIG)
    assert hits.n_hit == 1
    # 100 µm outside: a false positive
    hits = score_slide_detections(tumor_slide("t1", [LESION_A]), [det(0.5, 6400, 4000)], CONFIG)
    assert hits.n_hit == 0
    assert hits.fp_confidences.size == 1


def test_hand_computed_froc() -> None:
    """Three slides, three lesions (A, B on t1; C on t2), one normal slide.

    t1: 0.9 on A, 0.8 on A (repeat, ignored), 0.6 off-lesion (FP), 0.3 on B
    t2: 0.7 off-lesion (FP), 0.2 on C
    n1: 0.95 (FP), 0.1 (FP)
    Lesion confidences A 0.9, B 0.3, C 0.2; FPs 0.95, 0.7, 0.6, 0.1.
    Thresholds from high to low and the curve (FPs / 3 slides, TPs / 3 lesions):
      inf (0, 0); 0.95 (1/3, 0); 0.9 (1/3, 1/3); 0.7 (2/3, 1/3); 0.6 (1, 1/3);
      0.3 (1, 2/3); 0.2 (1, 1); 0.1 (4/3, 1)
    Challenge rule, first point with FPs >= target:
      1/4 -> (1/3, 0) = 0; 1/2 -> (2/3, 1/3); 1 -> (1, 1/3); 2, 4, 8 -> past the end,
      last point = 1. Mean (0 + 1/3 + 1/3 + 1 + 1 + 1) / 6 = 11/18.
    Interpolated: 1/4 between (0, 0) and (1/3, 0) = 0; 1/2 between (1/3, 1/3) and
      (2/3, 1/3) = 1/3; 1 between (1, 1) and (4/3, 1) = 1; 2, 4, 8 = 1.
      Mean (0 + 1/3 + 1 + 1 + 1 + 1) / 6 = 13/18.
    """
    truths = [tumor_slide("t1", [LESION_A, LESION_B]), tumor_slide("t2", [LESION_C]), normal_slide("n1")]
    detections = {
        "t1": [det(0.9, 4000, 4000), det(0.8, 3000, 5000), det(0.6, 18000, 1000), det(0.3, 13500, 9500)],
        "t2": [det(0.7, 18000, 15000), det(0.2, 6000, 6000)],
        "n1": [det(0.95, 4000, 4000), det(0.1, 10, 10)],
    }
    result = evaluate_froc(truths, detections, CONFIG)
    np.testing.assert_allclose(result.fps_per_slide, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1, 1, 4 / 3])
    np.testing.assert_allclose(result.sensitivities, [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(result.thresholds, [np.inf, 0.95, 0.9, 0.7, 0.6, 0.3, 0.2, 0.1])
    assert result.points[1.0] == pytest.approx((1 / 3, 1.0))
    assert result.score_nearest == pytest.approx(11 / 18)
    assert result.score_interpolated == pytest.approx(13 / 18)


def test_mpp_sets_the_growth_so_close_lesions_merge_or_not() -> None:
    # 200 px apart: 50 µm at 0.25 µm/px (< 75 µm, the grown borders meet),
    # 100 µm at 0.5 µm/px (they stay apart)
    pair = [rectangle(2000, 2000, 6000, 6000), rectangle(6200, 2000, 10000, 6000)]
    fine = build_lesion_mask(tumor_slide("t", pair, mpp=0.25), CONFIG)
    coarse = build_lesion_mask(tumor_slide("t", pair, mpp=0.5), CONFIG)
    assert fine.n_lesions == 1
    assert coarse.n_lesions == 2
    assert fine.label_at(3000, 3000) == fine.label_at(9000, 3000) != 0
    assert coarse.label_at(3000, 3000) != coarse.label_at(9000, 3000)


def test_exclusion_outline_splits_a_lesion_and_its_area_is_negative() -> None:
    # a 2.5 mm band with a 500 µm excluded strip across its middle
    band = rectangle(1000, 2000, 11000, 4000)
    strip = rectangle(5000, 1500, 7000, 4500)
    truth = tumor_slide("t1", [band], [strip])
    assert build_lesion_mask(truth, CONFIG).n_lesions == 2
    hits = score_slide_detections(truth, [det(0.5, 6000, 3000)], CONFIG)
    assert hits.fp_confidences.size == 1


def test_lesion_touching_the_slide_corner_is_found() -> None:
    truth = tumor_slide("t1", [rectangle(0, 0, 3000, 3000)], size=(9000, 7001))
    mask = build_lesion_mask(truth, CONFIG)
    assert mask.n_lesions == 1
    assert mask.label_at(0, 0) != 0


def test_detection_outside_the_slide_names_the_slide() -> None:
    truths = [tumor_slide("tumor_007", [LESION_A])]
    with pytest.raises(EvaluationError, match="tumor_007"):
        evaluate_froc(truths, {"tumor_007": [det(0.5, 20000, 100)]}, CONFIG)
    with pytest.raises(EvaluationError, match="tumor_007"):
        evaluate_froc(truths, {"tumor_007": [det(0.5, 100, -1)]}, CONFIG)


def test_non_finite_detection_is_rejected() -> None:
    with pytest.raises(EvaluationError, match="non-finite"):
        evaluate_froc([tumor_slide("t1", [LESION_A])], {"t1": [det(math.nan, 1, 1)]}, CONFIG)


def test_detections_for_an_unknown_slide_are_rejected() -> None:
    with pytest.raises(EvaluationError, match="without ground truth"):
        evaluate_froc([tumor_slide("t1", [LESION_A])], {"t9": [det(0.5, 1, 1)]}, CONFIG)


def test_duplicate_slide_ids_are_rejected() -> None:
    with pytest.raises(EvaluationError, match="twice"):
        evaluate_froc([normal_slide("a"), normal_slide("a")], {}, CONFIG)


def test_froc_without_any_lesion_is_an_error() -> None:
    with pytest.raises(EvaluationError, match="at least one lesion"):
        evaluate_froc([normal_slide("n1"), tumor_slide("t1", [disc(9000, 9000, 200)])], {}, CONFIG)
    with pytest.raises(EvaluationError, match="at least one slide"):
        froc_curve([])


def test_malformed_truth_is_rejected() -> None:
    with pytest.raises(EvaluationError, match="shape"):
        build_lesion_mask(tumor_slide("t1", [np.array([[0.0, 0.0], [5.0, 5.0]])]), CONFIG)
    with pytest.raises(EvaluationError, match="mpp"):
        build_lesion_mask(tumor_slide("t1", [LESION_A], mpp=0.0), CONFIG)
    with pytest.raises(EvaluationError, match="size"):
        build_lesion_mask(tumor_slide("t1", [LESION_A], size=(0, 10)), CONFIG)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("downsample", 0.5),
        ("grow_um", -1.0),
        ("itc_max_diameter_um", -5.0),
        ("target_fps_per_slide", ()),
        ("target_fps_per_slide", (0.0, 1.0)),
    ],
)
def test_bad_froc_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        FrocConfig(**{field: value})  # type: ignore[arg-type]


def test_challenge_rule_takes_the_first_point_at_or_past_the_target() -> None:
    fps = np.array([0.0, 0.0, 0.5, 0.5, 1.0, 3.0])
    sens = np.array([0.0, 0.2, 0.3, 0.5, 0.6, 0.9])
    assert sensitivity_challenge_rule(fps, sens, 0.25) == 0.3
    assert sensitivity_challenge_rule(fps, sens, 0.5) == 0.3  # first of the tied points
    assert sensitivity_challenge_rule(fps, sens, 2.0) == 0.9
    assert sensitivity_challenge_rule(fps, sens, 8.0) == 0.9  # past the end: last point


def test_interpolation_follows_the_curve_and_holds_after_its_end() -> None:
    fps = np.array([0.0, 0.0, 0.5, 0.5, 1.0, 3.0])
    sens = np.array([0.0, 0.2, 0.3, 0.5, 0.6, 0.9])
    assert sensitivity_interpolated(fps, sens, 0.25) == pytest.approx(0.25)
    assert sensitivity_interpolated(fps, sens, 0.5) == pytest.approx(0.5)
    assert sensitivity_interpolated(fps, sens, 2.0) == pytest.approx(0.75)
    assert sensitivity_interpolated(fps, sens, 8.0) == pytest.approx(0.9)
    for target in (0.25, 0.75, 2.0, 8.0):  # same as numpy.interp, the NCRF/MONAI convention
        assert sensitivity_interpolated(fps, sens, target) == pytest.approx(
            float(np.interp(target, fps, sens))
        )


@pytest.mark.shared_data
def test_real_camelyon16_outlines_give_lesions_and_itcs(shared_data: Path) -> None:
    outlines = shared_data / "annotations" / "camelyon16_ncrf_json" / "Tumor_001.json"
    data = json.loads(outlines.read_text())
    lesions = [np.asarray(p["vertices"], np.float64) for p in data["positive"]]
    excludes = [np.asarray(p["vertices"], np.float64) for p in data["negative"]]
    stacked = np.concatenate(lesions)
    size = (int(stacked[:, 0].max()) + 1000, int(stacked[:, 1].max()) + 1000)
    truth = SlideTruth("Tumor_001", lesions, excludes, size, CAMELYON_LEVEL0_MPP)
    mask = build_lesion_mask(truth, CONFIG)
    assert mask.n_lesions >= 1
    # a detection on every lesion finds them all; one on every ITC changes nothing
    detections = []
    for region in range(1, mask.n_regions + 1):
        rows, cols = np.nonzero(mask.labels_rc == region)
        x = (cols[0] + mask.origin_rc[1] + 0.5) * CONFIG.downsample
        y = (rows[0] + mask.origin_rc[0] + 0.5) * CONFIG.downsample
        detections.append(det(0.5, x, y))
    result = evaluate_froc([truth], {"Tumor_001": detections}, CONFIG)
    assert result.score_nearest == 1.0
    assert result.per_slide[0].n_itc_hits == mask.n_regions - mask.n_lesions


@pytest.mark.slow
@pytest.mark.shared_data
def test_all_camelyon16_training_outlines_give_400_itcs_and_497_lesions(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The figures of docs/evaluation.md: the ASAP-drawn masks of the 110 training tumor
    slides, their outlines read (and repaired) as ``micromet evaluate`` reads them."""
    from pipeline.slides.annotations import read_camelyon16_json

    n_itc = n_lesions = 0
    paths = sorted((shared_data / "annotations" / "camelyon16_ncrf_json").glob("Tumor_*.json"))
    assert len(paths) == 110
    with caplog.at_level(logging.ERROR):  # repaired outlines are expected here
        for path in paths:
            annotations = read_camelyon16_json(path)
            lesions = [a.vertices_xy for a in annotations if a.label == "tumor"]
            excludes = [a.vertices_xy for a in annotations if a.label == "exclude"]
            excludes += [hole for a in annotations if a.label == "tumor" for hole in a.holes_xy]
            stacked = np.concatenate(lesions)
            size = (int(stacked[:, 0].max()) + 1000, int(stacked[:, 1].max()) + 1000)
            truth = SlideTruth(path.stem, lesions, excludes, size, CAMELYON_LEVEL0_MPP)
            mask = build_lesion_mask(truth, CONFIG)
            n_itc += len(mask.itc_labels)
            n_lesions += mask.n_lesions
    assert (n_itc, n_lesions) == (400, 497)
