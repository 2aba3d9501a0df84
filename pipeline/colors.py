"""Review colours: reads heatmap probabilities, produces RGBA images and the category palette.

One palette for deposit categories (outlines, badges, legends) and one colormap for the
heatmap, shared by the static report and the web viewer so a colour means the same
thing everywhere.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from pipeline.heatmap import Heatmap

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies);
# severity runs green -> blue -> orange -> vermillion.
CATEGORY_COLORS: dict[str, str] = {
    "negative": "#009E73",
    "itc": "#0072B2",
    "micro": "#E69F00",
    "macro": "#D55E00",
}
UNKNOWN_CATEGORY_COLOR = "#777777"
# Drawn under every outline so it stays visible on tissue and on the heatmap alike.
OUTLINE_HALO_COLOR = "#000000"

HEATMAP_COLORMAP = "viridis"
# Probabilities at or below this are drawn fully transparent, so tissue the model calls
# normal shows its H&E unchanged; above it alpha rises linearly to opaque at p = 1.
HEATMAP_TRANSPARENT_BELOW = 0.1
# Opacity of the heatmap layer over a thumbnail (overlay.png, report.html, viewer default).
DEFAULT_HEATMAP_OPACITY = 0.6


def category_color(category: str | None) -> str:
    """The '#RRGGBB' colour of a deposit or slide category (grey for unknown values)."""
    return CATEGORY_COLORS.get(str(category).lower(), UNKNOWN_CATEGORY_COLOR)


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """'#RRGGBB' -> (r, g, b) in 0-255."""
    value = color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def heatmap_rgba(probabilities: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Colour a (rows, cols) probability map as (rows, cols, 4) uint8 RGBA.

    Colour follows HEATMAP_COLORMAP; alpha is 0 up to HEATMAP_TRANSPARENT_BELOW and rises
    linearly to opaque at p = 1; NaN (unscored) cells are fully transparent. The one
    colouring of the heatmap: overlay.png, report.html and the viewer all use it.
    """
    from matplotlib import colormaps

    values = np.asarray(probabilities, dtype=np.float32)
    scored = np.isfinite(values)
    clipped = np.clip(np.where(scored, values, 0.0), 0.0, 1.0)
    rgba = colormaps[HEATMAP_COLORMAP](clipped, bytes=True)
    floor = HEATMAP_TRANSPARENT_BELOW
    alpha = np.clip((clipped - floor) / (1.0 - floor), 0.0, 1.0)
    rgba[..., 3] = np.where(scored, np.round(alpha * 255.0), 0).astype(np.uint8)
    return np.ascontiguousarray(rgba, dtype=np.uint8)


def heatmap_rect_px(heatmap: Heatmap) -> tuple[float, float, float, float]:
    """Level-0 (x, y, width, height) covered by the heatmap image (one pixel per cell).

    Cell (r, c) is the stride square centred on its tile's centre, so the image starts half
    a tile minus half a stride past the origin.
    """
    rows, cols = heatmap.shape
    offset = (heatmap.tile_size_l0_px - heatmap.stride_l0_px) / 2.0
    return (
        heatmap.origin_x_px + offset,
        heatmap.origin_y_px + offset,
        cols * heatmap.stride_l0_px,
        rows * heatmap.stride_l0_px,
    )


def _cell_index(n_px: int, start_px: float, stop_px: float, n_cells: int) -> NDArray[np.intp]:
    """Heatmap cell under each thumbnail pixel centre along one axis; -1 outside the heatmap."""
    step = (stop_px - start_px) / n_cells if n_cells else 1.0
    index: NDArray[np.intp] = np.floor((np.arange(n_px) + 0.5 - start_px) / step).astype(np.intp)
    index[(index < 0) | (index >= n_cells)] = -1
    return index


def blend_heatmap(
    thumb: NDArray[np.uint8],
    heatmap: Heatmap,
    px_per_l0: tuple[float, float],
    opacity: float = DEFAULT_HEATMAP_OPACITY,
) -> NDArray[np.uint8]:
    """The heatmap-over-thumbnail renderer of micromet (overlay.png and report.html).

    thumb: (H, W, 3) uint8 image whose pixel (0, 0) is level-0 (0, 0), ``px_per_l0`` (x, y)
    thumbnail px per level-0 px. Each pixel takes the heatmap cell under its centre, coloured
    by ``heatmap_rgba`` with its alpha times ``opacity`` (0-1). Returns a new (H, W, 3) uint8
    array; pixels outside the heatmap or under transparent cells are unchanged.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity={opacity!r} is out of range; allowed 0 to 1")
    x_px, y_px, width_px, height_px = heatmap_rect_px(heatmap)
    sx, sy = px_per_l0
    rows, cols = heatmap.shape
    row_of = _cell_index(thumb.shape[0], y_px * sy, (y_px + height_px) * sy, rows)
    col_of = _cell_index(thumb.shape[1], x_px * sx, (x_px + width_px) * sx, cols)
    out = np.array(thumb, dtype=np.uint8, copy=True)
    r_in, c_in = np.flatnonzero(row_of >= 0), np.flatnonzero(col_of >= 0)
    if len(r_in) == 0 or len(c_in) == 0:
        return out
    rgba = heatmap_rgba(heatmap.probabilities)
    # 8-bit fixed point (alpha in 1/256 steps): exact to one grey level, and a fraction of
    # the time of float arithmetic on a 1600 px thumbnail.
    alpha = np.rint(rgba[..., 3].astype(np.float64) / 255.0 * opacity * 256.0).astype(np.uint16)
    cell_rgb = rgba[..., :3].astype(np.uint16) * alpha[..., None] + 128
    # Cells are contiguous runs of pixels: index rows, then columns, one axis at a time.
    added = np.take(np.take(cell_rgb, row_of[r_in], axis=0), col_of[c_in], axis=1)
    kept = np.take(np.take(256 - alpha, row_of[r_in], axis=0), col_of[c_in], axis=1)
    window = out[r_in[0] : r_in[-1] + 1, c_in[0] : c_in[-1] + 1]
    blended = window.astype(np.uint16) * kept[..., None] + added
    # A transparent cell gives (v * 256 + 128) >> 8 = v: the pixel exactly as it was.
    window[...] = (blended >> 8).astype(np.uint8)
    return out


def heatmap_gradient_css(steps: int = 11) -> str:
    """A CSS linear-gradient of HEATMAP_COLORMAP from p=0 (left) to p=1 (right)."""
    from matplotlib import colormaps

    colormap = colormaps[HEATMAP_COLORMAP]
    stops = []
    for index in range(steps):
        r, g, b, _ = colormap(index / (steps - 1), bytes=True)
        stops.append(f"#{int(r):02x}{int(g):02x}{int(b):02x}")
    return f"linear-gradient(to right, {', '.join(stops)})"


def category_css() -> str:
    """CSS rules giving each ``.cat-<category>`` class its colour as ``--cat-color``."""
    return "\n".join(
        f".cat-{name} {{ --cat-color: {color}; }}" for name, color in CATEGORY_COLORS.items()
    )
