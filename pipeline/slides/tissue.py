"""Tissue detection: reads a slide thumbnail, produces a boolean tissue mask with its µm/px.

Otsu on saturation (floored by ``min_saturation``), minus white background, black
scanner borders and strongly coloured pen marks, then speck removal and hole filling
with areas stated in mm² and converted from the mask's measured resolution.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np
from numpy.typing import NDArray
from skimage import color, filters, morphology, segmentation
from skimage.util import img_as_float64

from pipeline.config import TissueConfig
from pipeline.slides.slide import Slide

log = logging.getLogger(__name__)

# Otsu separates glass from tissue; where a thumbnail holds little glass (a small field, a
# section filling the slide) it splits tissue itself, e.g. pale tumor (median saturation 0.34
# in the real CAMELYON16 tumor patches) from dark lymphocytes (0.53 in a CAMELYON17 tile).
# Real H&E tissue rarely falls below 0.15, so Otsu may raise the floor only up to that.
MAX_OTSU_SATURATION = 0.15
# Pixels brighter than this (HSV value) with low saturation are glass.
WHITE_VALUE = 0.88
WHITE_MAX_SATURATION = 0.10
# Pixels darker than this (HSV value) are scanner borders, folds or black ink.
BLACK_MAX_VALUE = 0.18
# H&E is pink to purple (hue about 0.75-1.0 and 0-0.08); pen ink is green to blue.
PEN_HUE_RANGE = (0.20, 0.70)
PEN_MIN_SATURATION = 0.25


@dataclasses.dataclass(frozen=True)
class TissueMask:
    """A tissue mask over a whole slide.

    mask: (rows, cols) bool, True on tissue. mask_mpp: µm per mask pixel.
    slide_dimensions: level-0 (width, height) px of the slide it covers.
    """

    mask: NDArray[np.bool_]
    mask_mpp: float
    slide_dimensions: tuple[int, int]

    @property
    def level0_px_per_mask_px(self) -> tuple[float, float]:
        """(x, y) level-0 px per mask px, from the actual shapes (not a nominal factor)."""
        rows, cols = self.mask.shape
        return self.slide_dimensions[0] / cols, self.slide_dimensions[1] / rows

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide area covered by tissue (0-1)."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def tissue_area_mm2(self) -> float:
        """Tissue area in mm²."""
        return float(self.mask.sum()) * (self.mask_mpp / 1000.0) ** 2


def _area_mm2_to_px(area_mm2: float, mask_mpp: float) -> int:
    return round(area_mm2 * 1e6 / (mask_mpp**2))


@functools.lru_cache(maxsize=1)
def _hsv_tables() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """rgb2hsv's float of each uint8 level (256,), and its saturation [max, min] (256, 256).

    Made by scikit-image itself, so lookups give rgb2hsv's values bit for bit: saturation and
    value depend only on a pixel's largest and smallest channel, and hue is computed below
    with rgb2hsv's own float operations, only where pen ink is possible. Converting every
    thumbnail pixel to float HSV cost most of tissue detection.
    """
    levels = np.asarray(img_as_float64(np.arange(256, dtype=np.uint8)), dtype=np.float64)
    high, low = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    pairs = np.stack([high, np.minimum(low, high), np.minimum(low, high)], axis=-1).astype(np.uint8)
    saturation = np.ascontiguousarray(color.rgb2hsv(pairs)[..., 1])
    return levels, saturation


def _channel_extremes(rgb: NDArray[np.uint8]) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.maximum(np.maximum(red, green), blue), np.minimum(np.minimum(red, green), blue)


def _saturation_value(rgb: NDArray[np.uint8]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """HSV saturation and value (rows, cols) float64 of an RGB uint8 image, as rgb2hsv."""
    levels, saturation = _hsv_tables()
    high, low = _channel_extremes(rgb)
    return saturation[high, low], levels[high]


def _pen_ink(rgb: NDArray[np.uint8], saturation: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Strongly coloured green-to-blue pixels; hue (rgb2hsv's formula) only where ink is possible."""
    levels, _ = _hsv_tables()
    pen = saturation >= PEN_MIN_SATURATION
    colored = rgb[pen]
    red, green, blue = levels[colored[:, 0]], levels[colored[:, 1]], levels[colored[:, 2]]
    high, low = _channel_extremes(colored)
    delta = levels[high] - levels[low]  # > 0: saturation > 0 here
    sector = np.where(
        colored[:, 2] == high,
        4.0 + (red - green) / delta,
        np.where(colored[:, 1] == high, 2.0 + (blue - red) / delta, (green - blue) / delta),
    )
    hue = (sector / 6.0) % 1.0
    pen[pen] = (hue >= PEN_HUE_RANGE[0]) & (hue <= PEN_HUE_RANGE[1])
    return pen


def tissue_mask_from_rgb(rgb: NDArray[np.uint8], mask_mpp: float, config: TissueConfig) -> NDArray[np.bool_]:
    """Tissue mask of an RGB thumbnail at ``mask_mpp`` µm/px; (rows, cols) bool."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    saturation, value = _saturation_value(rgb)
    glass = (value > WHITE_VALUE) & (saturation < WHITE_MAX_SATURATION)
    black = value < BLACK_MAX_VALUE
    candidates = ~glass & ~black
    threshold = config.min_saturation
    if candidates.sum() > 16:
        otsu = float(filters.threshold_otsu(saturation[candidates | glass]))
        threshold = max(threshold, min(otsu, MAX_OTSU_SATURATION))
    tissue = candidates & (saturation >= threshold)
    if config.reject_pen:
        tissue &= ~_pen_ink(rgb, saturation)
    return _clean_mask(tissue, mask_mpp, config)


def _clean_mask(tissue: NDArray[np.bool_], mask_mpp: float, config: TissueConfig) -> NDArray[np.bool_]:
    """Close small gaps, drop specks and fill holes, with sizes in mm² from ``mask_mpp``."""
    tissue = morphology.closing(tissue, morphology.disk(1)).astype(bool)
    min_size = _area_mm2_to_px(config.min_tissue_area_mm2, mask_mpp)
    if min_size > 1:
        tissue = morphology.remove_small_objects(tissue, max_size=min_size - 1)
    hole_size = _area_mm2_to_px(config.max_hole_area_mm2, mask_mpp)
    if hole_size > 1:
        # Only enclosed holes: glass touching the image edge is background, whatever its size.
        holes = segmentation.clear_border(~tissue)
        small = morphology.remove_small_objects(holes, max_size=hole_size - 1)
        tissue = tissue | (holes & ~small)
    return np.asarray(tissue, dtype=bool)


def detect_tissue(slide: Slide, config: TissueConfig) -> TissueMask:
    """Tissue mask of a slide from a thumbnail at ``config.mask_mpp`` (or the slide's coarsest
    level if that is finer than needed). Returns an empty mask, not an error, for a blank slide.
    """
    # Never use a mask finer than the slide itself.
    mask_mpp = max(config.mask_mpp, slide.mpp)
    rgb = slide.thumbnail_at_mpp(mask_mpp)
    mask = tissue_mask_from_rgb(rgb, mask_mpp, config)
    result = TissueMask(mask=mask, mask_mpp=mask_mpp, slide_dimensions=slide.dimensions)
    log.info("%s: tissue fraction %.3f", slide.path, result.tissue_fraction)
    return result
