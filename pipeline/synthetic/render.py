"""Test data: renders blocks of a synthetic H&E lymph-node slide (level-0 RGB) from a scene.

Reads a ``Scene`` (``scene``: tissue outline, fields on a coarse grid, deposit
polygons and tumor nuclei, nucleus sprites, the stain lookup table) and produces RGB uint8
blocks and strips of level 0 in the cartoon texture: stroma, capsule, fat vacuoles, tumor
cytoplasm and stamped nuclei. Blocks are rendered independently from the scene, so any
block layout gives the same pixels.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from pipeline.slides.annotations import polygon_mask
from pipeline.synthetic.scene import (
    CAPSULE_E_OD,
    CAPSULE_FIBRE_UM,
    CAPSULE_H_OD,
    CAPSULE_WIDTH_UM,
    COARSE_PX,
    EDGE_SOFT_UM,
    GLASS_OD,
    MEMBRANE_E_OD,
    MEMBRANE_WIDTH_UM,
    OD_LEVELS,
    RENDER_CHUNK_PX,
    STROMA_E_OD,
    STROMA_H_OD,
    TUMOR_STROMA_E_OD,
    TUMOR_STROMA_H_OD,
    Nuclei,
    Scene,
    Sprites,
    block_range,
    sample_block,
    sample_points,
    to_levels,
    to_rgb,
    window,
)

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


def _coarse_stroma(scene: Scene, x0: int, y0: int, width: int, height: int) -> NDArray[np.uint8]:
    """Stroma eosin levels, sampled every COARSE_PX px (the field varies over ~200 µm)."""
    c = COARSE_PX
    rows, cols = -(-height // c), -(-width // c)
    gain = sample_block(scene.fields.stroma_gain, scene.fields.step_px / c, x0 // c, y0 // c, cols, rows)
    small = to_levels(STROMA_E_OD * gain)
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
    return to_levels(h_od), to_levels(e_od), glass


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
