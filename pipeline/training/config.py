"""Training: the settings of a ``micromet train`` run, one frozen dataclass per TOML section.

Reads a TOML file's [train], [data], [sampling] (with [sampling.tissue]) and [augment]
sections plus command-line overrides; produces ``TrainSettings`` and writes them back as
TOML (``config.toml`` beside the checkpoints) or as a plain dict (inside each checkpoint).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from pipeline.config import (
    MAX_PLAUSIBLE_MPP,
    MIN_PLAUSIBLE_MPP,
    TissueConfig,
    build_config,
    check_range,
    check_sections,
)
from pipeline.errors import ConfigError
from pipeline.models.architectures import check_architecture
from pipeline.models.device import PRECISIONS, Precision
from pipeline.slides.stain import check_stain_normalization
from pipeline.training.augment import AugmentConfig
from pipeline.training.sampling import SampleConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop ([train] in the TOML file).

    out_dir: run folder. tile_size_px / mpp: model tile side in px at mpp µm/px.
    lr: peak learning rate; scheduler "cosine" (warmup_fraction of the run, then cosine to
    zero) or "onecycle" (30 % warm-up, then cosine to lr / 1e4). max_steps: stop after this
    many optimiser steps in all (a checkpoint is written there; --resume continues exactly).
    hard_negative_rounds: mining rounds spread evenly over the epochs; each scores
    hard_negative_candidates_per_slide fresh normal centres per training slide and adds up to
    hard_negatives_per_slide of them whose tumor probability is at least
    hard_negative_min_probability. init_model: a checkpoint whose weights the run starts from
    (fine-tuning, e.g. on pathologists' reviews); its architecture, tile size and µm/px must
    be the run's. finetune_partner: when init_model's card names a partner, fine-tune that
    partner afterwards on the same data and write the pair (``pipeline.training.pair``).
    """

    out_dir: str = "runs/train"
    architecture: str = "micronet"
    tile_size_px: int = 64
    mpp: float = 1.0
    epochs: int = 10
    batch_size: int = 64
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: Literal["cosine", "onecycle"] = "cosine"
    warmup_fraction: float = 0.02
    num_workers: int = 2
    device: str = "auto"
    precision: Precision = "auto"
    seed: int = 0
    deterministic: bool = False
    max_steps: int | None = None
    stain_normalization: str | None = None
    hard_negative_rounds: int = 0
    hard_negatives_per_slide: int = 50
    hard_negative_candidates_per_slide: int = 400
    hard_negative_min_probability: float = 0.5
    init_model: str | None = None
    finetune_partner: bool = False

    def __post_init__(self) -> None:
        check_architecture(self.architecture)
        check_range("tile_size_px", self.tile_size_px, 32, 4096)
        check_range("mpp", self.mpp, 0.05, 20.0)
        check_range("epochs", self.epochs, 1, 100_000)
        check_range("batch_size", self.batch_size, 2, 65_536)
        check_range("lr", self.lr, 1e-8, 10.0)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("momentum", self.momentum, 0.0, 0.999)
        check_range("seed", self.seed, 0, 2**32 - 1)
        check_range("warmup_fraction", self.warmup_fraction, 0.0, 0.5)
        check_range("num_workers", self.num_workers, 0, 256)
        check_range("hard_negative_rounds", self.hard_negative_rounds, 0, 100)
        check_range("hard_negative_min_probability", self.hard_negative_min_probability, 0.0, 1.0)
        if self.max_steps is not None:
            check_range("max_steps", self.max_steps, 1, 10**12)
        for name, allowed in (
            ("optimizer", ("adamw", "sgd")),
            ("scheduler", ("cosine", "onecycle")),
            ("precision", PRECISIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; use {allowed}")
        check_stain_normalization(self.stain_normalization)
        if self.init_model is not None and not isinstance(self.init_model, str):
            raise ValueError(f"init_model={self.init_model!r}; expected the path of a checkpoint")
        if self.finetune_partner and self.init_model is None:
            raise ValueError(
                "finetune_partner without init_model; add --init-model CHECKPOINT (a partnered one)"
            )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training data ([data] in the TOML file); paths are strings.

    slides: slide files or folders (searched recursively). annotations: folders of annotation
    files named like the slides (CAMELYON ``lesion_annotations``); files beside a slide with
    its stem are found without this. patches / val_patches: folders with tumor/ and normal/
    image subfolders at patch_mpp µm/px. pcam: folders with PatchCamelyon .h5 files (split
    train -> training, valid -> validation). slide_mpp: µm/px for slides lacking it.
    val_fraction: share of slides (annotated and normal separately) kept for validation.
    index: a sample index CSV from an earlier run to reuse instead of sampling the slides.
    reviews: batch folders whose complete pathologist reviews add tiles
    (``pipeline.training.review_samples``): review_tiles_per_deposit tumor tiles per confirmed,
    corrected or drawn deposit, as many hard negatives per rejected one; and with
    review_negatives_per_slide N > 0, the N cells of each reviewed slide's heatmap scored highest
    outside every deposit (a complete review says that tissue holds no tumor) as hard negatives.
    """

    slides: tuple[str, ...] = ()
    annotations: tuple[str, ...] = ()
    patches: tuple[str, ...] = ()
    val_patches: tuple[str, ...] = ()
    patch_mpp: float | None = None
    pcam: tuple[str, ...] = ()
    slide_mpp: float | None = None
    val_fraction: float = 0.2
    index: str | None = None
    reviews: tuple[str, ...] = ()
    review_tiles_per_deposit: int = 32
    review_negatives_per_slide: int = 0

    def __post_init__(self) -> None:
        for name in ("slides", "annotations", "patches", "val_patches", "pcam", "reviews"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name}={value!r}; expected a list of paths")
            object.__setattr__(self, name, tuple(value))
        if (self.patches or self.val_patches) and self.patch_mpp is None:
            raise ValueError("patches given without patch_mpp; state the patches' µm/px")
        for name in ("patch_mpp", "slide_mpp"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), MIN_PLAUSIBLE_MPP, MAX_PLAUSIBLE_MPP)
        if self.index is not None and not isinstance(self.index, str):
            raise ValueError(f"index={self.index!r}; expected the path of a sample index CSV")
        check_range("val_fraction", self.val_fraction, 0.0, 0.9)
        check_range("review_tiles_per_deposit", self.review_tiles_per_deposit, 1, 100_000)
        check_range("review_negatives_per_slide", self.review_negatives_per_slide, 0, 1_000_000)
        if self.review_negatives_per_slide and not self.reviews:
            raise ValueError("review_negatives_per_slide given without reviews; add --reviews BATCH_DIR")
        if not (self.slides or self.patches or self.pcam or self.index or self.reviews):
            raise ValueError("no training data: give slides, patches, pcam or reviews folders")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Everything a training run needs, one config per TOML section."""

    train: TrainConfig
    data: DataConfig
    sampling: SampleConfig = dataclasses.field(default_factory=SampleConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)


SECTIONS: dict[str, type[Any]] = {
    "train": TrainConfig,
    "data": DataConfig,
    "sampling": SampleConfig,
    "augment": AugmentConfig,
}


def settings_from_dict(
    values: Mapping[str, Any],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    source: str = "config",
) -> TrainSettings:
    """TrainSettings from TOML-style sections, then non-None ``overrides`` per section.

    Raises ConfigError naming ``source`` for unknown sections or keys and bad values.
    """
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown sections {unknown}; known: {sorted(SECTIONS)}")
    check_sections(values, source)
    built: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        section = dict(values.get(name, {}))
        if name == "sampling" and "tissue" in section:
            section["tissue"] = build_config(TissueConfig, section["tissue"], None, source)
        if name == "data":
            section = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
        built[name] = build_config(cls, section, (overrides or {}).get(name), source)
    return TrainSettings(**built)


def settings_to_dict(settings: TrainSettings) -> dict[str, dict[str, Any]]:
    """Plain sections (lists, no tuples; None kept) for checkpoints and config.toml."""

    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {name: plain(dataclasses.asdict(getattr(settings, name))) for name in SECTIONS}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def settings_to_toml(settings: TrainSettings) -> str:
    """The settings as TOML; None values are left out (they are the defaults)."""
    lines: list[str] = []
    for name, section in settings_to_dict(settings).items():
        nested = {k: v for k, v in section.items() if isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines.extend(
            f"{k} = {_toml_value(v)}" for k, v in section.items() if v is not None and k not in nested
        )
        for key, table in nested.items():
            lines.append(f"\n[{name}.{key}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
        lines.append("")
    return "\n".join(lines)
