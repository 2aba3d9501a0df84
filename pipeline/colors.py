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
# Alpha of a probability-0 cell: scored tissue stays faintly tinted, tumour stands out.
HEATMAP_ALPHA_FLOOR = 0.2


def category_color(category: str | None) -> str:
    """The '#RRGGBB' colour of a deposit or slide category (grey for unknown values)."""
    return CATEGORY_COLORS.get(str(category).lower(), UNKNOWN_CATEGORY_COLOR)


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """'#RRGGBB' -> (r, g, b) in 0-255."""
    value = color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def heatmap_rgba(probabilities: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Colour a (rows, cols) probability map as (rows, cols, 4) uint8 RGBA.

    Colour follows HEATMAP_COLORMAP; alpha rises from HEATMAP_ALPHA_FLOOR at p=0 to
    opaque at p=1; NaN (unscored) cells are fully transparent.
    """
    from matplotlib import colormaps

    values = np.asarray(probabilities, dtype=np.float32)
    scored = np.isfinite(values)
    clipped = np.clip(np.where(scored, values, 0.0), 0.0, 1.0)
    rgba = colormaps[HEATMAP_COLORMAP](clipped, bytes=True)
    alpha = HEATMAP_ALPHA_FLOOR + (1.0 - HEATMAP_ALPHA_FLOOR) * clipped
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
