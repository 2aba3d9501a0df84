"""Test data: paints a synthetic slide's tissue and deposits from real H&E texture (level-0 RGB).

Reads real lymph-node tiles (CAMELYON17) and real level-0 tumor patches (CAMELYON16) from the
reference data folder, resampled by physical scale to the slide's µm/px, and renders any block
of level 0 from a ``Scene``: tissue is a mosaic of background texture, each deposit a mosaic of
tumor patches; glass, the node capsule and fat vacuoles keep the drawn (cartoon) look.

Mosaic: the plane is cut into square cells on a fixed level-0 grid; each cell takes a window
of one source at a seeded offset, flip and 90° rotation, and overlaps its neighbours by a
feather on each side where linear weights cross-fade (the weights of a pixel sum to one).
Every choice is seeded by (slide seed, cell row, cell column) and every pixel is computed from
its level-0 position alone, so any block layout gives the same pixels.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pipeline.config import CAMELYON_LEVEL0_MPP, SHARED_DATA_DIR
from pipeline.errors import ConfigError
from pipeline.slides.annotations import polygon_mask
from pipeline.synthetic.render import _coarse_stroma, _edge_stain
from pipeline.synthetic.scene import (
    CAPSULE_WIDTH_UM,
    EDGE_SOFT_UM,
    MEMBRANE_WIDTH_UM,
    RENDER_CHUNK_PX,
    Scene,
    block_range,
    sample_block,
    to_rgb,
    window,
)

# The reference data folder beside the repository (``../shared/data``).
DEFAULT_TEXTURE_DIR = SHARED_DATA_DIR
# The demo texture pack inside the repository (a few MB of the same files, data/README.md),
# used when the reference data folder is not there (a fresh clone).
BUNDLED_TEXTURE_DIR = Path(__file__).resolve().parents[2] / "data" / "textures"


def default_texture_dir() -> Path:
    """The reference data folder when it exists, else the repository's demo texture pack."""
    return DEFAULT_TEXTURE_DIR if DEFAULT_TEXTURE_DIR.is_dir() else BUNDLED_TEXTURE_DIR
# Background tiles: path under the texture folder, columns used (fractions of the width), and
# the CAMELYON17 label of the node the tile comes from. The default model trained on the left
# half of centre_3's tile, so only its right half is used. Only the negative node's tile is
# known to be tumor-free; the others look tumor-free but come from an ITC and a macro node.
BACKGROUND_TILES = (
    ("camelyon17_tiles/centre_1_patient_024_node_2.jpeg", (0.0, 1.0), "itc"),
    ("camelyon17_tiles/centre_4_patient_097_node_3.jpeg", (0.0, 1.0), "macro"),
    ("camelyon17_tiles/centre_3_patient_066_node_1.jpeg", (0.5, 1.0), "negative"),
)
# The same tiles in the demo texture pack (data/textures/README.md): crops of the tiles above,
# re-encoded, named by their corner in the tile; centre_3's lies inside its right half, so all
# of it is used. Read when a folder has no tile of the reference layout.
BUNDLED_BACKGROUND_TILES = {
    tile: f"camelyon17_crops/{Path(tile).stem}_{corner}.jpeg"
    for (tile, _, _), corner in zip(BACKGROUND_TILES, ("x224_y224", "x224_y224", "x1040_y16"), strict=True)
}
# Which background tiles a slide may take: "any" of them, or the "negative-node" tile only.
TEXTURE_BACKGROUNDS = ("any", "negative-node")
TUMOR_PATCHES = "camelyon16_patches/tumor"  # 256 px RGBA PNGs at CAMELYON_LEVEL0_MPP
BUNDLED_TUMOR_PATCHES = "camelyon16_crops/tumor"  # the pack's 252 px crops of some of them
MIN_TUMOR_PATCHES = 4
BACKGROUND_CELL_UM = 180.0  # core side of a background mosaic cell (a tile is ~500 µm)
TUMOR_CELL_UM = 42.0  # core side of a tumor mosaic cell (a patch is 62 µm)
SEAM_FEATHER_UM = 8.0  # cross-fade on each side of a mosaic seam
DEPOSIT_EDGE_UM = 4.0  # width of the blend between tumor and background at a deposit's outline
MAX_TEXTURE_MPP = 1.0  # coarser than this a tumor patch is too few px to tile


@dataclasses.dataclass(frozen=True, eq=False)
class TextureLibrary:
    """Real texture at a slide's µm/px: background tiles and tumor patches, RGB uint8."""

    folder: Path
    mpp: float
    background: tuple[NDArray[np.uint8], ...]
    background_names: tuple[str, ...]
    tumor: tuple[NDArray[np.uint8], ...]
    tumor_names: tuple[str, ...]


def _resample(rgb: NDArray[np.uint8], source_mpp: float, mpp: float) -> NDArray[np.uint8]:
    """Bring an image from source_mpp to mpp (physical scale, Lanczos)."""
    from PIL import Image

    scale = source_mpp / mpp
    height, width = rgb.shape[:2]
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    resized = Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8))


def _read_rgb(path: Path) -> NDArray[np.uint8]:
    """An image as RGB; transparent pixels are composited on white."""
    from PIL import Image

    with Image.open(path) as image:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0
    rgb: NDArray[np.uint8] = np.rint(rgba[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    return rgb


def _missing_texture_error(folder: Path, missing: str) -> ConfigError:
    return ConfigError(
        f"texture folder {folder}: {missing} not found; it needs camelyon17_tiles/*.jpeg and "
        f"{TUMOR_PATCHES}/*.png (the reference data, ../shared/data beside the repository): "
        "pass --texture-data DIR pointing at it, or use --texture cartoon"
    )


def _background_tile(
    folder: Path, relative: str, columns: tuple[float, float]
) -> tuple[str, tuple[float, float]]:
    """(path under folder, columns used) of a BACKGROUND_TILES entry: the reference layout's
    tile, else the demo pack's crop of it (all columns). Raises ConfigError when neither is
    there."""
    if (folder / relative).is_file():
        return relative, columns
    bundled = BUNDLED_BACKGROUND_TILES[relative]
    if (folder / bundled).is_file():
        return bundled, (0.0, 1.0)
    raise _missing_texture_error(folder, relative)


def _tumor_patch_paths(folder: Path) -> tuple[str, list[Path]]:
    """(sub-folder, sorted PNGs) of the tumor patches: the reference layout's, else the pack's."""
    for relative in (TUMOR_PATCHES, BUNDLED_TUMOR_PATCHES):
        paths = sorted((folder / relative).glob("*.png"))
        if paths:
            return relative, paths
    return TUMOR_PATCHES, []


@functools.lru_cache(maxsize=4)
def load_textures(folder: Path, mpp: float, background: str = "any") -> TextureLibrary:
    """The background tiles and tumor patches under ``folder``, resampled to ``mpp`` µm/px.

    background: "any" (every tile of BACKGROUND_TILES) or "negative-node" (the tile of the
    node labelled negative only). Cached per arguments: callers must not modify the arrays.
    Raises ConfigError naming the folder and what to do when it or its files are missing or
    unreadable.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise _missing_texture_error(folder, "the folder")
    if background not in TEXTURE_BACKGROUNDS:
        raise ValueError(f"background={background!r} is not allowed; use any or negative-node")
    tiles, names = [], []
    for relative, (start, stop), node_label in BACKGROUND_TILES:
        if background == "negative-node" and node_label != "negative":
            continue
        relative, (start, stop) = _background_tile(folder, relative, (start, stop))
        path = folder / relative
        try:
            rgb = _read_rgb(path)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the texture tile ({exc})") from exc
        columns = slice(round(start * rgb.shape[1]), round(stop * rgb.shape[1]))
        tiles.append(_resample(np.ascontiguousarray(rgb[:, columns]), CAMELYON_LEVEL0_MPP, mpp))
        names.append(relative if (start, stop) == (0.0, 1.0) else f"{relative} (columns {start:g}-{stop:g})")
    tumor_dir, tumor_paths = _tumor_patch_paths(folder)
    if len(tumor_paths) < MIN_TUMOR_PATCHES:
        raise _missing_texture_error(folder, f"{TUMOR_PATCHES}/*.png (at least {MIN_TUMOR_PATCHES})")
    tumor = []
    for path in tumor_paths:
        try:
            tumor.append(_resample(_read_rgb(path), CAMELYON_LEVEL0_MPP, mpp))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the tumor patch ({exc})") from exc
    return TextureLibrary(
        folder=folder,
        mpp=mpp,
        background=tuple(tiles),
        background_names=tuple(names),
        tumor=tuple(tumor),
        tumor_names=tuple(f"{tumor_dir}/{p.name}" for p in tumor_paths),
    )


def background_source(seed: int, library: TextureLibrary) -> int:
    """Index of the background tile a slide is painted from: one stain per slide, as on glass."""
    return int(np.random.default_rng([seed, 61]).integers(len(library.background)))


# --- mosaic ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Grid:
    """A mosaic cell grid in level-0 px: core side cell_px, cross-fade feather_px each side."""

    cell_px: float
    feather_px: float

    @property
    def window_px(self) -> int:
        """Side of the source window a cell needs (its core, both feathers and rounding)."""
        return math.ceil(self.cell_px + 2 * self.feather_px) + 2

    def origin(self, index: int) -> int:
        """Level-0 coordinate of a cell window's first px."""
        return math.floor(index * self.cell_px - self.feather_px)

    def cells(self, start: int, count: int) -> range:
        """Cells whose window may reach px [start, start + count)."""
        first = math.floor((start - self.feather_px) / self.cell_px) - 1
        return range(first, math.floor((start + count + self.feather_px) / self.cell_px) + 2)

    def weights(self, index: int, start: int, count: int) -> NDArray[np.float32]:
        """Cross-fade weight of cell ``index`` at the centres of px [start, start + count)."""
        u = start + 0.5 + np.arange(count, dtype=np.float64)
        two_f = 2 * self.feather_px
        rise = (u - (index * self.cell_px - self.feather_px)) / two_f
        fall = ((index + 1) * self.cell_px + self.feather_px - u) / two_f
        return np.clip(np.minimum(rise, fall), 0, 1).astype(np.float32)


def _cell_window(
    sources: tuple[NDArray[np.uint8], ...], seed: int, stream: int, row: int, col: int, side: int
) -> NDArray[np.uint8]:
    """The (side, side, 3) source window of a mosaic cell: seeded source, flip, rotation, offset."""
    rng = np.random.default_rng([seed, stream, row & 0xFFFFFFFF, col & 0xFFFFFFFF])
    source = sources[int(rng.integers(len(sources)))] if len(sources) > 1 else sources[0]
    view = np.rot90(source, int(rng.integers(4)))
    if rng.integers(2):
        view = view[:, ::-1]
    oy = int(rng.integers(view.shape[0] - side + 1))
    ox = int(rng.integers(view.shape[1] - side + 1))
    return view[oy : oy + side, ox : ox + side]


def paint_mosaic(
    sources: tuple[NDArray[np.uint8], ...],
    grid: _Grid,
    seed: int,
    stream: int,
    x0: int,
    y0: int,
    width: int,
    height: int,
) -> NDArray[np.float32]:
    """(height, width, 3) float32 RGB of a feathered mosaic of ``sources`` over a level-0 block.

    Cells are visited in one fixed order, so every pixel sums the same terms in the same order
    whatever the block. Raises ValueError if a source is smaller than a cell window.
    """
    side = grid.window_px
    if min(min(s.shape[:2]) for s in sources) < side:
        raise ValueError(f"texture sources must be at least {side} px on each side")
    out = np.zeros((height, width, 3), dtype=np.float32)
    for row in grid.cells(y0, height):
        top = grid.origin(row)
        r0, r1 = max(top, y0), min(top + side, y0 + height)
        if r1 <= r0:
            continue
        wy = grid.weights(row, r0, r1 - r0)
        if not wy.any():
            continue
        for col in grid.cells(x0, width):
            left = grid.origin(col)
            c0, c1 = max(left, x0), min(left + side, x0 + width)
            if c1 <= c0:
                continue
            wx = grid.weights(col, c0, c1 - c0)
            if not wx.any():
                continue
            cell = _cell_window(sources, seed, stream, row, col, side)
            patch = cell[r0 - top : r1 - top, c0 - left : c1 - left].astype(np.float32)
            out[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0] += (wy[:, None] * wx[None, :])[..., None] * patch
    return out


# --- blocks ---------------------------------------------------------------------------------


def _tissue_weight(scene: Scene, x0: int, y0: int, width: int, height: int) -> NDArray[np.float32] | None:
    """Share of each px that is tissue interior (not glass, capsule or fat), None if all of it."""
    fields, step = scene.fields, scene.fields.step_px
    weight: NDArray[np.float32] | None = None
    if block_range(fields.tissue_um, step, x0, y0, width, height)[0] < CAPSULE_WIDTH_UM + 4:
        tissue = sample_block(fields.tissue_um, step, x0, y0, width, height)
        alpha = np.clip(tissue / EDGE_SOFT_UM + 0.5, 0, 1)
        capsule = np.clip((CAPSULE_WIDTH_UM - tissue) / (4 * EDGE_SOFT_UM) + 0.5, 0, 1) * alpha
        weight = alpha * (1 - capsule)
    if block_range(fields.vacuole_um, step, x0, y0, width, height)[0] < 2 * MEMBRANE_WIDTH_UM:
        vac = sample_block(fields.vacuole_um, step, x0, y0, width, height)
        # Fat keeps its drawn membrane: texture fades out a membrane width before the vacuole.
        solid = np.clip((vac - MEMBRANE_WIDTH_UM) / EDGE_SOFT_UM + 0.5, 0, 1)
        weight = solid if weight is None else weight * solid
    return weight


def _frame_rgb(scene: Scene, x0: int, y0: int, width: int, height: int) -> NDArray[np.uint8]:
    """The drawn glass, capsule and fat of a block without nuclei (the texture covers the rest)."""
    e = _coarse_stroma(scene, x0, y0, width, height)
    h, e, glass = _edge_stain(scene, e, x0, y0, width, height)
    noise_h = window(scene.noise_h, x0, y0, width, height)
    noise_e = window(scene.noise_e, x0, y0, width, height)
    if glass is not None:
        noise_h = np.where(glass, window(scene.glass_noise_h, x0, y0, width, height), noise_h)
        noise_e = np.where(glass, window(scene.glass_noise_e, x0, y0, width, height), noise_e)
    return to_rgb(h + noise_h, e + noise_e, scene.lut_planar)


def _deposit_alpha(scene: Scene, x0: int, y0: int, width: int, height: int) -> NDArray[np.float32] | None:
    """Tumor share of each px: 1 inside the deposits, 0 outside, a DEPOSIT_EDGE_UM ramp centred
    on the outline; None if no deposit reaches the block. Computed on a padded window so the
    ramp does not depend on where the block ends."""
    from scipy.ndimage import distance_transform_edt

    ramp_px = DEPOSIT_EDGE_UM / scene.mpp
    pad = math.ceil(ramp_px) + 2
    near = [
        v
        for v in scene.deposits_xy
        if v[:, 0].min() < x0 + width + pad
        and v[:, 0].max() > x0 - pad
        and v[:, 1].min() < y0 + height + pad
        and v[:, 1].max() > y0 - pad
    ]
    if not near:
        return None
    # Window: the padded block cut to the deposits' bounding box grown by pad (the distances
    # that matter, up to half the ramp, all lie within it).
    lo = np.min([v.min(axis=0) for v in near], axis=0)
    hi = np.max([v.max(axis=0) for v in near], axis=0)
    wx0, wy0 = max(x0 - pad, math.floor(lo[0]) - pad), max(y0 - pad, math.floor(lo[1]) - pad)
    wx1 = min(x0 + width + pad, math.ceil(hi[0]) + pad)
    wy1 = min(y0 + height + pad, math.ceil(hi[1]) + pad)
    mask = polygon_mask(near, (wy1 - wy0, wx1 - wx0), (wy0, wx0))
    if not mask.any():
        return None
    if mask.all():
        signed = np.full(mask.shape, np.inf)  # no outline within reach of the block
    else:
        signed = np.where(mask, distance_transform_edt(mask), -distance_transform_edt(~mask))
        signed -= np.sign(signed) * 0.5  # distances between px centres to distances to the edge
    alpha = np.zeros((height, width), dtype=np.float32)
    ax0, ay0 = max(wx0, x0), max(wy0, y0)
    ax1, ay1 = min(wx1, x0 + width), min(wy1, y0 + height)
    if ax1 <= ax0 or ay1 <= ay0:
        return None
    part = signed[ay0 - wy0 : ay1 - wy0, ax0 - wx0 : ax1 - wx0]
    alpha[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = np.clip(0.5 + part / ramp_px, 0, 1)
    return alpha if alpha.any() else None


def render_textured_block(
    scene: Scene, library: TextureLibrary, x0: int, y0: int, width: int, height: int
) -> NDArray[np.uint8]:
    """RGB (height, width, 3) uint8 of the level-0 block at (x0, y0), painted from real texture."""
    fields, step = scene.fields, scene.fields.step_px
    if block_range(fields.tissue_um, step, x0, y0, width, height)[1] < -2 * EDGE_SOFT_UM:
        return np.array(window(scene.glass_rgb, x0, y0, width, height))
    mpp = scene.mpp
    background = (library.background[background_source(scene.seed, library)],)
    grid = _Grid(BACKGROUND_CELL_UM / mpp, SEAM_FEATHER_UM / mpp)
    rgb = paint_mosaic(background, grid, scene.seed, 62, x0, y0, width, height)
    alpha = _deposit_alpha(scene, x0, y0, width, height)
    if alpha is not None:
        rows, cols = np.nonzero(alpha.any(axis=1))[0], np.nonzero(alpha.any(axis=0))[0]
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        tumor = paint_mosaic(
            library.tumor,
            _Grid(TUMOR_CELL_UM / mpp, SEAM_FEATHER_UM / mpp),
            scene.seed,
            63,
            x0 + c0,
            y0 + r0,
            c1 - c0,
            r1 - r0,
        )
        a = alpha[r0:r1, c0:c1, None]
        rgb[r0:r1, c0:c1] = rgb[r0:r1, c0:c1] * (1 - a) + tumor * a
    weight = _tissue_weight(scene, x0, y0, width, height)
    if weight is not None:
        w = weight[..., None]
        rgb = rgb * w + _frame_rgb(scene, x0, y0, width, height).astype(np.float32) * (1 - w)
    out: NDArray[np.uint8] = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    return out


def render_textured_strip(
    scene: Scene, library: TextureLibrary, y0: int, height: int, width: int
) -> NDArray[np.uint8]:
    """RGB (height, width, 3) of the level-0 rows [y0, y0 + height), painted from real texture."""
    strip = np.empty((height, width, 3), dtype=np.uint8)
    for x0 in range(0, width, RENDER_CHUNK_PX):
        chunk = min(RENDER_CHUNK_PX, width - x0)
        strip[:, x0 : x0 + chunk] = render_textured_block(scene, library, x0, y0, chunk, height)
    return strip
