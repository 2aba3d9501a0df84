"""Speed benchmark harness: micromet against the read limit, the compute limit and TIAToolbox.

On one synthetic slide (generated once under --work-dir) and one model, the same tiles at the
same tile size and resolution, batch size, worker count and device, it times in a fresh
process each (so peak memory is attributable), --repeats times, interleaved:

* read limit: micromet's region reads of the planned tiles by the same number of worker
  processes, no model (``variants.read_limit``);
* compute limit: the model alone on random tensors (``variants.compute_limit``);
* micromet engine: ``score_tiles_with_stats`` alone, and micromet end to end: ``analyze_slide``
  (open, tissue, tiling, reading, scoring, heatmap, deposits, exports, report);
* TIAToolbox ``PatchPredictor`` with our weights and our tiles, in its own virtual environment
  under --work-dir (``tia``); if it cannot be installed or run, the report says
  why instead of a number.

Prints a Markdown section (medians of seconds per slide, tiles/s, peak RSS, ratios, the exact
command and the machine) and, with --write-docs, puts it into docs/benchmarks.md.

Usage: .venv/bin/python scripts/bench.py [--width 20000 --height 20000 --mpp 0.25]
    [--model models/default.pt | --architecture resnet18] [--device auto] [--workers 2]
    [--batch-size 64] [--repeats 3] [--skip-tiatoolbox] [--write-docs]
or ``micromet bench`` with the same options, in a source checkout. Each measured variant runs
as ``python -m pipeline.benchmarks.speed --run-variant NAME`` (hidden options).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.benchmarks.harness import TreeRssSampler, cpu_flags, machine_facts, write_docs_section
from pipeline.benchmarks.speed_options import add_bench_options
from pipeline.benchmarks.speed_report import SECTION_HEADING, RunContext, command_line, render_section
from pipeline.benchmarks.tia import TiaEnv, ensure_tiatoolbox
from pipeline.benchmarks.variants import (
    MAIN_VARIANTS,
    BenchSpec,
    RunResult,
    load_grid_arrays,
    run_variant,
    save_grid,
)
from pipeline.errors import ConfigError, MicrometError

__all__ = [
    "main", "measure_model", "model_runs", "parse_args", "run_benchmark", "run_child", "section_heading",
]

TIA_RUNNER = Path(__file__).with_name("tia.py")  # run by path with TIAToolbox's own Python
_ERROR_TAIL_LINES = 15


def build_parser() -> argparse.ArgumentParser:
    """The harness's options (shared with ``micromet bench``) and the hidden child options."""
    parser = argparse.ArgumentParser(
        prog="scripts/bench.py", description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_bench_options(parser)
    for flag in ("--run-variant", "--spec", "--result"):
        parser.add_argument(flag, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repeat-index", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the harness options; conflicting or out-of-range values are usage errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model is not None and args.architecture is not None:
        parser.error("--model and --architecture exclude each other: benchmark a checkpoint or a fresh model")
    if args.both_models and (args.model is not None or args.architecture is not None):
        parser.error("--both-models measures the default model and resnet18; "
                     "leave out --model and --architecture")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers {args.workers} is out of range; need at least 0")
    for name, low in (("repeats", 1), ("batch_size", 1), ("region_tiles", 1), ("width", 256),
                      ("height", 256), ("tile_size_px", 32)):
        if getattr(args, name) < low:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} {getattr(args, name)} is out of range; need at least {low}")
    return args


# ---- slide, model, plan ----------------------------------------------------------


def planted_deposits_mm(width_px: int, height_px: int, mpp: float) -> tuple[float, ...]:
    """A macro- and a micro-sized deposit that fit the slide (smaller on small slides)."""
    short_mm = min(width_px, height_px) * mpp / 1000
    sizes = (min(2.5, 0.3 * short_mm), min(0.5, 0.1 * short_mm))
    return tuple(round(size, 3) for size in sizes if size >= 0.05)


def ensure_slide(args: argparse.Namespace) -> Path:
    """The synthetic slide for these options, generated on first use under --work-dir/slides."""
    from pipeline.synthetic.generate import PlantedDeposit, SynthConfig, generate_slide

    name = f"bench_{args.width}x{args.height}_{args.mpp:g}mpp_seed{args.seed}.{args.slide_format}"
    path: Path = args.work_dir / "slides" / name
    if path.with_name(path.stem + ".truth.json").exists() and path.exists():
        return path
    try:
        deposits = tuple(PlantedDeposit(d) for d in planted_deposits_mm(args.width, args.height, args.mpp))
        config = SynthConfig(width_px=args.width, height_px=args.height, mpp=args.mpp, seed=args.seed,
                             deposits=deposits, format=args.slide_format)
    except ValueError as exc:  # names the field, the value and the allowed range
        raise ConfigError(f"synthetic slide: {exc}") from exc
    print(f"generating {path} ...", file=sys.stderr)
    started = time.perf_counter()
    generate_slide(config, path)
    print(f"generated in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return path


def ensure_model(args: argparse.Namespace) -> Path:
    """--model (default models/default.pt), or a fresh --architecture checkpoint made once."""
    from pipeline.models import resolve_model_path

    if args.architecture is None:
        return resolve_model_path(args.model)
    import torch

    from pipeline.models import ModelCard, build_model, save_checkpoint

    name = f"{args.architecture}_{args.tile_size_px}px_{args.model_mpp:g}mpp.pt"
    path: Path = args.work_dir / "models" / name
    if not path.exists():
        torch.manual_seed(0)
        card = ModelCard(architecture=args.architecture, tile_size_px=args.tile_size_px, mpp=args.model_mpp,
                         training_data="none: random weights", notes="untrained; speed benchmark only")
        save_checkpoint(path, build_model(args.architecture), card)
    return path


def plan_spec(args: argparse.Namespace, slide_path: Path, model_path: Path, run_dir: Path) -> BenchSpec:
    """Plan the tiles as ``analyze_slide`` would (default tissue and tiling settings, the card's
    tile size and resolution), save the grid and return the spec every variant runs on."""
    from pipeline.config import TilingConfig, TissueConfig
    from pipeline.models import read_card
    from pipeline.slides.slide import open_slide
    from pipeline.slides.tiling import plan_tiles
    from pipeline.slides.tissue import detect_tissue

    card = read_card(model_path)
    with open_slide(slide_path) as slide:
        tissue = detect_tissue(slide, TissueConfig())
        grid = plan_tiles(slide.dimensions, slide.mpp, tissue,
                          TilingConfig(card.tile_size_px, mpp=card.mpp, stride_px=card.stride_px))
    save_grid(grid, run_dir / "grid.npz")
    return BenchSpec(
        slide=str(slide_path.resolve()), slide_mpp=grid.slide_mpp, model=str(model_path.resolve()),
        tile_size_px=card.tile_size_px, model_mpp=card.mpp, device=args.device, workers=args.workers,
        batch_size=args.batch_size, region_tiles=args.region_tiles,
        grid=str((run_dir / "grid.npz").resolve()),
        out_dir=str(run_dir.resolve()), stride_px=card.stride_px, precision=args.precision,
    )


# ---- running variants in fresh processes --------------------------------------------------


def _tail(path: Path, lines: int = _ERROR_TAIL_LINES) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def variant_command(
    variant: str, spec_path: Path, result_path: Path, repeat: int, tia: TiaEnv | None
) -> list[str]:
    """The command line of one measured run."""
    if variant == "tiatoolbox":
        if tia is None or tia.python is None:
            raise ValueError("the tiatoolbox variant needs an installed TIAToolbox environment")
        return [str(tia.python), str(TIA_RUNNER), "--spec", str(spec_path), "--result", str(result_path)]
    return [sys.executable, "-m", "pipeline.benchmarks.speed", "--run-variant", variant,
            "--spec", str(spec_path), "--result", str(result_path), "--repeat-index", str(repeat)]


def run_child(
    command: list[str], variant: str, result_path: Path, log_path: Path, timeout_s: float
) -> RunResult:
    """Run one measured process; its output goes to ``log_path``. Never raises for its failure."""
    result_path.unlink(missing_ok=True)
    with log_path.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        with TreeRssSampler(process.pid) as sampler:
            try:
                code = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the run and the reader processes it started
                process.wait()
                return RunResult(variant, error=f"timed out after {timeout_s:g} s; log {log_path}")
    if code != 0 or not result_path.exists():
        return RunResult(variant, error=f"exit {code}; log {log_path}:\n{_tail(log_path)}")
    result = RunResult.load(result_path)
    return dataclasses.replace(result, peak_rss_tree_mb=None if sampler.peak_mb is None
                               else round(sampler.peak_mb, 1))


def run_all(variants: Sequence[str], spec: BenchSpec, run_dir: Path, args: argparse.Namespace,
            tia: TiaEnv | None) -> dict[str, list[RunResult]]:
    """Every variant ``args.repeats`` times, interleaved so slow drifts in load hit all alike."""
    spec_path = run_dir / "spec.json"
    spec.save(spec_path)
    results: dict[str, list[RunResult]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants:
            stem = f"{variant}_{repeat}"
            result_path, log_path = run_dir / f"{stem}.json", run_dir / f"{stem}.log"
            command = variant_command(variant, spec_path, result_path, repeat, tia)
            result = run_child(command, variant, result_path, log_path, args.timeout_s)
            results[variant].append(result)
            status = result.error.splitlines()[0] if result.error else (
                f"{result.n_tiles} tiles in {result.seconds:.2f} s = {result.tiles_per_s:.1f} tiles/s")
            print(f"[{repeat + 1}/{args.repeats}] {variant}: {status}", file=sys.stderr)
    return results


def child_main(args: argparse.Namespace) -> int:
    """Inside a measured process: run one variant and write its result."""
    spec = BenchSpec.load(Path(args.spec))
    run_variant(args.run_variant, spec, args.repeat_index).save(Path(args.result))
    return 0


def model_runs(args: argparse.Namespace) -> list[argparse.Namespace]:
    """One namespace per model to measure: --both-models gives the shipped default model and
    an untrained ResNet-18 (224 px at 0.5 µm/px); otherwise the one model the options name."""
    if not args.both_models:
        return [args]
    default = argparse.Namespace(**{**vars(args), "model": None, "architecture": None})
    resnet = argparse.Namespace(**{**vars(args), "model": None, "architecture": "resnet18",
                                   "tile_size_px": 224, "model_mpp": 0.5})
    return [default, resnet]


def section_heading(args: argparse.Namespace) -> str:
    """The docs/benchmarks.md heading of one model's speed section.

    CPUs with and without native bf16 score at very different speeds (bf16 autocast is
    chosen only where the CPU computes it natively), so each kind gets its own section.
    """
    cpu = "" if {"avx512_bf16", "amx_tile"} & cpu_flags() else ", CPU without native bf16"
    if args.architecture is None and args.model is None:
        return f"{SECTION_HEADING}: the default model{cpu}"
    if args.architecture is None:
        return f"{SECTION_HEADING}: {Path(args.model).name}{cpu}"
    return f"{SECTION_HEADING}: {args.architecture} {args.tile_size_px} px at {args.model_mpp:g} µm/px{cpu}"


def prepare_tiatoolbox(args: argparse.Namespace) -> TiaEnv | None:
    """TIAToolbox's environment (installed on first use), or None with --skip-tiatoolbox."""
    if args.skip_tiatoolbox:
        return None
    print(f"preparing TIAToolbox {args.tiatoolbox_version} in {args.work_dir / 'tiatoolbox-venv'} "
          "(the first time this installs it from PyPI: minutes)", file=sys.stderr)
    tia = ensure_tiatoolbox(args.work_dir, args.tiatoolbox_version)
    if tia.error is not None:
        print(tia.error, file=sys.stderr)
    return tia


def measure_model(args: argparse.Namespace, argv: Sequence[str], tia: TiaEnv | None) -> str:
    """Prepare slide, model and plan for one model, run every variant; its Markdown section."""
    machine = machine_facts()
    run_dir = args.work_dir / ("run" if args.architecture is None else f"run_{args.architecture}")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    slide = ensure_slide(args)
    spec = plan_spec(args, slide, ensure_model(args), run_dir)
    variants = [*MAIN_VARIANTS, *(["tiatoolbox"] if tia is not None and tia.error is None else [])]
    results = run_all(variants, spec, run_dir, args, tia)
    context = RunContext(
        command=command_line(argv),
        slide=f"{args.width} x {args.height} px at {args.mpp:g} µm/px ({args.slide_format})",
        model=(f"untrained {args.architecture}" if args.architecture
               else f"checkpoint `{Path(spec.model).name}`"),
        repeats=args.repeats, machine=machine, load_end=machine_facts()["load_average"],
    )
    return render_section(context, spec, spec_tiles(spec), results, tia, section_heading(args))


def run_benchmark(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Measure every model of the run, print (and maybe write) one section per model."""
    tia = prepare_tiatoolbox(args)
    for model_args in model_runs(args):
        section = measure_model(model_args, argv, tia)
        print(section)
        if args.write_docs:
            write_docs_section(args.docs, section_heading(model_args), section)
            print(f"wrote the section into {args.docs}", file=sys.stderr)
    return 0


def spec_tiles(spec: BenchSpec) -> int:
    """Number of tiles in the spec's planned grid."""
    return len(load_grid_arrays(Path(spec.grid))[0]["xy_px"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the harness, or (with the hidden --run-variant) one measured variant."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.run_variant is not None:
        from pipeline.detection.cpu_plan import prefer_passive_omp_wait

        prefer_passive_omp_wait()  # every micromet variant runs as the micromet command would
        return child_main(args)
    try:
        return run_benchmark(args, argv)
    except MicrometError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
