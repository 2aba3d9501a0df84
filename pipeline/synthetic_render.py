"""Test data: renders blocks of a synthetic H&E lymph-node slide (level-0 RGB) from a scene.

A ``Scene`` holds everything decided once per slide (tissue outline, fields on a coarse
grid, deposit polygons and tumor nuclei, nucleus sprites, the stain lookup table); blocks
are rendered independently from it, so any block layout gives the same pixels.

Colour model: each pixel has a haematoxylin and an eosin optical density (OD), quantised
to ``OD_LEVELS`` steps per OD unit, and a 256 x 256 lookup table turns the pair into RGB by
Beer-Lambert: rgb = white * exp(-(h * H + e * E)). Sizes are in µm and converted to px
with the scene's µm/px, so the slide looks alike at any resolution.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from pipeline.annotations import polygon_mask

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


# --- nuclei -------------------------------------------------------------------------------


def lattice_nuclei(scene: Scene, y_lo: float, y_hi: float) -> Nuclei:
    """Lymphocyte nuclei with centres in [y_lo, y_hi), before filtering by tissue.

    A jittered hexagonal lattice; each lattice row draws from its own RNG stream, so a
    nucleus is the same whichever block asks for it.
    """
    spacing = scene.lymph_spacing_px
    row_step = spacing * math.sqrt(3) / 2
    n_cols = int(scene.width_px / spacing) + 3
    xs, ys, ids = [], [], []
    for row in range(max(int(y_lo / row_step) - 1, 0), int(y_hi / row_step) + 2):
        rng = np.random.default_rng([scene.seed, 101, row])
        jitter = rng.uniform(-0.35, 0.35, size=(2, n_cols)) * spacing
        keep = rng.random(n_cols)
        variant = rng.integers(0, scene.lymph.count, size=n_cols)
        x = (np.arange(n_cols) + 0.5 * (row % 2)) * spacing + jitter[0]
        y = np.full(n_cols, (row + 0.5) * row_step) + jitter[1]
        density = sample_points(scene.fields.density, scene.fields.step_px, x, y)
        chosen = (keep < density) & (y >= y_lo) & (y < y_hi)
        xs.append(x[chosen])
        ys.append(y[chosen])
        ids.append(variant[chosen])
    return _filter_lymphocytes(scene, np.concatenate(xs), np.concatenate(ys), np.concatenate(ids))


def _filter_lymphocytes(
    scene: Scene, x: NDArray[np.float64], y: NDArray[np.float64], ids: NDArray[np.int64]
) -> Nuclei:
    """Keep lymphocytes inside the tissue, off the capsule, vacuoles and deposits."""
    import shapely

    radius_um = scene.lymph.radius_px * scene.mpp
    fields = scene.fields
    tissue = sample_points(fields.tissue_um, fields.step_px, x, y)
    vacuole = sample_points(fields.vacuole_um, fields.step_px, x, y)
    keep = (tissue > CAPSULE_WIDTH_UM + radius_um) & (vacuole > radius_um)
    for vertices in scene.deposits_xy:
        (bx0, by0), (bx1, by1) = vertices.min(axis=0), vertices.max(axis=0)
        near = keep & (x > bx0) & (x < bx1) & (y > by0) & (y < by1)
        if near.any():
            inside = shapely.contains_xy(shapely.Polygon(vertices), x[near], y[near])
            keep[np.flatnonzero(near)[inside]] = False
    order = np.argsort(y[keep], kind="stable")
    return Nuclei(x[keep][order], y[keep][order], ids[keep][order].astype(np.int32))


def stamp(
    h: NDArray[np.uint8],
    e: NDArray[np.uint8],
    sprites: Sprites,
    nuclei: Nuclei,
    x0: int,
    y0: int,
) -> None:
    """Draw nuclei into a block's OD-level arrays (in place), keeping the darker value.

    Stamps go onto a zero canvas padded by twice the sprite radius, so no bounds checks are
    needed, with ``np.maximum.at`` (correct where sprites overlap); the canvas is then
    merged into the block.
    """
    height, width = h.shape
    r = sprites.radius_px
    pad = 2 * r  # a nucleus reaching the block has its centre within r of it
    cx = np.floor(nuclei.x).astype(np.intp) - x0
    cy = np.floor(nuclei.y).astype(np.intp) - y0
    near = (cx >= -r) & (cx < width + r) & (cy >= -r) & (cy < height + r)
    if not near.any():
        return
    pitch = width + 2 * pad
    origin = (cy[near] + pad) * pitch + (cx[near] + pad)
    flat = (origin[:, None] + (sprites.dy * pitch + sprites.dx)[None, :]).ravel()
    variant = nuclei.sprite[near]
    layers = [(h, sprites.h)] + ([(e, sprites.e)] if sprites.has_eosin else [])
    for target, values in layers:
        canvas = np.zeros((height + 2 * pad, pitch), dtype=np.uint8)
        np.maximum.at(canvas.reshape(-1), flat, values[variant].ravel())
        np.maximum(target, canvas[pad : pad + height, pad : pad + width], out=target)


# --- blocks -------------------------------------------------------------------------------


def _levels(od: NDArray[np.floating]) -> NDArray[np.uint8]:
    out: NDArray[np.uint8] = np.clip(od * OD_LEVELS + 0.5, 0, 255).astype(np.uint8)
    return out


def _coarse_stroma(scene: Scene, x0: int, y0: int, width: int, height: int) -> NDArray[np.uint8]:
    """Stroma eosin levels, sampled every COARSE_PX px (the field varies over ~200 µm)."""
    c = COARSE_PX
    rows, cols = -(-height // c), -(-width // c)
    gain = sample_block(scene.fields.stroma_gain, scene.fields.step_px / c, x0 // c, y0 // c, cols, rows)
    small = _levels(STROMA_E_OD * gain)
    big = np.repeat(np.repeat(small, c, axis=0), c, axis=1)  # much faster than broadcast_to
    return np.ascontiguousarray(big[:height, :width])


def _edge_stain(
    scene: Scene, e: NDArray[np.uint8], x0: int, y0: int, width: int, height: int
) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.bool_] | None]:
    """Stain levels where a block meets the capsule, glass or fat vacuoles, and the glass mask."""
    fields, step = scene.fields, scene.fields.step_px
    e_od = e.astype(np.float32) / OD_LEVELS
    h_od = np.full_like(e_od, STROMA_H_OD)
    glass = None
    if block_range(fields.tissue_um, step, x0, y0, width, height)[0] < CAPSULE_WIDTH_UM + 4:
        tissue = sample_block(fields.tissue_um, step, x0, y0, width, height)
        alpha = np.clip(tissue / EDGE_SOFT_UM + 0.5, 0, 1)
        capsule = np.clip((CAPSULE_WIDTH_UM - tissue) / (4 * EDGE_SOFT_UM) + 0.5, 0, 1) * alpha
        # Collagen lamellae run parallel to the node's edge.
        fibres = CAPSULE_E_OD + 0.12 * np.sin(tissue * (2 * np.pi / CAPSULE_FIBRE_UM))
        e_od = alpha * (e_od * (1 - capsule) + fibres * capsule) + (1 - alpha) * GLASS_OD
        h_od = alpha * (h_od * (1 - capsule) + CAPSULE_H_OD * capsule) + (1 - alpha) * GLASS_OD
        glass = alpha <= 0
    if block_range(fields.vacuole_um, step, x0, y0, width, height)[0] < 2 * MEMBRANE_WIDTH_UM:
        vac = sample_block(fields.vacuole_um, step, x0, y0, width, height)
        empty = np.clip(-vac / EDGE_SOFT_UM + 0.5, 0, 1)
        ring = np.clip(1 - np.abs(vac) / MEMBRANE_WIDTH_UM, 0, 1)
        e_od = e_od * (1 - empty) + (MEMBRANE_E_OD * ring + GLASS_OD) * empty
        h_od = h_od * (1 - empty) + GLASS_OD * empty
        glass = vac < -MEMBRANE_WIDTH_UM if glass is None else glass | (vac < -MEMBRANE_WIDTH_UM)
    return _levels(h_od), _levels(e_od), glass


def _is_interior(scene: Scene, x0: int, y0: int, width: int, height: int) -> bool:
    fields, step = scene.fields, scene.fields.step_px
    tissue_lo = block_range(fields.tissue_um, step, x0, y0, width, height)[0]
    vacuole_lo = block_range(fields.vacuole_um, step, x0, y0, width, height)[0]
    return tissue_lo > CAPSULE_WIDTH_UM + 4 and vacuole_lo > 2 * MEMBRANE_WIDTH_UM


def _fill_deposits(scene: Scene, h: NDArray[np.uint8], e: NDArray[np.uint8], x0: int, y0: int) -> None:
    """Paint tumor cytoplasm over the deposit areas of a block (in place)."""
    import shapely

    height, width = h.shape
    block = shapely.box(x0, y0, x0 + width, y0 + height)
    for vertices, polygon in zip(scene.deposits_xy, scene.deposit_polygons, strict=True):
        if not polygon.intersects(block):
            continue
        inside: NDArray[np.bool_] | slice = (
            slice(None) if polygon.contains(block) else polygon_mask([vertices], (height, width), (y0, x0))
        )
        h[inside] = round(TUMOR_STROMA_H_OD * OD_LEVELS)
        e[inside] = round(TUMOR_STROMA_E_OD * OD_LEVELS)


def render_block(
    scene: Scene, lymphocytes: Nuclei, x0: int, y0: int, width: int, height: int
) -> NDArray[np.uint8]:
    """RGB (height, width, 3) uint8 of the level-0 block with top-left (x0, y0).

    x0, y0, width and height are multiples of COARSE_PX. lymphocytes: at least every
    lymphocyte whose sprite can reach the block.
    """
    fields, step = scene.fields, scene.fields.step_px
    if block_range(fields.tissue_um, step, x0, y0, width, height)[1] < -2 * EDGE_SOFT_UM:
        return np.array(window(scene.glass_rgb, x0, y0, width, height))
    e = _coarse_stroma(scene, x0, y0, width, height)
    glass = None
    if _is_interior(scene, x0, y0, width, height):
        h = np.full_like(e, round(STROMA_H_OD * OD_LEVELS))
    else:
        h, e, glass = _edge_stain(scene, e, x0, y0, width, height)
    _fill_deposits(scene, h, e, x0, y0)
    stamp(h, e, scene.lymph, lymphocytes, x0, y0)
    reach = scene.tumor.radius_px + 1
    stamp(h, e, scene.tumor, scene.tumor_nuclei.rows(y0 - reach, y0 + height + reach), x0, y0)
    noise_h = window(scene.noise_h, x0, y0, width, height)
    noise_e = window(scene.noise_e, x0, y0, width, height)
    if glass is not None:  # glass pixels get the glass noise, matching background blocks
        noise_h = np.where(glass, window(scene.glass_noise_h, x0, y0, width, height), noise_h)
        noise_e = np.where(glass, window(scene.glass_noise_e, x0, y0, width, height), noise_e)
    return to_rgb(h + noise_h, e + noise_e, scene.lut_planar)


def render_strip(scene: Scene, y0: int, height: int, width: int) -> NDArray[np.uint8]:
    """RGB (height, width, 3) of the level-0 rows [y0, y0 + height), in blocks."""
    reach = scene.lymph.radius_px + 1
    lymphocytes = lattice_nuclei(scene, y0 - reach, y0 + height + reach)
    strip = np.empty((height, width, 3), dtype=np.uint8)
    for x0 in range(0, width, RENDER_CHUNK_PX):
        chunk = min(RENDER_CHUNK_PX, width - x0)
        strip[:, x0 : x0 + chunk] = render_block(scene, lymphocytes, x0, y0, chunk, height)
    return strip


# --- sprites ------------------------------------------------------------------------------


def _sprite_support(h: NDArray[np.uint8], e: NDArray[np.uint8], radius: int) -> Sprites:
    """Pack (n, S, S) stamps into the pixels any variant uses."""
    used = ((h | e) > 0).any(axis=0)
    dy, dx = np.nonzero(used)
    return Sprites(
        dy=(dy - radius).astype(np.int32),
        dx=(dx - radius).astype(np.int32),
        h=h[:, dy, dx],
        e=e[:, dy, dx],
        radius_px=radius,
    )


def _ellipse_distance(
    size: int, a_px: float, b_px: float, angle: float, wobble: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Normalised radial distance (1 on the outline) of an irregular ellipse, (size, size)."""
    c = size // 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) - c
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    theta = np.arctan2(v, u)
    outline = 1 + sum(amp * np.cos((k + 2) * theta + phase) for k, (amp, phase) in enumerate(wobble))
    distance: NDArray[np.float64] = np.hypot(u / a_px, v / b_px) / outline
    return distance


@functools.lru_cache(maxsize=8)
def make_lymph_sprites(seed: int, mpp: float, count: int = 32) -> Sprites:
    """Small, dark, round lymphocyte nuclei (radius LYMPH_RADIUS_UM), drawn at ``mpp``."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng([seed, 2])
    radius = math.ceil(LYMPH_RADIUS_UM[1] * 1.1 / mpp) + 1
    size = 2 * radius + 1
    h = np.zeros((count, size, size), dtype=np.uint8)
    for k in range(count):
        r_px = rng.uniform(LYMPH_RADIUS_UM[0], LYMPH_RADIUS_UM[1]) / mpp
        d = _ellipse_distance(
            size,
            r_px,
            r_px * rng.uniform(0.85, 1.0),
            rng.uniform(0, math.pi),
            np.column_stack([rng.uniform(0, 0.04, 3), rng.uniform(0, 6.3, 3)]),
        )
        edge = np.clip((1 - d) * r_px + 0.5, 0, 1)  # ~1 px anti-aliased rim
        texture = gaussian_filter(rng.normal(size=(size, size)), max(0.4 / mpp, 0.5))
        texture /= max(float(texture.std()), 1e-9)
        od = rng.uniform(1.6, 2.1) * (1 + 0.08 * texture) * edge
        h[k] = _levels(od.astype(np.float32))
    return _sprite_support(h, np.zeros_like(h), radius)


def _tumor_cell(
    rng: np.random.Generator, mpp: float, size: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Haematoxylin and eosin OD of one pleomorphic tumor nucleus and its cytoplasm rim."""
    from scipy.ndimage import gaussian_filter

    a_px = rng.uniform(6.0, 8.5) / mpp
    b_px = a_px * rng.uniform(0.6, 0.9)
    angle = rng.uniform(0, math.pi)
    wobble = np.column_stack([rng.uniform(0, 0.06, 4), rng.uniform(0, 6.3, 4)])
    d = _ellipse_distance(size, a_px, b_px, angle, wobble)
    inside = np.clip((1 - d) * b_px + 0.5, 0, 1)
    rim = np.clip(1 - np.abs(1 - d) * b_px / max(0.6 / mpp, 1.0), 0, 1)
    grain = gaussian_filter(rng.normal(size=(size, size)), max(0.45 / mpp, 0.6))
    grain /= max(float(grain.std()), 1e-9)
    h = inside * (rng.uniform(0.6, 0.85) + 0.16 * grain) + 0.4 * rim
    c = size // 2
    yy, xx = np.mgrid[0:size, 0:size] - c
    for _ in range(int(rng.integers(0, 3))):  # nucleoli
        ny, nx = rng.uniform(-0.4, 0.4, 2) * b_px
        h += 0.7 * np.clip(0.9 / mpp - np.hypot(xx - nx, yy - ny), 0, 1)
    cell = _ellipse_distance(size, a_px * 1.3, b_px * 1.35, angle, wobble)
    cytoplasm = np.clip((1 - cell) * 3, 0, 1) * rng.uniform(0.55, 0.72)
    return h, cytoplasm


@functools.lru_cache(maxsize=8)
def make_tumor_sprites(seed: int, mpp: float, count: int = 48) -> Sprites:
    """Large, pale, pleomorphic tumor nuclei (semi-axes 6-8.5 µm) with a pink cytoplasm rim."""
    rng = np.random.default_rng([seed, 5])
    radius = math.ceil(8.5 * 1.35 * 1.1 / mpp) + 1
    size = 2 * radius + 1
    h = np.zeros((count, size, size), dtype=np.uint8)
    e = np.zeros_like(h)
    for k in range(count):
        h_od, e_od = _tumor_cell(rng, mpp, size)
        h[k], e[k] = _levels(h_od), _levels(e_od)
    return _sprite_support(h, e, radius)
