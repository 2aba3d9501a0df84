"""Test data: the scene of a synthetic H&E slide and the colour and field arithmetic on it.

Reads nothing; holds what is decided once per slide and read by every renderer: the
appearance constants (µm, OD), the ``Scene`` with its ``FieldGrid``, nucleus ``Sprites`` and
``Nuclei``, and produces stain lookup tables, periodic noise, RGB from OD levels and bilinear
samples of the smooth fields. Imports no other synthetic module, so the layout
(``layout``), sprites (``sprites``), cartoon renderer
(``render``) and real-texture renderer (``texture``) all build on it.

Colour model: each pixel has a haematoxylin and an eosin optical density (OD), quantised
to ``OD_LEVELS`` steps per OD unit, and a 256 x 256 lookup table turns the pair into RGB by
Beer-Lambert: rgb = white * exp(-(h * H + e * E)). Sizes are in µm and converted to px
with the scene's µm/px, so the slide looks alike at any resolution.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

_T = TypeVar("_T", bound=np.generic)

# --- appearance constants (µm, OD); tuned against the CAMELYON16 patches and CAMELYON17
# tiles in ../shared/data (0.243 µm/px).
WHITE_RGB = 242.0  # brightness of empty glass
STAIN_H = (0.54, 0.74, 0.42)  # haematoxylin OD direction (R, G, B), purple
STAIN_E = (0.12, 0.88, 0.46)  # eosin OD direction, pink
OD_LEVELS = 64  # quantisation steps per OD unit (uint8 range covers 0-4 OD)
GLASS_OD = 1.0 / OD_LEVELS  # faint grey of the glass (~240)
STROMA_H_OD, STROMA_E_OD = 0.08, 0.28  # pale pink-purple stroma between lymphocytes
CAPSULE_H_OD, CAPSULE_E_OD = 0.07, 0.62  # dense pink fibrous capsule
MEMBRANE_E_OD = 0.45  # thin pink rim of fat vacuoles
TUMOR_STROMA_H_OD, TUMOR_STROMA_E_OD = 0.16, 0.5  # cytoplasm between tumor nuclei
CAPSULE_WIDTH_UM = 30.0
CAPSULE_FIBRE_UM = 3.5  # spacing of the capsule's collagen lamellae
LYMPH_RADIUS_UM = (2.7, 3.5)
EDGE_SOFT_UM = 1.0  # width of the anti-aliased tissue edge
MEMBRANE_WIDTH_UM = 1.2
NOISE_PERIOD_PX = 512
NOISE_STD_LEVELS = 3.0  # per-pixel stain noise of tissue, in OD levels
GLASS_NOISE_STD_LEVELS = 0.8  # per-pixel noise of empty glass
COARSE_PX = 8  # smooth fields are sampled every COARSE_PX px inside the tissue
RENDER_CHUNK_PX = 1024  # width of one rendered block


@dataclasses.dataclass(frozen=True, eq=False)
class FieldGrid:
    """Smooth per-slide fields sampled on a square grid; node (i, j) is at (j, i) * step_px.

    tissue_um: signed distance to the tissue edge (> 0 inside), µm.
    vacuole_um: signed distance to the nearest fat vacuole (< 0 inside), µm.
    density: keep probability of a lymphocyte lattice site (0-1).
    stroma_gain: multiplier of the stroma eosin OD.
    """

    step_px: float
    tissue_um: NDArray[np.float32]
    vacuole_um: NDArray[np.float32]
    density: NDArray[np.float32]
    stroma_gain: NDArray[np.float32]


@dataclasses.dataclass(frozen=True, eq=False)
class Sprites:
    """Nucleus (and cytoplasm) stamps: ``n`` variants over a shared support of K pixels.

    dy, dx: (K,) offsets from the nucleus centre pixel. h, e: (n, K) uint8 OD levels
    (e is all zero for lymphocytes).
    """

    dy: NDArray[np.int32]
    dx: NDArray[np.int32]
    h: NDArray[np.uint8]
    e: NDArray[np.uint8]
    radius_px: int

    @property
    def count(self) -> int:
        """Number of variants."""
        return int(self.h.shape[0])

    @property
    def has_eosin(self) -> bool:
        """Whether the stamps draw cytoplasm (eosin) as well as nuclei."""
        return bool(self.e.any())


@dataclasses.dataclass(frozen=True, eq=False)
class Nuclei:
    """Nucleus centres in level-0 px with the sprite variant of each, sorted by y."""

    x: NDArray[np.float64]
    y: NDArray[np.float64]
    sprite: NDArray[np.int32]

    def rows(self, y_lo: float, y_hi: float) -> Nuclei:
        """The nuclei with centre y in [y_lo, y_hi)."""
        lo, hi = np.searchsorted(self.y, [y_lo, y_hi])
        return Nuclei(self.x[lo:hi], self.y[lo:hi], self.sprite[lo:hi])


@dataclasses.dataclass(frozen=True, eq=False)
class Scene:
    """Everything needed to render any block of one synthetic slide."""

    seed: int
    mpp: float
    width_px: int
    height_px: int
    fields: FieldGrid
    deposits_xy: tuple[NDArray[np.float64], ...]
    # shapely Polygons of deposits_xy; not prepared, since lazily built GEOS indexes of
    # prepared geometries are not safe to build from several render threads at once.
    deposit_polygons: tuple[Any, ...]
    tumor_nuclei: Nuclei
    lymph: Sprites
    tumor: Sprites
    lymph_spacing_px: float
    lut_planar: NDArray[np.uint8]  # (3, 65536): R, G, B of index (h level << 8) | e level
    noise_h: NDArray[np.int16]
    noise_e: NDArray[np.int16]
    glass_noise_h: NDArray[np.int16]
    glass_noise_e: NDArray[np.int16]
    glass_rgb: NDArray[np.uint8]  # periodic texture of empty glass, (rows, cols, 3)


# --- colour -------------------------------------------------------------------------------


def to_levels(od: NDArray[np.floating]) -> NDArray[np.uint8]:
    """OD values as uint8 OD levels (OD_LEVELS per OD unit, rounded, clipped to 0-255)."""
    out: NDArray[np.uint8] = np.clip(od * OD_LEVELS + 0.5, 0, 255).astype(np.uint8)
    return out


def stain_lut(h_gain: float = 1.0, e_gain: float = 1.0) -> NDArray[np.uint8]:
    """(3, 65536) uint8: R, G, B of (h level << 8) | e level by Beer-Lambert."""
    levels = np.arange(256, dtype=np.float64) / OD_LEVELS
    od = (
        levels[:, None, None] * h_gain * np.array(STAIN_H)[None, None, :]
        + levels[None, :, None] * e_gain * np.array(STAIN_E)[None, None, :]
    )
    rgb = np.clip(np.rint(WHITE_RGB * np.exp(-od)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb.reshape(-1, 3).T)


@functools.lru_cache(maxsize=8)
def make_noise(seed: int, stream: int, max_block_hw: tuple[int, int], std_levels: float) -> NDArray[np.int16]:
    """Periodic fine-grained noise in OD levels, padded so any block-sized window exists.

    Cached: callers must not modify the returned array.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng([seed, 3, stream])
    base = gaussian_filter(rng.normal(size=(NOISE_PERIOD_PX, NOISE_PERIOD_PX)), 0.7, mode="wrap")
    base *= std_levels / max(float(base.std()), 1e-9)
    padded = np.pad(base, ((0, max_block_hw[0]), (0, max_block_hw[1])), mode="wrap")
    noise: NDArray[np.int16] = np.rint(padded).astype(np.int16)
    return noise


def window(image: NDArray[_T], x0: int, y0: int, width: int, height: int) -> NDArray[_T]:
    """The block at level-0 (x0, y0) of a periodic texture (noise, glass)."""
    oy, ox = y0 % NOISE_PERIOD_PX, x0 % NOISE_PERIOD_PX
    return image[oy : oy + height, ox : ox + width]


def to_rgb(
    h_levels: NDArray[np.int16], e_levels: NDArray[np.int16], lut_planar: NDArray[np.uint8]
) -> NDArray[np.uint8]:
    """RGB (rows, cols, 3) of OD-level arrays (clipped to 0-255 in place) via the lookup table."""
    np.clip(h_levels, 0, 255, out=h_levels)
    np.clip(e_levels, 0, 255, out=e_levels)
    packed = h_levels.view(np.uint16)  # 0-255 after clipping: same bits as uint16
    packed <<= 8
    packed |= e_levels.view(np.uint16)
    index = packed.astype(np.intp)
    rgb = np.empty((*h_levels.shape, 3), dtype=np.uint8)
    for channel in range(3):  # three byte gathers beat one 3-byte-row gather by 4x
        rgb[..., channel] = np.take(lut_planar[channel], index)
    return rgb


# --- fields -------------------------------------------------------------------------------


def _axis_weights(start_px: int, count: int, step_px: float) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    coord = (start_px + 0.5 + np.arange(count)) / step_px  # pixel centres in grid units
    index = np.floor(coord).astype(np.intp)
    return index, (coord - index).astype(np.float32)


def sample_block(
    field: NDArray[np.float32], step_px: float, x0: int, y0: int, width: int, height: int
) -> NDArray[np.float32]:
    """Bilinear samples of a grid field at the pixel centres of a block, (height, width)."""
    ix, fx = _axis_weights(x0, width, step_px)
    iy, fy = _axis_weights(y0, height, step_px)
    ix = np.clip(ix, 0, field.shape[1] - 2)
    iy = np.clip(iy, 0, field.shape[0] - 2)
    r0, c0 = int(iy[0]), int(ix[0])
    sub = field[r0 : int(iy[-1]) + 2, c0 : int(ix[-1]) + 2]
    cols = ix - c0
    across = sub[:, cols] * (1 - fx) + sub[:, cols + 1] * fx
    rows = iy - r0
    out = across[rows] * (1 - fy)[:, None] + across[rows + 1] * fy[:, None]
    return out.astype(np.float32, copy=False)


def block_range(
    field: NDArray[np.float32], step_px: float, x0: int, y0: int, width: int, height: int
) -> tuple[float, float]:
    """(min, max) of a field over the grid nodes around a block (bounds its samples)."""
    c0 = max(int(x0 / step_px) - 1, 0)
    r0 = max(int(y0 / step_px) - 1, 0)
    sub = field[r0 : int((y0 + height) / step_px) + 3, c0 : int((x0 + width) / step_px) + 3]
    return float(sub.min()), float(sub.max())


def sample_points(
    field: NDArray[np.float32], step_px: float, x: NDArray[np.float64], y: NDArray[np.float64]
) -> NDArray[np.float32]:
    """Bilinear samples of a grid field at level-0 points (x, y)."""
    u, v = x / step_px, y / step_px
    j = np.clip(np.floor(u).astype(np.intp), 0, field.shape[1] - 2)
    i = np.clip(np.floor(v).astype(np.intp), 0, field.shape[0] - 2)
    fu = np.clip(u - j, 0, 1).astype(np.float32)
    fv = np.clip(v - i, 0, 1).astype(np.float32)
    top = field[i, j] * (1 - fu) + field[i, j + 1] * fu
    bottom = field[i + 1, j] * (1 - fu) + field[i + 1, j + 1] * fu
    out = top * (1 - fv) + bottom * fv
    return out.astype(np.float32, copy=False)
