"""Tissue detection: reads a slide thumbnail, produces a boolean tissue mask with its µm/px.

Otsu on saturation (floored by ``min_saturation``), minus white background, black
scanner borders and strongly coloured pen marks, then speck removal and hole filling
with areas stated in mm² and converted from the mask's measured resolution.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from numpy.typing import NDArray
from skimage import color, filters, morphology, segmentation

from pipeline.config import TissueConfig
from pipeline.slide import Slide

log = logging.getLogger(__name__)

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


def tissue_mask_from_rgb(rgb: NDArray[np.uint8], mask_mpp: float, config: TissueConfig) -> NDArray[np.bool_]:
    """Tissue mask of an RGB thumbnail at ``mask_mpp`` µm/px; (rows, cols) bool."""
    hsv = color.rgb2hsv(rgb)
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    glass = (value > WHITE_VALUE) & (saturation < WHITE_MAX_SATURATION)
    black = value < BLACK_MAX_VALUE
    candidates = ~glass & ~black
    threshold = config.min_saturation
    if candidates.sum() > 16:
        otsu = float(filters.threshold_otsu(saturation[candidates | glass]))
        threshold = max(threshold, min(otsu, 0.5))
    tissue = candidates & (saturation >= threshold)
    if config.reject_pen:
        pen = (hue >= PEN_HUE_RANGE[0]) & (hue <= PEN_HUE_RANGE[1]) & (saturation >= PEN_MIN_SATURATION)
        tissue &= ~pen
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
