"""Train micromet's default model (models/default.pt + models/MODEL_CARD.md) on a 2-core CPU.

A small demonstration model, NOT a clinical one: a MicroNet on 64 px tiles at 1.0 µm/px,
trained for a few minutes on
  * tiles from synthetic lymph-node slides (``pipeline.synthetic``) with exact tumor outlines,
  * the real CAMELYON16 patches in ../shared/data/camelyon16_patches from slides tumor_001
    and tumor_004 (every patch of slide tumor_064 is held out for validation),
  * the 15 PatchCamelyon patches in ../shared/data/pcam_patches,
  * random crops of two CAMELYON17 tiles (patient_024_node_2, patient_066_node_1) as normal
    tissue; the bottom quarter of each is held out. patient_097_node_3 (a macrometastasis
    node whose tile may show tumor) is never trained on; its crops are only scored.
with strong stain augmentation. The operating threshold maximises Youden's J on the synthetic
validation slides. A real model comes from ``micromet train`` on CAMELYON16/17.

Usage: python scripts/train_default_model.py [--steps 700] [--out models/default.pt]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import ConcatDataset, DataLoader, WeightedRandomSampler

from pipeline.augment import AugmentConfig
from pipeline.classify import binary_metrics, choose_threshold, predict
from pipeline.datasets import ArrayTileDataset, SlideTileDataset, TileItem, fit_to_tile, load_rgb
from pipeline.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelCard,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from pipeline.sampling import SampleConfig, SlideSource, sample_slide
from pipeline.synthetic import PlantedDeposit, SynthConfig, generate_slide
from pipeline.train import StepSettings, train_one_epoch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TILE_SIZE_PX = 64
MODEL_MPP = 1.0
C16_MPP = 0.243  # CAMELYON16 level 0
PCAM_MPP = 0.972  # PatchCamelyon (level 2 of CAMELYON16)
C17_MPP = 0.243  # judged by nucleus size (data README)
HOLDOUT_SLIDE = "tumor_064"
C17_TRAIN_TILES = ("patient_024_node_2", "patient_066_node_1")
C17_REPORT_TILE = "patient_097_node_3"
# Strong stain augmentation: CAMELYON centres differ a lot in H&E colour.
AUGMENT = AugmentConfig(
    hed_scale=0.2,
    hed_shift=0.05,
    brightness=0.1,
    contrast=0.2,
    blur_probability=0.2,
    blur_max_sigma_px=1.0,
)
# Share of each batch drawn from each training source.
SOURCE_WEIGHTS = {"synthetic": 0.45, "c16": 0.25, "pcam": 0.07, "c17": 0.23}
# Synthetic slides: (seed, µm/px, deposit diameters in mm); the last two are validation.
SYNTH_SLIDES = (
    (101, 0.25, (0.35, 0.12, 0.06)),
    (102, 0.25, (0.25, 0.08)),
    (103, 0.5, (0.45, 0.15, 0.05)),
    (104, 0.5, (0.3, 0.1, 0.04)),
    (105, 0.5, ()),
    (106, 0.5, (0.4, 0.2, 0.07)),
    (107, 0.5, (0.3, 0.09)),
    (108, 0.5, (0.2, 0.06)),
)
N_SYNTH_VAL = 2
CHUNK = 25  # steps per training chunk; the learning rate is set per chunk
SCHEDULE_SLOTS = 1000  # resolution of the schedule position passed to train_one_epoch


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "models" / "default.pt")
    parser.add_argument("--card", type=Path, default=REPO / "models" / "MODEL_CARD.md")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="../shared/data")
    parser.add_argument("--work", type=Path, default=None, help="folder for synthetic slides")
    parser.add_argument("--steps", type=int, default=700, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=20.0, help="training time budget (minutes)")
    return parser.parse_args(argv)


# --- data --------------------------------------------------------------------------------


def make_synthetic_slides(work: Path) -> list[SlideSource]:
    """Generate (or reuse) the synthetic slides; returns them with their ASAP XML."""
    sources = []
    for seed, mpp, diameters in SYNTH_SLIDES:
        path = work / f"synth_{seed}.tif"
        if not path.with_name(f"synth_{seed}.truth.json").exists():
            size_um = (1500.0, 1100.0)
            config = SynthConfig(
                width_px=round(size_um[0] / mpp),
                height_px=round(size_um[1] / mpp),
                mpp=mpp,
                seed=seed,
                deposits=tuple(PlantedDeposit(d) for d in diameters),
            )
            generate_slide(config, path)
        sources.append(SlideSource(path, path.with_suffix(".xml")))
    return sources


def synthetic_tiles(sources: Sequence[SlideSource], per_class: int, seed: int) -> ArrayTileDataset:
    """Tumor and normal tiles of the slides (read once at the model resolution)."""
    config = SampleConfig(tumor_per_slide=per_class, normal_per_slide=per_class, seed=seed)
    samples = [s for source in sources for s in sample_slide(source, config)]
    reader = SlideTileDataset(samples, TILE_SIZE_PX, MODEL_MPP)
    tiles = np.stack([reader.read_tile(s) for s in samples])
    reader.close()
    return ArrayTileDataset(tiles, np.array([s.label for s in samples], dtype=np.int64))


def c16_patches(data: Path) -> tuple[ArrayTileDataset, ArrayTileDataset]:
    """Real CAMELYON16 patches: (training slides, held-out slide HOLDOUT_SLIDE)."""
    split: dict[bool, tuple[list[NDArray[np.uint8]], list[int]]] = {True: ([], []), False: ([], [])}
    for name, label in (("tumor", 1), ("normal", 0)):
        for path in sorted((data / "camelyon16_patches" / name).glob("*.png")):
            tiles, labels = split[path.name.startswith(HOLDOUT_SLIDE)]
            tiles.append(fit_to_tile(load_rgb(path), C16_MPP, MODEL_MPP, TILE_SIZE_PX))
            labels.append(label)
    train, held = split[False], split[True]
    return (
        ArrayTileDataset(np.stack(train[0]), np.array(train[1], dtype=np.int64)),
        ArrayTileDataset(np.stack(held[0]), np.array(held[1], dtype=np.int64)),
    )


def _random_crops(image: NDArray[np.uint8], count: int, rng: np.random.Generator) -> NDArray[np.uint8]:
    height, width = image.shape[:2]
    ys = rng.integers(0, height - TILE_SIZE_PX + 1, count)
    xs = rng.integers(0, width - TILE_SIZE_PX + 1, count)
    return np.stack([image[y : y + TILE_SIZE_PX, x : x + TILE_SIZE_PX] for y, x in zip(ys, xs, strict=True)])


def pcam_patches(data: Path, crops_per_patch: int, rng: np.random.Generator) -> ArrayTileDataset:
    """PCam patches at 1.0 µm/px (93 px), as random 64 px crops (all keep the labelled centre)."""
    folder = data / "pcam_patches"
    tiles, labels = [], []
    with (folder / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            rgb = load_rgb(folder / f"{row['id']}.tif")
            scale = PCAM_MPP / MODEL_MPP
            side = round(rgb.shape[0] * scale)
            resized = fit_to_tile(rgb, PCAM_MPP, MODEL_MPP, side)
            tiles.append(_random_crops(resized, crops_per_patch, rng))
            labels += [int(row["label"])] * crops_per_patch
    return ArrayTileDataset(np.concatenate(tiles), np.array(labels, dtype=np.int64))


def c17_crops(data: Path, name: str, count: int, rng: np.random.Generator, part: str) -> ArrayTileDataset:
    """Random normal crops of a CAMELYON17 tile at 1.0 µm/px: part "top" (upper 3/4),
    "bottom" (lower 1/4, held out) or "all"."""
    path = next((data / "camelyon17_tiles").glob(f"*{name}.jpeg"))
    rgb = load_rgb(path)
    side = round(rgb.shape[0] * C17_MPP / MODEL_MPP)
    image = fit_to_tile(rgb, C17_MPP, MODEL_MPP, side)
    cut = (3 * side) // 4
    image = {"top": image[:cut], "bottom": image[cut:], "all": image}[part]
    crops = _random_crops(image, count, rng)
    return ArrayTileDataset(crops, np.zeros(count, dtype=np.int64))


def concat(parts: Sequence[ArrayTileDataset]) -> ArrayTileDataset:
    """One dataset holding the tiles of ``parts``."""
    tiles = np.concatenate([p.tiles.numpy() for p in parts])
    return ArrayTileDataset(tiles, np.array([v for p in parts for v in p.labels], dtype=np.int64))


@dataclasses.dataclass
class Data:
    train: dict[str, ArrayTileDataset]
    synth_val: ArrayTileDataset
    c16_val: ArrayTileDataset
    c17_val: ArrayTileDataset
    c17_report: ArrayTileDataset


def load_data(args: argparse.Namespace, work: Path) -> Data:
    rng = np.random.default_rng(args.seed)
    sources = make_synthetic_slides(work)
    c16_train, c16_val = c16_patches(args.data)
    c17_train = concat([c17_crops(args.data, n, 1500, rng, "top") for n in C17_TRAIN_TILES])
    c17_val = concat([c17_crops(args.data, n, 150, rng, "bottom") for n in C17_TRAIN_TILES])
    return Data(
        train={
            "synthetic": synthetic_tiles(sources[:-N_SYNTH_VAL], 250, args.seed),
            "c16": c16_train,
            "pcam": pcam_patches(args.data, 8, rng),
            "c17": c17_train,
        },
        synth_val=synthetic_tiles(sources[-N_SYNTH_VAL:], 150, args.seed + 1),
        c16_val=c16_val,
        c17_val=c17_val,
        c17_report=c17_crops(args.data, C17_REPORT_TILE, 300, rng, "all"),
    )


# --- training ----------------------------------------------------------------------------


def sample_weights(train: dict[str, ArrayTileDataset]) -> list[float]:
    """Per-tile draw weights: SOURCE_WEIGHTS per source, split equally between its classes."""
    weights: list[float] = []
    for name, dataset in train.items():
        labels = np.array(dataset.labels)
        counts = {c: int((labels == c).sum()) for c in np.unique(labels)}
        share = SOURCE_WEIGHTS[name] / len(counts)
        weights.extend(share / counts[int(v)] for v in labels)
    return weights


class PrintProgress:
    """Loss every 50 steps on the console."""

    def __init__(self) -> None:
        self.step = 0
        self.losses: list[float] = []

    def epoch_started(self, epoch: int, n_batches: int, first_batch: int) -> None:
        pass

    def batch_done(self, loss: float) -> None:
        self.step += 1
        self.losses.append(loss)
        if self.step % 50 == 0:
            print(f"  step {self.step}: loss {np.mean(self.losses[-50:]):.3f}", flush=True)

    def epoch_done(self, metrics: object) -> None:
        pass


def train(model: torch.nn.Module, data: Data, args: argparse.Namespace) -> int:
    """Train for args.steps steps or args.max_minutes, whichever ends first; returns steps.

    The one-cycle schedule follows whichever of the two is further along, so a slow (shared)
    machine still finishes the schedule inside the time budget. Runs in chunks of CHUNK steps.
    """
    train_set: ConcatDataset[TileItem] = ConcatDataset(list(data.train.values()))
    weights = sample_weights(data.train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = StepSettings(
        torch.device("cpu"), IMAGENET_MEAN, IMAGENET_STD, AUGMENT, None, args.lr, "onecycle", 0.0
    )
    generator = torch.Generator().manual_seed(args.seed)
    progress, started, index = PrintProgress(), time.perf_counter(), 0
    while True:
        elapsed_min = (time.perf_counter() - started) / 60
        done = max(progress.step / args.steps, elapsed_min / args.max_minutes)
        if done >= 1.0:
            break
        sampler = WeightedRandomSampler(
            weights, CHUNK * args.batch_size, generator=torch.Generator().manual_seed(args.seed + index)
        )
        loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True)
        position = (int(done * SCHEDULE_SLOTS), SCHEDULE_SLOTS, 0)
        train_one_epoch(model, loader, optimizer, scaler, step, generator, position, progress=progress)
        index += 1
    print(f"trained {progress.step} steps in {(time.perf_counter() - started) / 60:.1f} min")
    return progress.step


def scores(
    model: torch.nn.Module, dataset: ArrayTileDataset
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    loader = DataLoader(dataset, batch_size=256)
    return predict(model, loader, torch.device("cpu"), (IMAGENET_MEAN, IMAGENET_STD))


def evaluate_all(model: torch.nn.Module, data: Data) -> tuple[float, dict[str, float]]:
    """The threshold (Youden's J on synthetic validation) and every card metric."""
    p_syn, y_syn = scores(model, data.synth_val)
    threshold = choose_threshold(p_syn, y_syn)
    metrics: dict[str, float] = {}
    for name, (p, y) in {
        "synthetic_val": (p_syn, y_syn),
        f"real_c16_{HOLDOUT_SLIDE}_holdout": scores(model, data.c16_val),
    }.items():
        found = binary_metrics(p, y, threshold)
        metrics.update({f"{name}_{k}": v for k, v in found.items() if k != "loss"})
        metrics[f"{name}_n_tumor"] = float(y.sum())
    p_c17, _ = scores(model, data.c17_val)
    metrics["real_c17_normal_holdout_specificity"] = float(np.mean(p_c17 < threshold))
    metrics["real_c17_normal_holdout_n"] = float(len(p_c17))
    p_097, _ = scores(model, data.c17_report)
    metrics[f"real_c17_{C17_REPORT_TILE}_fraction_positive"] = float(np.mean(p_097 >= threshold))
    metrics[f"real_c17_{C17_REPORT_TILE}_n"] = float(len(p_097))
    return threshold, metrics


# --- the card ----------------------------------------------------------------------------

TRAINING_DATA = (
    "Demonstration data only. (1) Tiles from {n_synth_train} synthetic H&E lymph-node slides "
    "(pipeline.synthetic, seeds {train_seeds}) sampled inside/outside the exact deposit outlines; "
    "(2) {n_c16} real CAMELYON16 patches (256 px at 0.243 um/px, resized to 1.0 um/px) from "
    "slides tumor_001 (tumor) and tumor_004 (normal); every patch of slide {holdout} is held out; "
    "(3) the 15 PatchCamelyon sample patches (0.972 um/px), as random 64 px crops around the "
    "labelled centre; (4) random 64 px crops of CAMELYON17 tiles {c17} (upper three quarters) "
    "as normal tissue; {report} is never trained on. Strong HED stain, brightness/contrast and "
    "blur augmentation; no stain normalisation."
)
NOTES = (
    "NOT A CLINICAL MODEL. A small demonstration model so micromet runs end to end on a laptop; "
    "synthetic validation metrics say nothing about clinical accuracy, and the real-patch "
    "metrics come from a handful of patches. Threshold: Youden's J on the synthetic validation "
    "slides (ties to 0.5). For real use, train on CAMELYON16/17 with `micromet train`."
)


def make_card(threshold: float, metrics: dict[str, float], data: Data) -> ModelCard:
    seeds = ", ".join(str(s[0]) for s in SYNTH_SLIDES[:-N_SYNTH_VAL])
    text = TRAINING_DATA.format(
        n_synth_train=len(SYNTH_SLIDES) - N_SYNTH_VAL,
        train_seeds=seeds,
        n_c16=len(data.train["c16"]),
        holdout=HOLDOUT_SLIDE,
        c17=", ".join(C17_TRAIN_TILES),
        report=C17_REPORT_TILE,
    )
    return ModelCard(
        architecture="micronet",
        tile_size_px=TILE_SIZE_PX,
        mpp=MODEL_MPP,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        threshold=threshold,
        stain_normalization=None,
        training_data=text,
        metrics=metrics,
        notes=NOTES,
    )


def _metric_table(metrics: dict[str, float]) -> str:
    rows = ["| metric | value |", "| --- | --- |"]
    rows += [f"| `{k}` | {v:.4g} |" for k, v in metrics.items()]
    return "\n".join(rows)


def _row(label: str, metrics: dict[str, float], prefix: str) -> str:
    def get(key: str) -> float:
        return metrics.get(f"{prefix}_{key}", math.nan)

    return f"| {label} | {get('auc'):.3f} | {get('accuracy'):.3f} | {get('n'):.0f} ({get('n_tumor'):.0f}) |"


def _card_table(card: ModelCard, args: argparse.Namespace, minutes: float) -> str:
    software = ", ".join(f"{k} {v}" for k, v in card.software.items())
    field_um = card.tile_size_px * card.mpp
    rows = [
        ("architecture", f"`{card.architecture}` (MicroNet, ~0.25 M parameters)"),
        (
            "input",
            f"{card.tile_size_px} x {card.tile_size_px} px RGB tiles at **{card.mpp} µm/px** "
            f"({field_um:.0f} µm field of view)",
        ),
        (
            "normalisation",
            f"tiles / 255, then ImageNet mean {card.mean} / std {card.std}; no stain normalisation",
        ),
        ("output", 'softmax over ("normal", "tumor"); tumor probability = class 1'),
        (
            "operating threshold",
            f"**{card.threshold:.2f}**: Youden's J on the synthetic validation "
            "slides (candidates 0.01-0.99, ties to 0.5)",
        ),
        (
            "trained",
            f"{card.created}, {args.steps} steps of batch {args.batch_size}, AdamW lr "
            f"{args.lr}, one-cycle schedule, {minutes:.1f} min on a 2-core CPU",
        ),
        ("software", software),
        ("reproduce", f"`python scripts/train_default_model.py` (seed {args.seed})"),
    ]
    return "\n".join(["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)])


def write_model_card_md(path: Path, card: ModelCard, args: argparse.Namespace, minutes: float) -> None:
    m = card.metrics
    synth_seeds = f"seeds {SYNTH_SLIDES[-2][0]}, {SYNTH_SLIDES[-1][0]}"
    specificity = m.get("real_c17_normal_holdout_specificity", math.nan)
    n_c17 = m.get("real_c17_normal_holdout_n", 0)
    c17_row = (
        f"| real CAMELYON17 normal crops, held-out quarter of two tiles | - | "
        f"specificity {specificity:.3f} | {n_c17:.0f} (0) |"
    )
    text = f"""# micromet default model (`models/default.pt`)

**This is not a clinical model.** It is a small demonstration classifier that lets micromet run
end to end on a CPU. Its numbers below come from synthetic slides and a few dozen real patches;
they say nothing about diagnostic accuracy. A model for real use comes from training on
CAMELYON16/17 slides with `micromet train` (see `docs/training.md`).

{_card_table(card, args, minutes)}

## Training data

{card.training_data}

patient_097_node_3 (CAMELYON17, a node with a macrometastasis) is not used for training because
its tile may show tumor; the share of its crops scored above the threshold is reported as
information only.

## Validation (split by slide; nothing below was trained on)

| set | AUC | accuracy at threshold | n (tumor) |
| --- | --- | --- | --- |
{_row(f"synthetic validation slides ({synth_seeds})", m, "synthetic_val")}
{_row(f"real CAMELYON16 patches of held-out slide {HOLDOUT_SLIDE}", m, f"real_c16_{HOLDOUT_SLIDE}_holdout")}
{c17_row}

Synthetic accuracy is not clinical accuracy. The real held-out set is tiny (one slide, a few
tumor patches), so its AUC is a sanity check, not an estimate of performance.

## All metrics stored in the card

{_metric_table(m)}

## Limits

- Trained mostly on synthetic tissue; the real tumor morphology seen in training comes from
  about 30 patches of two slides. Expect false positives on real slides (germinal centres,
  histiocytes, stain and scanner differences) and missed small deposits.
- 64 µm tiles at 1.0 µm/px: ITC-sized clusters of a few cells are near the limit of what a tile
  of this size and resolution can show.
- Not validated on any clinical data. Do not use for diagnosis.
"""
    path.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="micromet_default_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = load_data(args, work)
        print(
            f"data ready in {time.perf_counter() - started:.0f} s: "
            + ", ".join(f"{k} {len(v)}" for k, v in data.train.items()),
            flush=True,
        )
        model = build_model("micronet").to(memory_format=torch.channels_last)
        train_started = time.perf_counter()
        args.steps = train(model, data, args)
        minutes = (time.perf_counter() - train_started) / 60
        threshold, metrics = evaluate_all(model, data)
    card = make_card(threshold, metrics, data)
    save_checkpoint(args.out, model, card, {"script": "scripts/train_default_model.py", "seed": args.seed})
    load_checkpoint(args.out)  # refuse to finish with a file that does not load
    write_model_card_md(args.card, card, args, minutes)
    print(f"threshold {threshold:.2f}; " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    print(f"wrote {args.out} and {args.card} in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
