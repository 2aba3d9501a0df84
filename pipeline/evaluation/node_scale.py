"""Node-scale evaluation: reads real tissue patches and a tile scorer, produces surfaces of real
tissue with known deposits, their heatmaps, and the node-level figures a user reads.

A surface is an RGB image at the model's µm/px built from real material only:
- negative surfaces: feathered mosaics of real tumor-free patches (each patch in a random
  dihedral pose, neighbours blended over ``feather_px`` so no seam is a hard edge);
- positive surfaces: such a mosaic with one deposit of real tumor pasted in, of a stated shape
  (disc, ellipse, irregular) and true largest dimension, its edge blended over a few µm.
The figures: false deposits per mm² of tumor-free tissue (with a 95 % upper bound), detection
per size class, size error per size class, and the category of each positive surface.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from pipeline.detection.heatmap import Heatmap
from pipeline.staging import ITC_MAX_DIAMETER_MM, MICRO_MAX_DIAMETER_MM

TileScorer = Callable[[NDArray[np.uint8]], NDArray[np.float32]]
# (H, W, 3) uint8 region of (tile + k * model stride) px per side -> (k + 1, k + 1) probabilities,
# equal to scoring each tile of the region at the model's stride (a model with exact dense inference)
RegionScorer = Callable[[NDArray[np.uint8]], NDArray[np.float32]]
# Heatmap rows scored per dense region: bounds memory to about band x width of the surface.
DENSE_BAND_ROWS = 16
SHAPES = ("disc", "ellipse", "irregular")
UM_PER_MM = 1000.0
EDGE_BLEND_UM = 2.0

__all__ = [
    "SHAPES",
    "RegionScorer",
    "Surface",
    "TrueDeposit",
    "dense_values",
    "deposit_mask",
    "feathered_mosaic",
    "heatmap_of_surface",
    "owner_map",
    "paste_deposit",
    "place_bootstrap_upper_95",
    "poisson_upper_95",
    "size_class",
    "wilson_95",
]


@dataclasses.dataclass(frozen=True)
class TrueDeposit:
    """A pasted deposit: mask (H, W) bool over the surface, its true max Feret diameter in mm,
    shape name and centre (row, col) px."""

    mask: NDArray[np.bool_]
    diameter_mm: float
    shape: str
    centre_rc: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Surface:
    """One surface: (H, W, 3) uint8 RGB at ``mpp`` µm/px, the deposits pasted in (none on a
    negative surface), and a name saying what it is made of."""

    name: str
    image: NDArray[np.uint8]
    mpp: float
    truth: tuple[TrueDeposit, ...]

    @property
    def area_mm2(self) -> float:
        height, width = self.image.shape[:2]
        return float(height * width * (self.mpp / UM_PER_MM) ** 2)


def size_class(diameter_mm: float) -> str:
    """ "itc", "micro" or "macro" by the AJCC cut-offs (pipeline.staging)."""
    if diameter_mm <= ITC_MAX_DIAMETER_MM:
        return "itc"
    return "micro" if diameter_mm <= MICRO_MAX_DIAMETER_MM else "macro"


def _dihedral(patch: NDArray[np.uint8], pose: int) -> NDArray[np.uint8]:
    turned = np.rot90(patch, pose % 4)
    return turned[:, ::-1] if pose >= 4 else turned


def _ramp(size_px: int, feather_px: int) -> NDArray[np.float64]:
    position = np.arange(size_px, dtype=np.float64) + 0.5
    return np.clip(np.minimum(position, size_px - position) / max(feather_px, 1), 1e-3, 1.0)


def feathered_mosaic(
    patches: NDArray[np.uint8],
    shape_px: tuple[int, int],
    rng: np.random.Generator,
    feather_px: int = 16,
    placed: list[NDArray[np.int64]] | None = None,
) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 mosaic of (N, P, P, 3) patches on a grid of step P - feather_px.

    Patches are drawn in a random order without replacement (reshuffled when all are used),
    each in a random dihedral pose; overlapping borders are blended with linear ramps.
    placed: when given, the (rows, cols) array of the patch index at each grid position is
    appended to it (``owner_map``); the draws are the same either way.
    """
    n, size = patches.shape[0], patches.shape[1]
    step = size - feather_px
    height, width = shape_px
    rows, cols = math.ceil(max(height - size, 0) / step) + 1, math.ceil(max(width - size, 0) / step) + 1
    weight_1d = _ramp(size, feather_px)
    weight = (weight_1d[:, None] * weight_1d[None, :])[..., None]
    total = np.zeros(((rows - 1) * step + size, (cols - 1) * step + size, 3), dtype=np.float64)
    norm = np.zeros((*total.shape[:2], 1), dtype=np.float64)
    order: list[int] = []
    grid = np.zeros((rows, cols), dtype=np.int64)
    for r in range(rows):
        for c in range(cols):
            if not order:
                order = rng.permutation(n).tolist()
            grid[r, c] = order.pop()
            patch = _dihedral(patches[grid[r, c]], int(rng.integers(8))).astype(np.float64)
            y, x = r * step, c * step
            total[y : y + size, x : x + size] += patch * weight
            norm[y : y + size, x : x + size] += weight
    mosaic = total / norm
    if placed is not None:
        placed.append(grid)
    return np.clip(np.round(mosaic[:height, :width]), 0, 255).astype(np.uint8)


def owner_map(
    grid: NDArray[np.int64], shape_px: tuple[int, int], patch_px: int, feather_px: int = 16
) -> NDArray[np.int64]:
    """(H, W) index of the patch whose centre is nearest each pixel of a ``feathered_mosaic``
    whose grid positions hold the patch indices ``grid`` (its ``placed`` output)."""
    step = patch_px - feather_px
    rows = np.clip(np.round((np.arange(shape_px[0]) + 0.5 - patch_px / 2) / step), 0, grid.shape[0] - 1)
    cols = np.clip(np.round((np.arange(shape_px[1]) + 0.5 - patch_px / 2) / step), 0, grid.shape[1] - 1)
    return grid[rows.astype(np.int64)[:, None], cols.astype(np.int64)[None, :]]


def place_bootstrap_upper_95(
    false_by_place: dict[str, int], area_by_place: dict[str, float], draws: int = 4000, seed: int = 0
) -> float:
    """One-sided 95 % upper bound of false deposits per mm² when the tissue is a sample of
    places, not of mm²: the places (with their false deposits and tumor-free area, summed over
    every pose and neighbourhood they were used in) are resampled with replacement and the
    rate's 95th percentile is returned. A few look-alike places reused in many poses widen it
    where a Poisson bound over the whole area would not."""
    names = sorted(area_by_place)
    if not names:
        return math.nan
    false = np.array([false_by_place.get(n, 0) for n in names], dtype=np.float64)
    area = np.array([area_by_place[n] for n in names], dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(names), size=(draws, len(names)))
    rates = false[picks].sum(axis=1) / np.maximum(area[picks].sum(axis=1), 1e-12)
    return float(np.quantile(rates, 0.95))


def _max_feret_px(mask: NDArray[np.bool_]) -> float:
    """Max Feret diameter in px of a pixel mask: over the corners of its boundary pixels."""
    from scipy.ndimage import binary_erosion

    from pipeline.deposits.measure import max_feret_diameter

    edge = mask & ~binary_erosion(mask)
    rows, cols = np.nonzero(edge)
    if len(rows) == 0:
        return 0.0
    offsets = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    corners = (np.column_stack([cols, rows]).astype(np.float64)[:, None, :] + offsets).reshape(-1, 2)
    return max_feret_diameter(corners)


def _shape_radius(shape: str, angles: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
    """Radius (relative) of a shape at each angle, before scaling to the asked diameter."""
    if shape == "disc":
        return np.ones_like(angles)
    if shape == "ellipse":
        ratio, tilt = rng.uniform(0.45, 0.85), rng.uniform(0, math.pi)
        a, b = 1.0, ratio
        return np.asarray(
            a * b / np.sqrt((b * np.cos(angles - tilt)) ** 2 + (a * np.sin(angles - tilt)) ** 2)
        )
    if shape == "irregular":
        radius = np.ones_like(angles)
        for k in range(2, 6):
            radius += rng.uniform(0.0, 0.14) * np.cos(k * angles + rng.uniform(0, 2 * math.pi))
        return radius
    raise ValueError(f"shape={shape!r}; use one of {SHAPES}")


def deposit_mask(shape: str, diameter_mm: float, mpp: float, rng: np.random.Generator) -> NDArray[np.bool_]:
    """(S, S) bool mask of one deposit whose max Feret diameter is ``diameter_mm`` (to a pixel)."""
    target_px = diameter_mm * UM_PER_MM / mpp
    side = math.ceil(target_px * 1.2) + 8
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) - (side - 1) / 2.0
    angles, distance = np.arctan2(yy, xx), np.hypot(yy, xx)
    relative = _shape_radius(shape, angles, rng)
    scale = target_px / 2.0
    mask = distance <= relative * scale
    for _ in range(3):  # rescale so the measured max Feret diameter is the asked one
        measured = _max_feret_px(mask)
        if measured <= 0:
            break
        scale *= target_px / measured
        mask = distance <= relative * scale
    return np.asarray(mask, dtype=bool)


def paste_deposit(
    background: NDArray[np.uint8],
    tumor: NDArray[np.uint8],
    mask: NDArray[np.bool_],
    centre_rc: tuple[int, int],
    mpp: float,
    shape: str,
) -> tuple[NDArray[np.uint8], TrueDeposit]:
    """``background`` with ``tumor`` (same size) shown through ``mask`` centred at ``centre_rc``;
    the edge is blended over EDGE_BLEND_UM (a Gaussian of the mask)."""
    from scipy.ndimage import gaussian_filter

    height, width = background.shape[:2]
    full = np.zeros((height, width), dtype=bool)
    side = mask.shape[0]
    top, left = centre_rc[0] - side // 2, centre_rc[1] - side // 2
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, height), min(left + side, width)
    full[y0:y1, x0:x1] = mask[y0 - top : y1 - top, x0 - left : x1 - left]
    alpha = gaussian_filter(full.astype(np.float64), sigma=EDGE_BLEND_UM / mpp)[..., None]
    blended = alpha * tumor.astype(np.float64) + (1.0 - alpha) * background.astype(np.float64)
    image = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    diameter_mm = _max_feret_px(full) * mpp / UM_PER_MM
    return image, TrueDeposit(full, diameter_mm, shape, centre_rc)


def _grid_shape(image: NDArray[np.uint8], tile_size_px: int, stride_px: int) -> tuple[int, int]:
    height, width = image.shape[:2]
    return (height - tile_size_px) // stride_px + 1, (width - tile_size_px) // stride_px + 1


def _tile_values(
    image: NDArray[np.uint8], tile_size_px: int, stride_px: int, score: TileScorer, batch: int
) -> NDArray[np.float32]:
    rows, cols = _grid_shape(image, tile_size_px, stride_px)
    corners = [(r * stride_px, c * stride_px) for r in range(rows) for c in range(cols)]
    values = np.empty(len(corners), dtype=np.float32)
    for start in range(0, len(corners), batch):
        tiles = np.stack(
            [image[y : y + tile_size_px, x : x + tile_size_px] for y, x in corners[start : start + batch]]
        )
        values[start : start + len(tiles)] = score(tiles)
    return values.reshape(rows, cols)


def dense_values(
    image: NDArray[np.uint8], tile_size_px: int, stride_px: int, model_stride_px: int, score: RegionScorer
) -> NDArray[np.float32]:
    """The tile grid of ``stride_px`` over ``image`` scored by exact dense inference.

    ``stride_px`` must divide ``model_stride_px``; each of the (model / grid stride)² shifted
    lattices is scored in bands of DENSE_BAND_ROWS rows and interleaved into the grid.
    """
    if model_stride_px % stride_px:
        raise ValueError(f"grid stride {stride_px} px does not divide the model's {model_stride_px} px")
    rows, cols = _grid_shape(image, tile_size_px, stride_px)
    values = np.full((rows, cols), np.nan, dtype=np.float32)
    factor = model_stride_px // stride_px
    for shift_row in range(factor):
        for shift_col in range(factor):
            shifted = image[shift_row * stride_px :, shift_col * stride_px :]
            sub_rows, sub_cols = _grid_shape(shifted, tile_size_px, model_stride_px)
            for first in range(0, sub_rows, DENSE_BAND_ROWS):
                last = min(first + DENSE_BAND_ROWS, sub_rows)
                region = shifted[
                    first * model_stride_px : (last - 1) * model_stride_px + tile_size_px,
                    : (sub_cols - 1) * model_stride_px + tile_size_px,
                ]
                band = score(np.ascontiguousarray(region))
                values[shift_row + first * factor : shift_row + last * factor : factor, shift_col::factor] = (
                    band
                )
    return values


def heatmap_of_surface(
    image: NDArray[np.uint8],
    mpp: float,
    tile_size_px: int,
    stride_px: int,
    score: TileScorer,
    batch: int = 256,
    region_score: RegionScorer | None = None,
    model_stride_px: int | None = None,
) -> Heatmap:
    """Every tile of a grid of ``stride_px`` over ``image`` scored, as a Heatmap (the surface is
    its own level 0, at the model's µm/px): by exact dense inference when ``region_score`` is
    given (with the model's own stride), else tile by tile with ``score``."""
    height, width = image.shape[:2]
    if region_score is not None:
        values = dense_values(image, tile_size_px, stride_px, model_stride_px or stride_px, region_score)
    else:
        values = _tile_values(image, tile_size_px, stride_px, score, batch)
    return Heatmap(
        probabilities=values,
        origin_x_px=0.0,
        origin_y_px=0.0,
        stride_l0_px=float(stride_px),
        tile_size_l0_px=float(tile_size_px),
        slide_mpp=mpp,
        slide_dimensions=(width, height),
    )


def wilson_95(k: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of k / n ((nan, nan) when n = 0)."""
    if n == 0:
        return math.nan, math.nan
    z = 1.959964
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def poisson_upper_95(count: int, exposure: float) -> float:
    """One-sided 95 % upper bound of a Poisson rate: ``count`` events in ``exposure`` (e.g. mm²)."""
    from scipy.stats import chi2

    return float(chi2.ppf(0.95, 2 * (count + 1)) / 2.0 / exposure)


def summarise_sizes(errors_mm: Sequence[float]) -> tuple[float, float, int]:
    """(mean bias, standard deviation, n) of measured minus true sizes in mm."""
    values = np.asarray(errors_mm, dtype=np.float64)
    if len(values) == 0:
        return math.nan, math.nan, 0
    spread = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return float(values.mean()), spread, len(values)
