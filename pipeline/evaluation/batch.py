"""Evaluation: reads a batch's predictions and the slides' references, produces every
metric that the available ground truth allows, and writes them to a folder.

Each metric runs only on complete input: the FROC needs outlines and detections for every
evaluated slide, the AUC tumor and normal slides, the kappa patient stages. A metric that
cannot run is listed in ``skipped`` with the reason; a slide left out of the evaluation
(failed, or without any ground truth) is listed in ``excluded``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import StagingConfig
from pipeline.errors import EvaluationError, StagingError
from pipeline.evaluation.froc import FrocConfig, FrocResult, evaluate_froc
from pipeline.evaluation.inputs import BatchPredictions, SlideReference
from pipeline.evaluation.kappa import (
    AgreementResult,
    evaluate_node_categories,
    evaluate_stage_kappa,
)
from pipeline.evaluation.sizes import (
    SizeMatchConfig,
    SizeResult,
    SlideDeposits,
    evaluate_deposit_sizes,
)
from pipeline.evaluation.slide_auc import AucResult, BootstrapConfig, evaluate_slide_auc
from pipeline.outputs import csv_safe_dict, csv_safe_row
from pipeline.staging import (
    UNSTAGEABLE,
    Category,
    assign_patients,
    patient_from_camelyon17_name,
    stage_patients,
)

logger = logging.getLogger(__name__)

EVALUATION_JSON = "evaluation.json"
FROC_CSV = "froc.csv"
FROC_PNG = "froc.png"
ROC_PNG = "roc.png"
DEPOSITS_CSV = "deposit_pairs.csv"


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Settings of every metric."""

    froc: FrocConfig = dataclasses.field(default_factory=FrocConfig)
    bootstrap: BootstrapConfig = dataclasses.field(default_factory=BootstrapConfig)
    sizes: SizeMatchConfig = dataclasses.field(default_factory=SizeMatchConfig)


@dataclasses.dataclass(frozen=True)
class BatchEvaluation:
    """Metrics of one batch; a metric is None when it is in skipped (metric -> reason).

    excluded: slide or patient id -> why it is not in the metrics. evaluated: slide ids used.
    """

    froc: FrocResult | None
    auc: AucResult | None
    nodes: AgreementResult | None
    stages: AgreementResult | None
    sizes: SizeResult | None
    skipped: dict[str, str]
    excluded: dict[str, str]
    evaluated: tuple[str, ...]


def _examples(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def _froc(batch: BatchPredictions, refs: Mapping[str, SlideReference],
          config: FrocConfig) -> FrocResult:
    no_outlines = [s for s, r in refs.items() if r.lesions is None]
    if no_outlines:
        raise EvaluationError(f"no tumor outlines for {_examples(no_outlines)}; pass --truth-dir")
    no_detections = [s for s in refs if batch.slides[s].detections is None]
    if no_detections:
        raise EvaluationError(f"detections.csv is missing for {_examples(no_detections)}")
    truths = [r.lesions for r in refs.values() if r.lesions is not None]
    detections = {s: batch.slides[s].detections or () for s in refs}
    return evaluate_froc(truths, detections, config)


def _auc(batch: BatchPredictions, refs: Mapping[str, SlideReference],
         config: BootstrapConfig) -> AucResult:
    labels = [int(r.is_tumor) for r in refs.values()]
    scores = [batch.slides[s].score for s in refs]
    return evaluate_slide_auc(labels, scores, config)


def _nodes(batch: BatchPredictions, refs: Mapping[str, SlideReference],
           node_reference: Mapping[str, str] | None) -> AgreementResult:
    if node_reference is not None:
        reference = {s: c for s, c in node_reference.items() if s in batch.slides}
    else:
        reference = {s: r.node_category for s, r in refs.items() if r.node_category is not None}
    if not reference:
        raise EvaluationError("no node category reference for the finished slides")
    return evaluate_node_categories(reference, {s: batch.slides[s].category for s in reference})


def _predicted_categories(batch: BatchPredictions) -> dict[str, Category]:
    try:
        return {s: Category(p.category.lower()) for s, p in batch.slides.items()}
    except ValueError as exc:
        raise EvaluationError(f"a report has an unknown category ({exc}); re-run it") from None


def _stages(batch: BatchPredictions, stage_reference: Mapping[str, str],
            node_reference: Mapping[str, str] | None, excluded: dict[str, str]) -> AgreementResult:
    """Patients staged from the batch as ``micromet stage`` does, against the reference.

    A patient is left out when one of its nodes failed, or when the node reference lists a
    node of it that the batch does not hold (staging the rest would understate it).
    """
    groups = assign_patients([*batch.slides, *batch.unavailable])
    expected: dict[str, set[str]] = {}
    for node in node_reference or {}:
        expected.setdefault(patient_from_camelyon17_name(node) or node, set()).add(node)
    rows = stage_patients(groups, _predicted_categories(batch), StagingConfig(),
                          batch.unavailable)
    predicted = {}
    for row in rows:
        missing = sorted(expected.get(row.patient, set()) - set(groups[row.patient]))
        if row.stage == UNSTAGEABLE:
            excluded[row.patient] = "unstageable: " + "; ".join(row.problems)
        elif missing:
            excluded[row.patient] = f"nodes missing from the batch: {_examples(missing)}"
        elif row.patient in stage_reference:
            predicted[row.patient] = row.stage
    for patient in stage_reference:
        if patient not in groups:
            excluded.setdefault(patient, "no slide of this patient in the batch")
    return evaluate_stage_kappa({p: stage_reference[p] for p in predicted}, predicted)


def _sizes(batch: BatchPredictions, refs: Mapping[str, SlideReference],
           config: SizeMatchConfig) -> SizeResult:
    slides = [SlideDeposits(s, batch.slides[s].mpp, r.deposits, batch.slides[s].deposits)
              for s, r in refs.items() if r.deposits is not None]
    if not slides:
        raise EvaluationError("no true deposits known (needs outlines in --truth-dir)")
    return evaluate_deposit_sizes(slides, config)


def evaluate_batch(
    batch: BatchPredictions,
    references: Mapping[str, SlideReference],
    config: EvaluationConfig,
    node_reference: Mapping[str, str] | None = None,
    stage_reference: Mapping[str, str] | None = None,
) -> BatchEvaluation:
    """Every metric the references allow over the batch's finished slides.

    references: slide id -> reference, for finished slides only. node_reference /
    stage_reference: slide -> category and patient -> pN stage from a labels CSV.
    Raises EvaluationError when no finished slide has a reference.
    """
    excluded = dict(batch.unavailable)
    for slide_id in batch.slides:
        if slide_id not in references:
            excluded[slide_id] = "no ground truth"
    refs = {s: references[s] for s in sorted(batch.slides) if s in references}
    if not refs and node_reference is None and stage_reference is None:
        raise EvaluationError(
            f"none of the {len(batch.slides)} finished slides has ground truth; pass --truth-dir "
            "with <slide_id>.xml / .truth.json files, --reference, or --stages"
        )
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    tasks: dict[str, Any] = {
        "froc": lambda: _froc(batch, refs, config.froc),
        "auc": lambda: _auc(batch, refs, config.bootstrap),
        "nodes": lambda: _nodes(batch, refs, node_reference),
        "sizes": lambda: _sizes(batch, refs, config.sizes),
    }
    if stage_reference is not None:
        tasks["stages"] = lambda: _stages(batch, stage_reference, node_reference, excluded)
    for name, task in tasks.items():
        try:
            results[name] = task()
        except (EvaluationError, StagingError) as exc:
            skipped[name] = str(exc)
            logger.info("%s not computed: %s", name, exc)
    return BatchEvaluation(
        froc=results.get("froc"), auc=results.get("auc"), nodes=results.get("nodes"),
        stages=results.get("stages"), sizes=results.get("sizes"), skipped=skipped,
        excluded=excluded, evaluated=tuple(refs),
    )


def _number(value: float) -> float | None:
    """JSON has no NaN: undefined values are written as null."""
    return None if math.isnan(value) else round(float(value), 6)


def _agreement_dict(result: AgreementResult) -> dict[str, Any]:
    return {"kappa": _number(result.kappa), "accuracy": _number(result.accuracy), "n": result.n,
            "labels": list(result.labels), "confusion": result.confusion.tolist()}


def evaluation_to_dict(evaluation: BatchEvaluation) -> dict[str, Any]:
    """A JSON-ready summary (curves are in the CSV and PNG files beside it)."""
    out: dict[str, Any] = {"evaluated_slides": list(evaluation.evaluated),
                           "excluded": evaluation.excluded, "skipped": evaluation.skipped}
    if evaluation.froc is not None:
        froc = evaluation.froc
        out["froc"] = {
            "score_challenge_rule": _number(froc.score_nearest),
            "score_interpolated": _number(froc.score_interpolated),
            "points": [{"fps_per_slide": t, "sensitivity_challenge_rule": _number(a),
                        "sensitivity_interpolated": _number(b)} for t, (a, b) in froc.points.items()],
            "n_slides": froc.n_slides, "n_lesions": froc.n_lesions,
            "n_itc_hits_ignored": sum(s.n_itc_hits for s in froc.per_slide),
        }
    if evaluation.auc is not None:
        auc = evaluation.auc
        out["auc"] = {"auc": _number(auc.auc), "ci_low": _number(auc.ci_low),
                      "ci_high": _number(auc.ci_high), "confidence_level": auc.confidence_level,
                      "n_tumor": auc.n_pos, "n_normal": auc.n_neg}
    if evaluation.nodes is not None:
        out["node_categories"] = _agreement_dict(evaluation.nodes)
    if evaluation.stages is not None:
        out["pn_stages"] = _agreement_dict(evaluation.stages)
    if evaluation.sizes is not None:
        sizes = evaluation.sizes
        out["deposit_sizes"] = {
            "n_pairs": len(sizes.pairs), "n_true": sizes.n_true, "n_predicted": sizes.n_predicted,
            "n_missed": sizes.n_missed, "n_spurious": sizes.n_spurious,
            "mean_abs_error_mm": _number(sizes.mean_abs_error_mm),
            "category_accuracy": _number(sizes.category_accuracy),
            "category_confusion": sizes.category_confusion.tolist(),
        }
    return out


def _froc_csv(froc: FrocResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["threshold", "fps_per_slide", "sensitivity"])
    for t, f, s in zip(froc.thresholds, froc.fps_per_slide, froc.sensitivities, strict=True):
        writer.writerow(csv_safe_row(["inf" if np.isinf(t) else f"{t:.6g}", f"{f:.6g}", f"{s:.6g}"]))
    return buffer.getvalue()


def _pairs_csv(sizes: SizeResult) -> str:
    buffer = io.StringIO()
    fields = [f.name for f in dataclasses.fields(sizes.pairs[0])] if sizes.pairs else ["slide_id"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_safe_dict(dataclasses.asdict(pair)) for pair in sizes.pairs)
    return buffer.getvalue()


def write_evaluation(evaluation: BatchEvaluation, out_dir: Path) -> list[Path]:
    """Write evaluation.json, and froc.csv/.png, roc.png, deposit_pairs.csv when computed.

    Returns the written paths. Raises OutputError when the folder cannot be written.
    """
    from pipeline.evaluation.plots import plot_froc, plot_roc
    from pipeline.outputs import atomic_write_json, atomic_write_text

    written = []
    if evaluation.froc is not None:
        atomic_write_text(out_dir / FROC_CSV, _froc_csv(evaluation.froc))
        plot_froc(evaluation.froc, out_dir / FROC_PNG)
        written += [out_dir / FROC_CSV, out_dir / FROC_PNG]
    if evaluation.auc is not None:
        plot_roc(evaluation.auc, out_dir / ROC_PNG)
        written.append(out_dir / ROC_PNG)
    if evaluation.sizes is not None:
        atomic_write_text(out_dir / DEPOSITS_CSV, _pairs_csv(evaluation.sizes))
        written.append(out_dir / DEPOSITS_CSV)
    atomic_write_json(out_dir / EVALUATION_JSON, evaluation_to_dict(evaluation))
    written.append(out_dir / EVALUATION_JSON)
    return written
