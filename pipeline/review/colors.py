"""Review colours: reads deposit categories, produces the palette and the heatmap's colour rule.

One palette for deposit categories (outlines, badges, legends) and one colormap, transparency
floor and opacity for the heatmap, shared by overlay.png, the static report and the web viewer
so a colour means the same thing everywhere. ``pipeline.review.overlay`` draws the heatmap with them.
"""

from __future__ import annotations

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies);
# severity runs green -> blue -> orange -> vermillion.
CATEGORY_COLORS: dict[str, str] = {
    "negative": "#009E73",
    "itc": "#0072B2",
    "micro": "#E69F00",
    "macro": "#D55E00",
}
UNKNOWN_CATEGORY_COLOR = "#777777"
# Candidates for review (ITC-size findings not confirmed by rescoring; never a category):
# Okabe-Ito reddish purple, drawn dashed, apart from every category colour.
CANDIDATE_COLOR = "#CC79A7"
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
    """CSS rules giving each ``.cat-<category>`` class its colour as ``--cat-color``, and the
    candidates' colour as ``--candidate-color``."""
    rules = [f".cat-{name} {{ --cat-color: {color}; }}" for name, color in CATEGORY_COLORS.items()]
    return "\n".join([*rules, f":root {{ --candidate-color: {CANDIDATE_COLOR}; }}"])
