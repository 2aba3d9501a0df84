"""Train micromet's default model (models/default.pt + models/MODEL_CARD.md) on real patches.

One command, fixed seed, about 30-60 minutes on a 2-core CPU (a GPU is used when there is one):

    python scripts/train_default_model.py            # resumes from runs/default_model if stopped

What it does, in order:
1. Splits the 8,761 real PatchCamelyon patches of ../shared/data/pcam_kaggle (96 px at
   0.972 µm/px) by a seeded, class-stratified random split into training (75 %), validation
   (10 %, picks the threshold) and a held-out test part (15 %, never trained on or tuned on).
   PCam carries no slide id, so the split is by patch: the test figure is in-distribution.
2. Adds grid crops of the left half of the CAMELYON17 tile of a negative node
   (centre 3, patient_066_node_1) as extra normal tissue from another centre; its right half
   is held out.
3. Trains with ``micromet train`` (``pipeline.training.train.main``: checkpoints every epoch, resumes).
4. Scores every real held-out set: the PCam test part, the level-0 CAMELYON16 patches of
   three slides (brought to 0.972 µm/px physically; none is trained on), and grid crops of the
   three CAMELYON17 tiles (centres 1, 3 (right half), 4) as tissue that should be normal.
5. Picks the operating threshold on the PCam validation part and writes the checkpoint with
   its card (heatmap stride = the central 32 px the PCam label describes, slide-QC reference
   ranges measured on the training patches) and MODEL_CARD.md with every figure, its n and a
   95 % interval.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from pipeline.config import CAMELYON_LEVEL0_MPP, SHARED_DATA_DIR
from pipeline.evaluation.node_scale import wilson_95
from pipeline.models import IMAGENET_MEAN, IMAGENET_STD, ModelCard, load_checkpoint, save_checkpoint
from pipeline.models.partner import load_partner, with_partner
from pipeline.training.classify import choose_threshold, roc_auc, score_batch
from pipeline.training.config import TrainSettings, settings_to_toml
from pipeline.training.datasets import fit_to_tile, load_rgb
from pipeline.training.default_model import (
    AUGMENT,
    MODEL_MPP,
    TILE_SIZE_PX,
    TrainRecipe,
    default_model_settings,
)
from pipeline.training.pcam_split import load_pcam, split_pcam
from pipeline.training.train import main as train_main

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = SHARED_DATA_DIR
ARCHITECTURE = "dense96"
LABEL_SIZE_PX = 32  # PCam's label describes the central 32 x 32 px: the heatmap stride
C16_MPP = CAMELYON_LEVEL0_MPP  # CAMELYON16 level 0
C17_MPP = CAMELYON_LEVEL0_MPP  # judged by nucleus size (data README)
SPLIT_FRACTIONS = {"test": 0.15, "val": 0.10}  # the rest trains
C17_TRAIN_TILE = "centre_3_patient_066_node_1"  # negative node; left half trains
C17_TILES = {
    "centre_1": ("centre_1_patient_024_node_2", "itc node; tile judged tumor-free"),
    "centre_3": ("centre_3_patient_066_node_1", "negative node; right half (left half trained on)"),
    "centre_4": ("centre_4_patient_097_node_3", "macro node; the tile may show tumor"),
}
C17_EVAL_STRIDE_PX = 32
C17_TRAIN_STRIDE_PX = 16
# Threshold: the lowest candidate whose false-positive rate on the PCam validation normals
# is at most this (tumor-free tissue must not become deposits), but not below Youden's J.
MAX_VALIDATION_FPR = 0.02
# Seed threshold (hysteresis): a deposit needs one cell this sure; the lowest candidate whose
# false-positive rate on the PCam validation normals is at most this.
MAX_SEED_VALIDATION_FPR = 0.01
BOOTSTRAP_ROUNDS = 2000
CARD_NOTES = (
    "NOT A CLINICAL MODEL. Trained on real PatchCamelyon patches (CAMELYON16) plus crops of one "
    "CAMELYON17 tile; validated on patches, tiles and node-scale surfaces of real tissue "
    "(scripts/bench_node_scale.py), never on whole slides."
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "models" / "default.pt")
    parser.add_argument("--card", type=Path, default=REPO / "models" / "MODEL_CARD.md")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="../shared/data")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "default_model_places")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument(
        "--architecture", default=ARCHITECTURE, help="dense96 (exact dense inference) or pcamnet"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda")
    parser.add_argument(
        "--hed-scale", type=float, default=AUGMENT.hed_scale, help="HED stain jitter (shift is a quarter)"
    )
    parser.add_argument("--evaluate-only", action="store_true", help="score work/run/last.pt again")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="link the split patch folders into --work and write --work/train.toml, then stop "
        "(`micromet train --config` runs the rest; models/default_train.toml is that file)",
    )
    parser.add_argument(
        "--partner",
        type=Path,
        default=None,
        help="a checkpoint trained by this script on the same split (another --architecture): the "
        "default model becomes the average of both (copied beside --out as <stem>_partner.pt and "
        "named in the card), and every figure is the average's",
    )
    parser.add_argument(
        "--card-only",
        action="store_true",
        help="write --card again from --out's card (after the node-scale bench)",
    )
    return parser.parse_args(argv)


# --- data --------------------------------------------------------------------------------


def c17_image(data: Path, stem: str) -> NDArray[np.uint8]:
    """A CAMELYON17 tile brought to the model's µm/px."""
    rgb = load_rgb(data / "camelyon17_tiles" / f"{stem}.jpeg")
    side = round(rgb.shape[0] * C17_MPP / MODEL_MPP)
    return fit_to_tile(rgb, C17_MPP, MODEL_MPP, side)


def c17_part(image: NDArray[np.uint8], name: str, training: bool) -> NDArray[np.uint8]:
    """The part of a tile used: centre 3 is split in a left (training) and right (held-out) half."""
    if C17_TILES[name][0] != C17_TRAIN_TILE:
        return image
    half = image.shape[1] // 2
    return image[:, :half] if training else image[:, half:]


def grid_crops(image: NDArray[np.uint8], stride_px: int) -> NDArray[np.uint8]:
    """Every TILE_SIZE_PX crop of ``image`` on a grid of ``stride_px``."""
    height, width = image.shape[:2]
    return np.stack(
        [
            image[y : y + TILE_SIZE_PX, x : x + TILE_SIZE_PX]
            for y in range(0, height - TILE_SIZE_PX + 1, stride_px)
            for x in range(0, width - TILE_SIZE_PX + 1, stride_px)
        ]
    )


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(source.resolve())


def prepare_folders(data: Path, work: Path, seed: int) -> dict[str, list[tuple[str, int]]]:
    """work/train and work/val patch folders (tumor/, normal/) for ``micromet train``."""
    splits = split_pcam(data)  # fixed by data/pcam_places.csv; seed is recorded, not used
    for split in ("train", "val"):
        for name, label in splits[split]:
            _link(data / name, work / split / ("tumor" if label else "normal") / Path(name).name)
    crops = grid_crops(c17_part(c17_image(data, C17_TRAIN_TILE), "centre_3", True), C17_TRAIN_STRIDE_PX)
    folder = work / "train" / "normal"
    for index, crop in enumerate(crops):
        path = folder / f"c17_{C17_TRAIN_TILE}_{index:04d}.png"
        if not path.exists():
            Image.fromarray(crop).save(path)
    (work / "split.json").write_text(json.dumps({"seed": seed, **splits}), encoding="utf-8")
    return splits


def train_settings(args: argparse.Namespace, work: Path) -> TrainSettings:
    """The ``micromet train`` settings of the default model (``pipeline.training.default_model``)."""
    recipe = TrainRecipe(
        args.architecture, args.epochs, work, args.batch_size, args.lr, args.seed, args.device, args.hed_scale
    )
    return default_model_settings(recipe)


# --- evaluation --------------------------------------------------------------------------


def score(model: torch.nn.Module, tiles: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Tumor probabilities of (N, H, W, 3) uint8 tiles."""
    device = next(model.parameters()).device
    parts = [
        score_batch(
            model,
            torch.from_numpy(np.ascontiguousarray(tiles[i : i + 256])),
            device,
            (IMAGENET_MEAN, IMAGENET_STD),
        )
        for i in range(0, len(tiles), 256)
    ]
    return np.concatenate(parts)


def auc_interval(p: NDArray[np.float32], y: NDArray[np.int64], seed: int) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the AUC (resampling tumor and normal separately)."""
    rng = np.random.default_rng(seed)
    pos, neg = p[y == 1], p[y == 0]
    values = []
    for _ in range(BOOTSTRAP_ROUNDS):
        a = rng.choice(pos, len(pos))
        b = rng.choice(neg, len(neg))
        values.append(
            roc_auc(np.concatenate([a, b]), np.r_[np.ones(len(a)), np.zeros(len(b))].astype(np.int64))
        )
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


ScoreFn = Callable[[NDArray[np.uint8]], NDArray[np.float32]]


def model_scorer(model: torch.nn.Module, partner: torch.nn.Module | None = None) -> ScoreFn:
    """Tumor probabilities of tiles: the model's, or the average of the model's and its partner's."""
    if partner is None:
        return lambda tiles: score(model, tiles)
    return lambda tiles: (score(model, tiles) + score(partner, tiles)) / np.float32(2.0)


def score_pcam(
    scorer: ScoreFn, data: Path, items: Sequence[tuple[str, int]]
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Tumor probabilities and labels of PCam patches."""
    tiles, labels = load_pcam(data, items)
    return scorer(tiles), labels


def load_c16(data: Path) -> tuple[NDArray[np.uint8], NDArray[np.int64], list[str]]:
    """The level-0 CAMELYON16 patches at the model's µm/px (64 px), mirror-padded to the tile."""
    tiles, labels, slides = [], [], []
    for name, label in (("tumor", 1), ("normal", 0)):
        for path in sorted((data / "camelyon16_patches" / name).glob("*.png")):
            tiles.append(fit_to_tile(load_rgb(path), C16_MPP, MODEL_MPP, TILE_SIZE_PX))
            labels.append(label)
            slides.append("_".join(path.stem.split("_")[:2]))
    return np.stack(tiles), np.array(labels, dtype=np.int64), slides


def lowest_threshold_with_fpr(p: NDArray[np.float32], y: NDArray[np.int64], max_fpr: float) -> float:
    """Lowest candidate threshold (0.01 steps) whose false-positive rate is at most ``max_fpr``."""
    candidates = np.round(np.arange(1, 100) / 100.0, 2)
    fpr = (p[y == 0][None, :] >= candidates[:, None]).mean(axis=1)
    allowed = candidates[fpr <= max_fpr]
    return float(allowed[0]) if len(allowed) else 0.99


def choose_operating_threshold(p: NDArray[np.float32], y: NDArray[np.int64]) -> float:
    """Lowest threshold (0.01 steps) whose validation false-positive rate is <= MAX_VALIDATION_FPR,
    and never below the Youden threshold (``pipeline.training.classify.choose_threshold``)."""
    return max(choose_threshold(p, y), lowest_threshold_with_fpr(p, y, MAX_VALIDATION_FPR))


@dataclasses.dataclass
class Evaluation:
    threshold: float
    seed_threshold: float
    metrics: dict[str, float]
    c16_slides: list[str]


def _proportion(metrics: dict[str, float], key: str, hits: NDArray[np.bool_]) -> None:
    k, n = int(hits.sum()), len(hits)
    low, high = wilson_95(k, n)
    metrics.update({f"{key}": k / n if n else math.nan, f"{key}_ci_low": low, f"{key}_ci_high": high})
    metrics[f"{key}_n"] = float(n)


def _auc(
    metrics: dict[str, float], key: str, p: NDArray[np.float32], y: NDArray[np.int64], seed: int
) -> None:
    low, high = auc_interval(p, y, seed)
    metrics.update({f"{key}_auc": roc_auc(p, y), f"{key}_auc_ci_low": low, f"{key}_auc_ci_high": high})
    metrics.update({f"{key}_n": float(len(y)), f"{key}_n_tumor": float(y.sum())})


def evaluate_model(
    scorer: ScoreFn, data: Path, splits: dict[str, list[tuple[str, int]]], seed: int
) -> Evaluation:
    """Every card metric of ``scorer``'s probabilities on real held-out material, with n and a 95 %
    interval."""
    metrics: dict[str, float] = {}
    p_val, y_val = score_pcam(scorer, data, splits["val"])
    threshold = choose_operating_threshold(p_val, y_val)
    seed_threshold = max(threshold, lowest_threshold_with_fpr(p_val, y_val, MAX_SEED_VALIDATION_FPR))
    _auc(metrics, "pcam_val", p_val, y_val, seed)
    p_test, y_test = score_pcam(scorer, data, splits["test"])
    _auc(metrics, "pcam_test", p_test, y_test, seed)
    _proportion(metrics, "pcam_test_sensitivity", p_test[y_test == 1] >= threshold)
    _proportion(metrics, "pcam_test_specificity", p_test[y_test == 0] < threshold)
    hard = [item for item in splits["hard_dev"]]
    if hard:
        p_hard = score_pcam(scorer, data, hard)[0]
        _proportion(metrics, "hard_dev_fraction_above_threshold", p_hard >= threshold)
        _proportion(metrics, "hard_dev_fraction_above_seed_threshold", p_hard >= seed_threshold)
    c16_tiles, c16_y, c16_slides = load_c16(data)
    p_c16 = scorer(c16_tiles)
    _auc(metrics, "c16_patches", p_c16, c16_y, seed)
    _proportion(metrics, "c16_patches_sensitivity", p_c16[c16_y == 1] >= threshold)
    _proportion(metrics, "c16_patches_specificity", p_c16[c16_y == 0] < threshold)
    for slide in sorted(set(c16_slides)):
        chosen = np.array([s == slide for s in c16_slides])
        for label, name in ((1, "sensitivity"), (0, "specificity")):
            picked = chosen & (c16_y == label)
            if picked.any():
                hits = p_c16[picked] >= threshold if label else p_c16[picked] < threshold
                _proportion(metrics, f"c16_{slide}_{name}", hits)
    for centre, (stem, _) in C17_TILES.items():
        crops = grid_crops(c17_part(c17_image(data, stem), centre, False), C17_EVAL_STRIDE_PX)
        p = scorer(crops)
        _proportion(metrics, f"c17_{centre}_fraction_above_threshold", p >= threshold)
        _proportion(metrics, f"c17_{centre}_fraction_above_seed_threshold", p >= seed_threshold)
        metrics[f"c17_{centre}_max_probability"] = float(p.max())
    return Evaluation(threshold, seed_threshold, metrics, sorted(set(c16_slides)))


# --- the card ----------------------------------------------------------------------------


def partner_text(args: argparse.Namespace) -> str:
    """The training-data sentence on the partner model (empty without one)."""
    if args.partner is None:
        return ""
    partner = load_checkpoint(args.partner)[1]
    return (
        f" Averaged with a partner model ({partner.architecture}, {args.out.stem}_partner.pt) trained by "
        "the same script on the same data, split, augmentation and seed; every figure here is the "
        "average's."
    )


def training_data_text(
    splits: dict[str, list[tuple[str, int]]], n_c17: int, seed: int, hed_scale: float
) -> str:
    n = {k: (len(v), sum(label for _, label in v)) for k, v in splits.items()}
    n_hard_train = sum(name.startswith("pcam_hard_normals/") for name, _ in splits["train"])
    return (
        f"(1) Real PatchCamelyon patches from ../shared/data/pcam_kaggle (Kaggle histopathologic-"
        f"cancer-detection training set, derived from PatchCamelyon / CAMELYON16, CC0) and (2) real "
        f"hard-negative PatchCamelyon normals from ../shared/data/pcam_hard_normals (patches another "
        f"PCam CNN called tumor; CC0, via MartiHan/8p361_MedicalImaging; 1,572 of 1,679 carry JPEG loss): "
        f"96 x 96 px at 0.972 µm/px, label = tumor in the central 32 x 32 px. Split by place, not by "
        f"patch (data/pcam_places.csv, scripts/split_pcam_by_place.py): patches sharing any identical "
        f"textured 8 x 8 px window are one place and stay in one part. Training "
        f"{n['train'][0]} ({n['train'][1]} tumor, {n_hard_train} hard normals); dev PCam "
        f"{n['val'][0]} ({n['val'][1]} tumor; picks the thresholds, the last epoch's weights are "
        f"kept) and dev hard normals {n['hard_dev'][0]} (reported apart); held-out test {n['test'][0]} "
        f"({n['test'][1]} tumor; shares no pixel with training or dev patches). (3) {n_c17} "
        f"overlapping 96 px crops (stride {C17_TRAIN_STRIDE_PX} px at 0.972 µm/px) of the left half of "
        f"CAMELYON17 tile {C17_TRAIN_TILE} (CC0; a negative node) as normal tissue. No synthetic "
        f"slides. HED stain jitter (scale {hed_scale:g}, shift {hed_scale / 4:g}), brightness "
        f"{AUGMENT.brightness}, contrast {AUGMENT.contrast}, blur, resampling (30 % of tiles shrunk "
        f"to 0.5-1x and back, bilinear or area), flips and 90° rotations; no stain normalisation."
    )


def make_card(
    evaluation: Evaluation, text: str, qc_reference: dict[str, list[float]], architecture: str = ARCHITECTURE
) -> ModelCard:
    return ModelCard(
        architecture=architecture,
        tile_size_px=TILE_SIZE_PX,
        mpp=MODEL_MPP,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        threshold=evaluation.threshold,
        stain_normalization=None,
        training_data=text,
        metrics=evaluation.metrics,
        notes=CARD_NOTES,
        stride_px=LABEL_SIZE_PX,
        qc_reference=qc_reference,
        seed_threshold=evaluation.seed_threshold,
    )


def compute_qc_reference(data: Path, splits: dict[str, list[tuple[str, int]]]) -> dict[str, list[float]]:
    """Slide-QC ranges (``pipeline.slides.qc``) measured on the training patches."""
    from pipeline.slides.qc import qc_reference_from_tiles

    tiles, _ = load_pcam(data, splits["train"])
    return qc_reference_from_tiles(tiles)


def training_minutes(metrics_csv: Path) -> float:
    """Minutes the run spent training and validating, summed over its epochs (also on resume)."""
    with metrics_csv.open(newline="") as handle:
        return sum(float(row["seconds"]) for row in csv.DictReader(handle)) / 60


def rewrite_card_md(args: argparse.Namespace) -> int:
    """MODEL_CARD.md from the checkpoint's card as it stands (its node-scale figures included)."""
    from model_card_text import write_model_card_md

    _, card = load_checkpoint(args.out)
    slides = sorted(
        {k.split("_")[1] + "_" + k.split("_")[2] for k in card.metrics if k.startswith("c16_tumor_")}
    )
    minutes = training_minutes(args.work / "run" / "metrics.csv")
    write_model_card_md(args.card, card, slides, args, minutes)
    print(f"wrote {args.card}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.card_only:
        return rewrite_card_md(args)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    work: Path = args.work
    splits = prepare_folders(args.data, work, args.seed)
    if args.prepare_only:
        (work / "train.toml").write_text(settings_to_toml(train_settings(args, work)), encoding="utf-8")
        print(f"prepared {work}; train with: micromet train --config {work / 'train.toml'}")
        return 0
    n_c17 = len(list((work / "train" / "normal").glob("c17_*.png")))
    last = work / "run" / "last.pt"
    if not args.evaluate_only:
        train_main(train_settings(args, work), resume=last if last.exists() else None)
    train_minutes = training_minutes(work / "run" / "metrics.csv")
    model, _ = load_checkpoint(last)
    partner = load_checkpoint(args.partner)[0] if args.partner else None
    evaluation = evaluate_model(model_scorer(model, partner), args.data, splits, args.seed)
    card = make_card(
        evaluation,
        training_data_text(splits, n_c17, args.seed, args.hed_scale) + partner_text(args),
        compute_qc_reference(args.data, splits),
        args.architecture,
    )
    if args.partner is not None:
        beside = args.out.with_name(f"{args.out.stem}_partner.pt")
        if args.partner.resolve() != beside.resolve():
            beside.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.partner, beside)
        card = with_partner(card, beside)
    save_checkpoint(args.out, model, card, {"script": "scripts/train_default_model.py", "seed": args.seed})
    load_partner(args.out, load_checkpoint(args.out)[1])  # refuse to finish with files that do not load
    from model_card_text import write_model_card_md  # the card's Markdown, beside this script

    write_model_card_md(args.card, card, evaluation.c16_slides, args, train_minutes)
    print(f"threshold {card.threshold:.2f}; " + ", ".join(f"{k} {v:.3f}" for k, v in card.metrics.items()))
    print(f"wrote {args.out} and {args.card} in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
