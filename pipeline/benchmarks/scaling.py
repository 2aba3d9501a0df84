"""Scaling and memory benchmark: ``micromet infer`` time against tissue area, and peak memory
on a CAMELYON-size slide.

Scaling: square synthetic nodes (``generate_slide``, 0.25 µm/px, one 0.3 mm deposit each) run
through ``micromet infer``, each in a fresh process: wall seconds, micromet's own total, tissue
area, tiles, peak RSS; a least-squares line seconds = a + b x tissue area gives the fixed
per-slide overhead a and the cost per mm² b. Memory: a 100,000 x 200,000 px slide at 0.25 µm/px
(``write_background_slide``: a tiled JPEG pyramid of empty glass, one encoded tile reused per
level, with copies of two synthetic nodes pasted in, one with a 1.0 mm deposit) run the same way;
the issue asks for a peak RSS under 3 GB. Peak RSS: the largest single process (``wait4``'s
ru_maxrss) and the sum over micromet and its reader workers (sampled every 0.2 s).

    .venv/bin/python scripts/bench_scaling.py [--sizes 5000,10000,...] [--skip-camelyon]
        [--work-dir .bench/scaling] [--model models/default.pt] [--repeats 1] [--write-docs]

The measuring happens here; the slides are ``scaling_slides``'s, the section ``scaling_report``'s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.batch.folder import REPORT_JSON, read_report
from pipeline.benchmarks.harness import TreeRssSampler, machine_facts, write_docs_section
from pipeline.benchmarks.scaling_report import PLOT_NAME, SECTION, plot_scaling, render_markdown
from pipeline.benchmarks.scaling_slides import (
    CAMELYON_HEIGHT_PX,
    CAMELYON_PASTES,
    CAMELYON_WIDTH_PX,
    SLIDE_MPP,
    BackgroundSlideSpec,
    ensure_camelyon_slide,
    ensure_scaling_slide,
)

__all__ = ["build_parser", "main", "measure_slide", "parse_sizes", "run", "run_infer"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SIZES_PX = (5000, 10000, 20000, 30000, 40000, 60000)


# ---- measuring -----------------------------------------------------------------------------


def infer_command(slide: Path, out_dir: Path, model: Path | None) -> list[str]:
    """``micromet infer`` on one slide, as a fresh Python process."""
    command = [sys.executable, "-m", "pipeline", "infer", str(slide), "--out", str(out_dir), "--overwrite"]
    return command + (["--model", str(model)] if model is not None else [])


def run_infer(slide: Path, out_dir: Path, model: Path | None, timeout_s: float) -> dict[str, Any]:
    """Run and measure one ``micromet infer``; raises RuntimeError naming the log on failure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "infer.log"
    with log_path.open("w", encoding="utf-8") as log_file:
        started = time.perf_counter()
        process = subprocess.Popen(infer_command(slide, out_dir, model), stdout=log_file,
                                   stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        with TreeRssSampler(process.pid) as sampler:
            timer = threading.Timer(timeout_s, os.killpg, (process.pid, signal.SIGKILL))
            timer.start()
            _, status, usage = os.wait4(process.pid, 0)  # usage: this run's processes only
            timer.cancel()
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keeps Popen quiet
    folder = out_dir / slide.stem
    if process.returncode != 0 or not (folder / REPORT_JSON).exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"{slide}: micromet infer exited {process.returncode}; log {log_path}:\n"
                           + "\n".join(tail))
    largest_mb = usage.ru_maxrss / 1024.0  # KiB on Linux
    # The summed tree is at least the largest process at its peak; the sampler may miss that.
    tree_mb = max(sampler.peak_mb or 0.0, largest_mb)
    return {"seconds": seconds, "peak_rss_largest_mb": largest_mb, "peak_rss_tree_mb": tree_mb,
            **report_facts(folder)}


def report_facts(folder: Path) -> dict[str, Any]:
    """What the tables need from one slide's output folder."""
    report = read_report(folder / REPORT_JSON)
    heatmap = np.load(folder / "heatmap.npy", mmap_mode="r")
    return {
        "dimensions": report["slide"]["dimensions"], "tissue_area_mm2": report["slide"]["tissue_area_mm2"],
        "n_tiles": report["n_tiles"], "micromet_seconds": report["timing_s"]["total"],
        "timing_s": report["timing_s"], "category": report["category"],
        "deposits": [(d["category"], d["max_diameter_mm"], d["centroid_x_px"], d["centroid_y_px"])
                     for d in report["deposits"]],
        "heatmap_shape": list(heatmap.shape), "heatmap_mb": (folder / "heatmap.npy").stat().st_size / 2**20,
    }


def measure_slide(slide: Path, out_dir: Path, model: Path | None, repeats: int,
                  timeout_s: float) -> dict[str, Any]:
    """``repeats`` runs of one slide: median seconds, largest peak RSS."""
    runs = [run_infer(slide, out_dir, model, timeout_s) for _ in range(repeats)]
    row = dict(runs[-1], slide=slide.name)
    for key in ("seconds", "micromet_seconds"):
        row[key] = statistics.median(r[key] for r in runs)
        row[f"{key}_runs"] = [round(r[key], 2) for r in runs]
    for key in ("peak_rss_largest_mb", "peak_rss_tree_mb"):
        row[key] = max(r[key] for r in runs)
    return row


def stage_memory(slide: Path, model: Path | None) -> dict[str, Any]:
    """Peak RSS (MB, this process) after each step before scoring; run in a fresh process."""
    import resource

    from pipeline.batch.settings import AnalysisSettings
    from pipeline.slides.slide import open_slide
    from pipeline.slides.tiling import plan_tiles
    from pipeline.slides.tissue import detect_tissue

    def peak_mb() -> float:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)

    context = AnalysisSettings(model_path=model).build()
    steps: dict[str, Any] = {"model loaded": peak_mb()}
    with open_slide(slide) as handle:
        mask_mpp = max(context.tissue.mask_mpp, handle.mpp)
        shape = handle.thumbnail_at_mpp(mask_mpp).shape
        steps[f"thumbnail {shape[1]} x {shape[0]} px at {mask_mpp:g} µm/px"] = peak_mb()
        tissue = detect_tissue(handle, context.tissue)
        steps["tissue detection"] = peak_mb()
        grid = plan_tiles(handle.dimensions, handle.mpp, tissue, context.tiling)
        steps[f"tiling ({len(grid)} tiles)"] = peak_mb()
    return steps


def run_stage_memory(slide: Path, model: Path | None) -> dict[str, Any]:
    """``stage_memory`` in a fresh process (so earlier work does not raise the peak)."""
    command = [sys.executable, "-m", "pipeline.benchmarks.scaling", "--stage-memory", str(slide)]
    command += ["--model", str(model)] if model is not None else []
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    steps: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return steps


# ---- main ----------------------------------------------------------------------------------


def parse_sizes(text: str) -> tuple[int, ...]:
    """"5000,10000" -> (5000, 10000); each side 256 to 100,000 px."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: expected comma-separated integers") from exc
    if not sizes or any(not 256 <= s <= 100_000 for s in sizes):
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: each side must be 256 to 100000 px")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sizes = ",".join(map(str, DEFAULT_SIZES_PX))
    parser.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES_PX,
                        help=f"sides in px of the square scaling slides (default {sizes})")
    parser.add_argument("--skip-camelyon", action="store_true", help="no CAMELYON-size slide")
    parser.add_argument("--work-dir", type=Path, default=Path(".bench/scaling"),
                        help="slides and outputs (default .bench/scaling)")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default models/default.pt)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per slide (median time)")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="limit per micromet infer run")
    parser.add_argument("--write-docs", action="store_true", help="replace the section in docs/benchmarks.md")
    parser.add_argument("--stage-memory", type=Path, default=None, help=argparse.SUPPRESS)  # child mode
    return parser


def run_camelyon(args: argparse.Namespace) -> dict[str, Any]:
    """Write (or reuse) the CAMELYON-size slide and measure it; also run the tumor source alone
    (its deposits shifted into the big slide's frame) to show the pasting changes nothing."""
    path, layout = ensure_camelyon_slide(args.work_dir)
    big = measure_slide(path, args.work_dir / "out" / "camelyon", args.model, args.repeats, args.timeout_s)
    tumor = next(p for p in CAMELYON_PASTES if p.source == "tumor")
    alone = run_infer(path.with_name("source_tumor.tif"), args.work_dir / "out" / "camelyon_source",
                      args.model, args.timeout_s)
    spec = BackgroundSlideSpec(CAMELYON_WIDTH_PX, CAMELYON_HEIGHT_PX, SLIDE_MPP, CAMELYON_PASTES)
    big.update(planted=layout["planted_deposits"], file_gb=path.stat().st_size / 1e9,
               levels=len(spec.level_dimensions()), stage_memory=run_stage_memory(path, args.model),
               sources_s=layout["sources_s"], write_s=layout["write_s"],
               source_deposits=[(c, d, x + tumor.x_px, y + tumor.y_px) for c, d, x, y in alone["deposits"]])
    return big


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Every measurement; returns the figures for the report."""
    machine = machine_facts()
    rows = []
    for side_px in args.sizes:
        slide = ensure_scaling_slide(args.work_dir, side_px)
        rows.append(measure_slide(slide, args.work_dir / "out" / f"node_{side_px}", args.model,
                                  args.repeats, args.timeout_s))
        print(json.dumps(rows[-1]), flush=True)
    big = None if args.skip_camelyon else run_camelyon(args)
    return {
        "machine": machine, "rows": rows, "camelyon": big, "repeats": args.repeats,
        "load_end": round(os.getloadavg()[0], 1), "date": datetime.date.today().isoformat(),
        "model": str(args.model or "models/default.pt"),
        "command": shlex.join([".venv/bin/python", "scripts/bench_scaling.py", *argv]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.stage_memory is not None:
        print(json.dumps(stage_memory(args.stage_memory, args.model)))
        return 0
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    args.work_dir = args.work_dir.resolve()
    figures = run(args, argv)
    (args.work_dir / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    if args.write_docs and len({r["tissue_area_mm2"] for r in figures["rows"]}) >= 2:
        plot_scaling(figures["rows"], figures["camelyon"], REPO / "docs" / PLOT_NAME)
        figures["plot"] = PLOT_NAME
    markdown = render_markdown(figures)
    print(markdown)
    if args.write_docs:
        write_docs_section(REPO / "docs" / "benchmarks.md", SECTION, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
