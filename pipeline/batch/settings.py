"""The settings of one analysis: reads the parsed flags (or values given in code) once into a
frozen, picklable ``AnalysisSettings`` that local and Ray runs alike receive, and produces from
it the ``AnalysisContext`` (model loaded, every stage config resolved) that analyses slides.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import (
    DepositConfig,
    InferenceConfig,
    TilingConfig,
    TissueConfig,
    build_config,
    check_sections,
    check_thresholds,
    config_to_dict,
    load_config_file,
    stage_overrides,
)
from pipeline.errors import ConfigError
from pipeline.slides.qc import QCConfig

if TYPE_CHECKING:
    from torch import nn

    from pipeline.deposits.decide import DepositRules
    from pipeline.detection.inference import PreparedModel
    from pipeline.models import ModelCard

# The sections of a config file, which flag overrides may also name.
CONFIG_SECTIONS = ("tissue", "tiling", "inference", "deposits", "qc")


def _check_mpp(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r} is not a resolution; give µm/px above 0")


@dataclasses.dataclass(frozen=True)
class AnalysisSettings:
    """What the user chose for an analysis, before anything is loaded (picklable: no model).

    model_path, config_path: the checkpoint and the TOML file (None: the default model, no
        file); the file is read by ``build``. Ray nodes need them at the same paths.
    overrides: flag values per config section ("inference", "tiling", "deposits", "qc", ...);
        a None value means "not given".
    mpp_override: µm/px of every slide, or None. mpp_by_slide: slide id -> µm/px
        (``--mpp-csv``), before ``mpp_override``. Either is refused where it contradicts a
        slide's own value unless ``force_mpp``.
    whole_slide: score every tile, not only tissue (for slides tissue detection cannot read).
    Raises ValueError naming the field for an unknown section or a resolution not above 0.
    """

    model_path: Path | None = None
    config_path: Path | None = None
    overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    mpp_override: float | None = None
    force_mpp: bool = False
    mpp_by_slide: Mapping[str, float] = dataclasses.field(default_factory=dict)
    whole_slide: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.overrides) - set(CONFIG_SECTIONS))
        if unknown:
            raise ValueError(f"overrides={unknown} are not config sections; use {', '.join(CONFIG_SECTIONS)}")
        if self.mpp_override is not None:
            _check_mpp("mpp_override", self.mpp_override)
        for slide_id, mpp in self.mpp_by_slide.items():
            _check_mpp(f"mpp_by_slide[{slide_id!r}]", mpp)
        # Own copies: a caller's later change to its dicts cannot change frozen settings.
        object.__setattr__(self, "overrides", {k: dict(v) for k, v in self.overrides.items()})
        object.__setattr__(self, "mpp_by_slide", dict(self.mpp_by_slide))

    @classmethod
    def from_flags(
        cls, options: Mapping[str, Any], mpp_by_slide: Mapping[str, float] | None = None
    ) -> AnalysisSettings:
        """The settings of parsed command-line flags (``vars(args)``: model, config, mpp,
        force_mpp, whole_slide and the stage flags of ``pipeline.config.OVERRIDABLE_SETTINGS``;
        a missing one counts as not given). mpp_by_slide: ``--mpp-csv`` already read."""
        return cls(
            model_path=options.get("model"),
            config_path=options.get("config"),
            overrides=stage_overrides(options),
            mpp_override=options.get("mpp"),
            force_mpp=bool(options.get("force_mpp")),
            mpp_by_slide=dict(mpp_by_slide or {}),
            whole_slide=bool(options.get("whole_slide")),
        )

    @property
    def device(self) -> str:
        """The inference device asked for ("auto" when none was)."""
        return str(self.overrides.get("inference", {}).get("device") or "auto")

    def absolute(self) -> AnalysisSettings:
        """The same settings with absolute paths, so workers with another cwd find the files."""
        from pipeline.models import resolve_model_path

        config = self.config_path.expanduser().resolve() if self.config_path else None
        return dataclasses.replace(
            self, model_path=resolve_model_path(self.model_path).resolve(), config_path=config
        )

    def build(self, device: str | None = None) -> AnalysisContext:
        """Load the model and resolve the configs (``build_context``); ``device`` replaces the
        inference device."""
        return build_context(self, device)


@dataclasses.dataclass(frozen=True)
class AnalysisContext:
    """Everything a slide analysis needs besides the slide: the settings it was built from,
    the model, its card and the resolved stage configs."""

    model: nn.Module
    card: ModelCard
    model_path: Path
    model_sha256: str
    tissue: TissueConfig
    tiling: TilingConfig
    inference: InferenceConfig
    deposits: DepositConfig
    analysis: AnalysisSettings
    qc: QCConfig = dataclasses.field(default_factory=QCConfig)
    partner: tuple[nn.Module, ModelCard, str] | None = None  # pipeline.models.partner

    @property
    def force_mpp(self) -> bool:
        """The user's µm/px wins over a slide's own (``AnalysisSettings.force_mpp``)."""
        return self.analysis.force_mpp

    @property
    def whole_slide(self) -> bool:
        """Score every tile, not only tissue (``AnalysisSettings.whole_slide``)."""
        return self.analysis.whole_slide

    @functools.cached_property
    def prepared(self) -> PreparedModel:
        """The model prepared once (folded, compiled if asked) for every slide of this context."""
        from pipeline.detection.inference import prepare_model

        return prepare_model(self.model, self.card, self.inference)

    @functools.cached_property
    def partner_prepared(self) -> PreparedModel | None:
        """The card's partner model prepared like the model, or None without one."""
        from pipeline.detection.inference import prepare_model

        if self.partner is None:
            return None
        return prepare_model(self.partner[0], self.partner[1], self.inference)

    @functools.cached_property
    def pair_prepared(self) -> PreparedModel | None:
        """The model and its partner prepared as one, scored in one pass, where both score
        densely (``pipeline.detection.paired.prepare_pair``); None otherwise."""
        from pipeline.detection.paired import prepare_pair

        if self.partner is None:
            return None
        return prepare_pair(self.model, self.partner[0], self.card, self.inference)

    def user_mpp(self, slide_id: str) -> tuple[float | None, str]:
        """The µm/px the user gave for a slide (``--mpp-csv`` first, then ``--mpp``), or None,
        and the flag it came from."""
        if slide_id in self.analysis.mpp_by_slide:
            return self.analysis.mpp_by_slide[slide_id], "--mpp-csv"
        return self.analysis.mpp_override, "--mpp"

    @property
    def threshold(self) -> float:
        """The deposit threshold: the user's, else the model card's operating point."""
        return self.deposits.threshold if self.deposits.threshold is not None else self.card.threshold

    @property
    def threshold_source(self) -> str:
        """Where the deposit thresholds came from: "model card", or "user" when either was given."""
        given = self.deposits.threshold is not None or self.deposits.seed_threshold is not None
        return "user" if given else "model card"

    @property
    def seed_threshold(self) -> float | None:
        """The seed a deposit must reach: the user's, else the card's (never below threshold)."""
        seed = self.deposits.seed_threshold
        seed = seed if seed is not None else self.card.seed_threshold
        return None if seed is None else max(seed, self.threshold)

    @functools.cached_property
    def rules(self) -> DepositRules:
        """The deposit rules: the card's, with the user's thresholds where given."""
        from pipeline.deposits.decide import rules_from_card

        return rules_from_card(self.card, self.threshold, self.seed_threshold)

    def settings(self) -> dict[str, Any]:
        """Everything that changes a result, for report.json, run.json and the resume key."""
        return {
            "model_sha256": self.model_sha256,
            "threshold": self.threshold,
            "seed_threshold": self.seed_threshold,
            "confirm_threshold": self.card.confirm_threshold,
            "confirm_model": dict(self.card.confirm_model),
            "size_calibrated": bool(self.card.size_calibration),
            "mpp_override": self.analysis.mpp_override,
            "mpp_by_slide": dict(sorted(self.analysis.mpp_by_slide.items())),
            "force_mpp": self.analysis.force_mpp,
            "whole_slide": self.analysis.whole_slide,
            "qc": config_to_dict(self.qc),
            "tissue": config_to_dict(self.tissue),
            "tiling": config_to_dict(self.tiling),
            "inference": {
                k: v
                for k, v in config_to_dict(self.inference).items()
                if k in ("precision", "cascade", "cascade_screen_threshold")
            },
            "deposits": config_to_dict(self.deposits),
        }

    def model_facts(self) -> dict[str, Any]:
        """The model section of report.json."""
        from pipeline.models.card import card_quality_warning

        return {
            "path": str(self.model_path),
            "sha256": self.model_sha256,
            "architecture": self.card.architecture,
            "tile_size_px": self.card.tile_size_px,
            "mpp": self.card.mpp,
            "threshold": self.threshold,
            "seed_threshold": self.seed_threshold,
            "threshold_source": self.threshold_source,
            "warning": card_quality_warning(self.card),  # near-chance or absent validation AUC
            "partner": None if self.partner is None else {
                "file": self.card.partner["file"], "sha256": self.partner[2],
                "architecture": self.partner[1].architecture,
            },
        }


def build_context(settings: AnalysisSettings, device: str | None = None) -> AnalysisContext:
    """Load the model and resolve every stage config: defaults, config file, then flags.

    Tile size and resolution always come from the model card, never from flags. device:
    replaces the inference device of the settings (None: keep it). Raises ConfigError for a
    bad config file or value, CheckpointError for a bad model file.
    """
    from pipeline.models import choose_device, file_sha256, load_checkpoint, resolve_model_path
    from pipeline.models.partner import load_partner

    config_path = settings.config_path
    sections: dict[str, Any] = load_config_file(config_path) if config_path else {}
    unknown = set(sections) - set(CONFIG_SECTIONS)
    if unknown:
        raise ConfigError(
            f"{config_path}: unknown sections {sorted(unknown)}; use {', '.join(CONFIG_SECTIONS)}"
        )
    source = str(config_path or "command line")
    check_sections(sections, source)
    overrides = dict(settings.overrides)
    if device is not None:
        overrides["inference"] = {**overrides.get("inference", {}), "device": device}
    inference = build_config(InferenceConfig, sections.get("inference"), overrides.get("inference"), source)
    path = resolve_model_path(settings.model_path)
    model, card = load_checkpoint(path, device=str(choose_device(inference.device)))
    partner = load_partner(path, card, device=str(choose_device(inference.device)))
    tiling_section = dict(sections.get("tiling", {}))
    for fixed in ("tile_size_px", "mpp"):
        if fixed in tiling_section:
            raise ConfigError(f"{source}: tiling.{fixed} comes from the model card; remove it")
    tiling_overrides = {**overrides.get("tiling", {}), "tile_size_px": card.tile_size_px, "mpp": card.mpp}
    if tiling_overrides.get("stride_px") is None and "stride_px" not in tiling_section:
        # The card's stride: the heatmap cell is the part of the tile the model was taught on.
        tiling_overrides["stride_px"] = card.stride_px
    context = AnalysisContext(
        model=model,
        card=card,
        model_path=path,
        model_sha256=file_sha256(path),
        tissue=build_config(TissueConfig, sections.get("tissue"), overrides.get("tissue"), source),
        tiling=build_config(TilingConfig, tiling_section, tiling_overrides, source),
        inference=inference,
        deposits=build_config(DepositConfig, sections.get("deposits"), overrides.get("deposits"), source),
        analysis=settings,
        qc=build_config(QCConfig, sections.get("qc"), overrides.get("qc"), source),
        partner=partner,
    )
    check_thresholds(context.deposits, context.inference, context.threshold, source)
    return context
