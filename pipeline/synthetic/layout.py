"""Test data: lays out a synthetic lymph-node slide (node outlines, deposits, fat vacuoles,
follicles, tumor cells) from a ``SynthConfig`` and builds the ``Scene`` (``scene``)
that ``render`` and ``texture`` draw from.

All positions are level-0 px; sizes are stated in µm and converted with the config's µm/px.
Every random choice comes from a seeded stream, so a seed always gives the same slide.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import ConfigError
from pipeline.slides.annotations import max_feret_diameter_px
from pipeline.synthetic.config import SynthConfig
from pipeline.synthetic.scene import (
    CAPSULE_WIDTH_UM,
    GLASS_NOISE_STD_LEVELS,
    GLASS_OD,
    NOISE_STD_LEVELS,
    OD_LEVELS,
    RENDER_CHUNK_PX,
    FieldGrid,
    Nuclei,
    Scene,
    make_noise,
    stain_lut,
    to_rgb,
)
from pipeline.synthetic.sprites import make_lymph_sprites, make_tumor_sprites

FIELD_STEP_UM = 8.0  # grid spacing of the smooth fields
LYMPH_SPACING_UM = 7.2  # lattice spacing of lymphocyte nuclei
TUMOR_SPACING_UM = 17.0  # lattice spacing of tumor cells
DEPOSIT_GAP_UM = 100.0  # deposits are kept this far apart so they stay separate
BLOB_MARGIN_FRACTION = 0.05  # empty glass around the nodes, as a fraction of the slide


# --- layout ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class _Blob:
    """A lymph-node outline: an ellipse with a smooth random radial wobble (level-0 px)."""

    cx: float
    cy: float
    a_px: float
    b_px: float
    angle: float
    wobble: NDArray[np.float64]  # (K, 2) amplitude, phase of harmonics 2..K+1

    def radius(self, theta: NDArray[np.float64]) -> NDArray[np.float64]:
        t = theta - self.angle
        ellipse = self.a_px * self.b_px / np.hypot(self.b_px * np.cos(t), self.a_px * np.sin(t))
        k = np.arange(2, 2 + len(self.wobble))[:, None]
        wobble = (self.wobble[:, :1] * np.cos(k * theta[None, :] + self.wobble[:, 1:])).sum(0)
        radius: NDArray[np.float64] = ellipse * (1 + wobble)
        return radius

    def outline(self, n: int = 720) -> NDArray[np.float64]:
        theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
        r = self.radius(theta)
        return np.column_stack([self.cx + r * np.cos(theta), self.cy + r * np.sin(theta)])

    def signed_distance_px(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> Any:
        """Radial distance to the outline (> 0 inside), close to the Euclidean one."""
        dx, dy = x - self.cx, y - self.cy
        theta = np.arctan2(dy, dx)
        return self.radius(theta.ravel()).reshape(theta.shape) - np.hypot(dx, dy)


def _make_blobs(config: SynthConfig, rng: np.random.Generator, n_blobs: int) -> list[_Blob]:
    """One to three node outlines side by side along the long axis, the first the largest."""
    w, h = config.width_px, config.height_px
    long_px, short_px = max(w, h), min(w, h)
    weights = np.array([1.0, 0.6, 0.45][:n_blobs])
    lengths = (1 - 2 * BLOB_MARGIN_FRACTION) * long_px * weights / weights.sum()
    start = BLOB_MARGIN_FRACTION * long_px
    blobs = []
    for length in lengths:
        along, across = 0.45 * length, 0.45 * (1 - 2 * BLOB_MARGIN_FRACTION) * short_px
        centre_long, centre_short = start + length / 2, short_px / 2
        start += length
        a = along * rng.uniform(0.85, 1.0)
        b = min(across * rng.uniform(0.8, 1.0), 1.6 * a)
        wobble = np.column_stack(
            [rng.uniform(0, 0.07, 5) / np.arange(1, 6) ** 0.5, rng.uniform(0, 2 * np.pi, 5)]
        )
        cx, cy = (centre_long, centre_short) if w >= h else (centre_short, centre_long)
        angle = 0.0 if w >= h else math.pi / 2
        blobs.append(_Blob(cx, cy, a, b, angle + rng.uniform(-0.1, 0.1), wobble))
    return blobs


def _deposit_outline(rng: np.random.Generator, diameter_px: float) -> NDArray[np.float64]:
    """An irregular star-shaped outline around (0, 0) whose max Feret diameter is exact."""
    n = int(np.clip(diameter_px / 6, 32, 256))
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    k = np.arange(2, 9)[:, None]
    amp = rng.uniform(0, 0.22, len(k))[:, None] / k**0.7
    r = 1 + (amp * np.cos(k * theta + rng.uniform(0, 2 * np.pi, (len(k), 1)))).sum(0)
    r = np.maximum(r, 0.45)
    stretch, angle = rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
    x, y = r * np.cos(theta), r * np.sin(theta) * stretch
    points = np.column_stack(
        [x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)]
    )
    points *= diameter_px / max_feret_diameter_px(points)
    centred: NDArray[np.float64] = points - points.mean(axis=0)
    return centred


def _place_deposits(
    config: SynthConfig, rng: np.random.Generator, blobs: list[_Blob]
) -> list[NDArray[np.float64]] | None:
    """Outlines of the planted deposits in level-0 px (config order), or None if they don't fit."""
    import shapely

    mpp = config.render_mpp
    tissue = shapely.union_all([shapely.Polygon(b.outline()) for b in blobs])
    inner = tissue.buffer(-(CAPSULE_WIDTH_UM + 20.0) / mpp)
    gap_px = DEPOSIT_GAP_UM / mpp
    placed: dict[int, NDArray[np.float64]] = {}
    taken = shapely.Polygon()
    order = sorted(range(len(config.deposits)), key=lambda i: -config.deposits[i].diameter_mm)
    x0, y0, x1, y1 = inner.bounds if not inner.is_empty else (0, 0, 0, 0)
    for index in order:
        outline = _deposit_outline(rng, config.deposits[index].diameter_mm * 1000 / mpp)
        for _ in range(400):
            candidate = outline + rng.uniform((x0, y0), (x1, y1))
            polygon = shapely.Polygon(candidate)
            if inner.contains(polygon) and not taken.intersects(polygon):
                placed[index] = candidate
                taken = taken.union(polygon.buffer(gap_px))
                break
        else:
            return None
    return [placed[i] for i in range(len(config.deposits))]


def _vacuoles(
    config: SynthConfig, rng: np.random.Generator, blobs: list[_Blob], avoid: list[Any]
) -> list[tuple[float, float, float]]:
    """Fat vacuoles (x, y, radius) in level-0 px: clusters near the node edge plus strays."""
    import shapely

    mpp = config.render_mpp
    keep_out = shapely.union_all([p.buffer(30 / mpp) for p in avoid]) if avoid else None
    circles: list[tuple[float, float, float]] = []
    for blob in blobs:
        area_mm2 = math.pi * blob.a_px * blob.b_px * (mpp / 1000) ** 2
        seeds = [(rng.uniform(0.55, 0.8), 1) for _ in range(1 + rng.poisson(area_mm2 * 0.8))]
        seeds += [(rng.uniform(0.1, 0.85), 0) for _ in range(rng.poisson(area_mm2 * 6))]
        for rho, is_cluster in seeds:
            theta = rng.uniform(0, 2 * np.pi)
            r_blob = float(blob.radius(np.array([theta]))[0]) * rho
            cx, cy = blob.cx + r_blob * math.cos(theta), blob.cy + r_blob * math.sin(theta)
            spread_px = rng.uniform(80, 260) / mpp if is_cluster else 0.0
            for _ in range(150 if is_cluster else 1):
                radius = rng.uniform(15, 38) / mpp if is_cluster else rng.uniform(5, 14) / mpp
                x, y = cx + rng.normal(0, spread_px / 2), cy + rng.normal(0, spread_px / 2)
                inside = blob.signed_distance_px(np.array(x), np.array(y))
                if float(inside) < radius + (CAPSULE_WIDTH_UM + 10) / mpp:
                    continue
                if keep_out is not None and keep_out.distance(shapely.Point(x, y)) < radius:
                    continue
                if all(math.hypot(x - u, y - v) > radius + r + 1 / mpp for u, v, r in circles):
                    circles.append((x, y, radius))
    return circles


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> NDArray[np.float32]:
    """Smooth noise in [-1, 1] on a grid, varying over ``cell`` grid steps."""
    from scipy.ndimage import zoom

    coarse = rng.uniform(-1, 1, (int(shape[0] / cell) + 3, int(shape[1] / cell) + 3))
    fine = zoom(coarse, cell, order=3, mode="nearest", grid_mode=False)
    noise: NDArray[np.float32] = np.clip(fine[: shape[0], : shape[1]], -1, 1).astype(np.float32)
    return noise


def _grid_shape(config: SynthConfig, step_px: float) -> tuple[int, int]:
    """Field grid covering the padded render area (tiles and blocks overhang the slide)."""
    pad = config.tile_size_px + RENDER_CHUNK_PX
    return (
        int((config.height_px + pad) / step_px) + 3,
        int((config.width_px + pad) / step_px) + 3,
    )


def _tissue_field(
    shape: tuple[int, int], step_px: float, mpp: float, blobs: list[_Blob]
) -> NDArray[np.float32]:
    field = np.full(shape, -1e4, dtype=np.float32)
    xs = np.arange(shape[1]) * step_px
    for row in range(0, shape[0], 256):  # row chunks bound the temporary arrays
        ys = np.arange(row, min(row + 256, shape[0]))[:, None] * step_px
        for blob in blobs:
            d = blob.signed_distance_px(
                np.broadcast_to(xs, (len(ys), len(xs))), np.broadcast_to(ys, (len(ys), len(xs)))
            )
            np.maximum(field[row : row + len(ys)], d * mpp, out=field[row : row + len(ys)])
    return field


def _vacuole_field(
    shape: tuple[int, int], step_px: float, mpp: float, circles: list[tuple[float, float, float]]
) -> NDArray[np.float32]:
    field = np.full(shape, 1e3, dtype=np.float32)
    for x, y, r in circles:
        reach = r + 4 * step_px
        c0, c1 = max(int((x - reach) / step_px), 0), int((x + reach) / step_px) + 2
        r0, r1 = max(int((y - reach) / step_px), 0), int((y + reach) / step_px) + 2
        gy, gx = np.mgrid[r0:r1, c0:c1] * step_px
        d = ((np.hypot(gx - x, gy - y) - r) * mpp).astype(np.float32)
        window = field[r0:r1, c0:c1]
        np.minimum(window, d[: window.shape[0], : window.shape[1]], out=window)
    return field


def _follicle_terms(
    shape: tuple[int, int],
    step_px: float,
    mpp: float,
    rng: np.random.Generator,
    blobs: list[_Blob],
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Germinal centres (paler, fewer lymphocytes) and mantles (denser), each 0-1."""
    centre = np.zeros(shape, dtype=np.float32)
    mantle = np.zeros(shape, dtype=np.float32)
    for blob in blobs:
        area_mm2 = math.pi * blob.a_px * blob.b_px * (mpp / 1000) ** 2
        for _ in range(rng.poisson(area_mm2 * 1.5)):
            theta = rng.uniform(0, 2 * np.pi)
            rho = rng.uniform(0.3, 0.75) * float(blob.radius(np.array([theta]))[0])
            x, y = blob.cx + rho * math.cos(theta), blob.cy + rho * math.sin(theta)
            radius = rng.uniform(120, 260) / mpp
            c0, r0 = max(int((x - radius) / step_px), 0), max(int((y - radius) / step_px), 0)
            c1, r1 = int((x + radius) / step_px) + 2, int((y + radius) / step_px) + 2
            gy, gx = np.mgrid[r0:r1, c0:c1] * step_px
            t = (np.hypot(gx - x, gy - y) / radius).astype(np.float32)
            gc = np.clip((0.6 - t) / 0.15, 0, 1)
            ring = np.clip(1 - np.abs(t - 0.8) / 0.2, 0, 1)
            rows, cols = slice(r0, r0 + t.shape[0]), slice(c0, c0 + t.shape[1])
            sub = centre[rows, cols]
            np.maximum(sub, gc[: sub.shape[0], : sub.shape[1]], out=sub)
            sub = mantle[rows, cols]
            np.maximum(sub, ring[: sub.shape[0], : sub.shape[1]], out=sub)
    return centre, mantle


def _fields(
    config: SynthConfig,
    rng: np.random.Generator,
    blobs: list[_Blob],
    circles: list[tuple[float, float, float]],
) -> FieldGrid:
    mpp = config.render_mpp
    step_px = FIELD_STEP_UM / mpp
    shape = _grid_shape(config, step_px)
    centre, mantle = _follicle_terms(shape, step_px, mpp, rng, blobs)
    density = 0.86 + 0.08 * _value_noise(rng, shape, 150 / FIELD_STEP_UM)
    density += 0.1 * mantle - 0.45 * centre
    gain = 1 + 0.15 * _value_noise(rng, shape, 200 / FIELD_STEP_UM) + 0.25 * centre
    return FieldGrid(
        step_px=step_px,
        tissue_um=_tissue_field(shape, step_px, mpp, blobs),
        vacuole_um=_vacuole_field(shape, step_px, mpp, circles),
        density=np.clip(density, 0.2, 1.0).astype(np.float32),
        stroma_gain=gain.astype(np.float32),
    )


def _tumor_nuclei(config: SynthConfig, deposits_xy: list[NDArray[np.float64]]) -> tuple[Nuclei, list[int]]:
    """Tumor cell centres on a jittered lattice inside each deposit, and the count per deposit."""
    import shapely

    spacing = TUMOR_SPACING_UM / config.render_mpp
    xs, ys, counts = [], [], []
    for index, vertices in enumerate(deposits_xy):
        rng = np.random.default_rng([config.seed, 202, index])
        (x0, y0), (x1, y1) = vertices.min(axis=0), vertices.max(axis=0)
        row_step = spacing * math.sqrt(3) / 2
        gy, gx = np.mgrid[y0 : y1 + row_step : row_step, x0 : x1 + spacing : spacing]
        gx = gx + (np.arange(gx.shape[0]) % 2)[:, None] * spacing / 2
        x = gx.ravel() + rng.uniform(-0.22, 0.22, gx.size) * spacing
        y = gy.ravel() + rng.uniform(-0.22, 0.22, gy.size) * spacing
        polygon = shapely.Polygon(vertices)
        keep = shapely.contains_xy(polygon, x, y) & (rng.random(x.size) < 0.97)
        x, y = x[keep], y[keep]
        if x.size == 0:  # a tiny deposit still holds one cell
            point = polygon.representative_point()
            x, y = np.array([point.x]), np.array([point.y])
        xs.append(x)
        ys.append(y)
        counts.append(int(x.size))
    x_all = np.concatenate(xs) if xs else np.zeros(0)
    y_all = np.concatenate(ys) if ys else np.zeros(0)
    order = np.argsort(y_all, kind="stable")
    sprite_rng = np.random.default_rng([config.seed, 203])
    sprite = sprite_rng.integers(0, 1 << 30, size=x_all.size).astype(np.int32)
    return Nuclei(x_all[order], y_all[order], sprite[order]), counts


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """Where things are on a slide (level-0 px): node outlines, deposits, fat vacuoles."""

    blobs: list[_Blob]
    deposits_xy: list[NDArray[np.float64]]
    circles: list[tuple[float, float, float]]  # vacuoles: x, y, radius


def _layout(config: SynthConfig) -> Layout:
    """Node outlines, deposit outlines and fat vacuoles; raises ConfigError if deposits don't fit."""
    import shapely

    rng = np.random.default_rng([config.seed, 1])
    short_mm = min(config.width_px, config.height_px) * config.render_mpp / 1000
    largest_mm = max((d.diameter_mm for d in config.deposits), default=0.0)
    n_blobs = int(rng.choice([1, 1, 2, 3])) if largest_mm < 0.25 * short_mm else 1
    for attempt, blobs_wanted in enumerate(dict.fromkeys([n_blobs, 1])):
        attempt_rng = np.random.default_rng([config.seed, 1, attempt])
        blobs = _make_blobs(config, attempt_rng, blobs_wanted)
        deposits = _place_deposits(config, attempt_rng, blobs)
        if deposits is not None:
            circles = _vacuoles(config, attempt_rng, blobs, [shapely.Polygon(d) for d in deposits])
            return Layout(blobs, deposits, circles)
    raise ConfigError(
        f"could not place {len(config.deposits)} deposit(s) of "
        f"{', '.join(f'{d.diameter_mm:g}' for d in config.deposits)} mm without overlap in the "
        f"tissue of a {config.width_px} x {config.height_px} px slide; use a larger slide, "
        "fewer or smaller deposits"
    )


def build_scene(config: SynthConfig) -> tuple[Scene, Layout, list[int]]:
    """The render scene of a slide, its layout and the tumor nucleus count per deposit."""
    import shapely

    layout = _layout(config)
    mpp = config.render_mpp
    fields = _fields(config, np.random.default_rng([config.seed, 4]), layout.blobs, layout.circles)
    tumor_nuclei, counts = _tumor_nuclei(config, layout.deposits_xy)
    lymph = make_lymph_sprites(config.seed, mpp)
    tumor = make_tumor_sprites(config.seed if config.deposits else 0, mpp)
    tumor_nuclei = Nuclei(tumor_nuclei.x, tumor_nuclei.y, tumor_nuclei.sprite % tumor.count)
    block = (config.tile_size_px, RENDER_CHUNK_PX)
    stain_gains = np.random.default_rng([config.seed, 3]).uniform(0.92, 1.08, 2)
    lut = stain_lut(*stain_gains)  # a little stain variation between slides
    noise_h = make_noise(config.seed, 0, block, NOISE_STD_LEVELS)
    noise_e = make_noise(config.seed, 1, block, NOISE_STD_LEVELS)
    glass_level = round(GLASS_OD * OD_LEVELS)
    glass_h = make_noise(config.seed, 2, block, GLASS_NOISE_STD_LEVELS)
    glass_e = make_noise(config.seed, 3, block, GLASS_NOISE_STD_LEVELS)
    glass = to_rgb(glass_level + glass_h, glass_level + glass_e, lut)
    scene = Scene(
        seed=config.seed,
        mpp=mpp,
        width_px=config.width_px,
        height_px=config.height_px,
        fields=fields,
        deposits_xy=tuple(layout.deposits_xy),
        deposit_polygons=tuple(shapely.Polygon(d) for d in layout.deposits_xy),
        tumor_nuclei=tumor_nuclei,
        lymph=lymph,
        tumor=tumor,
        lymph_spacing_px=LYMPH_SPACING_UM / mpp,
        lut_planar=lut,
        noise_h=noise_h,
        noise_e=noise_e,
        glass_noise_h=glass_h,
        glass_noise_e=glass_e,
        glass_rgb=glass,
    )
    return scene, layout, counts
