"""Heatmap overlay: reads a slide thumbnail and a heatmap, produces ``overlay.png``.

The thumbnail is drawn one image pixel per PNG pixel, the heatmap alpha-blended over it in a
perceptual colormap (unscored cells transparent), with optional deposit outlines, a colour
bar for the probability and a scale bar in mm measured from the thumbnail's real µm/px.
Drawn with matplotlib's object API on the Agg canvas (no pyplot state) and written atomically.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from numpy.typing import NDArray

from pipeline.colors import HEATMAP_COLORMAP
from pipeline.errors import HeatmapError
from pipeline.heatmap import Heatmap
from pipeline.outputs import atomic_write_bytes
from pipeline.slide import Slide

log = logging.getLogger(__name__)

COLORMAP = HEATMAP_COLORMAP  # one colormap for overlays, report and viewer
HEATMAP_ALPHA = 0.5
DPI = 100
# Layout in PNG px: the thumbnail's top-left corner sits at (MARGIN_PX, MARGIN_PX); the
# colour bar panel is COLORBAR_PANEL_PX wide, right of the thumbnail.
MARGIN_PX = 10
COLORBAR_PANEL_PX = 90
COLORBAR_WIDTH_PX = 18
# Round scale-bar lengths in mm (1-2-5 steps), and the longest bar drawn by default.
NICE_LENGTHS_MM = tuple(m * 10.0**e for e in range(-3, 3) for m in (1.0, 2.0, 5.0))
DEFAULT_MAX_BAR_PX = 200.0
DEFAULT_DEPOSIT_COLOR = "cyan"


def scale_bar_length(
    mm_per_px: float, max_length_px: float = DEFAULT_MAX_BAR_PX
) -> tuple[float, float]:
    """The longest round length (1, 2, 5 x 10^k mm) whose bar fits in ``max_length_px``.

    mm_per_px: image resolution in mm per pixel. Returns (length_mm, length_px) with
    length_px = length_mm / mm_per_px; the smallest round length if none fits.
    """
    if not (mm_per_px > 0 and math.isfinite(mm_per_px)):
        raise ValueError(f"mm_per_px={mm_per_px!r} is out of range; need a positive number")
    fitting = [length for length in NICE_LENGTHS_MM if length / mm_per_px <= max_length_px]
    length_mm = fitting[-1] if fitting else NICE_LENGTHS_MM[0]
    return length_mm, length_mm / mm_per_px


def _format_mm(length_mm: float) -> str:
    return f"{length_mm:g} mm"


def overlay_thumbnail_mpp(slide: Slide, max_side_px: int) -> float:
    """µm/px of a thumbnail whose longer side is at most ``max_side_px`` (never finer than level 0)."""
    if max_side_px < 1:
        raise ValueError(f"max_side_px={max_side_px!r} is out of range; need at least 1")
    return max(slide.mpp, slide.mpp * max(slide.dimensions) / max_side_px)


def heatmap_rgba(probabilities: NDArray[np.float32], alpha: float = HEATMAP_ALPHA) -> NDArray[np.float32]:
    """(rows, cols) probabilities -> (rows, cols, 4) RGBA in 0-1; NaN cells fully transparent."""
    scored = np.isfinite(probabilities)
    values = np.clip(np.where(scored, probabilities, 0.0), 0.0, 1.0)
    rgba = np.asarray(colormaps[COLORMAP](values), dtype=np.float32)
    rgba[..., 3] = np.where(scored, alpha, 0.0)
    return rgba


def _heatmap_extent(
    heatmap: Heatmap, px_per_l0: tuple[float, float]
) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) in thumbnail px: each cell is the stride square centred on
    its tile (see pipeline/heatmap.py)."""
    rows, cols = heatmap.shape
    half_gap = (heatmap.tile_size_l0_px - heatmap.stride_l0_px) / 2.0
    left = heatmap.origin_x_px + half_gap
    top = heatmap.origin_y_px + half_gap
    right = left + cols * heatmap.stride_l0_px
    bottom = top + rows * heatmap.stride_l0_px
    sx, sy = px_per_l0
    return left * sx, right * sx, bottom * sy, top * sy


def _draw_scale_bar(ax: Axes, thumb_shape: tuple[int, int], mm_per_px: float) -> None:
    height, width = thumb_shape
    length_mm, length_px = scale_bar_length(mm_per_px, min(DEFAULT_MAX_BAR_PX, 0.4 * width))
    pad = 8.0
    bar_h = max(3.0, height * 0.008)
    x0, y0 = pad * 2, height - pad * 2 - bar_h
    box = Rectangle((x0 - pad, y0 - pad - 14), length_px + 2 * pad, bar_h + 2 * pad + 14,
                    facecolor="white", edgecolor="none", alpha=0.85, zorder=5)
    ax.add_patch(box)
    ax.add_patch(Rectangle((x0, y0), length_px, bar_h, facecolor="black", edgecolor="none",
                           zorder=6))
    ax.text(x0 + length_px / 2, y0 - 3, _format_mm(length_mm), ha="center", va="bottom",
            fontsize=8, color="black", zorder=7)


def _draw_deposits(
    ax: Axes,
    deposits_xy: Sequence[NDArray[np.floating] | NDArray[np.integer]],
    colors: Sequence[str],
    px_per_l0: tuple[float, float],
) -> None:
    sx, sy = px_per_l0
    for outline, color in zip(deposits_xy, colors, strict=True):
        xy = np.asarray(outline, dtype=np.float64).reshape(-1, 2)
        if len(xy) == 0:
            continue
        closed = np.vstack([xy, xy[:1]])
        ax.plot(closed[:, 0] * sx, closed[:, 1] * sy, color=color, linewidth=1.5, zorder=4)


def _layout_figure(width: int, height: int) -> tuple[Figure, Axes, Axes]:
    """A figure with the thumbnail axes at 1 PNG px per thumbnail px, colour bar at the right."""
    fig_w = width + 2 * MARGIN_PX + COLORBAR_PANEL_PX
    fig_h = height + 2 * MARGIN_PX
    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((MARGIN_PX / fig_w, MARGIN_PX / fig_h, width / fig_w, height / fig_h))
    ax.set_axis_off()
    bar_left = (MARGIN_PX * 2 + width) / fig_w
    cax = fig.add_axes((bar_left, MARGIN_PX / fig_h, COLORBAR_WIDTH_PX / fig_w, height / fig_h))
    return fig, ax, cax


def render_overlay(
    slide: Slide,
    heatmap: Heatmap,
    path: Path,
    deposits_xy: list[NDArray[np.floating]] | None = None,
    deposit_colors: list[str] | None = None,
    max_side_px: int = 1600,
) -> None:
    """Write the heatmap over the slide thumbnail as a PNG at ``path`` (atomically).

    deposits_xy: outlines as (K, 2) level-0 (x, y) px, drawn closed. deposit_colors: one
    matplotlib colour per outline (default cyan). max_side_px: longer side of the thumbnail;
    the PNG adds a margin and the colour bar. Raises HeatmapError if the heatmap was made for
    a slide of another size, ValueError if the colours do not match the outlines.
    """
    if tuple(heatmap.slide_dimensions) != tuple(slide.dimensions):
        raise HeatmapError(
            f"{slide.path}: heatmap covers a {heatmap.slide_dimensions[0]} x "
            f"{heatmap.slide_dimensions[1]} px slide but this slide is {slide.dimensions[0]} x "
            f"{slide.dimensions[1]} px; render it with the slide it was computed from"
        )
    outlines = list(deposits_xy or [])
    colors = list(deposit_colors) if deposit_colors is not None else [DEFAULT_DEPOSIT_COLOR] * len(outlines)
    if len(colors) != len(outlines):
        raise ValueError(f"got {len(colors)} deposit colours for {len(outlines)} outlines")
    thumb = slide.thumbnail_at_mpp(overlay_thumbnail_mpp(slide, max_side_px))
    height, width = thumb.shape[:2]
    px_per_l0 = (width / slide.dimensions[0], height / slide.dimensions[1])
    mm_per_px = slide.mpp / px_per_l0[0] / 1000.0
    fig, ax, cax = _layout_figure(width, height)
    ax.imshow(thumb, interpolation="nearest", extent=(0, width, height, 0))
    ax.imshow(heatmap_rgba(heatmap.probabilities), interpolation="nearest",
              extent=_heatmap_extent(heatmap, px_per_l0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    _draw_deposits(ax, outlines, colors, px_per_l0)
    _draw_scale_bar(ax, (height, width), mm_per_px)
    mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=colormaps[COLORMAP])
    colorbar = fig.colorbar(mappable, cax=cax)
    colorbar.set_label("tumor probability", fontsize=8)
    colorbar.ax.tick_params(labelsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    log.info("%s: wrote overlay %s (%d x %d px thumbnail)", slide.path, path, width, height)
