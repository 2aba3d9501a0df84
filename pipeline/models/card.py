"""Models stage: the model card, what a checkpoint's model expects and how it was made.

Reads the card's fields (from a caller, or from the plain dict stored in a checkpoint) and
produces a validated, frozen ``ModelCard``, or a CheckpointError naming the invalid field;
``card_to_dict`` gives the plain (JSON- and ``weights_only``-safe) dict the checkpoint file
stores. Inference takes tile size, mpp and normalisation from the card. The checkpoint file
itself (save, load, digests) is ``pipeline.models.checkpoint``, which imports this module.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import platform
from collections.abc import Mapping
from typing import Any

import torch
import torchvision

import pipeline
from pipeline.config import MAX_PLAUSIBLE_MPP, MIN_PLAUSIBLE_MPP
from pipeline.deposits.confirm import ConfirmModel
from pipeline.deposits.measure import SizeCalibration
from pipeline.errors import CheckpointError
from pipeline.models.architectures import ARCHITECTURES, available_architectures
from pipeline.slides.stain import STAIN_NORMALIZATIONS

# Version of the checkpoint format; the card's fields are part of it.
FORMAT_VERSION = 1
CLASS_NAMES = ("normal", "tumor")
# ImageNet statistics: the usual normalisation for torchvision backbones.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_TILE_SIZE_PX = 32
MAX_TILE_SIZE_PX = 4096
# Smallest normalisation std: a std of 1e-300 turns every tile into inf/NaN model input.
MIN_CARD_STD = 1e-3


def software_versions() -> dict[str, str]:
    """Versions of the software training or running a model: torch, torchvision, micromet."""
    return {
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "micromet": str(pipeline.__version__),
        "python": platform.python_version(),
    }


def _today_iso() -> str:
    return datetime.date.today().isoformat()


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a checkpoint's model expects and how it was made.

    architecture: a name in ``ARCHITECTURES``.
    tile_size_px: tile side the model was trained on, in pixels at ``mpp``.
    mpp: resolution of the training tiles in µm/px.
    mean, std: per-channel RGB normalisation applied to tiles scaled to 0-1.
    class_names: output order of the logits; always ("normal", "tumor").
    threshold: recommended operating tumor probability (0-1).
    stain_normalization: None, or the method applied to tiles before the model ("macenko").
    training_data: plain-language summary of the slides and annotations used.
    metrics: validation metrics by name (e.g. "val_auc").
    software: versions used to train (torch, torchvision, micromet).
    created: ISO 8601 date or date-time of training.
    notes: free text.
    stride_px: heatmap step at ``mpp`` in px, or None for tile_size_px (no overlap). A model
        taught on the central part of its tile (PatchCamelyon: the central 32 px of 96) is
        scored with that part as stride, so each heatmap cell is the region its label covered.
    qc_reference: slide-QC ranges measured on the training data, name -> [low, high]
        (see ``pipeline.slides.qc``); empty when unknown.
    seed_threshold: None, or a tumor probability >= threshold that at least one cell of a
        deposit must reach: cells at or above ``threshold`` outline deposits, and a deposit
        none of whose cells reaches the seed is dropped (hysteresis: isolated weak cells in
        tumor-free tissue are not deposits).
    confirm_threshold: None, or the mean tumor probability over the 8 dihedral poses that one of
        a seeded deposit's best cells must reach for the deposit to be confirmed; unconfirmed
        ITC-size deposits become candidates for review (``pipeline.deposits.decide``).
    size_calibration: {} or {"level", "offset_mm", "error_mm"}: sizes are the contour diameter at
        ``level`` less ``offset_mm``, with the measured 95 % errors ``error_mm`` ([[upper mm,
        error mm], ...]) as their ± (``pipeline.deposits.measure.SizeCalibration``); an optional
        "knots_mm" ([[contour mm, true mm], ...]) corrects by size instead of one offset.
    partner: {} or {"file", "sha256"}: a second checkpoint beside this one (same tile size, µm/px
        and stride) whose tumor probabilities are averaged with this model's for the heatmap
        (``pipeline.models.partner``); the seed, confirm and size rules were measured on that
        average. The confirmation in 8 poses uses this model alone.
    confirm_model: {} or {"intercept", "pose_mean", "pose_min", "ln_size_mm", "threshold"}: the
        second stage that confirms seeded deposits instead of ``confirm_threshold``
        (``pipeline.deposits.decide.ConfirmModel``; fitted on the dev part).
    Raises CheckpointError naming the field when a value is invalid.
    """

    architecture: str
    tile_size_px: int
    mpp: float
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: tuple[str, ...] = CLASS_NAMES
    threshold: float = 0.5
    stain_normalization: str | None = None
    training_data: str = ""
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    software: dict[str, str] = dataclasses.field(default_factory=software_versions)
    created: str = dataclasses.field(default_factory=_today_iso)
    notes: str = ""
    stride_px: int | None = None
    qc_reference: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    seed_threshold: float | None = None
    confirm_threshold: float | None = None
    size_calibration: dict[str, Any] = dataclasses.field(default_factory=dict)
    partner: dict[str, str] = dataclasses.field(default_factory=dict)
    confirm_model: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_card_geometry(self)
        _check_card_extras(self)
        _check_card_normalisation(self)
        _check_card_outputs(self)
        _check_card_text(self)


CARD_FIELDS = tuple(field.name for field in dataclasses.fields(ModelCard))
# Fields added after format version 1 first shipped: a card without them still loads.
OPTIONAL_CARD_FIELDS = (
    "stride_px",
    "qc_reference",
    "seed_threshold",
    "confirm_threshold",
    "size_calibration",
    "partner",
    "confirm_model",
)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _card_error(name: str, value: object, expected: str) -> CheckpointError:
    return CheckpointError(f"model card field {name}={value!r} is invalid; expected {expected}")


def _check_card_geometry(card: ModelCard) -> None:
    if not isinstance(card.architecture, str) or card.architecture not in ARCHITECTURES:
        raise _card_error("architecture", card.architecture, f"one of {', '.join(available_architectures())}")
    size = card.tile_size_px
    if (
        not isinstance(size, int)
        or isinstance(size, bool)
        or not (MIN_TILE_SIZE_PX <= size <= MAX_TILE_SIZE_PX)
    ):
        raise _card_error("tile_size_px", size, f"an integer from {MIN_TILE_SIZE_PX} to {MAX_TILE_SIZE_PX}")
    if not _is_number(card.mpp) or not (MIN_PLAUSIBLE_MPP <= card.mpp <= MAX_PLAUSIBLE_MPP):
        raise _card_error("mpp", card.mpp, f"µm/px from {MIN_PLAUSIBLE_MPP} to {MAX_PLAUSIBLE_MPP}")


def _check_card_extras(card: ModelCard) -> None:
    stride = card.stride_px
    if stride is not None and (
        not isinstance(stride, int) or isinstance(stride, bool) or not (1 <= stride <= card.tile_size_px)
    ):
        raise _card_error(
            "stride_px", stride, f"None or an integer from 1 to tile_size_px={card.tile_size_px}"
        )
    seed = card.seed_threshold
    if seed is not None and (not _is_number(seed) or not (card.threshold <= seed <= 1.0)):
        raise _card_error(
            "seed_threshold", seed, f"None or a probability from threshold={card.threshold} to 1"
        )
    confirm = card.confirm_threshold
    if confirm is not None and (not _is_number(confirm) or not (0.0 <= confirm <= 1.0)):
        raise _card_error("confirm_threshold", confirm, "None or a probability from 0 to 1")
    if card.size_calibration:
        size_calibration_from_card(card)
    if card.confirm_model:
        confirm_model_from_card(card)
    _check_partner(card.partner)
    reference = card.qc_reference
    from pipeline.slides.qc import STAIN_NAMES

    expected = f"a dict of name ({', '.join(STAIN_NAMES)}) -> [low, high] finite numbers with low <= high"
    if not isinstance(reference, dict):
        raise _card_error("qc_reference", reference, expected)
    for key, bounds in reference.items():
        if (
            key not in STAIN_NAMES
            or not isinstance(bounds, (list, tuple))
            or len(bounds) != 2
            or not all(_is_number(v) and math.isfinite(v) for v in bounds)
            or bounds[0] > bounds[1]
        ):
            raise _card_error("qc_reference", {key: bounds}, expected)


def _check_partner(partner: object) -> None:
    expected = '{} or {"file": a file name beside the checkpoint, "sha256": its 64 hex digits}'
    if partner == {}:
        return
    if not isinstance(partner, dict) or set(partner) != {"file", "sha256"}:
        raise _card_error("partner", partner, expected)
    name, digest = partner["file"], partner["sha256"]
    plain_name = isinstance(name, str) and name not in ("", ".", "..") and not set(name) & set("/\\\0")
    hex_digest = isinstance(digest, str) and len(digest) == 64 and set(digest) <= set("0123456789abcdef")
    if not (plain_name and hex_digest):
        raise _card_error("partner", partner, expected)


def size_calibration_from_card(card: ModelCard) -> SizeCalibration | None:
    """The card's size calibration, None when it has none; CheckpointError when malformed."""
    return size_calibration_from_dict(card.size_calibration) if card.size_calibration else None


def size_calibration_from_dict(data: object) -> SizeCalibration:
    """A SizeCalibration from a card's (or a calibration.json's) "size_calibration" dict;
    CheckpointError naming the field when malformed."""
    expected = (
        '{"level": 0-1, "offset_mm": number, "error_mm": [[upper mm, error mm], ...]'
        ', optional "knots_mm": [[contour mm, true mm], ...]}'
    )
    keys = {"level", "offset_mm", "error_mm"}
    if not isinstance(data, dict) or not keys <= set(data) or not set(data) <= keys | {"knots_mm"}:
        raise _card_error("size_calibration", data, expected)
    try:
        pairs = tuple((float(u), float(e)) for u, e in data["error_mm"])
        knots = tuple((float(r), float(t)) for r, t in data.get("knots_mm", ()))
        return SizeCalibration(float(data["level"]), float(data["offset_mm"]), pairs, knots)
    except (TypeError, ValueError) as exc:
        raise _card_error("size_calibration", data, expected) from exc


def confirm_model_from_card(card: ModelCard) -> ConfirmModel | None:
    """The card's second stage, None when it has none; CheckpointError when malformed."""
    if not card.confirm_model:
        return None
    try:
        return ConfirmModel.from_dict(card.confirm_model)
    except (TypeError, ValueError) as exc:
        raise _card_error("confirm_model", card.confirm_model, f"{{}} or {exc}") from exc


def _check_rgb(name: str, value: object, low: float, high: float, low_open: bool) -> None:
    bound = "(" if low_open else "["
    expected = f"a tuple of 3 numbers in {bound}{low}, {high}]"
    if not isinstance(value, tuple) or len(value) != 3:
        raise _card_error(name, value, expected)
    for channel in value:
        if not _is_number(channel) or not math.isfinite(channel):
            raise _card_error(name, value, expected)
        if channel > high or channel < low or (low_open and channel == low):
            raise _card_error(name, value, expected)


def _check_card_normalisation(card: ModelCard) -> None:
    _check_rgb("mean", card.mean, 0.0, 1.0, low_open=False)
    _check_rgb("std", card.std, MIN_CARD_STD, 1.0, low_open=False)
    method = card.stain_normalization
    if method is not None and (not isinstance(method, str) or method not in STAIN_NORMALIZATIONS):
        raise _card_error(
            "stain_normalization", method, f"None or one of {', '.join(map(repr, STAIN_NORMALIZATIONS))}"
        )


def _check_card_outputs(card: ModelCard) -> None:
    if card.class_names != CLASS_NAMES:
        raise _card_error("class_names", card.class_names, f"exactly {CLASS_NAMES!r} in that order")
    if not _is_number(card.threshold) or not (0.0 <= card.threshold <= 1.0):
        raise _card_error("threshold", card.threshold, "a tumor probability from 0 to 1")
    metrics = card.metrics
    if not isinstance(metrics, dict) or not all(
        isinstance(key, str) and _is_number(value) and math.isfinite(value) for key, value in metrics.items()
    ):
        raise _card_error("metrics", metrics, "a dict of metric name -> finite number")


# A model whose own validation AUC is below this is too close to chance (0.5) to trust.
MIN_TRUSTED_VAL_AUC = 0.7


def card_quality_warning(card: ModelCard) -> str:
    """Empty when the card's own validation AUC (``val_auc`` or ``<set>_val_auc``) is at least
    MIN_TRUSTED_VAL_AUC; else a warning for every output that results from this model."""
    figures = {k: v for k, v in card.metrics.items() if k == "val_auc" or k.endswith("_val_auc")}
    if not figures:
        return "model card records no validation AUC: its accuracy is unknown"
    worst_name = min(figures, key=lambda name: figures[name])
    if figures[worst_name] < MIN_TRUSTED_VAL_AUC:
        return (
            f"model card's {worst_name} is {figures[worst_name]:.2f}, near chance "
            f"(below {MIN_TRUSTED_VAL_AUC}): results are unreliable"
        )
    return ""


def _check_card_text(card: ModelCard) -> None:
    software = card.software
    if not isinstance(software, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in software.items()
    ):
        raise _card_error("software", software, "a dict of package name -> version string")
    for name in ("training_data", "notes"):
        if not isinstance(getattr(card, name), str):
            raise _card_error(name, getattr(card, name), "a string")
    try:
        datetime.datetime.fromisoformat(card.created)
    except (TypeError, ValueError):
        raise _card_error("created", card.created, "an ISO 8601 date such as 2024-05-31") from None


def card_to_dict(card: ModelCard) -> dict[str, Any]:
    """The card as a plain dict (str, int, float, None, list, dict): JSON- and torch-safe."""
    return {
        "architecture": str(card.architecture),
        "tile_size_px": int(card.tile_size_px),
        "mpp": float(card.mpp),
        "mean": [float(v) for v in card.mean],
        "std": [float(v) for v in card.std],
        "class_names": [str(v) for v in card.class_names],
        "threshold": float(card.threshold),
        "stain_normalization": (None if card.stain_normalization is None else str(card.stain_normalization)),
        "training_data": str(card.training_data),
        "metrics": {str(k): float(v) for k, v in card.metrics.items()},
        "software": {str(k): str(v) for k, v in card.software.items()},
        "created": str(card.created),
        "notes": str(card.notes),
        "stride_px": None if card.stride_px is None else int(card.stride_px),
        "qc_reference": {str(k): [float(v) for v in b] for k, b in card.qc_reference.items()},
        "seed_threshold": None if card.seed_threshold is None else float(card.seed_threshold),
        "confirm_threshold": None if card.confirm_threshold is None else float(card.confirm_threshold),
        "size_calibration": _size_calibration_dict(card.size_calibration),
        "partner": {str(k): str(v) for k, v in card.partner.items()},
        "confirm_model": {str(k): float(v) for k, v in card.confirm_model.items()},
    }


def _size_calibration_dict(data: dict[str, Any]) -> dict[str, Any]:
    if not data:
        return {}
    return {
        "level": float(data["level"]),
        "offset_mm": float(data["offset_mm"]),
        "error_mm": [[float(u), float(e)] for u, e in data["error_mm"]],
    } | ({"knots_mm": [[float(r), float(t)] for r, t in data["knots_mm"]]} if data.get("knots_mm") else {})


def card_from_dict(data: object, source: str = "model card") -> ModelCard:
    """A ModelCard from a dict as written by ``card_to_dict``.

    Raises CheckpointError naming ``source`` and the field for missing, unknown or invalid fields.
    """
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{source}: model card is a {type(data).__name__}, expected a dict")
    missing = [name for name in CARD_FIELDS if name not in data and name not in OPTIONAL_CARD_FIELDS]
    unknown = sorted(str(key) for key in data if key not in CARD_FIELDS)
    if missing or unknown:
        raise CheckpointError(
            f"{source}: model card fields do not match format version {FORMAT_VERSION}: "
            f"missing {missing or 'none'}, unknown {unknown or 'none'}"
        )
    values: dict[str, Any] = dict(data)
    for name in ("mean", "std", "class_names"):
        if isinstance(values[name], list):
            values[name] = tuple(values[name])
    try:
        return ModelCard(**values)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
