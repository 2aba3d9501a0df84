"""The scaling benchmark's report: the line fit of time against tissue area, the Markdown
section of docs/benchmarks.md and its plot.

Pure functions of the measured rows (dicts from ``scaling.measure_slide``) and the figures
``scaling.run`` gathers, so they are tested without running anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.benchmarks.scaling_slides import (
    CAMELYON_HEIGHT_PX,
    CAMELYON_PASTES,
    CAMELYON_WIDTH_PX,
    SCALING_DEPOSIT_MM,
    SLIDE_MPP,
    SOURCE_DEPOSIT_MM,
    SOURCE_SIDE_PX,
)

__all__ = ["PLOT_NAME", "SECTION", "fit_linear", "plot_scaling", "render_markdown", "table_row"]

SECTION = "## Scaling and memory"
PLOT_NAME = "benchmarks_scaling.png"
RSS_LIMIT_MB = 3000.0  # the target for the CAMELYON-size slide


def fit_linear(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares y = a + b x; returns (a, b, r²). Needs two or more distinct x."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xs) < 2 or np.ptp(xs) == 0:
        raise ValueError(f"need two or more distinct x values to fit a line, got {list(xs)}")
    b, a = np.polyfit(xs, ys, 1)
    residual = float(np.sum((ys - (a + b * xs)) ** 2))
    total = float(np.sum((ys - ys.mean()) ** 2))
    return float(a), float(b), 1.0 - residual / total if total > 0 else 1.0



TABLE_HEAD = ("| slide | size px | tissue mm² | tiles | wall s | micromet s | tiles/s (wall) "
              "| peak RSS MB (largest process / all) | heatmap cells (MB) |\n"
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")


def table_row(row: dict[str, Any]) -> str:
    """One slide's line of the Markdown table."""
    width, height = row["dimensions"]
    shape = row["heatmap_shape"]
    return (f"| {row['slide']} | {width:,} x {height:,} | {row['tissue_area_mm2']:.1f} | {row['n_tiles']:,} "
            f"| {row['seconds']:.1f} | {row['micromet_seconds']:.1f} | {row['n_tiles'] / row['seconds']:.0f} "
            f"| {row['peak_rss_largest_mb']:,.0f} / {row['peak_rss_tree_mb']:,.0f} "
            f"| {shape[0]} x {shape[1]} ({row['heatmap_mb']:.2f}) |")


def fit_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The fitted lines, a + b x tissue area, for wall and micromet seconds."""
    areas = [r["tissue_area_mm2"] for r in rows]
    if len(set(areas)) < 2:
        return ["(one tissue area only: no fit)"]
    lines = []
    for key, label in (("seconds", "wall seconds (whole process)"), ("micromet_seconds", "micromet seconds")):
        a, b, r2 = fit_linear(areas, [r[key] for r in rows])
        lines.append(f"- {label} = **{a:.2f} s + {b:.3f} s/mm² x tissue area** (r² = {r2:.3f}); "
                     f"100 mm² of tissue: {a + 100 * b:.0f} s.")
    return lines


def fit_check_line(big: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """The big slide's wall time against what the scaling fit predicts for its tissue area."""
    a, b, _ = fit_linear([r["tissue_area_mm2"] for r in rows], [r["seconds"] for r in rows])
    predicted, measured = a + b * big["tissue_area_mm2"], big["seconds"]
    largest = max(rows, key=lambda r: r["dimensions"][0] * r["dimensions"][1])
    return (f"- The scaling fit predicts {predicted:.0f} s (wall) for its {big['tissue_area_mm2']:.1f} mm² "
            f"of tissue; measured {measured:.0f} s ({measured - predicted:+.0f} s). Tissue detection "
            f"and tiling, which look at the whole slide, took {big['timing_s']['tissue_tiling']:.1f} s "
            f"here against {largest['timing_s']['tissue_tiling']:.1f} s on {largest['slide']}.")


def camelyon_lines(big: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    """The CAMELYON-size slide's findings: RSS target, stages, fit check, deposits."""
    verdict = "met" if big["peak_rss_largest_mb"] < RSS_LIMIT_MB else "**not met**"
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in big["timing_s"].items())
    lines = [f"- Peak RSS target (under {RSS_LIMIT_MB / 1000:.0f} GB): {verdict}. "
             f"File {big['file_gb']:.2f} GB, {big['levels']} levels. micromet's stages (last run): {stages}."]
    if len({r["tissue_area_mm2"] for r in rows}) >= 2:
        lines.append(fit_check_line(big, rows))
    if big.get("stage_memory"):
        steps = "; ".join(f"{k} {v:,} MB" for k, v in big["stage_memory"].items())
        lines.append(f"- Peak RSS of one process stepping through the stages before scoring: {steps}.")
    found = "; ".join(f"{c} {d:.2f} mm at ({x:,.0f}, {y:,.0f})" for c, d, x, y in big["deposits"])
    planted = "; ".join(f"{p['category']} {p['diameter_mm']:.2f} mm at ({p['centroid_x_px']:,}, "
                        f"{p['centroid_y_px']:,})" for p in big["planted"])
    alone = "; ".join(f"{c} {d:.2f} mm at ({x:,.0f}, {y:,.0f})" for c, d, x, y in big["source_deposits"])
    lines.append(f"- Deposits planted (level-0 px): {planted or 'none'}. Found: {found or 'none'}; "
                 f"category {big['category']}. On the tumor source node alone (shifted into this "
                 f"frame): {alone or 'none'}.")
    return lines


def render_markdown(figures: dict[str, Any]) -> str:
    """The docs/benchmarks.md section."""
    machine, rows, big = figures["machine"], figures["rows"], figures.get("camelyon")
    lines = [
        SECTION, "",
        f"What: `micromet infer` (model `{figures['model']}`, default settings, device cpu), one slide per "
        "fresh process. Wall seconds: the whole process (interpreter start, imports, model loading, then "
        "open, tissue, tiling, scoring, heatmap, deposits, exports, overlay, report); micromet seconds: "
        "report.json's `timing_s.total`. Peak RSS: the largest single process (exact, `wait4`) and the "
        "sum over micromet and its reader workers (sampled every 0.2 s; shared pages count once per "
        "process). Tissue area: report.json's `slide.tissue_area_mm2`.", "",
        f"Reproduce: `{figures['command']}`", "",
        f"Machine: {machine['cpu']}, {machine['usable_cores']} of {machine['cores']} cores usable, "
        f"{machine['ram_gib']} GiB RAM, {machine['os']}, Python {machine['python']}; load average "
        f"{machine['load_average']} at the start and {figures['load_end']} at the end; {figures['date']}. "
        "The load averages say how busy the machine was; on a shared machine times are noisy, so "
        "compare rows within this section.", "",
        f"### Scaling: time against tissue area (median of {figures['repeats']} run(s) per slide)", "",
        f"Square synthetic nodes (`pipeline.synthetic.generate.generate_slide`, {SLIDE_MPP} µm/px, one "
        "planted "
        f"{SCALING_DEPOSIT_MM} mm deposit each).", "",
        TABLE_HEAD, *(table_row(r) for r in sorted(rows, key=lambda r: r["tissue_area_mm2"])), "",
        "Linear fit (a: fixed per-slide overhead, b: cost per mm² of tissue):", "", *fit_lines(rows), "",
    ]
    if figures.get("plot"):
        lines += [f"![wall time against tissue area]({figures['plot']})", ""]
    if big is not None:
        lines += [
            "### Memory: a CAMELYON-size slide", "",
            f"{CAMELYON_WIDTH_PX:,} x {CAMELYON_HEIGHT_PX:,} px at {SLIDE_MPP} µm/px "
            f"({CAMELYON_WIDTH_PX * SLIDE_MPP / 1000:.0f} x {CAMELYON_HEIGHT_PX * SLIDE_MPP / 1000:.0f} mm), "
            "written by `write_background_slide` in this script: a tiled JPEG pyramid, empty glass except "
            f"{len(CAMELYON_PASTES)} pasted copies of two {SOURCE_SIDE_PX:,} px synthetic nodes (one with "
            f"a planted {SOURCE_DEPOSIT_MM} mm deposit). Generating the two sources took "
            f"{big['sources_s']:.0f} s, writing the pyramid {big['write_s']:.0f} s.", "",
            TABLE_HEAD, table_row(big), "", *camelyon_lines(big, rows), "",
        ]
    return "\n".join(lines)


def plot_scaling(rows: Sequence[dict[str, Any]], big: dict[str, Any] | None, path: Path) -> None:
    """Wall seconds against tissue area with the fitted line (PNG at ``path``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    areas, seconds = [r["tissue_area_mm2"] for r in rows], [r["seconds"] for r in rows]
    a, b, r2 = fit_linear(areas, seconds)
    top = max([*areas, big["tissue_area_mm2"] if big else 0.0])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(areas, seconds, "o", label="synthetic nodes")
    ax.plot([0, top], [a, a + b * top], "-", label=f"fit: {a:.1f} s + {b:.2f} s/mm² (r² {r2:.3f})")
    if big is not None:
        ax.plot([big["tissue_area_mm2"]], [big["seconds"]], "s", label="CAMELYON-size slide")
    ax.set(xlabel="tissue area (mm²)", ylabel="micromet infer wall time (s)", xlim=(0, None), ylim=(0, None))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
