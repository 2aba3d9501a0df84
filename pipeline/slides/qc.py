"""Slide QC: reads a slide's thumbnail, tissue mask and a sample of tissue tiles, produces
pass/fail checks made before scoring (brightfield H&E, stain in the model's training range,
focus, enough tissue, lymph-node look). Thresholds and the data they were measured on are in
docs/qc.md (measured by scripts/measure_qc.py).

Tile measures are taken on tiles read at ``QCConfig.tile_mpp`` µm/px:
- stain: mean optical density per channel of ``skimage.color.rgb2hed`` (hematoxylin, eosin,
  DAB) over the tile's stained pixels (OD summed over RGB above STAINED_MIN_OD);
- focus: variance of the Laplacian of the grey tile (0-255 scale);
- lymph-node look, from the nuclei ``pipeline.slides.nuclei.measure_nuclei`` finds: lymphocyte-sized
  nuclei (area >= MIN_NUCLEUS_AREA_UM2, equivalent diameter < LYMPHOCYTE_MAX_DIAMETER_UM) per
  mm², and the fraction of the tile covered by nuclei of any size (packed lymphocytes touch
  and merge, so the count alone undercounts the densest node).
A slide's value for each measure is the median over its tiles. The lymph-node check passes
when either lymph-node measure reaches its threshold; its value, the lymphoid score, is the
larger of the two measures divided by its threshold (>= 1 passes). Focus and the lymph-node
look need tiles at ``tile_mpp``: on a slide coarser than that they are not measured, which is
reported but fails nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.config import TilingConfig, check_range
from pipeline.errors import NoTissueError
from pipeline.slides.slide import Slide
from pipeline.slides.tiling import plan_tiles
from pipeline.slides.tissue import TissueMask

log = logging.getLogger(__name__)

# A pixel is stained (not glass) when its RGB optical densities sum above this.
STAINED_MIN_OD = 0.15
# A thumbnail pixel whose brightest channel is below this is dark background (fluorescence,
# dark-field): H&E glass is bright and even hematoxylin-dark nuclei stay above it.
DARK_MAX_VALUE = 60
STAIN_NAMES = ("od_hematoxylin", "od_eosin", "od_dab", "od_red_share", "od_green_share", "od_blue_share")
# Fallback stain range for a model card without ``qc_reference``: qc_reference_from_tiles on
# real lymph-node tiles (1,000 pcam_kaggle patches, the 57 camelyon16_patches, the 75 QC
# tiles of the camelyon17_tiles), as printed by scripts/measure_qc.py (docs/qc.md).
DEFAULT_QC_REFERENCE: dict[str, list[float]] = {
    "od_hematoxylin": [-0.01865, 0.12439],
    "od_eosin": [-0.01852, 0.09572],
    "od_dab": [-0.00921, 0.07513],
    "od_red_share": [0.12986, 0.36017],
    "od_green_share": [0.31259, 0.63856],
    "od_blue_share": [0.12269, 0.39939],
}
# Nucleus size limits, as in pipeline.deposits.cells (lymphocyte nuclei are about 5-7.5 µm across).
MIN_NUCLEUS_AREA_UM2 = 20.0
LYMPHOCYTE_MAX_DIAMETER_UM = 8.0
# A slide up to this much coarser than QCConfig.tile_mpp still counts as resolving it.
COARSE_TOLERANCE = 0.05
REFERENCE_PERCENTILES = (1.0, 99.0)
REFERENCE_MARGIN = 0.25
ACCEPT_FLAG = "--accept-qc-failures"


@dataclasses.dataclass(frozen=True)
class QCConfig:
    """Slide QC thresholds (measured values and their source in docs/qc.md).

    tile_mpp, tile_size_px: resolution (µm/px) and side (px) of the sampled tissue tiles.
    max_tiles: tiles sampled per slide, spread evenly over the tissue.
    max_dark_fraction: brightfield check; most of a fluorescence or dark-field thumbnail is
        darker than DARK_MAX_VALUE, almost none of a brightfield one.
    min_focus: lowest slide median of the tiles' variance of the Laplacian.
    min_tissue_area_mm2: least tissue area to score.
    min_lymphocytes_per_mm2, min_nuclear_fraction: lymph node when the slide median of the
        tiles' lymphocyte-sized nuclei per mm², or of their nuclear area fraction, reaches this.
    accept_qc_failures: score a slide that fails QC anyway (its category then carries a warning).
    """

    tile_mpp: float = 1.0
    tile_size_px: int = 96
    max_tiles: int = 48
    max_dark_fraction: float = 0.5
    min_focus: float = 300.0
    min_tissue_area_mm2: float = 0.05
    min_lymphocytes_per_mm2: float = 3000.0
    min_nuclear_fraction: float = 0.52
    accept_qc_failures: bool = False

    def __post_init__(self) -> None:
        check_range("qc.tile_mpp", self.tile_mpp, 0.1, 4.0)
        check_range("qc.tile_size_px", self.tile_size_px, 32, 1024)
        check_range("qc.max_tiles", self.max_tiles, 1, 10_000)
        check_range("qc.max_dark_fraction", self.max_dark_fraction, 0.0, 1.0)
        check_range("qc.min_focus", self.min_focus, 0.0, 1e6)
        check_range("qc.min_tissue_area_mm2", self.min_tissue_area_mm2, 0.0, 1e4)
        check_range("qc.min_lymphocytes_per_mm2", self.min_lymphocytes_per_mm2, 1.0, 1e6)
        check_range("qc.min_nuclear_fraction", self.min_nuclear_fraction, 0.01, 1.0)


@dataclasses.dataclass(frozen=True)
class QCCheck:
    """One QC check: its measured value, the allowed range (None: open) and the verdict.

    passed is None when the value could not be measured (e.g. focus on a slide coarser than
    the QC resolution); that is reported and fails nothing.
    """

    name: str
    value: float | None
    low: float | None
    high: float | None
    passed: bool | None
    failure: str  # what a failure means, e.g. "not brightfield H&E"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        value = None if self.value is None else round(self.value, 5)
        return {**dataclasses.asdict(self), "value": value}


@dataclasses.dataclass(frozen=True)
class QCResult:
    """All checks of one slide."""

    checks: tuple[QCCheck, ...]
    n_tiles: int
    tile_mpp: float
    measures: Mapping[str, float | None] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when no check failed (unmeasured checks fail nothing)."""
        return not any(check.passed is False for check in self.checks)

    @property
    def failures(self) -> list[str]:
        """What each failed check means, once each, e.g. ["not lymph node"]."""
        return list(dict.fromkeys(check.failure for check in self.checks if check.passed is False))

    @property
    def warning(self) -> str:
        """Empty when QC passed, else e.g. "QC failed: not brightfield H&E; not lymph node"."""
        return "" if self.passed else "QC failed: " + "; ".join(self.failures)

    def summary_line(self) -> str:
        """One console line: the verdict and every value."""
        return qc_line(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The ``qc`` section of report.json."""
        return {
            "passed": self.passed,
            "warning": self.warning,
            "n_tiles": self.n_tiles,
            "tile_mpp": self.tile_mpp,
            "checks": [check.to_dict() for check in self.checks],
            "not_measured": [check.name for check in self.checks if check.passed is None],
            "measures": {k: None if v is None else round(v, 5) for k, v in self.measures.items()},
        }


def qc_line(qc: Mapping[str, Any]) -> str:
    """One line from a report's ``qc`` section: the verdict, and every measured value with its
    limit, e.g. ``focus 7837 (>= 300)``, ``lymphoid_score 0.87 (>= 1: FAILED)``."""
    values = ", ".join(_check_text(check) for check in qc.get("checks", []))
    return f"{qc.get('warning') or 'QC passed'} ({values})"


def _check_text(check: Mapping[str, Any]) -> str:
    value = check.get("value")
    text = f"{check['name']} {'n/a' if value is None else format(value, '.4g')}"
    low, high = check.get("low"), check.get("high")
    if low is not None and high is not None:
        limit = f"{low:.4g} to {high:.4g}"
    elif low is not None:
        limit = f">= {low:.4g}"
    elif high is not None:
        limit = f"<= {high:.4g}"
    else:
        limit = ""
    verdict = {False: "FAILED", None: "not measured"}.get(check.get("passed"), "")
    inside = ": ".join(part for part in (limit, verdict) if part)
    return f"{text} ({inside})" if inside else text


def dark_fraction(thumbnail: NDArray[np.uint8]) -> float:
    """Fraction (0-1) of a (rows, cols, 3) uint8 thumbnail darker than DARK_MAX_VALUE."""
    if thumbnail.size == 0:
        return 0.0
    return float(np.mean(thumbnail.max(axis=-1) < DARK_MAX_VALUE))


def stain_statistics(tiles: NDArray[np.uint8]) -> dict[str, NDArray[np.float64]]:
    """Per-tile stain measures over stained pixels: mean rgb2hed optical density (hematoxylin,
    eosin, DAB) and each RGB channel's share of the mean optical density (the tissue colour:
    H&E absorbs green most, a recoloured or special stain does not).

    tiles: (N, H, W, 3) uint8. Returns name -> (N,) float64, NaN for a tile without stained
    pixels.
    """
    from skimage.color import rgb2hed

    result = {name: np.full(len(tiles), np.nan) for name in STAIN_NAMES}
    for index, tile in enumerate(tiles):
        rgb = tile.reshape(-1, 3).astype(np.float64)
        stained = (-np.log((rgb + 1.0) / 256.0)).sum(axis=1) > STAINED_MIN_OD
        if not stained.any():
            continue
        hed = np.asarray(rgb2hed(tile[None].reshape(1, -1, 3)), np.float64).reshape(-1, 3)[stained]
        for channel, name in enumerate(STAIN_NAMES[:3]):
            result[name][index] = float(hed[:, channel].mean())
        od_mean = (-np.log((rgb[stained] + 1.0) / 256.0)).mean(axis=0)
        for channel, name in enumerate(STAIN_NAMES[3:]):
            result[name][index] = float(od_mean[channel] / od_mean.sum())
    return result


def focus_measure(tiles: NDArray[np.uint8]) -> NDArray[np.float64]:
    """Per-tile variance of the Laplacian of the grey image (0-255 scale); (N,) float64.

    Sharp tissue has strong local contrast at nuclear edges; a blurred scan does not.
    """
    from scipy import ndimage

    values = np.zeros(len(tiles), dtype=np.float64)
    for index, tile in enumerate(tiles):
        grey = tile.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        values[index] = float(ndimage.laplace(grey).var())
    return values


def nuclear_measures(tiles: NDArray[np.uint8], mpp: float) -> dict[str, NDArray[np.float64]]:
    """Per-tile lymph-node measures (module docs): "lymphocytes_per_mm2" (lymphocyte-sized
    nuclei per mm² of tile) and "nuclear_fraction" (0-1, tile area covered by nuclei).

    tiles: (N, H, W, 3) uint8 at ``mpp`` µm/px. Returns name -> (N,) float64.
    """
    from pipeline.slides.nuclei import measure_nuclei

    max_area_um2 = math.pi * (LYMPHOCYTE_MAX_DIAMETER_UM / 2.0) ** 2
    density = np.zeros(len(tiles), dtype=np.float64)
    fraction = np.zeros(len(tiles), dtype=np.float64)
    for index, tile in enumerate(tiles):
        area_um2, _ = measure_nuclei(tile, mpp)
        tile_um2 = tile.shape[0] * tile.shape[1] * mpp**2
        small = np.count_nonzero((area_um2 >= MIN_NUCLEUS_AREA_UM2) & (area_um2 < max_area_um2))
        density[index] = small / (tile_um2 / 1e6)
        fraction[index] = float(area_um2.sum()) / tile_um2
    return {"lymphocytes_per_mm2": density, "nuclear_fraction": fraction}


def qc_reference_from_tiles(tiles: NDArray[np.uint8]) -> dict[str, list[float]]:
    """Stain ranges for a model card's ``qc_reference``, from the model's training tiles.

    tiles: (N, H, W, 3) uint8 RGB training patches, e.g. a few thousand (any µm/px: the stain
    measures do not depend on it). Returns name -> [low, high] for each of STAIN_NAMES: the
    REFERENCE_PERCENTILES of the per-tile values, widened by REFERENCE_MARGIN of that range on
    each side. Raises ValueError for a wrong shape or dtype or when no tile has stained pixels.
    """
    array = np.asarray(tiles)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"tiles have shape {array.shape} and dtype {array.dtype}; expected (N, H, W, 3) uint8"
        )
    reference: dict[str, list[float]] = {}
    for name, values in stain_statistics(array).items():
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            raise ValueError("no tile has stained pixels; pass H&E tissue tiles, not glass")
        low, high = (float(v) for v in np.percentile(finite, REFERENCE_PERCENTILES))
        margin = REFERENCE_MARGIN * (high - low)
        reference[name] = [round(low - margin, 5), round(high + margin, 5)]
    return reference


def sample_tissue_tiles(slide: Slide, tissue: TissueMask, config: QCConfig) -> NDArray[np.uint8]:
    """Up to ``config.max_tiles`` tiles of tissue spread evenly over the slide, read at
    ``config.tile_mpp``; (N, tile_size_px, tile_size_px, 3) uint8. When no tile is half
    tissue (e.g. a dark fluorescence slide), tiles are taken from the whole slide instead."""
    tiling = TilingConfig(tile_size_px=config.tile_size_px, mpp=config.tile_mpp, min_tissue_fraction=0.5)
    try:
        grid = plan_tiles(slide.dimensions, slide.mpp, tissue, tiling)
    except NoTissueError:
        everything = dataclasses.replace(tissue, mask=np.ones_like(tissue.mask))
        try:
            grid = plan_tiles(slide.dimensions, slide.mpp, everything, tiling)
        except NoTissueError:  # a slide smaller than one tile
            return np.zeros((0, config.tile_size_px, config.tile_size_px, 3), np.uint8)
    picks = np.unique(np.linspace(0, len(grid) - 1, min(config.max_tiles, len(grid))).round().astype(int))
    size = config.tile_size_px
    tiles = [
        slide.read_region_at_mpp(int(x), int(y), size, size, config.tile_mpp) for x, y in grid.xy_px[picks]
    ]
    return np.stack(tiles).astype(np.uint8)


def _median(values: NDArray[np.float64]) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None


def _check(name: str, value: float | None, low: float | None, high: float | None, failure: str) -> QCCheck:
    passed = None
    if value is not None:
        passed = (low is None or value >= low) and (high is None or value <= high)
    return QCCheck(name, value, low, high, passed, failure)


def _lymph_node_check(
    tiles: NDArray[np.uint8], config: QCConfig, resolved: bool
) -> tuple[QCCheck, dict[str, float | None]]:
    """The lymph-node check and the slide medians of its two measures (module docs)."""
    if not resolved:
        return _check("lymphoid_score", None, 1.0, None, "not lymph node"), {}
    measures = {name: _median(values) for name, values in nuclear_measures(tiles, config.tile_mpp).items()}
    density, fraction = measures["lymphocytes_per_mm2"], measures["nuclear_fraction"]
    score = None
    if density is not None and fraction is not None:
        score = max(density / config.min_lymphocytes_per_mm2, fraction / config.min_nuclear_fraction)
    return _check("lymphoid_score", score, 1.0, None, "not lymph node"), measures


def check_slide(
    slide: Slide,
    tissue: TissueMask,
    config: QCConfig,
    reference: Mapping[str, list[float]] | None = None,
) -> QCResult:
    """Run every QC check on one slide.

    tissue: the slide's tissue mask; the brightfield check reads a thumbnail at its µm/px.
    reference: stain ranges from the model card (``qc_reference``), or None / empty
    for DEFAULT_QC_REFERENCE. Reads up to ``config.max_tiles`` tiles from ``slide``.
    """
    ranges = dict(reference) if reference else DEFAULT_QC_REFERENCE
    thumbnail = slide.thumbnail_at_mpp(max(tissue.mask_mpp, slide.mpp))
    tiles = sample_tissue_tiles(slide, tissue, config)
    # Focus and nuclei need the slide to resolve the QC resolution.
    resolved = slide.mpp <= config.tile_mpp * (1.0 + COARSE_TOLERANCE) and len(tiles) > 0
    stains = stain_statistics(tiles)
    checks = [
        _check(
            "dark_fraction", dark_fraction(thumbnail), None, config.max_dark_fraction, "not brightfield H&E"
        ),
    ]
    for name in STAIN_NAMES:
        low, high = ranges.get(name, DEFAULT_QC_REFERENCE[name])
        checks.append(_check(name, _median(stains[name]), low, high, "stain outside the model's range"))
    focus = _median(focus_measure(tiles)) if resolved else None
    lymph_node, measures = _lymph_node_check(tiles, config, resolved)
    checks += [
        _check("focus", focus, config.min_focus, None, "out of focus"),
        _check(
            "tissue_area_mm2", tissue.tissue_area_mm2, config.min_tissue_area_mm2, None, "too little tissue"
        ),
        lymph_node,
    ]
    return QCResult(tuple(checks), n_tiles=len(tiles), tile_mpp=config.tile_mpp, measures=measures)
