"""Review: reads a slide, its heatmap and deposits, produces report.html's slide picture: a
thumbnail with the heatmap overlaid, deposit outlines coloured by category, candidates for review
dashed in their own colour, and a scale bar in mm (a PIL image).

The heatmap is blended by ``pipeline.review.overlay.blend_heatmap`` (overlay.png's renderer: the
thumbnail spans the whole slide on each axis). Outlines and scale bar take thumbnail pixel =
level-0 pixel x ``scale`` (the thumbnail's width over the slide's width).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pipeline.detection.heatmap import Heatmap
from pipeline.review.colors import CANDIDATE_COLOR, OUTLINE_HALO_COLOR, category_color, hex_to_rgb
from pipeline.review.overlay import blend_heatmap
from pipeline.slides.slide import SlideSource

# Deposits smaller than this on the thumbnail also get a ring, so an ITC stays visible.
MIN_VISIBLE_OUTLINE_PX = 8
RING_RADIUS_PX = 7
OUTLINE_WIDTH_PX = 3
DASH_PX = 6  # candidates for review: dashes and gaps this long on the thumbnail
RING_DASH_DEGREES = 30  # ... and on their rings, dashes of half this
SCALEBAR_NICE_MM = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
SCALEBAR_MAX_FRACTION = 0.25  # of the image width
BLANK_RGB = (242, 242, 242)


def slide_thumbnail(source: SlideSource, max_side_px: int) -> tuple[Image.Image, tuple[int, int]]:
    """The whole slide with its longer side ``max_side_px`` (or smaller for tiny slides),
    and the slide's level-0 (width, height) in px.

    ``source``: the slide at the µm/px the batch used. Raises SlideOpenError /
    MissingMppError naming the file.
    """
    with source.open() as slide:
        width0, height0 = slide.dimensions
        target_mpp = slide.mpp * max(1.0, max(width0, height0) / max_side_px)
        return Image.fromarray(slide.thumbnail_at_mpp(target_mpp)), (width0, height0)


def blank_thumbnail(dimensions: tuple[int, int], max_side_px: int) -> Image.Image:
    """A grey canvas with the slide's aspect ratio, for a slide file that cannot be read."""
    width0, height0 = dimensions
    factor = min(1.0, max_side_px / max(width0, height0, 1))
    size = (max(1, round(width0 * factor)), max(1, round(height0 * factor)))
    return Image.new("RGB", size, BLANK_RGB)


def _outline_points(deposit: dict[str, Any], scale: float) -> list[tuple[float, float]]:
    outline = deposit.get("outline_xy") or []
    points = [(float(x) * scale, float(y) * scale) for x, y in outline]
    return [*points, points[0]] if len(points) >= 3 else []


def _extent_px(points: Sequence[tuple[float, float]]) -> float:
    if not points:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return max(max(xs) - min(xs), max(ys) - min(ys))


def draw_outlines(image: Image.Image, deposits: Sequence[dict[str, Any]], scale: float) -> None:
    """Draw each deposit's outline (category colour on a dark halo), smallest last."""
    draw = ImageDraw.Draw(image)
    halo = hex_to_rgb(OUTLINE_HALO_COLOR)
    for deposit in reversed(deposits):  # report order is largest first
        color = hex_to_rgb(category_color(deposit.get("category")))
        points = _outline_points(deposit, scale)
        if points:
            draw.line(points, fill=halo, width=OUTLINE_WIDTH_PX + 3, joint="curve")
            draw.line(points, fill=color, width=OUTLINE_WIDTH_PX, joint="curve")
        if _extent_px(points) < MIN_VISIBLE_OUTLINE_PX and "centroid_x_px" in deposit:
            cx = float(deposit["centroid_x_px"]) * scale
            cy = float(deposit["centroid_y_px"]) * scale
            box = (cx - RING_RADIUS_PX, cy - RING_RADIUS_PX, cx + RING_RADIUS_PX, cy + RING_RADIUS_PX)
            draw.ellipse(box, outline=halo, width=OUTLINE_WIDTH_PX + 3)
            draw.ellipse(box, outline=color, width=OUTLINE_WIDTH_PX)


def _dashes(points: Sequence[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """The polyline ``points`` cut into dashes of DASH_PX separated by gaps of DASH_PX."""
    dashes: list[list[tuple[float, float]]] = []
    along = 0.0  # position within the current dash + gap period
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        length = math.hypot(x1 - x0, y1 - y0)
        start = 0.0
        while start < length:
            in_dash = along < DASH_PX
            step = min(length - start, (DASH_PX if in_dash else 2 * DASH_PX) - along)
            if in_dash:
                a, b = start / length, (start + step) / length
                dashes.append([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)),
                               (x0 + b * (x1 - x0), y0 + b * (y1 - y0))])
            start += step
            along = (along + step) % (2 * DASH_PX)
    return dashes


def draw_candidate_outlines(image: Image.Image, candidates: Sequence[dict[str, Any]], scale: float) -> None:
    """Draw each candidate for review's outline dashed in CANDIDATE_COLOR on a dark halo; one
    too small to see gets a dashed ring."""
    draw = ImageDraw.Draw(image)
    halo, color = hex_to_rgb(OUTLINE_HALO_COLOR), hex_to_rgb(CANDIDATE_COLOR)
    for candidate in candidates:
        points = _outline_points(candidate, scale)
        for dash in _dashes(points):
            draw.line(dash, fill=halo, width=OUTLINE_WIDTH_PX + 2)
            draw.line(dash, fill=color, width=OUTLINE_WIDTH_PX)
        if _extent_px(points) < MIN_VISIBLE_OUTLINE_PX and "centroid_x_px" in candidate:
            cx = float(candidate["centroid_x_px"]) * scale
            cy = float(candidate["centroid_y_px"]) * scale
            box = (cx - RING_RADIUS_PX, cy - RING_RADIUS_PX, cx + RING_RADIUS_PX, cy + RING_RADIUS_PX)
            for start in range(0, 360, RING_DASH_DEGREES):
                end = start + RING_DASH_DEGREES // 2
                draw.arc(box, start, end, fill=halo, width=OUTLINE_WIDTH_PX + 2)
                draw.arc(box, start, end, fill=color, width=OUTLINE_WIDTH_PX)


def draw_scale_bar(image: Image.Image, mm_per_px: float) -> None:
    """A bar of a round length in mm in the bottom-left corner, labelled."""
    if not (mm_per_px > 0 and math.isfinite(mm_per_px)):
        return
    limit_mm = image.width * SCALEBAR_MAX_FRACTION * mm_per_px
    fitting = [mm for mm in SCALEBAR_NICE_MM if mm <= limit_mm]
    if not fitting:
        return
    length_mm = fitting[-1]
    length_px = round(length_mm / mm_per_px)
    draw = ImageDraw.Draw(image)
    x0, y0 = 10, image.height - 12
    label = f"{length_mm:g} mm"
    draw.rectangle((x0 - 4, y0 - 16, x0 + max(length_px, 6 * len(label)) + 4, y0 + 6), fill=(255, 255, 255))
    draw.rectangle((x0, y0, x0 + length_px, y0 + 3), fill=(0, 0, 0))
    draw.text((x0, y0 - 14), label, fill=(0, 0, 0))


def render_review_image(
    base: Image.Image,
    slide_dimensions: tuple[int, int],
    slide_mpp: float | None,
    heatmap: Heatmap | None,
    deposits: Sequence[dict[str, Any]],
    heatmap_opacity: float,
    candidates: Sequence[dict[str, Any]] = (),
) -> Image.Image:
    """``base`` (a slide thumbnail, RGB) with heatmap, outlines, the candidates for review
    (dashed) and scale bar drawn on a copy.

    The heatmap is blended by ``pipeline.review.overlay.blend_heatmap``, the renderer of overlay.png.
    """
    image = base.convert("RGB")
    scale = image.width / max(slide_dimensions[0], 1)
    if heatmap is not None and min(slide_dimensions) > 0:
        image = Image.fromarray(blend_heatmap(np.asarray(image), heatmap, slide_dimensions, heatmap_opacity))
    draw_candidate_outlines(image, candidates, scale)
    draw_outlines(image, deposits, scale)
    if slide_mpp:
        draw_scale_bar(image, slide_mpp / 1000.0 / scale)
    return image
