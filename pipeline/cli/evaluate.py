"""``micromet evaluate``: challenge metrics of a batch folder against ground truth.

Reads BATCH_DIR (manifest.json, each slide's report.json and detections.csv) and the
ground truth given (--truth-dir, --reference, --stages), computes every metric the ground
truth allows (CAMELYON16 FROC and slide AUC, CAMELYON17 kappa, node categories, deposit
sizes), writes OUT/evaluation.json with curves and plots beside it, and prints a summary.
Definitions: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cli.values import seed_int
from pipeline.errors import ConfigError, EvaluationError

if TYPE_CHECKING:
    from pipeline.evaluation.batch import BatchEvaluation, EvaluationConfig
    from pipeline.evaluation.inputs import BatchPredictions, SlideReference
    from pipeline.evaluation.reviews import ReviewScore


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="FROC, AUC, kappa and size accuracy of a batch against ground truth",
        description=(
            "Evaluate a batch output folder against ground truth: CAMELYON16 lesion FROC and "
            "slide AUC, CAMELYON17 pN-stage kappa, node-category and deposit-size accuracy. "
            "Each metric runs when its ground truth is given. Definitions: docs/evaluation.md."
        ),
    )
    parser.add_argument("--batch", type=Path, required=True, metavar="BATCH_DIR",
                        help="batch output folder (with manifest.json)")
    parser.add_argument("--truth-dir", type=Path, metavar="DIR",
                        help="per-slide ground truth: <slide_id>.xml (ASAP), .geojson, .json "
                             "or .truth.json (synthetic)")
    parser.add_argument("--reference", type=Path, metavar="CSV",
                        help="CAMELYON16 reference CSV 'slide,Tumor|Normal,...' (normal slides "
                             "have no outline file)")
    parser.add_argument("--stages", type=Path, metavar="CSV",
                        help="CAMELYON17 labels CSV 'patient,stage' (patient and node rows), "
                             "or 'slide,category'")
    parser.add_argument("--tolerance-um", type=float, default=100.0,
                        help="deposit matching: largest centroid-to-outline distance (µm)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap resamples for the AUC interval")
    parser.add_argument("--seed", type=seed_int, default=0, help="bootstrap seed")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for evaluation.json, froc.csv, froc.png, roc.png")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a summary")
    parser.add_argument("--reviews", action="store_true",
                        help="also score the model against the pathologists' reviews in BATCH_DIR "
                             "(deposits rejected, corrected, added; per slide and per batch, in "
                             "OUT/reviews.json and reviews.csv); alone, only that")
    parser.set_defaults(run=run)


def _config(args: argparse.Namespace) -> EvaluationConfig:
    from pipeline.evaluation.batch import EvaluationConfig
    from pipeline.evaluation.froc import FrocConfig
    from pipeline.evaluation.sizes import SizeMatchConfig
    from pipeline.evaluation.slide_auc import BootstrapConfig

    try:
        return EvaluationConfig(
            froc=FrocConfig(),
            bootstrap=BootstrapConfig(n_resamples=args.bootstrap, seed=args.seed),
            sizes=SizeMatchConfig(tolerance_um=args.tolerance_um),
        )
    except ValueError as exc:
        raise ConfigError(f"--bootstrap / --tolerance-um: {exc}") from exc


def _references(batch: BatchPredictions, truth_dir: Path | None,
                reference_csv: Path | None) -> dict[str, SlideReference]:
    from pipeline.evaluation.inputs import read_camelyon16_reference_csv, read_slide_reference

    if truth_dir is not None and not truth_dir.is_dir():
        raise EvaluationError(f"{truth_dir}: --truth-dir is not a folder")
    labels = read_camelyon16_reference_csv(reference_csv) if reference_csv else None
    if truth_dir is not None and labels is None:
        _check_every_slide_has_truth(batch, truth_dir)
    references = {}
    for slide_id, prediction in batch.slides.items():
        reference = read_slide_reference(prediction, truth_dir, labels)
        if reference is not None:
            references[slide_id] = reference
    if reference_csv is not None and labels is not None:
        _say_which_slides_the_reference_lacks(batch, references, reference_csv, labels)
    return references


def _say_which_slides_the_reference_lacks(
    batch: BatchPredictions, references: dict[str, SlideReference], reference_csv: Path,
    labels: dict[str, bool],
) -> None:
    """Finished slides that --reference does not list: an error when it lists none of them
    (the ids do not match), else one warning line naming them (they are left out)."""
    missing = sorted(s for s in batch.slides if s not in references)
    if not missing:
        return
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    if not references:
        listed = ", ".join(sorted(labels)[:5]) + (" ..." if len(labels) > 5 else "")
        raise EvaluationError(
            f"{reference_csv}: lists none of the {len(batch.slides)} finished slides of the batch "
            f"({shown}); it lists {listed or 'no slide'}. Its first column must hold the batch's "
            "slide ids (file names without their suffix)"
        )
    print(
        f"micromet evaluate: warning: {reference_csv} does not list {len(missing)} finished "
        f"slide(s) ({shown}); they are left out of the FROC and AUC",
        file=sys.stderr,
    )


def _check_every_slide_has_truth(batch: BatchPredictions, truth_dir: Path) -> None:
    """Without --reference, a finished slide without a truth file may be a normal slide:
    leaving it out would compute the FROC and AUC without its false positives."""
    from pipeline.evaluation.inputs import TRUTH_SUFFIXES, find_truth_file

    missing = sorted(s for s in batch.slides if find_truth_file(truth_dir, s) is None)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise EvaluationError(
            f"{truth_dir}: no {' / '.join(TRUTH_SUFFIXES)} file for {len(missing)} finished "
            f"slide(s) ({shown}); if they are normal slides pass --reference CSV listing them "
            "as Normal, otherwise add their outlines"
        )


def _stage_references(
    stages_csv: Path | None,
) -> tuple[dict[str, str] | None, dict[str, str] | None]:
    """(node id -> category, patient -> pN stage) from --stages; None where absent."""
    from pipeline.evaluation.inputs import read_camelyon17_stages_csv
    from pipeline.staging import read_node_categories_csv

    if stages_csv is None:
        return None, None
    nodes = {slide: str(category) for slide, category in read_node_categories_csv(stages_csv).items()}
    return nodes, read_camelyon17_stages_csv(stages_csv) or None


def run(args: argparse.Namespace) -> int:
    """Read, evaluate, write, print."""
    from pipeline.evaluation.batch import evaluate_batch, evaluation_to_dict, write_evaluation
    from pipeline.evaluation.inputs import read_batch
    from pipeline.evaluation.reviews import format_review_score, review_score_to_dict, write_review_score
    from pipeline.outputs import check_writable_folder

    config = _config(args)
    if args.reviews and not (args.truth_dir or args.reference or args.stages):
        return _run_reviews_only(args)
    batch = read_batch(args.batch)
    references = _references(batch, args.truth_dir, args.reference)
    node_reference, stage_reference = _stage_references(args.stages)
    evaluation = evaluate_batch(batch, references, config, node_reference, stage_reference)
    review_score = _review_score(args)
    check_writable_folder(args.out)  # only now: bad input leaves no output folder behind
    write_evaluation(evaluation, args.out)
    reviews = {}
    if review_score is not None:
        write_review_score(review_score, args.out)
        reviews = {"reviews": review_score_to_dict(review_score)}
    if args.json:
        print(json.dumps({**evaluation_to_dict(evaluation), **reviews}, indent=2))
    else:
        print(format_summary(evaluation, args.out))
        if review_score is not None:
            print(format_review_score(review_score))
    for metric, reason in evaluation.skipped.items():
        print(f"micromet evaluate: {metric} not computed: {reason}", file=sys.stderr)
    return 0


def _review_score(args: argparse.Namespace) -> ReviewScore | None:
    from pipeline.evaluation.reviews import score_reviews

    return score_reviews(args.batch) if args.reviews else None


def _run_reviews_only(args: argparse.Namespace) -> int:
    """--reviews without other ground truth: the review scores only."""
    from pipeline.evaluation.reviews import (
        format_review_score,
        review_score_to_dict,
        score_reviews,
        write_review_score,
    )
    from pipeline.outputs import check_writable_folder

    score = score_reviews(args.batch)
    check_writable_folder(args.out)
    write_review_score(score, args.out)
    if args.json:
        print(json.dumps({"reviews": review_score_to_dict(score)}, indent=2))
    else:
        print(format_review_score(score))
    return 0


def format_summary(evaluation: BatchEvaluation, out_dir: Path) -> str:
    """A few lines: one per computed metric, then what was left out."""
    lines = [f"evaluated {len(evaluation.evaluated)} slide(s); results in {out_dir}"]
    if evaluation.froc is not None:
        f = evaluation.froc
        lines.append(f"FROC      {f.score_nearest:.3f} (challenge rule), {f.score_interpolated:.3f} "
                     f"(interpolated); {f.n_lesions} lesions on {f.n_slides} slides")
    if evaluation.auc is not None:
        a = evaluation.auc
        lines.append(f"slide AUC {a.auc:.3f} ({100 * a.confidence_level:.0f}% CI {a.ci_low:.3f}-"
                     f"{a.ci_high:.3f}); {a.n_pos} tumor, {a.n_neg} normal slides")
    if evaluation.stages is not None:
        s = evaluation.stages
        lines.append(f"pN kappa  {s.kappa:.3f} (quadratic); accuracy {s.accuracy:.3f}; "
                     f"{s.n} patients")
    if evaluation.nodes is not None:
        n = evaluation.nodes
        lines.append(f"nodes     accuracy {n.accuracy:.3f}; kappa {n.kappa:.3f}; {n.n} slides")
    if evaluation.sizes is not None:
        z = evaluation.sizes
        lines.append(f"sizes     {len(z.pairs)} matched, mean |error| {z.mean_abs_error_mm:.3f} mm, "
                     f"category accuracy {z.category_accuracy:.3f}; {z.n_missed} missed, "
                     f"{z.n_spurious} spurious")
    if evaluation.excluded:
        lines.append(f"left out  {len(evaluation.excluded)} slide(s)/patient(s); see evaluation.json")
    return "\n".join(lines)
