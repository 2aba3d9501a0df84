"""Typed settings for every pipeline stage: one frozen dataclass per stage.

Each dataclass checks its values in ``__post_init__`` and raises ``ValueError``
naming the field, the value and the allowed range. Settings resolve as
defaults, then a TOML config file, then the flags the user gave.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pipeline.errors import ConfigError
from pipeline.models.device import PRECISIONS, Precision

# Plausible microns per pixel for a whole-slide scan: 0.05 (oil, 100x) to 20
# (a macro photograph). Anything outside is a metadata error, not a slide.
MIN_PLAUSIBLE_MPP = 0.05
MAX_PLAUSIBLE_MPP = 20.0

# The reference data folder beside the repository (``../shared/data``, README there): real
# tissue for the texture of synthetic slides, the benchmarks and the tests. Only a source
# checkout has it; nothing reads it unless asked to.
SHARED_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Level-0 resolution of the CAMELYON16 slides, patches and outlines, and of the CAMELYON17
# tiles (judged by nucleus size) in SHARED_DATA_DIR, µm/px (its README; some CAMELYON17
# centres scan at 0.226, which no file there comes from).
CAMELYON_LEVEL0_MPP = 0.243
# PatchCamelyon patches: CAMELYON16 level 2, four times the level-0 pixel, µm/px.
PCAM_MPP = 4 * CAMELYON_LEVEL0_MPP


def check_range(name: str, value: float, low: float, high: float) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a finite number (not a bool) in
    [low, high]: the one range check of every settings dataclass."""
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (number and low <= value <= high):
        raise ValueError(f"{name}={value!r} is out of range; allowed {low} to {high}")


@dataclasses.dataclass(frozen=True)
class TissueConfig:
    """Tissue detection on a low-resolution thumbnail.

    mask_mpp: resolution of the tissue mask in µm/px.
    min_tissue_area_mm2: connected tissue pieces smaller than this are dropped (specks).
    max_hole_area_mm2: holes inside tissue smaller than this are filled.
    min_saturation: floor for the saturation threshold (0-1); Otsu may only raise it.
    reject_pen: drop strongly coloured blue/green/black pen marks.
    """

    mask_mpp: float = 8.0
    min_tissue_area_mm2: float = 0.01
    max_hole_area_mm2: float = 0.05
    min_saturation: float = 0.05
    reject_pen: bool = True

    def __post_init__(self) -> None:
        check_range("mask_mpp", self.mask_mpp, 0.5, 128.0)
        check_range("min_tissue_area_mm2", self.min_tissue_area_mm2, 0.0, 1000.0)
        check_range("max_hole_area_mm2", self.max_hole_area_mm2, 0.0, 1000.0)
        check_range("min_saturation", self.min_saturation, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class TilingConfig:
    """A grid of model tiles at a physical resolution.

    tile_size_px: tile side at the model resolution, in pixels.
    mpp: model resolution in µm/px.
    stride_px: step between tiles at the model resolution (default: tile_size_px, no overlap).
    min_tissue_fraction: keep tiles whose tissue coverage exceeds this fraction.
    """

    tile_size_px: int = 224
    mpp: float = 1.0
    stride_px: int | None = None
    min_tissue_fraction: float = 0.25

    def __post_init__(self) -> None:
        check_range("tile_size_px", self.tile_size_px, 8, 4096)
        check_range("mpp", self.mpp, MIN_PLAUSIBLE_MPP, MAX_PLAUSIBLE_MPP)
        if self.stride_px is not None:
            check_range("stride_px", self.stride_px, 1, 4096)
        check_range("min_tissue_fraction", self.min_tissue_fraction, 0.0, 1.0)

    @property
    def effective_stride_px(self) -> int:
        """Stride at the model resolution, defaulting to the tile size."""
        return self.stride_px if self.stride_px is not None else self.tile_size_px


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """How tiles are read and scored.

    device: "auto" picks CUDA, then MPS, then CPU.
    num_workers: reader processes (0 reads in the main process); None fits the split between
        reader processes and torch threads to the slide and model (``pipeline.detection.cpu_plan``).
    region_tiles: model tiles per side of one slide read (1 = one read per tile). 8 read the
        harness slide's 10,866 default-model tiles in 200 reads and scored them in 13.1-14.1 s
        against 15.2-15.3 s with 4 (725 reads); 12 gained nothing more.
    precision: "auto" uses bf16 (else fp16) autocast on GPU, bf16 autocast on a CPU with
        native bf16 (AVX512-BF16 or AMX) and fp32 on other CPUs (``scoring_autocast_dtype``).
    cascade: screen one tile per block first and score densely only around screen tiles at or
        above cascade_screen_threshold (``pipeline.detection.cascade``); on by default, since
        it found every deposit full scoring found on the synthetic benchmark and on small real
        tumor deposits (docs/benchmarks.md, "Cascade") at about half the time. ``--no-cascade``
        scores every tile.
    dense: score regions at once with a model that supports exact dense inference (valid
        convolutions, total stride = grid stride; ``pipeline.detection.dense``), where it is
        exact and cheaper than scoring tile by tile; False always scores tile by tile.
    """

    batch_size: int = 64
    num_workers: int | None = None
    device: str = "auto"
    region_tiles: int = 8
    precision: Precision = "auto"
    compile: bool = False
    cascade: bool = True
    cascade_screen_threshold: float = 0.2
    dense: bool = True

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1, 65536)
        check_range("cascade_screen_threshold", self.cascade_screen_threshold, 0.0, 1.0)
        if self.num_workers is not None:
            check_range("num_workers", self.num_workers, 0, 256)
        check_range("region_tiles", self.region_tiles, 1, 64)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not allowed; use {', '.join(PRECISIONS)}")
        if not (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps")):
            raise ValueError(f"device={self.device!r} is not allowed; use auto, cpu, cuda[:N] or mps")


@dataclasses.dataclass(frozen=True)
class DepositConfig:
    """Turning a heatmap into measured deposits.

    threshold: tumor probability at or above which a heatmap cell is tumor. ``None``
        means "take the operating threshold from the model card"; it is never guessed.
    seed_threshold: a deposit is kept only if one of its cells reaches this probability
        (hysteresis). ``None``: the model card's seed threshold, or none if the card has none.
    refine: rescore deposits whose size is within measurement uncertainty of a
        category boundary at a finer stride.
    refine_stride_fraction: refinement stride as a fraction of the tile size.
    count_cells: estimate tumor nuclei in deposits up to max_cell_count_diameter_mm.
    cell_rule: how a cell count enters the category (``pipeline.staging.CellRule``):
        "size-first" (size decides, a disagreeing count flags the deposit for review) or
        "literal" (the AJCC wording: < 200 cells ITC, > 200 micro, up to 2.0 mm).
    """

    threshold: float | None = None
    seed_threshold: float | None = None
    refine: bool = True
    refine_stride_fraction: float = 0.25
    count_cells: bool = True
    max_cell_count_diameter_mm: float = 1.0
    cell_rule: Literal["size-first", "literal"] = "size-first"

    def __post_init__(self) -> None:
        if self.threshold is not None:
            check_range("threshold", self.threshold, 0.0, 1.0)
        if self.seed_threshold is not None:
            check_range("seed_threshold", self.seed_threshold, 0.0, 1.0)
        check_range("refine_stride_fraction", self.refine_stride_fraction, 0.05, 1.0)
        check_range("max_cell_count_diameter_mm", self.max_cell_count_diameter_mm, 0.0, 10.0)
        if self.cell_rule not in ("size-first", "literal"):
            raise ValueError(f"cell_rule={self.cell_rule!r} is not allowed; use size-first or literal")


@dataclasses.dataclass(frozen=True)
class StagingConfig:
    """Patient pN staging scheme: "camelyon17" (the challenge) or "ajcc" (AJCC 8th)."""

    scheme: Literal["camelyon17", "ajcc"] = "camelyon17"

    def __post_init__(self) -> None:
        if self.scheme not in ("camelyon17", "ajcc"):
            raise ValueError(f"scheme={self.scheme!r} is not allowed; use camelyon17 or ajcc")


T = TypeVar("T")


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file into a dict of sections.

    Raises ConfigError naming the file if it is missing or not valid TOML.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass an existing TOML file")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid TOML config file ({exc})") from exc
    except RecursionError as exc:
        raise ConfigError(f"{path}: nested too deeply to be a micromet config file") from exc
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the config file ({exc.strerror or exc}); check it is readable"
        ) from exc


def check_sections(values: Mapping[str, Any], source: str) -> None:
    """Raise ConfigError unless every section of a config file is a table (``[name]``)."""
    for name, section in values.items():
        if not isinstance(section, Mapping):
            raise ConfigError(
                f"{source}: {name} = {section!r} is not a section; write it as a [{name}] table of settings"
            )


# Field types (as written in the dataclasses) whose values must have exactly that type: a
# TOML 'false' (a string) is true in Python, and 16.5 px is no stride.
_STRICT_TYPES: dict[str, tuple[type, ...]] = {
    "bool": (bool,),
    "int": (int,),
    "int | None": (int,),
    "float": (int, float),
    "float | None": (int, float),
    "str": (str,),
    "str | None": (str,),
}

_EXPECTED = {"bool": "true or false", "int": "a whole number", "int | None": "a whole number",
             "str": "a string", "str | None": "a string"}


def _check_value_type(cls: type[Any], field: dataclasses.Field[Any], value: Any, source: str) -> None:
    allowed = _STRICT_TYPES.get(str(field.type))
    if allowed is None or value is None:
        return
    is_bool = isinstance(value, bool)
    if not isinstance(value, allowed) or (is_bool and bool not in allowed):
        expected = _EXPECTED.get(str(field.type), "a number")
        raise ConfigError(
            f"{source}: {cls.__name__}: {field.name}={value!r} is {type(value).__name__}; expected {expected}"
        )


def build_config(
    cls: type[T],
    section: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    source: str = "config",
) -> T:
    """Build a stage config: defaults, then ``section`` values, then non-None ``overrides``.

    Raises ConfigError naming ``source`` for unknown keys or out-of-range values.
    """
    assert dataclasses.is_dataclass(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if section is not None and not isinstance(section, Mapping):
        raise ConfigError(
            f"{source}: {cls.__name__} settings must be a table of name = value, not {section!r}"
        )
    values: dict[str, Any] = {}
    for key, value in (section or {}).items():
        if key not in fields:
            raise ConfigError(
                f"{source}: unknown setting {key!r} for {cls.__name__}; known: {sorted(fields)}"
            )
        _check_value_type(cls, fields[key], value, source)
        values[key] = value
    for key, value in (overrides or {}).items():
        if value is not None:
            if key in fields:
                _check_value_type(cls, fields[key], value, source)
            values[key] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {cls.__name__}: {exc}") from exc


def config_to_dict(config: object) -> dict[str, Any]:
    """A JSON-ready dict of a stage config, for writing beside outputs."""
    assert dataclasses.is_dataclass(config) and not isinstance(config, type)
    return dataclasses.asdict(config)


def check_thresholds(
    deposits: DepositConfig, inference: InferenceConfig, threshold: float, source: str
) -> None:
    """Refuse a user's seed threshold below the deposit (outline) threshold ``threshold``, which
    would otherwise be raised to it silently; say when the cascade's screen threshold is
    lowered to the deposit threshold. Raises ConfigError naming ``source``."""
    seed = deposits.seed_threshold
    if seed is not None and seed < threshold:
        raise ConfigError(
            f"{source}: seed_threshold {seed:g} is below the deposit threshold {threshold:g}; a deposit's "
            "seed must reach at least its outline threshold: raise --seed-threshold or lower --threshold"
        )
    screen = inference.cascade_screen_threshold
    if inference.cascade and screen > threshold:
        logging.getLogger(__name__).warning(
            "the cascade's screen threshold %g is above the deposit threshold %g: screening at %g, so "
            "the screen alone rules out no deposit", screen, threshold, threshold,
        )


# Settings a command line may override, per config section; option names equal field names.
# Tile size and resolution are absent on purpose: they come from the model card.
OVERRIDABLE_SETTINGS: dict[str, tuple[str, ...]] = {
    "inference": (
        "device",
        "batch_size",
        "num_workers",
        "region_tiles",
        "precision",
        "compile",
        "cascade",
        "cascade_screen_threshold",
    ),
    "tiling": ("stride_px", "min_tissue_fraction"),
    "deposits": ("threshold", "seed_threshold", "refine", "count_cells", "cell_rule"),
    "qc": ("accept_qc_failures",),
}


def stage_overrides(options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-section overrides for ``build_context`` from flat option values (e.g. ``vars(args)``);
    a missing option counts as not given (None)."""
    return {
        section: {name: options.get(name) for name in names}
        for section, names in OVERRIDABLE_SETTINGS.items()
    }
