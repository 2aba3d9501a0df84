"""``micromet train``: train a tile classifier from slides + annotations, patches or PCam.

Settings resolve as defaults, then the TOML file (--config), then the flags given. The
resolved settings are written to OUT/config.toml; checkpoints (last.pt, best.pt) use the
shared format, so ``micromet infer --model OUT/best.pt`` scores slides with them.
Multi-GPU: ``torchrun --nproc_per_node N -m pipeline train ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.cli.values import mpp_float, plain_float, seed_int
from pipeline.models.device import PRECISIONS

# Flag destination -> (TOML section, key).
FLAG_KEYS: dict[str, tuple[str, str]] = {
    "out": ("train", "out_dir"),
    "architecture": ("train", "architecture"),
    "tile_size_px": ("train", "tile_size_px"),
    "model_mpp": ("train", "mpp"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "optimizer": ("train", "optimizer"),
    "lr": ("train", "lr"),
    "weight_decay": ("train", "weight_decay"),
    "scheduler": ("train", "scheduler"),
    "num_workers": ("train", "num_workers"),
    "device": ("train", "device"),
    "precision": ("train", "precision"),
    "seed": ("train", "seed"),
    "deterministic": ("train", "deterministic"),
    "max_steps": ("train", "max_steps"),
    "stain_normalization": ("train", "stain_normalization"),
    "hard_negative_rounds": ("train", "hard_negative_rounds"),
    "slides": ("data", "slides"),
    "annotations": ("data", "annotations"),
    "patches": ("data", "patches"),
    "val_patches": ("data", "val_patches"),
    "patch_mpp": ("data", "patch_mpp"),
    "pcam": ("data", "pcam"),
    "slide_mpp": ("data", "slide_mpp"),
    "val_fraction": ("data", "val_fraction"),
    "index": ("data", "index"),
    "reviews": ("data", "reviews"),
    "review_tiles_per_deposit": ("data", "review_tiles_per_deposit"),
    "review_negatives_per_slide": ("data", "review_negatives_per_slide"),
    "init_model": ("train", "init_model"),
    "finetune_partner": ("train", "finetune_partner"),
    "tumor_per_slide": ("sampling", "tumor_per_slide"),
    "normal_per_slide": ("sampling", "normal_per_slide"),
}
# Flags that may change when resuming; everything else comes from the checkpoint.
RESUME_FLAGS = ("epochs", "max_steps", "num_workers", "device")
# Flags whose destination is not their name with dashes.
_FLAG_NAMES = {"num_workers": "--workers", "architecture": "--arch"}


def flag_name(dest: str) -> str:
    """The command-line flag of an argparse destination: "num_workers" -> "--workers"."""
    return _FLAG_NAMES.get(dest, "--" + dest.replace("_", "-"))



def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train a tile classifier (slides + annotations, patch folders, PatchCamelyon)",
        description="Train a tumor/normal tile classifier. Settings: defaults, then --config "
        "TOML ([train] [data] [sampling] [augment]), then flags. Writes OUT/config.toml, "
        "samples.csv, last.pt (every epoch), best.pt (best validation AUC) and metrics.csv. "
        "See docs/training.md.",
    )
    add_arguments(parser)
    parser.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training flags (the torchvision-style parser function)."""
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    parser.add_argument("--out", default=None, help="run folder (default runs/train)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        metavar="CHECKPOINT",
        help="continue a run exactly from CHECKPOINT (default OUT/last.pt); settings come "
        f"from it, only {', '.join(flag_name(f) for f in RESUME_FLAGS)} may change",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--slides", nargs="+", default=None, help="slide files or folders")
    data.add_argument("--annotations", nargs="+", default=None, help="annotation folders")
    data.add_argument("--patches", nargs="+", default=None, help="folders with tumor/ normal/")
    data.add_argument("--val-patches", nargs="+", default=None, help="validation patch folders")
    data.add_argument("--patch-mpp", type=mpp_float, default=None, help="µm/px of the patches")
    data.add_argument("--pcam", nargs="+", default=None, help="folders of PatchCamelyon .h5")
    data.add_argument("--slide-mpp", type=mpp_float, default=None, help="µm/px for slides lacking it")
    data.add_argument("--val-fraction", type=plain_float, default=None, help="share of slides for validation")
    data.add_argument("--index", default=None, help="reuse this sample index CSV")
    data.add_argument(
        "--reviews", nargs="+", default=None, metavar="BATCH_DIR",
        help="batch folders whose complete pathologist reviews add tiles: tumor in confirmed, "
        "corrected and drawn deposits, hard negatives in rejected ones (docs/training.md)",
    )
    data.add_argument("--review-tiles-per-deposit", type=int, default=None, metavar="N",
                      help="tiles drawn in each reviewed deposit (default 32)")
    data.add_argument(
        "--review-negatives-per-slide", type=int, default=None, metavar="N",
        help="also train on the N heatmap cells of each completely reviewed slide scored highest "
        "outside every deposit, as hard negatives (default 0: off)",
    )
    data.add_argument("--tumor-per-slide", type=int, default=None)
    data.add_argument("--normal-per-slide", type=int, default=None)
    model = parser.add_argument_group("model")
    model.add_argument("--arch", dest="architecture", default=None, help="e.g. micronet, resnet18")
    model.add_argument("--tile-size-px", type=int, default=None, help="tile side in px")
    model.add_argument("--model-mpp", type=mpp_float, default=None, help="tile resolution, µm/px")
    model.add_argument(
        "--init-model", default=None, metavar="CHECKPOINT",
        help="start from this checkpoint's weights (fine-tuning); give its --arch, "
        "--tile-size-px and --model-mpp",
    )
    model.add_argument(
        "--finetune-partner", action="store_true", default=None,
        help="the --init-model's card names a partner (the default model does): fine-tune it too, "
        "on the same data, in OUT/partner, and write the pair OUT/pair.pt",
    )
    model.add_argument(
        "--stain-normalization",
        choices=("macenko",),
        default=None,
        help="normalise tile stain (recorded in the card; inference applies it too)",
    )
    loop = parser.add_argument_group("optimisation")
    loop.add_argument("--epochs", type=int, default=None)
    loop.add_argument("--batch-size", type=int, default=None)
    loop.add_argument("--optimizer", choices=("adamw", "sgd"), default=None)
    loop.add_argument("--lr", type=plain_float, default=None, help="peak learning rate")
    loop.add_argument("--weight-decay", type=plain_float, default=None)
    loop.add_argument("--scheduler", choices=("cosine", "onecycle"), default=None)
    loop.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    loop.add_argument("--hard-negative-rounds", type=int, default=None)
    loop.add_argument("--workers", dest="num_workers", type=int, default=None, metavar="N",
                      help="DataLoader reader processes (0: read in the main process)")
    loop.add_argument("--device", default=None, help="auto, cpu, cuda[:N] or mps")
    loop.add_argument("--precision", choices=PRECISIONS, default=None)
    loop.add_argument("--seed", type=seed_int, default=None)
    loop.add_argument("--deterministic", action="store_true", default=None)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")


def flag_overrides(
    args: argparse.Namespace, only: tuple[str, ...] | None = None
) -> dict[str, dict[str, Any]]:
    """Section -> {key: value} for the flags the user gave (None means not given)."""
    overrides: dict[str, dict[str, Any]] = {}
    for dest, (section, key) in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is None or (only is not None and dest not in only):
            continue
        overrides.setdefault(section, {})[key] = tuple(value) if isinstance(value, list) else value
    return overrides


class TqdmProgress:
    """A tqdm bar per epoch with the running loss on a terminal; elsewhere (``lines``: a log
    file, a job scheduler) one plain line per epoch on stderr."""

    def __init__(self, enabled: bool, lines: bool = False) -> None:
        self.enabled = enabled
        self.lines = lines and not enabled
        self.bar: Any = None
        self._epoch = 0
        self._losses: list[float] = []

    def epoch_started(self, epoch: int, n_batches: int, first_batch: int) -> None:
        from tqdm import tqdm

        self._epoch, self._losses = epoch, []
        self.bar = tqdm(
            total=n_batches,
            initial=first_batch,
            desc=f"epoch {epoch + 1}",
            unit="batch",
            disable=not self.enabled,
            leave=True,
        )

    def batch_done(self, loss: float) -> None:
        self._losses.append(loss)
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
            self.bar.update(1)

    def epoch_done(self, metrics: Mapping[str, float]) -> None:
        if self.bar is not None:
            shown = {k: f"{v:.3f}" for k, v in metrics.items() if k in ("val_auc", "val_loss")}
            self.bar.set_postfix(shown)
            self.bar.close()
            self.bar = None
        if self.lines:
            print(epoch_line(self._epoch, self._losses, metrics), file=sys.stderr, flush=True)


def epoch_line(epoch: int, losses: list[float], metrics: Mapping[str, float]) -> str:
    """"epoch 3: train loss 0.412 over 12 batches, val AUC 0.912, val loss 0.330"."""
    parts = [f"epoch {epoch + 1}:"]
    if losses:
        parts.append(f"train loss {sum(losses) / len(losses):.3f} over {len(losses)} batches")
    else:
        parts.append("no training batch")
    named = (("val_auc", "val AUC"), ("val_loss", "val loss"))
    parts[-1] += "".join(f", {label} {metrics[key]:.3f}" for key, label in named if key in metrics)
    return " ".join(parts)


def _settings(args: argparse.Namespace) -> tuple[Any, Path | None]:
    from pipeline.config import load_config_file
    from pipeline.training.config import settings_from_dict, settings_to_dict
    from pipeline.training.train import resume_settings

    if args.resume is None:
        values = load_config_file(args.config) if args.config is not None else {}
        source = str(args.config) if args.config is not None else "command line"
        return settings_from_dict(values, flag_overrides(args), source=source), None
    last = Path(args.out or "runs/train") / "last.pt"
    resume = last if args.resume == "last" else Path(args.resume)
    stored = settings_to_dict(resume_settings(resume))
    stored["train"]["out_dir"] = str(resume.parent)  # a moved or copied run continues where it is now
    settings = settings_from_dict(stored, flag_overrides(args, RESUME_FLAGS), source=str(resume))
    return settings, resume


def run(args: argparse.Namespace) -> int:
    """Train; prints where the checkpoints are. Exit 0, or 2 for conflicting options."""
    if args.resume is not None:
        ignored = [d for d in FLAG_KEYS if getattr(args, d, None) is not None and d not in RESUME_FLAGS]
        ignored = [d for d in ignored if d != "out" or args.resume != "last"]
        if args.config is not None or ignored:
            print(
                "micromet train: error: --resume takes the settings from the checkpoint; "
                f"drop --config and {', '.join(flag_name(d) for d in ignored)}",
                file=sys.stderr,
            )
            return 2
    from pipeline.training.train import main

    settings, resume = _settings(args)
    # Under torchrun only rank 0 talks to the console.
    is_main = os.environ.get("RANK", "0") == "0"
    enabled = is_main and not args.no_progress and sys.stderr.isatty()
    lines = is_main and not args.no_progress
    result = main(settings, resume=resume, progress=TqdmProgress(enabled, lines))
    if not is_main:
        return 0
    state = "stopped at --max-steps" if result.stopped_early else "finished"
    print(
        f"{state}: {result.epochs_done} epochs, {result.global_step} steps; "
        f"last {result.last_path}; best {result.best_path} (val AUC {result.best_auc:.4f})"
    )
    if result.pair_path is not None:
        print(f"pair: {result.pair_path} (the model's last weights averaged with its fine-tuned partner)")
    return 0
