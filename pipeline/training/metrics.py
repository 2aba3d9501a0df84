"""Training: the run's ``metrics.csv``, one row per epoch, and the matching log line.

Reads an epoch's validation metrics, training loss sums (``EpochStats``), position
(``RunState``), learning rate and duration; produces a row of ``METRIC_COLUMNS`` appended to
``metrics.csv`` (header written with the first row, cells made spreadsheet-safe) and an info
log record.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path

from pipeline.errors import OutputError
from pipeline.outputs import csv_safe_dict
from pipeline.training.checkpoint import RunState, Trainer
from pipeline.training.loop import EpochStats

# Records keep the name of the module users run, ``pipeline.training.train``.
log = logging.getLogger("pipeline.training.train")

METRIC_COLUMNS = (
    "epoch",
    "round",
    "global_step",
    "lr",
    "train_loss",
    "n_train",
    "val_loss",
    "val_auc",
    "val_accuracy",
    "val_n",
    "seconds",
)


def append_metrics(path: Path, row: Mapping[str, float]) -> None:
    """Append ``row`` (missing columns left empty) to the metrics CSV at ``path``."""
    new = not path.exists()
    try:
        with path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(csv_safe_dict({k: row.get(k, "") for k in METRIC_COLUMNS}))
    except OSError as exc:
        reason = exc.strerror or exc
        raise OutputError(f"{path}: cannot write here ({reason}); check the folder has space") from exc


def log_epoch(
    out: Path,
    metrics: Mapping[str, float],
    stats: EpochStats,
    state: RunState,
    trainer: Trainer,
    seconds: float,
) -> None:
    """Append a finished epoch's row (metrics, step, learning rate, loss, time) to
    ``out/metrics.csv`` and log it."""
    row = dict(metrics)
    row.update(
        {
            "global_step": float(state.global_step),
            "lr": float(trainer.optimizer.param_groups[0]["lr"]),
            "train_loss": stats.mean_loss,
            "n_train": float(stats.n_samples),
            "seconds": seconds,
        }
    )
    append_metrics(out / "metrics.csv", row)
    log.info("epoch %d: %s", state.epoch, {k: round(v, 4) for k, v in row.items()})
