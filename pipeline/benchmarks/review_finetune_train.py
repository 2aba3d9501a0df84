"""Step 3 of the review fine-tuning bench (``pipeline.benchmarks.review_finetune``): fine-tune
the default model (and, with --finetune-partner, its partner too: ``micromet train
--finetune-partner``) on the reviews with ``micromet train``, then give the new weights the
default card's decision rules, paired as the default is.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.benchmarks.review_finetune_slides import MODEL_MPP, PLACES_CSV, REPO
from pipeline.errors import ConfigError

__all__ = [
    "DEFAULT_MODEL",
    "RULE_FIELDS",
    "finetune",
    "keep_partner_file",
    "load_checkpoint_pair",
    "micromet",
    "run_command",
    "train_command",
    "with_default_rules",
]

DEFAULT_MODEL = REPO / "models" / "default.pt"
# card fields that decide deposits: copied from the default card onto the fine-tuned weights
RULE_FIELDS = (
    "threshold",
    "stride_px",
    "seed_threshold",
    "confirm_threshold",
    "confirm_model",
    "size_calibration",
    "qc_reference",
)


def run_command(command: Sequence[str], log: Path) -> None:
    """Run one command (stdout and stderr to ``log``); raise SystemExit naming the log on failure."""
    print("$ " + " ".join(command), flush=True)
    with log.open("w", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    if code != 0:
        raise SystemExit(f"{log}: the command above failed (exit {code}); read the log, fix, re-run")


def micromet(*args: str) -> list[str]:
    """A ``micromet`` command run by this Python (``python -m pipeline``)."""
    return [sys.executable, "-m", "pipeline", *args]


def train_patch_folder(work: Path, data: Path) -> Path:
    """work/train_patches/{tumor,normal}: links to the node-scale TRAIN part's patches only."""
    folder = work / "train_patches"
    with PLACES_CSV.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["part"] != "train":
                continue
            target = (
                folder
                / ("tumor" if row["label"] == "1" else "normal")
                / f"{row['source']}_{Path(row['file']).name}"
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to((data / row["source"] / row["file"]).resolve())
    return folder


def train_command(args: argparse.Namespace, work: Path, reviewed_batch: Path, patches: Path) -> list[str]:
    """``micromet train``: fine-tune the default model on the reviews and ``patches`` (with
    --finetune-partner its partner too, in work/train/partner; with --control on ``patches``
    alone, no reviews); resumes a run left in work/train."""
    from pipeline.models import read_card

    card = read_card(DEFAULT_MODEL)
    mined = args.negatives_per_slide
    reviews = [
        "--reviews", str(reviewed_batch), "--review-tiles-per-deposit", str(args.tiles_per_deposit),
        *(["--review-negatives-per-slide", str(mined)] if mined else []),
    ]  # fmt: skip
    partner = ["--finetune-partner"] if args.finetune_partner else []
    out = work / "train"
    if (out / "last.pt").is_file():  # resume (a finished run returns at once)
        return micromet("train", "--resume", str(out / "last.pt"), "--no-progress")  # its settings name out
    return micromet(
        "train", *([] if args.control else reviews), "--init-model", str(DEFAULT_MODEL),
        "--arch", card.architecture, "--tile-size-px", str(card.tile_size_px), "--model-mpp", f"{card.mpp}",
        "--patches", str(patches), "--patch-mpp", f"{MODEL_MPP}", "--epochs", str(args.epochs),
        "--lr", f"{args.lr}", "--scheduler", "cosine", "--batch-size", "64", "--workers", "1",
        "--seed", str(args.seed), "--out", str(out), "--no-progress", *partner,
    )  # fmt: skip


def with_default_rules(
    trained: Path, out: Path, default: Path = DEFAULT_MODEL, keep_partner: bool = False,
    partner: Path | None = None,
) -> Path:  # fmt: skip
    """``out``: the weights of ``trained`` with the decision rules (RULE_FIELDS) of ``default``'s
    card. With ``keep_partner`` the card also names ``default``'s partner (unchanged), copied
    beside ``out`` under its own file name, so the fine-tuned model scores as a pair (its
    SHA-256 is checked on load); a ``default`` without a partner is refused then. With
    ``partner`` (a fine-tuned partner beside ``out``) the card names that file instead."""
    from pipeline.models import load_checkpoint, read_card, save_checkpoint
    from pipeline.models.partner import with_partner

    model, card = load_checkpoint(trained)
    default_card = read_card(default)
    rules: dict[str, Any] = {name: getattr(default_card, name) for name in RULE_FIELDS}
    notes = f"{card.notes}; decision rules ({', '.join(RULE_FIELDS)}) copied from {default}'s card"
    if partner is not None:
        rules["partner"] = dict(with_partner(card, partner).partner)
        notes += f"; averaged with {partner.name}, {default}'s partner fine-tuned on the same reviews"
    elif keep_partner:
        rules["partner"] = dict(keep_partner_file(default, out.parent))
        notes += f"; averaged with {default}'s unchanged partner {rules['partner']['file']}"
    card = dataclasses.replace(card, **rules, notes=notes)
    save_checkpoint(out, model, card, {"script": "scripts/bench_review_finetune.py"})
    if keep_partner or partner is not None:
        load_checkpoint_pair(out)  # refuse to finish with a pair that does not load
    return out


def keep_partner_file(default: Path, folder: Path) -> dict[str, str]:
    """Copy the partner ``default``'s card names into ``folder`` (same file name; kept when an
    identical file is there); the card's partner entry. Raises ConfigError without a partner."""
    from pipeline.models import file_sha256, read_card
    from pipeline.models.partner import partner_path

    card = read_card(default)
    source = partner_path(default, card)
    if source is None:
        raise ConfigError(f"{default}: its card names no partner; run with --no-keep-partner")
    target = folder / source.name
    if not (target.is_file() and file_sha256(target) == card.partner["sha256"]):
        shutil.copyfile(source, target)
    return dict(card.partner)


def load_checkpoint_pair(path: Path) -> None:
    """Load ``path`` and the partner its card names (file, SHA-256 and tile geometry checked)."""
    from pipeline.models import load_checkpoint
    from pipeline.models.partner import load_partner

    _, card = load_checkpoint(path)
    if load_partner(path, card) is None:
        raise ConfigError(f"{path}: its card names no partner although the bench kept one")


def finetune(args: argparse.Namespace, work: Path, reviewed_batch: Path) -> Path:
    """work/finetuned.pt: the fine-tuned weights with the default card's decision rules (paired
    with work/finetuned_partner.pt, the partner ``micromet train --finetune-partner`` trained,
    under --finetune-partner)."""
    target = work / "finetuned.pt"
    if target.is_file():
        return target
    patches = train_patch_folder(work, args.data)
    command = train_command(args, work, reviewed_batch, patches)
    (work / "train_command.txt").write_text(" ".join(command) + "\n", encoding="utf-8")
    run_command(command, work / "train.log")
    partner = None
    if args.finetune_partner:
        partner = work / "finetuned_partner.pt"
        shutil.copyfile(work / "train" / "partner" / "last.pt", partner)
    trained = work / "train" / "last.pt"
    return with_default_rules(trained, target, keep_partner=args.keep_partner, partner=partner)
