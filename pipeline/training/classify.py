"""Classification: scores tiles and patch image files with a model; one probability each.

Reads image files (PNG/JPEG/TIFF) at a stated µm/px, or batches of uint8 tiles from a
DataLoader; produces tumor probabilities (softmax of the "tumor" logit), tile metrics and
a CSV of (path, tumor_probability, error). Patches are resized by physical scale to the
card's µm/px, then centre-cropped or mirror-padded to the card's tile size
(``pipeline.training.datasets.fit_to_tile``), and stain-normalised as the card says, exactly as in
training.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from pipeline.config import MAX_PLAUSIBLE_MPP, MIN_PLAUSIBLE_MPP
from pipeline.detection.inference import check_finite_probabilities
from pipeline.errors import ConfigError
from pipeline.models import ModelCard
from pipeline.outputs import atomic_write_text, csv_safe_row
from pipeline.slides.slide import check_readable_folder
from pipeline.slides.stain import normalize_stain
from pipeline.training.datasets import IMAGE_SUFFIXES, PatchImageError, fit_to_tile, load_rgb

log = logging.getLogger(__name__)

TUMOR_CLASS_INDEX = 1
CSV_COLUMNS = ("path", "tumor_probability", "error")


def unit_float(tiles: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 tiles -> (B, 3, H, W) float32 in 0-1 on ``device``."""
    return tiles.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


def to_model_input(tiles: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, H, W) float tiles in 0-1 -> normalised with mean/std, channels_last."""
    shape = (1, 3, 1, 1)
    mean_t = torch.tensor(mean, dtype=tiles.dtype, device=tiles.device).view(shape)
    std_t = torch.tensor(std, dtype=tiles.dtype, device=tiles.device).view(shape)
    return ((tiles - mean_t) / std_t).contiguous(memory_format=torch.channels_last)


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """torch.autocast for ``dtype``, or a no-op context for full precision (None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def score_batch(
    model: nn.Module,
    tiles: torch.Tensor,
    device: torch.device,
    normalisation: tuple[Sequence[float], Sequence[float]],
    amp_dtype: torch.dtype | None = None,
) -> NDArray[np.float32]:
    """Tumor probabilities (B,) of (B, H, W, 3) uint8 tiles; normalisation: the card's
    (mean, std). The model must already be on ``device`` and in eval mode."""
    batch = to_model_input(unit_float(tiles, device), *normalisation)
    with autocast_context(device, amp_dtype):
        logits = model(batch)
    probabilities = torch.softmax(logits.float(), dim=1)[:, TUMOR_CLASS_INDEX]
    return probabilities.cpu().numpy().astype(np.float32)


def predict(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, Any]],
    device: torch.device,
    normalisation: tuple[Sequence[float], Sequence[float]],
    amp_dtype: torch.dtype | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Tumor probabilities and labels of every (uint8 tiles, labels) batch, in order.

    Puts the model in eval mode (callers that train switch it back).
    """
    model.eval()
    probabilities: list[NDArray[np.float32]] = []
    labels: list[NDArray[np.int64]] = []
    for tiles, batch_labels in batches:
        probabilities.append(score_batch(model, tiles, device, normalisation, amp_dtype))
        labels.append(np.asarray(batch_labels, dtype=np.int64).reshape(-1))
    if not probabilities:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(probabilities), np.concatenate(labels)


def roc_auc(probabilities: NDArray[np.float32], labels: NDArray[np.int64]) -> float:
    """Area under the ROC curve of patch probabilities (``pipeline.evaluation.slide_auc.rank_auc``,
    ties counted half); NaN with one class, as a validation split may have."""
    from pipeline.evaluation.slide_auc import rank_auc

    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    n_pos = int((labels == 1).sum())
    if n_pos == 0 or n_pos == len(labels):
        return math.nan
    return float(rank_auc(labels, np.asarray(probabilities).reshape(-1))[0])


def binary_metrics(
    probabilities: NDArray[np.float32], labels: NDArray[np.int64], threshold: float = 0.5
) -> dict[str, float]:
    """auc (NaN with one class), accuracy at ``threshold``, mean cross-entropy loss, n."""
    n = len(labels)
    if n == 0:
        return {"auc": math.nan, "accuracy": math.nan, "loss": math.nan, "n": 0.0}
    p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    loss = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    auc = roc_auc(probabilities, labels)
    accuracy = float(np.mean((p >= threshold) == (labels == 1)))
    return {"auc": auc, "accuracy": accuracy, "loss": loss, "n": float(n)}


def choose_threshold(probabilities: NDArray[np.float32], labels: NDArray[np.int64]) -> float:
    """The probability threshold maximising Youden's J (sensitivity + specificity - 1).

    Candidates are 0.01, 0.02, ..., 0.99; ties (common when validation tiles separate
    perfectly) go to the candidate nearest 0.5. Returns 0.5 when the labels hold one class.
    """
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return 0.5
    candidates = np.round(np.arange(1, 100) / 100.0, 2)
    positive = probabilities[labels == 1][None, :] >= candidates[:, None]
    negative = probabilities[labels == 0][None, :] >= candidates[:, None]
    youden = positive.mean(axis=1) - negative.mean(axis=1)
    best = np.flatnonzero(youden >= youden.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


# --- patch files -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PatchScore:
    """One scored file: probability None and ``error`` set when it could not be read."""

    path: str
    tumor_probability: float | None
    error: str = ""


def list_patch_files(paths: Sequence[Path]) -> list[Path]:
    """Files as given, plus images (PNG/JPEG/TIFF) found recursively in folders, in order.

    Raises ConfigError for a path that does not exist or when nothing is found.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            check_readable_folder(path)  # an unreadable folder is not "no patch images"
            files.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
        else:
            raise ConfigError(f"{path}: patch file or folder not found")
    if not files:
        raise ConfigError(f"no patch images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return files


def load_patch_tile(path: Path, patch_mpp: float, card: ModelCard) -> NDArray[np.uint8]:
    """The model tile of one patch file (see the module docstring); PatchImageError if bad."""
    tile = fit_to_tile(load_rgb(path), patch_mpp, card.mpp, card.tile_size_px)
    return normalize_stain(tile, card.stain_normalization)


def classify_patches(
    files: Sequence[Path],
    patch_mpp: float,
    model: nn.Module,
    card: ModelCard,
    device: torch.device,
    batch_size: int = 64,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
    partner: tuple[nn.Module, ModelCard] | None = None,
) -> list[PatchScore]:
    """Score image files at ``patch_mpp`` µm/px; one PatchScore per file, in order.

    partner: the card's partner model and its card (``pipeline.models.partner``):
    probabilities are the average of both models', as in ``infer``.

    An unreadable file raises PatchImageError naming it, or with ``skip_bad`` becomes a row
    with an empty probability and the error text. progress: called with files done.
    Raises CheckpointError if the model's output for a batch is NaN or infinite.
    """
    if not MIN_PLAUSIBLE_MPP <= patch_mpp <= MAX_PLAUSIBLE_MPP:
        raise ConfigError(
            f"--mpp {patch_mpp!r} is invalid; give the patches' µm/px "
            f"({MIN_PLAUSIBLE_MPP} to {MAX_PLAUSIBLE_MPP})"
        )
    model.to(device).eval()
    if partner is not None:
        partner[0].to(device).eval()
    scores: list[PatchScore] = []
    pending: list[tuple[Path, NDArray[np.uint8]]] = []

    def flush() -> None:
        if pending:
            tiles = torch.from_numpy(np.stack([tile for _, tile in pending]))
            probabilities = score_batch(model, tiles, device, (card.mean, card.std))
            if partner is not None:
                other = score_batch(partner[0], tiles, device, (partner[1].mean, partner[1].std))
                probabilities = (probabilities + other) / np.float32(2.0)
            check_finite_probabilities(probabilities, f"{pending[0][0]} and its batch", unit="patches")
            for (path, _), p in zip(pending, probabilities, strict=True):
                scores.append(PatchScore(str(path), float(p)))
            pending.clear()

    for path in files:
        try:
            pending.append((path, load_patch_tile(path, patch_mpp, card)))
        except PatchImageError as exc:
            if not skip_bad:
                raise
            log.warning("%s", exc)
            flush()  # keep rows in input order
            scores.append(PatchScore(str(path), None, str(exc)))
        if len(pending) >= batch_size:
            flush()
        if progress is not None:
            progress(1)
    flush()
    return scores


def write_scores_csv(path: Path, scores: Sequence[PatchScore]) -> Path:
    """Write ``path,tumor_probability,error`` rows (probability to 6 decimals) atomically; a
    folder, device or FIFO at ``path`` is refused (OutputError), never replaced."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for s in scores:
        p = "" if s.tumor_probability is None else f"{s.tumor_probability:.6f}"
        writer.writerow(csv_safe_row([s.path, p, s.error]))
    atomic_write_text(path, buffer.getvalue())
    return path
