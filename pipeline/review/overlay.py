"""Heatmap overlays: reads a slide thumbnail and a heatmap, produces heatmap-over-thumbnail
pictures and ``overlay.png``.

The one renderer of the heatmap over a slide picture: ``heatmap_rgba`` colours the cells (viridis;
p <= 0.1 and unscored cells transparent), ``blend_heatmap`` composites them over a whole-slide
thumbnail for overlay.png and report.html, and ``heatmap_layer`` is the same colouring as the
image the web viewer's browser composites by the same rule at its opacity slider's value.

``overlay.png`` draws the thumbnail one image pixel per PNG pixel under a title line (slide id,
category, largest deposit), with the blended heatmap, deposit outlines, a colour bar for the
probability, a scale bar in mm measured from the thumbnail's real µm/px, a legend of the outline
colours and the research-use notice as a footer. Composed with numpy and Pillow (a matplotlib
figure took seconds to draw and encode a 1600 px overlay) and written atomically.
``render_overlay`` does it all; ``heatmap_over_thumbnail`` (the slide read) + ``write_overlay``
let a caller run the slow half in a thread.
"""

from __future__ import annotations

import functools
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps, get_data_path
from matplotlib.colors import to_rgb
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from pipeline.detection.heatmap import Heatmap
from pipeline.errors import HeatmapError
from pipeline.outputs import atomic_write_bytes
from pipeline.review.colors import (
    CATEGORY_COLORS,
    DEFAULT_HEATMAP_OPACITY,
    HEATMAP_COLORMAP,
    HEATMAP_TRANSPARENT_BELOW,
)
from pipeline.review.report import RESEARCH_USE_NOTICE, upper_bound_mm
from pipeline.slides.slide import Slide

log = logging.getLogger(__name__)

COLORMAP = HEATMAP_COLORMAP  # one colormap for overlays, report and viewer
HEATMAP_OPACITY = DEFAULT_HEATMAP_OPACITY
# Layout in PNG px, top to bottom: a title band, the thumbnail with its top-left corner at
# (MARGIN_PX, THUMB_TOP_PX), a legend band and a footer band with the research-use notice.
# The colour bar panel is COLORBAR_PANEL_PX wide, right of the thumbnail.
MARGIN_PX = 10
TITLE_BAND_PX = 24
THUMB_TOP_PX = MARGIN_PX + TITLE_BAND_PX
LEGEND_BAND_PX = 22
FOOTER_BAND_PX = 18
LEGEND_SWATCH_PX = 12
LEGEND_CATEGORIES = ("itc", "micro", "macro")
TITLE_FONT_SIZE_PX = 14
COLORBAR_PANEL_PX = 90
COLORBAR_WIDTH_PX = 18
# Round scale-bar lengths in mm (1-2-5 steps), and the longest bar drawn by default.
NICE_LENGTHS_MM = tuple(m * 10.0**e for e in range(-3, 3) for m in (1.0, 2.0, 5.0))
DEFAULT_MAX_BAR_PX = 200.0
DEFAULT_DEPOSIT_COLOR = "cyan"
OUTLINE_WIDTH_PX = 2
FONT_SIZE_PX = 11  # 8 pt at 100 dpi
TICK_LENGTH_PX = 5
COLORBAR_TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# zlib level of the PNG: 1 encodes a 1600 px overlay several times faster than the default 6,
# for a file about a fifth larger.
PNG_COMPRESS_LEVEL = 1
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)


def heatmap_rgba(probabilities: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Colour a (rows, cols) probability map as (rows, cols, 4) uint8 RGBA.

    Colour follows HEATMAP_COLORMAP; alpha is 0 up to HEATMAP_TRANSPARENT_BELOW and rises
    linearly to opaque at p = 1; NaN (unscored) cells are fully transparent.
    """
    values = np.asarray(probabilities, dtype=np.float32)
    scored = np.isfinite(values)
    clipped = np.clip(np.where(scored, values, 0.0), 0.0, 1.0)
    rgba = colormaps[COLORMAP](clipped, bytes=True)
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


def heatmap_layer(heatmap: Heatmap, upscale: int = 1) -> NDArray[np.uint8]:
    """The heatmap as an RGBA picture of ``heatmap_rect_px``: (rows * upscale, cols * upscale, 4)
    uint8, each cell a block of ``upscale`` x ``upscale`` pixels coloured by ``heatmap_rgba``.

    The web viewer's layer: the browser draws it over the slide with its alpha times the opacity
    slider's value, the rule of ``blend_heatmap``.
    """
    if upscale < 1:
        raise ValueError(f"upscale={upscale!r} is out of range; need at least 1")
    rgba = heatmap_rgba(heatmap.probabilities)
    return np.ascontiguousarray(np.repeat(np.repeat(rgba, upscale, axis=0), upscale, axis=1))


def _cell_index(n_px: int, start_px: float, stop_px: float, n_cells: int) -> NDArray[np.intp]:
    """Heatmap cell under each thumbnail pixel centre along one axis; -1 outside the heatmap."""
    step = (stop_px - start_px) / n_cells if n_cells else 1.0
    index: NDArray[np.intp] = np.floor((np.arange(n_px) + 0.5 - start_px) / step).astype(np.intp)
    index[(index < 0) | (index >= n_cells)] = -1
    return index


def blend_heatmap(
    thumb: NDArray[np.uint8],
    heatmap: Heatmap,
    slide_dimensions: tuple[int, int],
    opacity: float = HEATMAP_OPACITY,
) -> NDArray[np.uint8]:
    """The heatmap over a whole-slide picture: micromet's one renderer (overlay.png, report.html).

    thumb: (H, W, 3) uint8 image of the whole slide, level-0 (0, 0) at its top-left corner and
    ``slide_dimensions`` (width, height) level-0 px at its bottom-right, so each axis has its own
    scale (W / width, H / height). Each pixel takes the heatmap cell under its centre, coloured
    by ``heatmap_rgba`` with its alpha times ``opacity`` (0-1). Returns a new (H, W, 3) uint8
    array; pixels outside the heatmap or under transparent cells are unchanged.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity={opacity!r} is out of range; allowed 0 to 1")
    if min(slide_dimensions) <= 0:
        raise ValueError(f"slide_dimensions={slide_dimensions!r} is out of range; need positive sizes")
    x_px, y_px, width_px, height_px = heatmap_rect_px(heatmap)
    sx, sy = thumb.shape[1] / slide_dimensions[0], thumb.shape[0] / slide_dimensions[1]
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
    """µm/px of a thumbnail whose longer side is at most ``max_side_px`` (never finer than level 0).

    A pyramid level whose longer side lies between half and all of ``max_side_px`` is used
    as it is (the finest such level): read without resampling, it costs a fraction of reading
    the next finer level and shrinking it.
    """
    if max_side_px < 1:
        raise ValueError(f"max_side_px={max_side_px!r} is out of range; need at least 1")
    fitting = [
        level for level, size in enumerate(slide.info.level_dimensions)
        if max_side_px / 2 <= max(size) <= max_side_px
    ]
    if fitting:
        return slide.level_mpp(min(fitting))
    return max(slide.mpp, slide.mpp * max(slide.dimensions) / max_side_px)


@functools.lru_cache(maxsize=4)
def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """matplotlib's DejaVu Sans (as the figures elsewhere use), else Pillow's default font."""
    try:
        return ImageFont.truetype(str(Path(get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size_px)
    except OSError:
        return ImageFont.load_default(size_px)


def _rgb(color: str) -> tuple[int, int, int]:
    red, green, blue = to_rgb(color)
    return round(red * 255), round(green * 255), round(blue * 255)


def _draw_deposits(
    canvas: Image.Image,
    deposits_xy: Sequence[NDArray[np.floating] | NDArray[np.integer]],
    colors: Sequence[str],
    px_per_l0: tuple[float, float],
) -> None:
    draw = ImageDraw.Draw(canvas)
    sx, sy = px_per_l0
    for outline, color in zip(deposits_xy, colors, strict=True):
        xy = np.asarray(outline, dtype=np.float64).reshape(-1, 2)
        if len(xy) == 0:
            continue
        closed = np.vstack([xy, xy[:1]]) * (sx, sy) + (MARGIN_PX, THUMB_TOP_PX)
        points = [(float(x), float(y)) for x, y in closed]
        draw.line(points, fill=_rgb(color), width=OUTLINE_WIDTH_PX, joint="curve")


def _draw_scale_bar(canvas: Image.Image, thumb_shape: tuple[int, int], mm_per_px: float) -> None:
    """A black bar of a round length in mm on a white box, bottom left of the thumbnail."""
    height, width = thumb_shape
    length_mm, length_px = scale_bar_length(mm_per_px, min(DEFAULT_MAX_BAR_PX, 0.4 * width))
    pad = 8.0
    bar_h = max(3.0, height * 0.008)
    x0, y0 = MARGIN_PX + pad * 2, THUMB_TOP_PX + height - pad * 2 - bar_h
    box = (round(x0 - pad), round(y0 - pad - 14), round(x0 + length_px + pad), round(y0 + bar_h + pad))
    pixels = np.asarray(canvas)[box[1] : box[3], box[0] : box[2]].astype(np.float32)
    whitened = Image.fromarray((pixels * 0.15 + 255.0 * 0.85 + 0.5).astype(np.uint8))
    canvas.paste(whitened, box[:2])
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((round(x0), round(y0), round(x0 + length_px) - 1, round(y0 + bar_h) - 1), fill=_BLACK)
    draw.text((x0 + length_px / 2, y0 - 3), _format_mm(length_mm), fill=_BLACK, font=_font(FONT_SIZE_PX),
              anchor="ms")


def _draw_colorbar(canvas: Image.Image, thumb_shape: tuple[int, int]) -> None:
    """The colormap from 0 (bottom) to 1 (top) with ticks and a vertical label, right of the thumbnail."""
    height, width = thumb_shape
    left, top = 2 * MARGIN_PX + width, THUMB_TOP_PX
    values = 1.0 - (np.arange(height) + 0.5) / height
    ramp = np.asarray(colormaps[COLORMAP](values, bytes=True), dtype=np.uint8)[:, None, :3]
    bar = np.ascontiguousarray(np.repeat(ramp, COLORBAR_WIDTH_PX, axis=1))
    canvas.paste(Image.fromarray(bar), (left, top))
    draw = ImageDraw.Draw(canvas)
    right = left + COLORBAR_WIDTH_PX
    draw.rectangle((left, top, right - 1, top + height - 1), outline=_BLACK)
    font = _font(FONT_SIZE_PX)
    text_left = right + TICK_LENGTH_PX + 2
    for tick in COLORBAR_TICKS:
        y = top + (1.0 - tick) * (height - 1)
        draw.line([(right, y), (right + TICK_LENGTH_PX - 1, y)], fill=_BLACK)
        draw.text((text_left, y), f"{tick:.1f}", fill=_BLACK, font=font, anchor="lm")
    label_left = text_left + round(draw.textlength("0.0", font=font)) + 4
    _draw_vertical_label(canvas, "tumor probability", label_left, top + height / 2)


def _draw_vertical_label(canvas: Image.Image, text: str, left: int, centre_y: float) -> None:
    """``text`` read bottom to top, its left edge at ``left``, centred on ``centre_y``."""
    font = _font(FONT_SIZE_PX)
    x0, y0, x1, y1 = font.getbbox(text)
    label = Image.new("RGB", (int(x1 - x0) + 2, int(y1 - y0) + 2), _WHITE)
    ImageDraw.Draw(label).text((1 - x0, 1 - y0), text, fill=_BLACK, font=font)
    rotated = label.rotate(90, expand=True)
    canvas.paste(rotated, (left, round(centre_y - rotated.height / 2)))


def overlay_title(
    slide_id: str,
    category: str,
    largest_diameter_mm: float | None,
    upper_bound: bool = False,
    n_review: int = 0,
) -> str:
    """The overlay's title line: "slide · category · largest deposit 1.23 mm".

    upper_bound: the largest size is not above the grid's resolution (one heatmap cell), so
    it reads "≤ 0.091 mm". n_review: deposits flagged for review (size and cell count
    disagree), added as "· review: 2 deposits".
    """
    if largest_diameter_mm is None:
        title = f"{slide_id} · {category} · no deposits"
    else:
        size = f"≤ {upper_bound_mm(largest_diameter_mm):.3f}" if upper_bound else f"{largest_diameter_mm:.2f}"
        title = f"{slide_id} · {category} · largest deposit {size} mm"
    if n_review:
        title += f" · review: {n_review} deposit{'s' if n_review > 1 else ''}"
    return title


def legend_swatch_boxes(thumb_shape: tuple[int, int]) -> dict[str, tuple[int, int, int, int]]:
    """PNG (left, top, right, bottom) of each outline-colour swatch in the legend band
    (right and bottom exclusive), for a thumbnail of ``thumb_shape`` (height, width)."""
    height, _ = thumb_shape
    font = _font(FONT_SIZE_PX)
    top = THUMB_TOP_PX + height + (LEGEND_BAND_PX - LEGEND_SWATCH_PX) // 2 + 2
    left = MARGIN_PX + round(font.getlength("outlines:")) + 8
    boxes = {}
    for name in LEGEND_CATEGORIES:
        boxes[name] = (left, top, left + LEGEND_SWATCH_PX, top + LEGEND_SWATCH_PX)
        left += LEGEND_SWATCH_PX + 4 + round(font.getlength(name)) + 12
    return boxes


def _draw_legend_and_footer(canvas: Image.Image, thumb_shape: tuple[int, int]) -> None:
    """The outline colours (one swatch per category) and the research-use notice below."""
    height, _ = thumb_shape
    draw = ImageDraw.Draw(canvas)
    font = _font(FONT_SIZE_PX)
    boxes = legend_swatch_boxes(thumb_shape)
    centre_y = (next(iter(boxes.values()))[1] + next(iter(boxes.values()))[3]) / 2
    draw.text((MARGIN_PX, centre_y), "outlines:", fill=_BLACK, font=font, anchor="lm")
    for name, (x0, y0, x1, y1) in boxes.items():
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=_rgb(CATEGORY_COLORS[name]))
        draw.text((x1 + 4, centre_y), name, fill=_BLACK, font=font, anchor="lm")
    footer_y = THUMB_TOP_PX + height + LEGEND_BAND_PX + FOOTER_BAND_PX / 2
    draw.text((MARGIN_PX, footer_y), RESEARCH_USE_NOTICE, fill=_BLACK, font=font, anchor="lm")


def overlay_size_px(thumb_shape: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the overlay PNG around a thumbnail of ``thumb_shape`` (height, width):
    wide enough for the colour bar and for the research-use notice on one line."""
    height, width = thumb_shape
    notice_px = round(_font(FONT_SIZE_PX).getlength(RESEARCH_USE_NOTICE))
    canvas_width = max(width + 2 * MARGIN_PX + COLORBAR_PANEL_PX, notice_px + 2 * MARGIN_PX)
    return canvas_width, THUMB_TOP_PX + height + LEGEND_BAND_PX + FOOTER_BAND_PX + MARGIN_PX


def draw_overlay(
    blended: NDArray[np.uint8],
    slide_dimensions: tuple[int, int],
    slide_mpp: float,
    deposits_xy: Sequence[NDArray[np.floating]] = (),
    deposit_colors: Sequence[str] = (),
    title: str = "",
) -> NDArray[np.uint8]:
    """The overlay image, ``overlay_size_px`` large: (height, width, 3) uint8.

    blended: (H, W, 3) uint8 from ``heatmap_over_thumbnail``. slide_dimensions, slide_mpp:
    the slide's level-0 (width, height) px and µm/px. deposits_xy: level-0 (K, 2) outlines,
    one matplotlib colour each in deposit_colors. title: the line above the thumbnail
    (``overlay_title``).
    """
    height, width = blended.shape[:2]
    px_per_l0 = (width / slide_dimensions[0], height / slide_dimensions[1])
    canvas = Image.new("RGB", overlay_size_px((height, width)), _WHITE)
    canvas.paste(Image.fromarray(np.ascontiguousarray(blended)), (MARGIN_PX, THUMB_TOP_PX))
    if title:
        ImageDraw.Draw(canvas).text(
            (MARGIN_PX, MARGIN_PX + TITLE_BAND_PX / 2 - 2), title, fill=_BLACK,
            font=_font(TITLE_FONT_SIZE_PX), anchor="lm",
        )
    _draw_deposits(canvas, deposits_xy, deposit_colors, px_per_l0)
    _draw_scale_bar(canvas, (height, width), slide_mpp / px_per_l0[0] / 1000.0)
    _draw_colorbar(canvas, (height, width))
    _draw_legend_and_footer(canvas, (height, width))
    return np.asarray(canvas)


def _check_heatmap_fits(slide: Slide, heatmap: Heatmap) -> None:
    if tuple(heatmap.slide_dimensions) != tuple(slide.dimensions):
        raise HeatmapError(
            f"{slide.path}: heatmap covers a {heatmap.slide_dimensions[0]} x "
            f"{heatmap.slide_dimensions[1]} px slide but this slide is {slide.dimensions[0]} x "
            f"{slide.dimensions[1]} px; render it with the slide it was computed from"
        )


def _checked_colors(outlines: Sequence[object], deposit_colors: Sequence[str] | None) -> list[str]:
    colors = list(deposit_colors) if deposit_colors is not None else [DEFAULT_DEPOSIT_COLOR] * len(outlines)
    if len(colors) != len(outlines):
        raise ValueError(f"got {len(colors)} deposit colours for {len(outlines)} outlines")
    return colors


def heatmap_over_thumbnail(slide: Slide, heatmap: Heatmap, max_side_px: int = 1600) -> NDArray[np.uint8]:
    """The slide thumbnail (longer side at most ``max_side_px``) with the heatmap blended over it.

    The slow half of an overlay (a slide read): callers may run it in a thread, with a slide
    handle of its own, while they measure deposits. Returns (H, W, 3) uint8. Raises
    HeatmapError if the heatmap was made for a slide of another size.
    """
    _check_heatmap_fits(slide, heatmap)
    thumb = slide.thumbnail_at_mpp(overlay_thumbnail_mpp(slide, max_side_px))
    return blend_heatmap(thumb, heatmap, slide.dimensions, HEATMAP_OPACITY)


def write_overlay(
    blended: NDArray[np.uint8],
    slide: Slide,
    path: Path,
    deposits_xy: Sequence[NDArray[np.floating]] | None = None,
    deposit_colors: Sequence[str] | None = None,
    title: str = "",
) -> None:
    """Finish an overlay from ``heatmap_over_thumbnail``'s image and write it (atomically).

    Arguments as in ``render_overlay``. Raises ValueError if the colours do not match the outlines.
    """
    outlines = list(deposits_xy or [])
    colors = _checked_colors(outlines, deposit_colors)
    image = draw_overlay(blended, slide.dimensions, slide.mpp, outlines, colors, title)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    atomic_write_bytes(path, buffer.getvalue())
    height, width = blended.shape[:2]
    log.info("%s: wrote overlay %s (%d x %d px thumbnail)", slide.path, path, width, height)


def render_overlay(
    slide: Slide,
    heatmap: Heatmap,
    path: Path,
    deposits_xy: list[NDArray[np.floating]] | None = None,
    deposit_colors: list[str] | None = None,
    max_side_px: int = 1600,
    title: str = "",
) -> None:
    """Write the heatmap over the slide thumbnail as a PNG at ``path`` (atomically).

    deposits_xy: outlines as (K, 2) level-0 (x, y) px, drawn closed. deposit_colors: one
    matplotlib colour per outline (default cyan). max_side_px: longer side of the thumbnail;
    the PNG adds the title line, margins, the colour bar, the outline legend and the
    research-use footer. title: see ``overlay_title``. Raises HeatmapError if the heatmap was made for
    a slide of another size, ValueError if the colours do not match the outlines.
    """
    _checked_colors(list(deposits_xy or []), deposit_colors)  # fail before reading the slide
    blended = heatmap_over_thumbnail(slide, heatmap, max_side_px)
    write_overlay(blended, slide, path, deposits_xy, deposit_colors, title)
