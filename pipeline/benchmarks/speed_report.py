"""Speed benchmark, report side: medians, ratios and the Markdown section of docs/benchmarks.md.

Pure functions of the runs' results (``variants.RunResult``), so they are tested without
running anything: ``summarize`` (medians over successful runs), ``speed_ratio``, the tables and
``render_section`` (``harness.replace_section`` puts it into docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import datetime
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.benchmarks.tia import TiaEnv
from pipeline.benchmarks.variants import BenchSpec, RunResult

SECTION_HEADING = "## Speed: micromet vs read limit, compute limit and TIAToolbox"
LABELS = {
    "read_limit": ("read limit", "micromet's region reads of the same tiles, same workers, no model"),
    "compute_limit": ("compute limit", "the model alone on random tensors, same batches and device"),
    "micromet_engine": ("micromet engine", "`score_tiles_with_stats`: reading + scoring the planned tiles"),
    "micromet": ("micromet end to end", "`analyze_slide` (warm): open, tissue, tiling, scoring, heatmap, "
                 "deposits, exports, report"),
    "tiatoolbox": ("TIAToolbox", "`PatchPredictor.run` (WSI mode) with our weights and a mask of our tiles"),
}
RATIO_ROWS = ("micromet", "micromet_engine")
RATIO_COLUMNS = ("read_limit", "compute_limit", "tiatoolbox")


@dataclasses.dataclass(frozen=True)
class Summary:
    """Medians over the successful runs of one variant; ``error`` when none succeeded.

    n_tiles: tiles per run (the first successful run's). runs / failed: run counts.
    """

    variant: str
    runs: int
    failed: int
    n_tiles: int
    seconds: float | None
    tiles_per_s: float | None
    peak_rss_main_mb: float | None
    peak_rss_tree_mb: float | None
    error: str | None = None


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(variant: str, results: Sequence[RunResult]) -> Summary:
    """Median seconds, tiles/s and peak RSS of ``results`` (failed runs left out)."""
    good = [r for r in results if r.error is None]
    failed = len(results) - len(good)
    error = next((r.error for r in results if r.error is not None), None)
    return Summary(
        variant=variant,
        runs=len(good),
        failed=failed,
        n_tiles=good[0].n_tiles if good else 0,
        seconds=_median([r.seconds for r in good]),
        tiles_per_s=_median([r.tiles_per_s for r in good]),
        peak_rss_main_mb=_median([r.peak_rss_main_mb for r in good]),
        peak_rss_tree_mb=_median([r.peak_rss_tree_mb for r in good]),
        error=error if not good else None,
    )


def speed_ratio(numerator: Summary | None, denominator: Summary | None) -> float | None:
    """tiles/s of ``numerator`` over tiles/s of ``denominator`` (None if either is missing)."""
    if numerator is None or denominator is None:
        return None
    if not numerator.tiles_per_s or not denominator.tiles_per_s:
        return None
    return numerator.tiles_per_s / denominator.tiles_per_s


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def render_table(summaries: Sequence[Summary]) -> str:
    """The Markdown results table: one row per variant."""
    lines = [
        "| variant | what is timed | tiles | s per slide | tiles/s | peak RSS MB (main / all processes) "
        "| runs |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        label, what = LABELS.get(s.variant, (s.variant, ""))
        if s.error is not None:
            lines.append(f"| {label} | {what} | | failed | | | 0 of {s.failed} |")
            continue
        memory = f"{_number(s.peak_rss_main_mb, 0)} / {_number(s.peak_rss_tree_mb, 0)}"
        lines.append(
            f"| {label} | {what} | {s.n_tiles:,} | {_number(s.seconds, 2)} | {_number(s.tiles_per_s)} "
            f"| {memory} | {s.runs} of {s.runs + s.failed} |"
        )
    return "\n".join(lines)


def render_ratios(summaries: Sequence[Summary]) -> str:
    """Markdown table of micromet's tiles/s over each reference's (above 1: micromet faster)."""
    by_name = {s.variant: s for s in summaries}
    columns = [c for c in RATIO_COLUMNS if c in by_name]
    lines = ["| tiles/s ratio | " + " | ".join(f"÷ {LABELS[c][0]}" for c in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for row in RATIO_ROWS:
        if row in by_name:
            cells = [_number(speed_ratio(by_name[row], by_name[c]), 2) for c in columns]
            lines.append(f"| {LABELS[row][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def score_agreement(run_dir: Path) -> str | None:
    """How closely TIAToolbox's tumor probabilities match micromet's on the tiles both scored."""
    import numpy as np

    ours, theirs = run_dir / "micromet_engine_scores.npy", run_dir / "tiatoolbox_scores.npy"
    if not (ours.exists() and theirs.exists()):
        return None
    a, b = np.load(ours), np.load(theirs)
    both = ~np.isnan(a) & ~np.isnan(b)
    if a.shape != b.shape or not both.any():
        return "no tile was scored by both"
    difference = np.abs(a[both] - b[both])
    return (f"on the {int(both.sum()):,} tiles both scored, tumor probabilities differ by "
            f"{float(difference.mean()):.4f} on average and {float(difference.max()):.4f} at most "
            "(same weights; a difference can only come from how the two read and resample pixels)")


def _first_extra(results: Sequence[RunResult], key: str) -> Any:
    return next((r.extra[key] for r in results if r.error is None and key in r.extra), None)


def _median_extra(results: Sequence[RunResult], key: str, inner: str | None = None) -> float | None:
    values = [r.extra[key] for r in results if r.error is None and key in r.extra]
    if inner is not None:
        values = [v.get(inner) for v in values if isinstance(v, dict)]
    return _median([float(v) for v in values if v is not None])


def _compute_notes(results: dict[str, list[RunResult]]) -> list[str]:
    runs = [r for r in results.get("compute_limit", []) if r.error is None]
    by_threads = _first_extra(runs, "seconds_by_threads")
    if not runs or not isinstance(by_threads, dict) or len(by_threads) < 2:
        return []
    tried = ", ".join(f"{count} thread(s) {seconds:.2f} s" for count, seconds in by_threads.items())
    mode = ("the model's exact dense form on random 16 x 16-cell regions, one cell per tile, as micromet "
            "scores it" if _first_extra(runs, "mode") == "dense" else "the model tile by tile")
    return [f"compute limit: {mode}; the faster of torch thread counts tried in its first run ({tried}); "
            f"autocast {_first_extra(runs, 'autocast')}."]


def _micromet_notes(results: dict[str, list[RunResult]]) -> list[str]:
    notes = []
    e2e = [r for r in results.get("micromet", []) if r.error is None]
    if e2e:
        parts = [f"{label} {_number(_median_extra(e2e, 'timing_s', key), 2)} s" for key, label in
                 (("tissue_tiling", "tissue + tiling"), ("inference", "scoring"), ("deposits", "deposits"),
                  ("rest", "heatmap + exports + overlay + report"))]
        cold_s = _number(_median_extra(e2e, "cold_s"), 2)
        notes.append(f"micromet end to end (warm, median): {', '.join(parts)}. The first slide in a fresh "
                     f"process (cold: one-off lazy imports) took {cold_s} s.")
    engine = [r for r in results.get("micromet_engine", []) if r.error is None]
    if engine:
        wait_s = _number(_median_extra(engine, "wait_s"), 2)
        compute_s = _number(_median_extra(engine, "compute_s"), 2)
        notes.append(f"micromet engine (median): its scoring loop waited {wait_s} s for tiles from the "
                     f"reader workers and spent {compute_s} s moving and scoring them, with "
                     f"{_first_extra(engine, 'cpu_threads')} torch thread(s) under "
                     f"{_first_extra(engine, 'precision')} autocast; {_first_extra(engine, 'n_regions')} "
                     "region reads.")
        plan = _first_extra(engine, "cpu_plan")
        if isinstance(plan, dict):
            notes.append(f"micromet CPU plan (first run): {plan.get('num_workers')} reader process(es), "
                         f"{plan.get('torch_threads')} torch thread(s): {plan.get('reason')}.")
    return notes


def _tiatoolbox_notes(
    results: dict[str, list[RunResult]], tia: TiaEnv | None, agreement: str | None
) -> list[str]:
    if tia is None:
        return ["TIAToolbox: not run (--skip-tiatoolbox)."]
    if tia.error is not None:
        return ["TIAToolbox: **not measured**: it could not be installed or imported (error below)."]
    runs = [r for r in results.get("tiatoolbox", []) if r.error is None]
    if not runs:
        return [f"TIAToolbox: {tia.versions} installed, but every run failed (error below)."]
    common, planned = _first_extra(runs, "tiles_common_with_grid"), _first_extra(runs, "grid_tiles")
    notes = [f"TIAToolbox: {tia.versions}, reader {_first_extra(runs, 'reader')}; of the tiles it scored, "
             f"{common} are among micromet's {planned} planned tiles. The harness installs it in its own "
             "venv with `--no-deps` (it pins torch<2.13) and reuses micromet's torch; it runs as "
             "TIAToolbox's own patch classifiers do: fp32, NCHW, normalisation in its DataLoader workers, "
             f"one read per tile, torch's default {_first_extra(runs, 'torch_threads')} thread(s)."]
    if agreement:
        notes.append(f"Scores: {agreement}.")
    return notes


def command_line(argv: Sequence[str]) -> str:
    """How this run was started, to paste into a shell at the repository root."""
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(Path.cwd()))
    except ValueError:
        shown = "python"
    return shlex.join([shown, "scripts/bench.py", *argv])


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What the section says besides the results: how it was run and on what.

    slide: e.g. "20000 x 20000 px at 0.25 µm/px (svs)". model: e.g. "checkpoint `default.pt`".
    machine: ``harness.machine_facts()`` at the start; load_end: load average at the end.
    """

    command: str
    slide: str
    model: str
    repeats: int
    machine: dict[str, Any]
    load_end: float | None


def _machine_line(context: RunContext, results: dict[str, list[RunResult]]) -> str:
    machine = context.machine
    torch_version = _first_extra(results.get("compute_limit", []), "torch")
    return (f"Machine: {machine['cpu']}, {machine['usable_cores']} of {machine['cores']} cores usable, "
            f"{machine['ram_gib']} GiB RAM, {machine['os']}, Python {machine['python']}, "
            f"torch {torch_version}; "
            f"load average {machine['load_average']} at the start and {context.load_end} at the end; "
            f"{datetime.date.today().isoformat()}.")


def _readers_text(spec: BenchSpec) -> str:
    if spec.workers is None:
        return (f"micromet's automatic CPU plan (read limit and TIAToolbox: {spec.reader_count} reader "
                "processes)")
    return f"{spec.workers} reader workers"


def _partner_notes(spec: BenchSpec) -> list[str]:
    """A note when the model's card names a partner (``pipeline.models.partner``)."""
    from pipeline.models import read_card

    partner = read_card(spec.model).partner if spec.model and Path(spec.model).is_file() else {}
    if not partner:
        return []
    return [
        f"the model's card names a partner ({partner['file']}): micromet end to end scores every tile with "
        "both models and averages them, as `micromet infer` does; the read limit, the compute limit, the "
        "engine and TIAToolbox run the model alone, so the end-to-end ratios understate micromet's speed "
        "per model"
    ]


def render_section(context: RunContext, spec: BenchSpec, n_tiles: int, results: dict[str, list[RunResult]],
                   tia: TiaEnv | None, heading: str = SECTION_HEADING) -> str:
    """The whole ``## Speed ...`` section of docs/benchmarks.md, under ``heading``."""
    summaries = [summarize(v, rs) for v, rs in results.items()]
    compute = results.get("compute_limit", [])
    device = _first_extra(compute, "device_name") or _first_extra(compute, "device") or spec.device
    agreement = score_agreement(Path(spec.out_dir))
    notes = [*_partner_notes(spec), *_compute_notes(results), *_micromet_notes(results),
             *_tiatoolbox_notes(results, tia, agreement)]  # fmt: skip
    lines = [
        heading, "",
        f"What: one synthetic slide of {context.slide}, {n_tiles:,} tissue tiles of "
        f"{spec.tile_size_px} px at {spec.model_mpp:g} µm/px (stride "
        f"{spec.stride_px or spec.tile_size_px} px), model {context.model}, batch {spec.batch_size}, "
        f"readers: {_readers_text(spec)}, precision {spec.precision}, device {device}. Each variant "
        f"runs in a fresh process; medians of {context.repeats} "
        "interleaved runs. Times exclude interpreter start, imports and model loading; the compute limit "
        "also excludes one warm-up batch. Peak RSS: the measuring process, and the sum over it and its "
        "worker processes (sampled every 0.2 s, the process list refreshed every second; shared pages "
        "count once per process).", "",
        render_table(summaries), "",
        "Speed ratios (micromet's tiles/s over the reference's; above 1 means micromet is faster):", "",
        render_ratios(summaries), "",
        *[f"- {note}" for note in notes], "",
        f"Reproduce: `{context.command}`", "",
        _machine_line(context, results),
    ]
    failures = [(f"{LABELS[s.variant][0]} failed in every run:", s.error) for s in summaries if s.error]
    if tia is not None and tia.error is not None:
        failures.append(("TIAToolbox could not be installed or imported:", tia.error))
    for title, error in failures:
        lines += ["", title, "", "```", error, "```"]
    return "\n".join(lines) + "\n"
