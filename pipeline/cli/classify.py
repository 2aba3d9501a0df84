"""``micromet classify PATCHES... --mpp M --out CSV``: tumor probability of image patches.

Each patch is resized from its stated µm/px to the model's (physical scale), then
centre-cropped or mirror-padded to the model's tile size, and scored. One CSV row per file:
``path,tumor_probability,error``. An unreadable file stops the command with an error naming
it, unless --skip-bad is given: then its row has an empty probability and the error text.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from pipeline.cli.values import mpp_float


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``classify`` subcommand."""
    parser = subparsers.add_parser(
        "classify",
        help="score image patches (PNG/JPEG/TIFF) with a tile classifier",
        description="Score image patches with a checkpoint. Patches are brought from --mpp to "
        "the model's µm/px by physical scale, then centre-cropped or mirror-padded to its tile "
        "size. Writes one CSV row per file: path, tumor_probability, error.",
    )
    parser.add_argument("patches", nargs="+", type=Path, metavar="PATCH", help="image files or folders")
    parser.add_argument("--mpp", type=mpp_float, required=True, help="µm/px of the patches")
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument(
        "--model", type=Path, default=None, help="checkpoint file (default: models/default.pt)"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda[:N] or mps")
    parser.add_argument("--batch-size", type=int, default=64, help="patches per model batch")
    parser.add_argument(
        "--skip-bad", action="store_true", help="record unreadable files as rows with an error"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Score the patches; exit 0, or 1 when --skip-bad recorded failed files."""
    from tqdm import tqdm

    from pipeline.errors import ConfigError
    from pipeline.models import choose_device, load_checkpoint, resolve_model_path
    from pipeline.training.classify import classify_patches, list_patch_files, write_scores_csv

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size} is invalid; use 1 or more")
    files = list_patch_files(args.patches)
    with contextlib.suppress(OSError, RuntimeError):  # a path the system refuses: the writer names it
        if args.out.resolve() in {path.resolve() for path in files}:
            raise ConfigError(f"{args.out}: --out is one of the patches to score; write the CSV elsewhere")
    model_path = resolve_model_path(args.model)
    device = choose_device(args.device)
    model, card = load_checkpoint(model_path, device)
    from pipeline.models.card import card_quality_warning
    from pipeline.models.partner import load_partner

    partner = load_partner(model_path, card, device)

    if card_quality_warning(card):
        print(f"micromet classify: warning: {model_path}: {card_quality_warning(card)}", file=sys.stderr)
    enabled = not args.no_progress and sys.stderr.isatty()
    with tqdm(total=len(files), unit="patch", disable=not enabled) as bar:

        def advance(n_files: int) -> None:
            bar.update(n_files)

        scores = classify_patches(
            files, args.mpp, model, card, device, args.batch_size, args.skip_bad, advance,
            partner=None if partner is None else partner[:2],
        )  # fmt: skip
    write_scores_csv(args.out, scores)
    failed = sum(s.tumor_probability is None for s in scores)
    positive = sum(s.tumor_probability is not None and s.tumor_probability >= card.threshold for s in scores)
    print(
        f"scored {len(scores) - failed} of {len(scores)} patches with {model_path} "
        + ("" if partner is None else f"averaged with its partner {card.partner['file']} ")
        + f"({card.tile_size_px} px at {card.mpp} µm/px); {positive} at or above the card's "
        f"threshold {card.threshold:.2f}; wrote {args.out}"
        + (f"; {failed} unreadable (see the error column)" if failed else "")
    )
    return 1 if failed else 0
