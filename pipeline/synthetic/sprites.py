"""Test data: nucleus sprites of a synthetic H&E slide, drawn once per slide and µm/px.

Reads a seed and the slide's µm/px; produces ``Sprites``: small, dark, round lymphocyte
nuclei and large, pale, pleomorphic tumor nuclei with a pink cytoplasm rim, as uint8 OD-level
stamps over a shared support, which ``render.stamp`` draws into blocks. Sizes are in
µm, so the nuclei look alike at any resolution.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import NDArray

from pipeline.synthetic.scene import LYMPH_RADIUS_UM, Sprites, to_levels


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
        h[k] = to_levels(od.astype(np.float32))
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
        h[k], e[k] = to_levels(h_od), to_levels(e_od)
    return _sprite_support(h, e, radius)
