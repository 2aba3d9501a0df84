"""``micromet bench``: runs the speed benchmark harness (``scripts/bench.py``) of a source checkout.

The harness compares micromet end to end with the read limit (OpenSlide alone), the compute
limit (the model alone) and TIAToolbox on one synthetic slide. Its code is
``pipeline.benchmarks.speed``; its command line ``scripts/bench.py``, which only a source
checkout has, is started as its own process. The options are defined once, in
``pipeline.benchmarks.speed_options``, and both parsers are built from them.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

from pipeline.benchmarks.speed_options import add_bench_options, bench_argv
from pipeline.config import MAX_PLAUSIBLE_MPP, MIN_PLAUSIBLE_MPP
from pipeline.errors import ConfigError

BENCH_SCRIPT = Path("scripts") / "bench.py"


def find_bench_script(repo_root: Path | None = None) -> Path:
    """``scripts/bench.py`` of the checkout holding this package (or of ``repo_root``).

    Raises ConfigError, explaining where to get it, when the file is not there (an installed
    wheel has no ``scripts/``).
    """
    root = repo_root if repo_root is not None else Path(__file__).resolve().parents[2]
    script = root / BENCH_SCRIPT
    if not script.is_file():
        raise ConfigError(
            f"{script}: the benchmark harness is not there; it ships only with the source "
            "repository, not with an installed package. Clone the micromet repository, install it "
            "with `pip install -e .` and run `micromet bench` (or `python scripts/bench.py`) there"
        )
    return script


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="speed benchmark: micromet vs read limit, compute limit and TIAToolbox",
        description="Generate a synthetic slide and time, on the same tiles: a bare OpenSlide read "
        "loop (read limit), the model on random tensors (compute limit), micromet end to end, and "
        "TIAToolbox's PatchPredictor (installed in its own virtual environment under --work-dir). "
        "Prints tiles/s, seconds per slide, peak memory and ratios; medians of --repeats runs. "
        "Needs the source checkout's scripts/bench.py.",
    )
    add_bench_options(parser)
    parser.set_defaults(run=run)


# (option dest, lowest, highest): numbers the child process would refuse only after its slide
_RANGES: tuple[tuple[str, float, float], ...] = (
    ("width", 1, 10**6), ("height", 1, 10**6), ("tile_size_px", 1, 10**5), ("batch_size", 1, 10**6),
    ("region_tiles", 1, 10**4), ("repeats", 1, 10**4), ("workers", 0, 10**4), ("seed", 0, 2**32 - 1),
    ("mpp", MIN_PLAUSIBLE_MPP, MAX_PLAUSIBLE_MPP), ("model_mpp", MIN_PLAUSIBLE_MPP, MAX_PLAUSIBLE_MPP),
    ("timeout_s", 1e-3, 10**7),
)


def _check_numbers(args: argparse.Namespace) -> None:
    """ConfigError naming the flag for a number out of its range (NaN and infinity included)."""
    for dest, low, high in _RANGES:
        value = getattr(args, dest, None)
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            flag = "--" + dest.replace("_", "-")
            raise ConfigError(f"{flag} {value}: out of range; give {low:g} to {high:g}")


def run(args: argparse.Namespace) -> int:
    """Run the harness in a child Python process; returns its exit code."""
    from pipeline.models import load_checkpoint
    from pipeline.outputs import check_writable_folder

    # before the child process, which would generate a slide first and end in a traceback
    _check_numbers(args)
    if args.model is not None:
        load_checkpoint(args.model, "cpu")  # CheckpointError naming the file
    check_writable_folder(args.work_dir)
    script = find_bench_script()
    command = [sys.executable, str(script), *bench_argv(args)]
    return subprocess.call(command)
