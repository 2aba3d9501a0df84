"""Training: fine-tunes both models of a partnered checkpoint (``finetune_partner``).

The default model averages two networks (``pipeline.models.partner``). Fine-tuning only the
first leaves the other's half of every score where it was: on the review fine-tuning bench
(docs/benchmarks.md, "Learning from reviews") the unchanged partner kept most false deposits on
unreviewed tissue. With ``[train] finetune_partner`` a run whose ``init_model`` names a partner
trains that partner afterwards on the same data and settings, in ``<out>/partner/``, and
writes the pair: ``<out>/pair.pt`` (the model's last weights, its card naming the partner) and
``<out>/partner.pt`` (the partner's last weights) beside it.

The pair's threshold is the fine-tuned model's own (chosen on its validation tiles, or 0.5
without them); seed, confirmation and size calibration are not carried from the init model's
card, as for any fine-tune: measure them on the pair (``scripts/bench_node_scale.py calibrate
--write-card``) before reading its categories.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.training.checkpoint import TrainResult
    from pipeline.training.config import TrainSettings

__all__ = ["PAIR_FILE", "PARTNER_DIR", "PARTNER_FILE", "finetune_partner", "partner_settings", "write_pair"]

PARTNER_DIR = "partner"
PAIR_FILE = "pair.pt"
PARTNER_FILE = "partner.pt"

RunFunction = Callable[["TrainSettings", "Path | None"], "TrainResult"]


def init_partner(settings: TrainSettings) -> Path:
    """The partner checkpoint the run's init model names; ConfigError naming the file when it
    names none or the file is missing."""
    from pipeline.models import read_card
    from pipeline.models.partner import partner_path

    init = settings.train.init_model
    assert init is not None  # TrainConfig refuses finetune_partner without init_model
    path = partner_path(Path(init), read_card(Path(init)))
    if path is None:
        raise ConfigError(f"{init}: its card names no partner; drop --finetune-partner")
    if not path.is_file():
        raise ConfigError(f"{path}: the partner that {init}'s card names is missing; put it beside {init}")
    return path


def partner_settings(settings: TrainSettings) -> TrainSettings:
    """The partner's run: the same data and settings, starting from the partner's weights
    (its architecture, tile size and µm/px), in ``<out>/partner``."""
    from pipeline.models import read_card

    source = init_partner(settings)
    card = read_card(source)
    train = dataclasses.replace(
        settings.train,
        init_model=str(source),
        architecture=card.architecture,
        tile_size_px=card.tile_size_px,
        mpp=card.mpp,
        out_dir=str(Path(settings.train.out_dir) / PARTNER_DIR),
        finetune_partner=False,
    )
    return dataclasses.replace(settings, train=train)


def write_pair(model_last: Path, partner_last: Path) -> Path:
    """``pair.pt`` beside ``model_last``: its weights and card, naming a copy of
    ``partner_last`` (``partner.pt``, same folder) as partner; loaded back once to check."""
    from pipeline.models import load_checkpoint, save_checkpoint
    from pipeline.models.partner import load_partner, with_partner
    from pipeline.outputs import atomic_write_bytes

    folder = model_last.parent
    partner = folder / PARTNER_FILE
    atomic_write_bytes(partner, partner_last.read_bytes())
    model, card = load_checkpoint(model_last)
    note = (
        f"averaged with {PARTNER_FILE} ({partner_last}), the init model's partner fine-tuned on the "
        "same data; threshold the model's own, seed, confirm and size calibration not measured on "
        "the pair"
    )
    card = dataclasses.replace(
        with_partner(card, partner), notes=f"{card.notes}; {note}" if card.notes else note
    )
    pair = save_checkpoint(folder / PAIR_FILE, model, card)
    load_partner(pair, card)  # the partner reads the same tiles, its SHA-256 matches
    return pair


def finetune_partner(
    settings: TrainSettings, result: TrainResult, run: RunFunction, is_main: bool
) -> TrainResult:
    """After the model's run: train the partner (resuming ``<out>/partner/last.pt`` when there
    is one) and write the pair; ``result`` with ``pair_path`` set, or with ``stopped_early``
    when the partner's run stopped at max_steps (resume the same way to finish it)."""
    partner = partner_settings(settings)
    last = Path(partner.train.out_dir) / "last.pt"
    partner_result = run(partner, last if last.is_file() else None)
    if partner_result.stopped_early:
        return dataclasses.replace(result, stopped_early=True)
    if not is_main:
        return result
    return dataclasses.replace(result, pair_path=write_pair(result.last_path, partner_result.last_path))
