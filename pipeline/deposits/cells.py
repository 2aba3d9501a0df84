"""Cell counts: reads a deposit's slide region, produces an estimate of its tumor nuclei.

Method (``count_tumor_nuclei``), every size stated in µm and converted with the image's µm/px:
1. Hematoxylin optical density by colour deconvolution (``skimage.color.rgb2hed``),
   smoothed with a Gaussian of NUCLEUS_SMOOTHING_UM.
2. Nuclei: pixels above the lower of two multi-Otsu thresholds (background/cytoplasm,
   pale nuclei, dark nuclei), so pale tumor nuclei are kept even when dark lymphocytes are
   present; never below MIN_NUCLEUS_HEMATOXYLIN_OD. Holes smaller than a nucleus are filled.
3. Touching nuclei are split by a watershed on the distance transform, seeded by its local
   maxima at least MIN_NUCLEUS_SEPARATION_UM apart.
4. Only nuclei that look like carcinoma count: larger and paler than lymphocytes, i.e. an
   area of at least MIN_TUMOR_NUCLEUS_AREA_UM2 and a mean hematoxylin OD of at most
   MAX_TUMOR_NUCLEUS_HEMATOXYLIN_OD. Both were measured on real tissue
   (``scripts/measure_nuclei.py``, docs/benchmarks.md "Tumor nuclei counts on real
   tissue"): lymphocyte nuclei are 5-7.5 µm across (20-44 µm²), and lymphocytes of tumor-free
   node tissue measured a mean OD of 0.05-0.13 (CAMELYON16 normal patches: median 0.057;
   CAMELYON17 centre 3: 0.11), carcinoma nuclei of CAMELYON16 tumor patches 0.018-0.057
   (median 0.031). Clumps of touching lymphocytes that the watershed leaves whole are large
   but dark, so they do not count either.
5. The count is the number of those nuclei whose centroid lies in the deposit mask.

The count is an estimate for the AJCC 200-cell rule, not a cytological diagnosis. It depends
on the stain: the pallor threshold is an absolute OD measured on CAMELYON16 (Radboud and
Utrecht) staining, so a much darker stain undercounts and a much paler one lets pale nuclei
of other cells (histiocytes, endothelium) count. Other large pale nuclei inside the outline
count too.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from numpy.typing import NDArray

from pipeline.config import DepositConfig
from pipeline.deposits.measure import Deposit, with_cell_count
from pipeline.slides.annotation_geometry import polygon_mask
from pipeline.slides.nuclei import (
    hematoxylin_od,
    nucleus_mask,
    split_nuclei,
)
from pipeline.slides.slide import Slide

log = logging.getLogger(__name__)

# Carcinoma nuclei are larger and paler than lymphocytes (module docs, step 4).
MIN_TUMOR_NUCLEUS_AREA_UM2 = 40.0  # 7.1 µm equivalent diameter: above a lymphocyte's
MAX_TUMOR_NUCLEUS_HEMATOXYLIN_OD = 0.045  # mean rgb2hed OD: paler than node lymphocytes
# Deposits are read at this µm/px (or the slide's, if coarser): nuclei of >= 5 µm span
# >= 10 px, and a 1 mm deposit stays a 2000 x 2000 px read.
CELL_COUNT_MPP = 0.5

__all__ = [
    "CELL_COUNT_MPP",
    "MAX_TUMOR_NUCLEUS_HEMATOXYLIN_OD",
    "MIN_TUMOR_NUCLEUS_AREA_UM2",
    "add_cell_counts",
    "count_cells_in_deposit",
    "count_tumor_nuclei",
    "deposit_mask",
    "tumor_like",
    "tumor_nuclei_rc",
]


def count_tumor_nuclei(
    rgb: NDArray[np.uint8], mpp: float, mask: NDArray[np.bool_] | None = None
) -> int:
    """Estimated tumor nuclei in ``rgb`` whose centre lies in ``mask`` (module docs).

    rgb: (H, W, 3) uint8 H&E image at ``mpp`` µm/px. mask: (H, W) bool deposit mask, None
    for the whole image. Returns 0 for an image without nuclei. Raises ValueError for a
    wrong shape or a non-positive mpp.
    """
    return len(tumor_nuclei_rc(rgb, mpp, mask))


def tumor_nuclei_rc(
    rgb: NDArray[np.uint8], mpp: float, mask: NDArray[np.bool_] | None = None
) -> NDArray[np.intp]:
    """Centres (N, 2) int (row, col) px of the nuclei ``count_tumor_nuclei`` counts.

    Same arguments and errors as ``count_tumor_nuclei``; (0, 2) for an image without nuclei.
    """
    none = np.zeros((0, 2), dtype=np.intp)
    image = np.asarray(rgb)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"rgb has shape {image.shape}; expected (H, W, 3) uint8")
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp={mpp!r}; expected a positive µm/px")
    region = np.ones(image.shape[:2], dtype=bool) if mask is None else np.asarray(mask, bool)
    if region.shape != image.shape[:2]:
        raise ValueError(f"mask has shape {region.shape}; expected {image.shape[:2]}")
    if image.size == 0 or not region.any():
        return none
    hematoxylin = hematoxylin_od(image, mpp)
    nuclei = nucleus_mask(hematoxylin, region, mpp)
    if not nuclei.any():
        return none
    labels = split_nuclei(nuclei, mpp)
    centroids_rc, keep = _tumor_regions(labels, hematoxylin, mpp)
    inside = region[centroids_rc[:, 0], centroids_rc[:, 1]]
    return np.asarray(centroids_rc[inside & keep], dtype=np.intp).reshape(-1, 2)


def _tumor_regions(
    labels: NDArray[np.int32], hematoxylin: NDArray[np.float64], mpp: float
) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
    """Centroids (N, 2) int rc of all regions and which of them look like carcinoma nuclei."""
    from scipy import ndimage

    index = np.arange(1, int(labels.max()) + 1)
    if index.size == 0:
        return np.zeros((0, 2), dtype=np.intp), np.zeros(0, dtype=bool)
    area_um2 = np.asarray(ndimage.sum_labels(np.ones(labels.shape), labels, index)) * mpp**2
    mean_od = np.asarray(ndimage.mean(hematoxylin, labels, index), dtype=np.float64)
    centroids = np.asarray(ndimage.center_of_mass(np.ones(labels.shape), labels, index))
    centroids_rc = np.rint(centroids.reshape(-1, 2)).astype(np.intp)
    return centroids_rc, tumor_like(area_um2, mean_od)


def tumor_like(area_um2: NDArray[np.float64], mean_od: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Which nuclei look like carcinoma: large and pale (module docs, step 4).

    area_um2, mean_od: (N,) nuclear area in µm² and mean hematoxylin OD (rgb2hed units).
    """
    large = np.asarray(area_um2) >= MIN_TUMOR_NUCLEUS_AREA_UM2
    return np.asarray(large & (np.asarray(mean_od) <= MAX_TUMOR_NUCLEUS_HEMATOXYLIN_OD), dtype=bool)


def deposit_mask(
    outline_xy: NDArray[np.float64], origin_xy: tuple[int, int], scale: float,
    shape_hw: tuple[int, int],
) -> NDArray[np.bool_]:
    """Bool mask of a level-0 outline in an image whose (0, 0) pixel corner is ``origin_xy``.

    scale: image px per level-0 px. A pixel is set when its centre lies inside the outline
    by the pipeline's one polygon rule (``polygon_mask``): a centre exactly on the outline
    counts on a left or upper edge only, never on the outline's bounding box.
    """
    xy = np.asarray(outline_xy, dtype=np.float64).reshape(-1, 2)
    origin_rc = (origin_xy[1] * scale, origin_xy[0] * scale)
    return polygon_mask([xy], shape_hw, origin_rc, 1.0 / scale)


def count_cells_in_deposit(
    slide: Slide, deposit: Deposit, max_diameter_mm: float
) -> int | None:
    """Estimated tumor nuclei of one deposit, or None when it is larger than max_diameter_mm.

    Reads the deposit's bounding box (clipped to the slide) at CELL_COUNT_MPP µm/px, or the
    slide's resolution if coarser, and counts nuclei inside its outline. Raises
    SlideOpenError when the region cannot be read.
    """
    if deposit.max_diameter_mm > max_diameter_mm:
        return None
    width0, height0 = slide.dimensions
    x, y, width, height = deposit.bbox_px
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width0, x + width), min(height0, y + height)
    if x1 <= x0 or y1 <= y0:
        return 0
    read_mpp = max(slide.mpp, CELL_COUNT_MPP)
    scale = slide.mpp / read_mpp
    out_w, out_h = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    rgb = slide.read_region_at_mpp(x0, y0, out_w, out_h, read_mpp)
    mask = deposit_mask(deposit.outline_xy, (x0, y0), scale, (out_h, out_w))
    return count_tumor_nuclei(rgb, read_mpp, mask)


def add_cell_counts(slide: Slide, deposits: list[Deposit], config: DepositConfig) -> list[Deposit]:
    """Deposits with ``cell_count`` set, a review reason where it disagrees with the size,
    and (only under ``config.cell_rule`` "literal") a category changed by it; unchanged if
    disabled.

    Deposits larger than ``config.max_cell_count_diameter_mm`` keep cell_count None: their
    size alone decides (they are micro or macro by size).
    """
    if not config.count_cells:
        return list(deposits)
    counted: list[Deposit] = []
    for deposit in deposits:
        count = count_cells_in_deposit(slide, deposit, config.max_cell_count_diameter_mm)
        log.debug("deposit %d: %s tumor nuclei", deposit.id, count)
        counted.append(deposit if count is None else with_cell_count(deposit, count, config.cell_rule))
    return counted
