"""The review fine-tuning benchmark's report: false-deposit rates of a half, the share of
false deposits removed, and the Markdown summary.

Pure functions of what ``review_finetune.batch_findings`` reads and ``review_finetune.measure``
gathers, so they are tested without running anything.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.benchmarks.review_finetune_slides import HALVES

__all__ = ["finetuned_heading", "markdown", "rates", "removed_fraction", "settings_line"]


def rates(findings: dict[str, dict[str, Any]], slides: dict[str, Any]) -> dict[str, Any]:
    """Totals over a half's slides: false deposits (per mm², 95 % upper bound), candidates."""
    from pipeline.evaluation.node_scale import poisson_upper_95

    area = sum(float(slides[s]["tissue_mm2"]) for s in findings)
    n = sum(int(f["deposits"]) for f in findings.values())
    c = sum(int(f["candidates"]) for f in findings.values())
    return {
        "tissue_mm2": area, "false_deposits": n, "per_mm2": n / area,
        "per_mm2_upper95": poisson_upper_95(n, area), "candidates": c, "candidates_per_mm2": c / area,
        "slides": findings,
    }  # fmt: skip


def removed_fraction(before: int, after: int) -> float:
    """Share of the default model's false deposits the fine-tuned model no longer makes."""
    return math.nan if before == 0 else 1.0 - after / before


def finetuned_heading(result: dict[str, Any]) -> str:
    """The fine-tuned model's column heading: alone, with the default's partner unchanged, or
    with a partner of its own (--finetune-partner)."""
    partner = result.get("finetuned_partner") or {}
    if not partner:
        return "fine-tuned (alone)"
    same = partner == (result.get("default_partner") or {})
    how = "the unchanged partner" if same else "its partner, fine-tuned alike,"
    return f"fine-tuned (with {how} {partner['file']})"


def settings_line(result: dict[str, Any]) -> str:
    """How the fine-tuning ran (summary.json's settings), or "" for a summary that has none."""
    settings = result.get("settings")
    if not settings:
        return ""
    mined = settings["negatives_per_slide"]
    data = (
        "CONTROL: the train-part patches alone, no reviews"
        if settings.get("control")
        else f"{settings['tiles_per_deposit']} review tiles per reviewed finding, "
        + (f"{mined} hard negatives mined per reviewed slide" if mined else "no tissue mined")
    )
    return (
        f"fine-tuning: {settings['epochs']} epochs, lr {settings['lr']:g}, {data}"
        + (", partner fine-tuned too" if settings["finetune_partner"] else "")
    )


def markdown(result: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    rows = [f"| figure | default model | {finetuned_heading(result)} |", "| --- | --- | --- |"]
    role = {result["reviewed_half"]: "reviewed", result["held_out_half"]: "held out"}
    for half in HALVES:
        d, f = result[f"default_{half}"], result[f"finetuned_{half}"]
        rows.append(
            f"| half {half!r} ({role[half]}, {d['tissue_mm2']:.1f} mm²): false deposits | "
            f"{d['false_deposits']}: "
            f"{d['per_mm2']:.2f} per mm² (upper {d['per_mm2_upper95']:.2f}) | {f['false_deposits']}: "
            f"{f['per_mm2']:.2f} per mm² (upper {f['per_mm2_upper95']:.2f}) |"
        )
        rows.append(f"| half {half!r}: candidates for review | {d['candidates']} | {f['candidates']} |")
        for slide in d["slides"]:
            rows.append(
                f"| {slide}: deposits / candidates | {d['slides'][slide]['deposits']} / "
                f"{d['slides'][slide]['candidates']} | {f['slides'][slide]['deposits']} / "
                f"{f['slides'][slide]['candidates']} |"
            )
    d, f = result["default_node_scale_dev"], result["finetuned_node_scale_dev"]
    for key, label in (("micro_sensitivity", "micro"), ("itc_sensitivity", "ITC-size")):
        n = d[key.replace("sensitivity", "n")]
        rows.append(f"| node-scale dev {label} sensitivity (n {n}) | {d[key]:.2f} | {f[key]:.2f} |")
    rows.append(
        f"| node-scale dev false deposits per mm² | {d['false_per_mm2']:.3f} | {f['false_per_mm2']:.3f} |"
    )
    held_out, reviewed = result["held_out_half"], result["reviewed_half"]
    d, f = result[f"default_patches_{held_out}"], result[f"finetuned_patches_{held_out}"]
    for kind, label in (("hard_normals", "hard normals"), ("pcam_normals", "PCam normals")):
        rows.append(
            f"| half {held_out!r}'s {label} (n {d[kind]['n']}) at or above seed / threshold "
            f"| {d[kind]['at_seed']:.3f} / {d[kind]['at_threshold']:.3f} "
            f"| {f[kind]['at_seed']:.3f} / {f[kind]['at_threshold']:.3f} |"
        )
    rows.append(
        f"| dev tumor patches (n {d['dev_tumor']['n']}) at or above the threshold "
        f"| {d['dev_tumor']['at_threshold']:.3f} | {f['dev_tumor']['at_threshold']:.3f} |"
    )
    rows.append(
        f"\nheld-out false deposits removed: {result[f'removed_{held_out}']:.0%} "
        f"(with candidates {result[f'removed_with_candidates_{held_out}']:.0%}); "
        f"reviewed: {result[f'removed_{reviewed}']:.0%}; done-when met: {result['done_when_met']}; "
        f"node-scale surfaces identical for both models: {result.get('node_scale_same_surfaces')}"
    )
    settings = settings_line(result)
    if settings:
        rows.append(settings)
    return "\n".join(rows)
