"""Evaluation: reads batch outputs and ground-truth files, produces the metric inputs.

Batch side (docs/batch_folder.md, read through ``pipeline.batch.folder``): ``manifest.json``,
and per finished slide ``<output_dir>/report.json`` (category, score, slide size and mpp,
deposits) and ``detections.csv`` (confidence, X, Y in level-0 px).
Ground-truth side: a folder of per-slide files named after the slide id
(``<id>.truth.json`` from the synthetic generator, or ``<id>.xml`` / ``.geojson`` / ``.json``
outlines), a CAMELYON16 reference CSV (which slides are tumor or normal), and a
CAMELYON17 labels CSV (patient pN stages and node categories).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.batch.folder import REPORT_JSON, read_manifest, read_report, report_deposits, report_path
from pipeline.errors import EvaluationError
from pipeline.evaluation.froc import Detection, SlideTruth
from pipeline.evaluation.sizes import PredictedDeposit, TrueDeposit
from pipeline.outputs import require_regular_file

logger = logging.getLogger(__name__)

# Ground-truth file names tried for a slide id, in this order.
TRUTH_SUFFIXES = (".truth.json", ".xml", ".geojson", ".json")
_CONFIDENCE_COLUMNS = ("confidence", "probability", "p", "prob")
_X_COLUMNS = ("x", "x_px", "x coordinate")
_Y_COLUMNS = ("y", "y_px", "y coordinate")


@dataclasses.dataclass(frozen=True)
class SlidePrediction:
    """What micromet wrote for one finished slide.

    size_wh_px: level-0 (width, height). detections: None when detections.csv is missing.
    """

    slide_id: str
    category: str
    score: float
    mpp: float
    size_wh_px: tuple[int, int]
    deposits: tuple[PredictedDeposit, ...]
    detections: tuple[Detection, ...] | None


@dataclasses.dataclass(frozen=True)
class BatchPredictions:
    """Finished slides, and slide id -> why the others have no result."""

    slides: dict[str, SlidePrediction]
    unavailable: dict[str, str]


@dataclasses.dataclass(frozen=True)
class SlideReference:
    """The ground truth of one slide.

    lesions: outlines for the FROC (None when only the tumor/normal label is known).
    deposits: true deposits for size accuracy (None when unknown). node_category: the
    slide's reference category (None when unknown). source: where it came from.
    """

    slide_id: str
    is_tumor: bool
    lesions: SlideTruth | None
    deposits: tuple[TrueDeposit, ...] | None
    node_category: str | None
    source: str


def _float(value: Any, path: Path, field: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise EvaluationError(f"{path}: {field} is {value!r}; expected a number. Re-run the slide")
    return number


def _slide_facts(report: Mapping[str, Any], path: Path) -> tuple[float, tuple[int, int]]:
    """mpp and level-0 (width, height): top-level keys, else the report's "slide" facts."""
    slide = report.get("slide")
    facts: Mapping[str, Any] = slide if isinstance(slide, dict) else {}
    mpp = report.get("mpp", facts.get("mpp"))
    dims = report.get("dimensions", facts.get("dimensions"))
    if not (isinstance(dims, list | tuple) and len(dims) == 2):
        raise EvaluationError(f"{path}: no slide dimensions [width, height]; re-run the slide")
    width, height = (int(_float(v, path, "dimensions")) for v in dims)
    return _float(mpp, path, "mpp"), (width, height)


def _column(header: list[str], names: tuple[str, ...], path: Path) -> int:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    raise EvaluationError(
        f"{path}: header {header} has no column {names[0]!r}; expected 'confidence,X,Y'"
    )


def read_detections_csv(path: Path) -> list[Detection]:
    """CAMELYON16 detections: rows "confidence,X,Y" (level-0 px), with or without a header.

    Raises EvaluationError naming the file and line for an unreadable file or a bad row.
    """
    require_regular_file(path, "detections CSV", EvaluationError)
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{path}: cannot read the detections ({exc})") from exc
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    columns: tuple[int, ...] = (0, 1, 2)
    first_line = 1
    if rows and not _is_number(rows[0][0]):
        columns = tuple(_column(rows[0], names, path)
                        for names in (_CONFIDENCE_COLUMNS, _X_COLUMNS, _Y_COLUMNS))
        rows, first_line = rows[1:], 2
    detections = []
    for line, row in enumerate(rows, start=first_line):
        try:
            values = [float(row[c]) for c in columns]
        except (IndexError, ValueError):
            raise EvaluationError(
                f"{path}: line {line}: {row} is not 'confidence,X,Y' numbers"
            ) from None
        detections.append(Detection(values[0], values[1], values[2]))
    return detections


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_slide_prediction(slide_id: str, folder: Path) -> SlidePrediction:
    """A finished slide's report.json and detections.csv from its output folder.

    Raises EvaluationError for a missing or malformed report or detections file.
    """
    path = folder / REPORT_JSON
    report = read_report(path, EvaluationError, "")
    mpp, size = _slide_facts(report, path)
    deposits = report_deposits(report, path, "deposits", EvaluationError)
    detections_path = folder / "detections.csv"
    detections = None
    if detections_path.is_file():
        detections = tuple(read_detections_csv(detections_path))
    return SlidePrediction(
        slide_id=slide_id,
        category=str(report.get("category")),
        score=_float(report.get("score"), path, "score"),
        mpp=mpp,
        size_wh_px=size,
        deposits=tuple(
            PredictedDeposit(d.centroid_x_px, d.centroid_y_px, d.max_diameter_mm, str(d.category))
            for d in deposits
        ),
        detections=detections,
    )


def read_batch(batch_dir: Path) -> BatchPredictions:
    """Every slide of a batch folder: finished ones read, the others listed with a reason.

    Raises EvaluationError for a missing folder or manifest, or a malformed report.
    """
    manifest = read_manifest(
        batch_dir, EvaluationError, "pass the output folder of 'micromet infer' (it holds manifest.json)"
    )
    done: dict[str, SlidePrediction] = {}
    unavailable: dict[str, str] = {}
    for slide_id, entry in sorted(manifest.slides.items()):
        report = report_path(batch_dir, slide_id, entry)
        if not entry.done:
            unavailable[slide_id] = entry.unavailable_reason()
        elif not report.is_file():
            unavailable[slide_id] = f"{report} is missing"
        else:
            done[slide_id] = read_slide_prediction(slide_id, report.parent)
    return BatchPredictions(done, unavailable)


def read_camelyon16_reference_csv(path: Path) -> dict[str, bool]:
    """Slide id -> is tumor, from a CSV whose first two columns are slide and Tumor/Normal.

    The CAMELYON16 test reference ("slide,class,subtype,metastasis_size") and the
    headerless challenge layout ("Test_001,Tumor,...") both read.
    Raises EvaluationError naming the file and line for any other value.
    """
    from pipeline.staging import slide_key

    require_regular_file(path, "reference CSV", EvaluationError)
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EvaluationError(f"{path}: cannot read the reference CSV ({exc})") from exc
    labels: dict[str, bool] = {}
    first_line: dict[str, int] = {}
    for line, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip():
            continue
        value = row[1].strip().lower()
        if line == 1 and value not in ("tumor", "normal"):
            continue  # header
        if value not in ("tumor", "normal"):
            raise EvaluationError(f"{path}: line {line}: class {row[1]!r}; expected Tumor or Normal")
        key = slide_key(row[0])
        if key in first_line:
            raise EvaluationError(
                f"{path}: line {line}: slide {row[0].strip()!r} is listed again (first on line "
                f"{first_line[key]}); keep one row per slide"
            )
        first_line[key] = line
        labels[key] = value == "tumor"
    if not labels:
        raise EvaluationError(f"{path}: no 'slide,Tumor|Normal' rows found")
    return labels


def read_camelyon17_stages_csv(path: Path) -> dict[str, str]:
    """Patient -> pN stage from the CAMELYON17 labels CSV ("patient,stage"; patient rows
    read "patient_004.zip,pN1", node rows are skipped). Empty when there is no patient row.

    Raises EvaluationError for a missing or unreadable file.
    """
    require_regular_file(path, "stage CSV", EvaluationError)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EvaluationError(f"{path}: cannot read the stage CSV ({exc})") from exc
    stages: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        name = str(row.get("patient", "")).strip()
        if not name.lower().endswith(".zip"):
            continue
        patient = name.removesuffix(".zip")
        if patient in first_line:
            raise EvaluationError(
                f"{path}: line {line}: patient {name!r} is listed again (first on line "
                f"{first_line[patient]}); keep one stage per patient"
            )
        first_line[patient] = line
        stages[patient] = str(row.get("stage", "")).strip()
    return stages


def find_truth_file(truth_dir: Path, slide_id: str) -> Path | None:
    """The first of <slide_id> + TRUTH_SUFFIXES that exists in truth_dir, else None."""
    for suffix in TRUTH_SUFFIXES:
        candidate = truth_dir / f"{slide_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _read_synthetic_truth(path: Path) -> Any:
    from pipeline.errors import ConfigError
    from pipeline.synthetic.generate import read_truth

    try:
        return read_truth(path)
    except ConfigError as exc:
        raise EvaluationError(str(exc)) from exc
    except (RecursionError, OverflowError, AttributeError) as exc:
        raise EvaluationError(
            f"{path}: not a readable synthetic truth file ({type(exc).__name__}); "
            "write it again with 'micromet synth'"
        ) from None


def _check_synthetic_truth(path: Path, truth: Any, mpp: float) -> None:
    from pipeline.config import MAX_PLAUSIBLE_MPP, MIN_PLAUSIBLE_MPP
    from pipeline.errors import AnnotationError
    from pipeline.slides.annotations import MAX_COORDINATE_PX, check_coordinates

    if not (math.isfinite(mpp) and MIN_PLAUSIBLE_MPP <= mpp <= MAX_PLAUSIBLE_MPP):
        raise EvaluationError(
            f"{path}: mpp is {mpp!r}; expected {MIN_PLAUSIBLE_MPP} to {MAX_PLAUSIBLE_MPP} µm/px "
            "- write the truth file again with 'micromet synth'"
        )
    if not (0 < truth.width_px <= MAX_COORDINATE_PX and 0 < truth.height_px <= MAX_COORDINATE_PX):
        raise EvaluationError(
            f"{path}: slide size {truth.width_px} x {truth.height_px} px is not a positive size "
            f"up to {MAX_COORDINATE_PX:.0e} px - write the truth file again with 'micromet synth'"
        )
    for deposit in truth.deposits:
        vertices = deposit.vertices_xy
        if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) < 3:
            raise EvaluationError(
                f"{path}: deposit {deposit.id} has vertices of shape {vertices.shape}; "
                "expected (N >= 3, 2) level-0 px"
            )
        try:
            check_coordinates(path, f"deposit {deposit.id}", vertices)
        except AnnotationError as exc:
            raise EvaluationError(str(exc)) from None
        if not (math.isfinite(deposit.diameter_mm) and deposit.diameter_mm >= 0):
            raise EvaluationError(
                f"{path}: deposit {deposit.id} has diameter_mm {deposit.diameter_mm!r}; expected "
                "a non-negative number"
            )


def _synthetic_reference(path: Path, slide_id: str) -> SlideReference:
    from pipeline.slides.annotations import warn_outlines_outside

    truth = _read_synthetic_truth(path)
    mpp = truth.mpp if truth.mpp is not None else truth.render_mpp
    _check_synthetic_truth(path, truth, mpp)
    outlines = [d.vertices_xy for d in truth.deposits]
    warn_outlines_outside(path, outlines, (truth.width_px, truth.height_px))
    deposits = tuple(TrueDeposit(str(d.id), d.vertices_xy, d.diameter_mm, d.category)
                     for d in truth.deposits)
    return SlideReference(
        slide_id=slide_id,
        is_tumor=bool(deposits),
        lesions=SlideTruth(slide_id, outlines, [], (truth.width_px, truth.height_px), mpp),
        deposits=deposits,
        node_category=truth.node_category,
        source=str(path),
    )


def _annotation_reference(path: Path, prediction: SlidePrediction) -> SlideReference:
    from pipeline.slides.annotations import max_feret_diameter_px, read_annotations, warn_outlines_outside
    from pipeline.staging import categorize_deposit, slide_category

    annotations = read_annotations(path)
    tumors = [a for a in annotations if a.label == "tumor"]
    warn_outlines_outside(path, [t.vertices_xy for t in tumors], prediction.size_wh_px)
    excludes = [a.vertices_xy for a in annotations if a.label == "exclude"]
    excludes += [hole for a in tumors for hole in a.holes_xy]
    mpp = prediction.mpp
    deposits = []
    for index, tumor in enumerate(tumors):
        diameter_mm = max_feret_diameter_px(tumor.vertices_xy) * mpp / 1000.0
        deposits.append(TrueDeposit(tumor.name or str(index), tumor.vertices_xy, diameter_mm,
                                    str(categorize_deposit(diameter_mm))))
    category = slide_category(categorize_deposit(d.max_diameter_mm) for d in deposits)
    return SlideReference(
        slide_id=prediction.slide_id,
        is_tumor=bool(tumors),
        lesions=SlideTruth(prediction.slide_id, [t.vertices_xy for t in tumors], excludes,
                           prediction.size_wh_px, mpp),
        deposits=tuple(deposits),
        node_category=str(category),
        source=str(path),
    )


def _normal_reference(prediction: SlidePrediction, source: str) -> SlideReference:
    return SlideReference(
        slide_id=prediction.slide_id,
        is_tumor=False,
        lesions=SlideTruth(prediction.slide_id, [], [], prediction.size_wh_px, prediction.mpp),
        deposits=(),
        node_category="negative",
        source=source,
    )


def read_slide_reference(
    prediction: SlidePrediction, truth_dir: Path | None, labels: Mapping[str, bool] | None
) -> SlideReference | None:
    """The ground truth of one predicted slide, or None when nothing is known about it.

    A truth file in truth_dir wins; a slide labelled Normal in labels without a file has no
    lesions; a slide labelled Tumor without a file is an error when truth_dir is given (its
    outlines are missing) and label-only otherwise. Raises EvaluationError when a file and
    the label disagree, or a file is malformed.
    """
    slide_id = prediction.slide_id
    label = labels.get(slide_id) if labels is not None else None
    path = find_truth_file(truth_dir, slide_id) if truth_dir is not None else None
    if path is not None:
        reference = (_synthetic_reference(path, slide_id) if path.name.endswith(".truth.json")
                     else _annotation_reference(path, prediction))
        if label is not None and label != reference.is_tumor:
            raise EvaluationError(
                f"{path}: slide {slide_id!r} is {'Tumor' if label else 'Normal'} in the reference "
                f"CSV but this file has {'no' if label else ''} tumor outlines; fix one of them"
            )
        return reference
    if label is False:
        return _normal_reference(prediction, "reference CSV")
    if label is True and truth_dir is not None:
        raise EvaluationError(
            f"slide {slide_id!r} is Tumor in the reference CSV but {truth_dir} has no "
            f"{' / '.join(slide_id + s for s in TRUTH_SUFFIXES)}; add its outlines"
        )
    if label is True:
        return SlideReference(slide_id, True, None, None, None, "reference CSV")
    return None
