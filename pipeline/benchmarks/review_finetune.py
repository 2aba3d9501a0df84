"""Learning from reviews on real tissue (issue 24, item 4): does fine-tuning on reviews of the
false deposits of one part of a source's tumor-free tissue remove them on another part?

    python scripts/bench_review_finetune.py run [--work runs/review_finetune] [--epochs 2 ...]

Steps (each resumable: a step whose output is in --work is skipped):
1. slides: the node-scale split's dev part (data/pcam_places.csv; the default model never
   trained on it) keeps its tumor-free patches (793 PCam normals, 252 hard normals) and splits
   its places in two halves, seeded and stratified by whether a place holds a hard normal: a
   REVIEWED half and a HELD-OUT half (no place in both). Each half becomes two pyramidal TIFF
   slides at 0.972 µm/px on white glass: a feathered mosaic of its hard normals
   (``<half>_hard``) and one of all its normals (``<half>_mixed``).
2. infer-reviewed, review: ``micromet infer`` (default model, default settings, --mpp given,
   --accept-qc-failures: the mixed mosaics fail the lymph-node QC check) on the reviewed half;
   a complete review of each slide rejecting every deposit and every candidate for review,
   written with the project's review API (pipeline.review.reviews).
3. train: ``micromet train --reviews <that batch> --init-model models/default.pt`` plus the
   node-scale TRAIN part's patches (tumor and normal; never dev or test tumor) so the model does
   not forget; then ``finetuned.pt`` = those weights with the default card's decision rules
   (threshold, stride, seed, confirm, size calibration), since a fine-tuned card gets none.
   Training changes the default's primary model only; with --keep-partner (the default when
   the default card names a partner) ``finetuned.pt``'s card also names the default's partner,
   copied beside it unchanged, so the fine-tuned model is judged as a pair, as the default is.
   --finetune-partner fine-tunes the partner too, alike, and pairs the two fine-tuned models.
4. measure: ``micromet infer`` of both models on the held-out and reviewed halves (deposits
   and candidates per mm²), and ``scripts/bench_node_scale.py score/report --part dev`` for the
   micro and ITC-size sensitivity of both (the default model's dev heatmaps are reused from
   --default-node-work when they were scored with the same file, SHA-256 checked; both parts'
   surfaces are checked to be the same, pixel for pixel).
``summary.json`` and a Markdown summary are written to --work. ``--swap`` runs the second fold
(the half called "heldout" is reviewed and the half called "reviewed" held out), in its own --work.
The slides are ``review_finetune_slides``'s, the fine-tuning ``review_finetune_train``'s;
``scripts/bench_review_finetune.py`` is the command line.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.batch.folder import REPORT_JSON, read_manifest, read_report, slide_folder
from pipeline.benchmarks.review_finetune_report import markdown, rates, removed_fraction
from pipeline.benchmarks.review_finetune_slides import (
    HALVES,
    HARD_SOURCE,
    MODEL_MPP,
    PLACES_CSV,
    REPO,
    NormalPatch,
    build_slides,
    dev_normals,
    split_places,
)
from pipeline.benchmarks.review_finetune_train import (
    DEFAULT_MODEL,
    RULE_FIELDS,
    finetune,
    keep_partner_file,
    micromet,
    run_command,
    with_default_rules,
)
from pipeline.config import SHARED_DATA_DIR
from pipeline.errors import ConfigError
from pipeline.review.review_files import write_review
from pipeline.review.reviews import REJECTED, STATUS_COMPLETE, SlideReview, apply_edit, new_review

__all__ = [
    "DEFAULT_MODEL",
    "REVIEWER",
    "RULE_FIELDS",
    "batch_findings",
    "default_has_partner",
    "keep_partner_file",
    "main",
    "measure",
    "reject_everything",
    "review_batch",
    "roles",
    "run",
    "same_surfaces",
    "with_default_rules",
]

REVIEWER = "bench_review_finetune (every deposit is false: tumor-free tissue)"
TileScorer = Callable[[NDArray[np.uint8]], NDArray[np.float32]]


# --- step 2: infer and reviews --------------------------------------------------------------


def infer(work: Path, model: Path, half: str, name: str) -> Path:
    """``micromet infer`` of one half's slides with ``model``; the batch folder."""
    out = work / "infer" / f"{name}_{half}"
    if (out / "done").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    slides = sorted(str(p) for p in (work / "slides" / half).glob("*.tiff"))
    run_command(
        micromet(
            "infer",
            *slides,
            "--out",
            str(out),
            "--model",
            str(model),
            "--mpp",
            f"{MODEL_MPP}",
            "--accept-qc-failures",  # the mixed mosaics fail the lymph-node check (lymphoid score)
            "--precision",
            "fp32",  # "auto" probes per process on CPUs with native bf16: runs would not repeat
        ),
        work / "infer" / f"{name}_{half}.log",
    )
    (out / "done").write_text("", encoding="utf-8")
    return out


def reject_everything(review: SlideReview, reviewer: str) -> SlideReview:
    """The review with every deposit and candidate rejected, then marked complete."""
    for deposit in review.deposits:
        edit = {"op": "decide", "key": deposit.key, "decision": REJECTED}
        review = apply_edit(review, edit, review.revision, reviewer)
    note = "tumor-free tissue: every deposit and candidate is false"
    return apply_edit(
        review, {"op": "status", "status": STATUS_COMPLETE, "note": note}, review.revision, reviewer
    )


def review_batch(batch_dir: Path, reviewer: str = REVIEWER) -> dict[str, int]:
    """Write a complete review rejecting everything for every finished slide of a batch;
    returns slide id -> deposits and candidates rejected. Raises ConfigError for a folder
    that is not a batch or holds no finished slide."""
    manifest = read_manifest(batch_dir, ConfigError, "pass the batch folder of `micromet infer`")
    rejected: dict[str, int] = {}
    for slide_id, entry in manifest.slides.items():
        if not entry.done:
            continue
        folder = slide_folder(batch_dir, slide_id, entry)
        report = read_report(folder / REPORT_JSON, ConfigError, "re-run `micromet infer`")
        review = reject_everything(new_review(slide_id, report), reviewer)
        write_review(folder, review)
        rejected[slide_id] = len(review.deposits)
    if not rejected:
        raise ConfigError(f"{batch_dir}: no finished slide to review; re-run `micromet infer` into it")
    return rejected


# --- step 4: measuring ----------------------------------------------------------------------


def batch_findings(batch_dir: Path) -> dict[str, dict[str, Any]]:
    """slide id -> deposits, candidates, categories and sizes of a finished batch."""
    manifest = read_manifest(batch_dir, ConfigError, "re-run `micromet infer`")
    out: dict[str, dict[str, Any]] = {}
    for slide_id, entry in manifest.slides.items():
        if not entry.done:
            raise ConfigError(
                f"{batch_dir}: slide {slide_id!r} did not finish; read its error in manifest.json"
            )
        report = read_report(slide_folder(batch_dir, slide_id, entry) / REPORT_JSON, ConfigError, "")
        deposits = [d for d in report.get("deposits") or [] if isinstance(d, dict)]
        candidates = [c for c in report.get("candidates") or [] if isinstance(c, dict)]
        out[slide_id] = {
            "category": report.get("category"),
            "deposits": len(deposits),
            "candidates": len(candidates),
            "deposit_sizes_mm": [round(float(d.get("max_diameter_mm", math.nan)), 3) for d in deposits],
        }
    return out


def node_scale(work: Path, model: Path, name: str, reuse: Path | None) -> dict[str, Any]:
    """Dev node-scale figures of ``model`` (bench_node_scale.py score + report --part dev)."""
    cached = work / f"node_scale_{name}.json"
    if cached.is_file():
        return dict(json.loads(cached.read_text(encoding="utf-8")))
    from pipeline.models import file_sha256

    folder = work / f"ns_{name}"
    if reuse is not None and (reuse / "dev" / "model.json").is_file():
        used = Path(json.loads((reuse / "dev" / "model.json").read_text(encoding="utf-8"))["model"])
        used = used if used.is_absolute() else REPO / used
        if used.is_file() and file_sha256(used) == file_sha256(model):
            folder = reuse
    bench = [sys.executable, str(REPO / "scripts" / "bench_node_scale.py")]
    if not (folder / "dev" / "model.json").is_file():
        run_command([*bench, "score", "--part", "dev", "--model", str(model), "--work", str(folder)],
                    work / f"ns_{name}_score.log")  # fmt: skip
    log = work / f"ns_{name}_report.log"
    run_command([*bench, "report", "--part", "dev", "--work", str(folder)], log)
    text = log.read_text(encoding="utf-8")
    start = text.index("\n{") + 1
    figures = dict(json.loads(text[start : text.index("\n}", start) + 2]))
    figures["work"] = str(folder)
    cached.write_text(json.dumps(figures, indent=1), encoding="utf-8")
    return figures


def same_surfaces(first: Path, second: Path) -> bool:
    """Whether two bench_node_scale.py parts hold the same surfaces (names and images, pixel for
    pixel): the two models' node-scale figures then come from the same material."""
    names = sorted(p.name for p in first.glob("*.npz"))
    if not names or names != sorted(p.name for p in second.glob("*.npz")):
        return False
    for name in names:
        with np.load(first / name) as a, np.load(second / name) as b:
            if not np.array_equal(a["image"], b["image"]) or str(a["truth"]) != str(b["truth"]):
                return False
    return True


def tile_scorer(model_path: Path) -> tuple[TileScorer, float]:
    """(tile scorer, the card's threshold) of a checkpoint, as bench_node_scale.py scores tiles
    (``pipeline.benchmarks.scorers``): with a partner on the card, the average of both models'
    probabilities, as ``micromet infer`` scores it."""
    from pipeline.benchmarks.scorers import checkpoint_scorers
    from pipeline.models.partner import load_partner, partner_path

    score, _, card = checkpoint_scorers(model_path)
    if load_partner(model_path, card) is None:  # checks the partner's file, SHA-256 and geometry
        return score, card.threshold
    other, _, _ = checkpoint_scorers(partner_path(model_path, card))  # type: ignore[arg-type]

    def pair(tiles: NDArray[np.uint8]) -> NDArray[np.float32]:
        return np.asarray((score(tiles) + other(tiles)) / np.float32(2.0), dtype=np.float32)

    return pair, card.threshold


def patch_figures(
    model: Path, patches: Sequence[NormalPatch], data: Path, seed_threshold: float
) -> dict[str, Any]:
    """Share of ``patches`` (a half's normals) and of the dev tumor patches scored at or above
    ``seed_threshold`` and at or above the card's threshold (the pipeline's prepared model)."""
    from pipeline.training.datasets import load_rgb

    score, threshold = tile_scorer(model)
    with PLACES_CSV.open(newline="", encoding="utf-8") as handle:
        tumor = [
            f"{r['source']}/{r['file']}"
            for r in csv.DictReader(handle)
            if r["part"] == "dev" and r["label"] == "1"
        ]
    out: dict[str, Any] = {}
    for name, files in (
        ("hard_normals", [p.file for p in patches if p.hard]),
        ("pcam_normals", [p.file for p in patches if not p.hard]),
        ("dev_tumor", tumor),
    ):
        probabilities = np.concatenate(
            [
                score(np.stack([load_rgb(data / f) for f in files[i : i + 256]]))
                for i in range(0, len(files), 256)
            ]
        )
        out[name] = {
            "n": len(files),
            "at_seed": float((probabilities >= seed_threshold).mean()),
            "at_threshold": float((probabilities >= threshold).mean()),
        }
    return out


def roles(swap: bool) -> tuple[str, str]:
    """(the half whose reviews train, the half held out): swapped with --swap (a second fold)."""
    return ("heldout", "reviewed") if swap else ("reviewed", "heldout")


def measure(args: argparse.Namespace, work: Path, facts: dict[str, Any], finetuned: Path) -> dict[str, Any]:
    """Step 4: both models' false deposits on both halves, node-scale dev figures and patch
    figures of the held-out half; the figures summary.json holds."""
    from pipeline.models import read_card

    models = {"default": DEFAULT_MODEL, "finetuned": finetuned}
    reviewed, held_out = roles(args.swap)
    result: dict[str, Any] = {
        "reviewed_half": reviewed, "held_out_half": held_out, "halves": facts["halves"],
        "default_partner": read_card(DEFAULT_MODEL).partner,
        "finetuned_partner": read_card(finetuned).partner,
        "settings": {
            "epochs": args.epochs, "lr": args.lr, "tiles_per_deposit": args.tiles_per_deposit,
            "negatives_per_slide": args.negatives_per_slide, "finetune_partner": args.finetune_partner,
            "control": args.control,
        },
    }  # fmt: skip
    for name, model in models.items():
        for half in HALVES:
            slides = facts["halves"][half]["slides"]
            result[f"{name}_{half}"] = rates(batch_findings(infer(work, model, half, name)), slides)
    for name, model in models.items():
        result[f"{name}_node_scale_dev"] = node_scale(
            work, model, name, args.default_node_work if name == "default" else None
        )
    result["node_scale_same_surfaces"] = same_surfaces(
        Path(result["default_node_scale_dev"]["work"]) / "dev",
        Path(result["finetuned_node_scale_dev"]["work"]) / "dev",
    )
    for half in HALVES:
        d, f = result[f"default_{half}"], result[f"finetuned_{half}"]
        result[f"removed_{half}"] = removed_fraction(d["false_deposits"], f["false_deposits"])
        result[f"removed_with_candidates_{half}"] = removed_fraction(
            d["false_deposits"] + d["candidates"], f["false_deposits"] + f["candidates"]
        )
    held_out_patches = split_places(dev_normals(PLACES_CSV), args.seed)[held_out]
    seed = float(read_card(DEFAULT_MODEL).seed_threshold or 1.0)
    for name, model in models.items():
        result[f"{name}_patches_{held_out}"] = patch_figures(model, held_out_patches, args.data, seed)
    micro = result["finetuned_node_scale_dev"]["micro_sensitivity"]
    # a control run trains without the reviews: it measures what the patches alone remove
    met = result[f"removed_{held_out}"] >= 0.9 and micro >= 0.95
    result["done_when_met"] = bool(met and not args.control)
    return result


def run(args: argparse.Namespace) -> int:
    """Every step in order (each skipped when its output is in --work); writes the summaries."""
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    facts = build_slides(work, args.data, args.seed)
    reviewed_batch = infer(work, DEFAULT_MODEL, roles(args.swap)[0], "default")
    if not (work / "reviews.json").is_file():
        rejected = review_batch(reviewed_batch)
        (work / "reviews.json").write_text(json.dumps(rejected, indent=1), encoding="utf-8")
    finetuned = finetune(args, work, reviewed_batch)
    result = measure(args, work, facts, finetuned)
    (work / "summary.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    text = markdown(result)
    (work / "summary.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def default_has_partner(default: Path = DEFAULT_MODEL) -> bool:
    """Whether ``default``'s card names a partner model (the default for --keep-partner)."""
    from pipeline.models import read_card

    return bool(read_card(default).partner)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (``scripts/bench_review_finetune.py``); the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("run", "slides"))
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "review_finetune")
    parser.add_argument("--data", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--swap", action="store_true", help="the second fold: review the 'heldout' half, hold out 'reviewed'"
    )
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    parser.add_argument("--lr", type=float, default=3e-4, help="fine-tuning peak learning rate")
    parser.add_argument("--tiles-per-deposit", type=int, default=32, help="--review-tiles-per-deposit")
    parser.add_argument(
        "--negatives-per-slide", type=int, default=0,
        help="--review-negatives-per-slide: also mine each reviewed slide's highest heatmap cells "
        "outside its deposits as hard negatives (default 0: off)",
    )  # fmt: skip
    parser.add_argument(
        "--default-node-work", type=Path, default=REPO / "runs" / "ns_ensemble",
        help="a bench_node_scale.py --work whose dev part was scored with the default model (reused "
        "only when its model.json names a file with the default's SHA-256)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-partner", action=argparse.BooleanOptionalAction, default=None,
        help="the fine-tuned model keeps the default's partner (scores as a pair, as the default "
        "does); default: on when the default's card names a partner",
    )  # fmt: skip
    parser.add_argument(
        "--control", action="store_true",
        help="a control: fine-tune on the train-part patches alone, without the reviews (the reviews "
        "are still made, and the halves measured alike)",
    )  # fmt: skip
    parser.add_argument(
        "--finetune-partner", action="store_true",
        help="fine-tune the default's partner too (same reviews and settings) and pair the two "
        "fine-tuned models, instead of keeping the partner unchanged",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.keep_partner is None:
        args.keep_partner = default_has_partner()
    if args.finetune_partner and not args.keep_partner:
        raise SystemExit("--finetune-partner pairs the fine-tuned models; drop --no-keep-partner")
    if not (args.data / HARD_SOURCE).is_dir():
        raise SystemExit(f"{args.data}: no {HARD_SOURCE}/ here; pass --data pointing at ../shared/data")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if args.command == "slides":
        print(json.dumps(build_slides(args.work, args.data, args.seed), indent=1))
        return 0
    return run(args)
