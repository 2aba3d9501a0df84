"""Review: template helpers shared by the web viewer and the static HTML report.

Both render the Jinja2 templates in ``pipeline/review/viewer/templates`` with autoescaping on,
the same number formatting and the same category colours.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.review.colors import (
    CATEGORY_COLORS,
    DEFAULT_HEATMAP_OPACITY,
    category_color,
    category_css,
    heatmap_gradient_css,
)
from pipeline.review.report import RESEARCH_USE_NOTICE, deposit_size_text
from pipeline.staging import CATEGORY_ORDER

VIEWER_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = VIEWER_DIR / "templates"
STATIC_DIR = VIEWER_DIR / "static"

# What "±" means, shown under every deposit table.
SIZE_NOTE = (
    "Sizes are maximum (Feret) diameters of one contiguous deposit. With a model card that "
    "calibrates sizes (the default model's does), ± is the 95 % error measured for that size "
    "class on real tumor pasted into real lymph node (docs/benchmarks.md, \"Node scale\"). "
    "Otherwise ± is only the bound set by the heatmap grid (stride × √2), which does not cover "
    "errors of the model. A size not above its ± is given as an upper bound (≤ …)."
)

# Sort key of a slide's category: negative < itc < micro < macro (clinical order).
CATEGORY_RANK: dict[str, int] = {category.value: rank for rank, category in enumerate(CATEGORY_ORDER)}


def format_number(value: Any, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or an en dash for missing / non-numeric values."""
    if value is None or isinstance(value, bool):
        return "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "–"
    return f"{number:.{digits}f}" if math.isfinite(number) else "–"


def template_globals() -> dict[str, Any]:
    """Names every template may use: colours, category ranks, the heatmap colour bar, the
    research-use notice, the size note and the deposit size formatter."""
    return {
        "research_notice": RESEARCH_USE_NOTICE,
        "heatmap_opacity": DEFAULT_HEATMAP_OPACITY,
        "size_note": SIZE_NOTE,
        "size_text": deposit_size_text,
        "category_colors": CATEGORY_COLORS,
        "category_color": category_color,
        "category_rank": CATEGORY_RANK,
        "heatmap_gradient": heatmap_gradient_css(),
        "category_css": category_css(),
    }


def read_static(name: str) -> str:
    """The text of one of our own files in ``pipeline/review/viewer/static`` (for inlining)."""
    return (STATIC_DIR / name).read_text(encoding="utf-8")
