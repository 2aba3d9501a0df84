"""``micromet bench``: runs the speed benchmark harness (``scripts/bench.py``) of a source checkout.

The harness compares micromet end to end with the read limit (OpenSlide alone), the compute
limit (the model alone) and TIAToolbox on one synthetic slide. It lives in ``scripts/``, which
only a source checkout has, and is started as its own process: ``pipeline`` never imports it.
The options are defined here, once, and the harness builds its parser from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.models.device import PRECISIONS

BENCH_SCRIPT = Path("scripts") / "bench.py"


@dataclasses.dataclass(frozen=True)
class BenchOption:
    """One harness option: ``kind`` converts its text (None: an on/off switch)."""

    flag: str
    help: str
    kind: Callable[[str], Any] | None = None
    default: Any = None
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        """The attribute name argparse gives the option."""
        return self.flag.lstrip("-").replace("-", "_")


BENCH_OPTIONS = (
    BenchOption("--width", "synthetic slide level-0 width in px (20000)", int, 20000),
    BenchOption("--height", "synthetic slide level-0 height in px (20000)", int, 20000),
    BenchOption("--mpp", "synthetic slide level-0 µm/px (0.25)", float, 0.25),
    BenchOption("--slide-format", "synthetic slide file format (svs)", str, "svs", ("svs", "tif")),
    BenchOption("--seed", "synthetic slide random seed (7)", int, 7),
    BenchOption("--model", "micromet checkpoint to benchmark (default: models/default.pt)", Path),
    BenchOption(
        "--architecture",
        "benchmark a fresh, untrained model of this architecture (e.g. resnet18) instead of --model",
        str,
    ),
    BenchOption("--tile-size-px", "tile side for --architecture, in px (224)", int, 224),
    BenchOption("--model-mpp", "model resolution for --architecture, in µm/px (0.5)", float, 0.5),
    BenchOption("--device", "auto (default), cpu, cuda[:N] or mps", str, "auto"),
    BenchOption(
        "--workers",
        "reader processes, for every variant (default: micromet's automatic CPU plan; the read limit "
        "and TIAToolbox then use every usable core)",
        int,
    ),
    BenchOption(
        "--precision", "scoring precision for micromet and the compute limit (auto)", str, "auto",
        PRECISIONS,
    ),
    BenchOption("--both-models", "measure the default model and an untrained resnet18 (224 px, 0.5 µm/px)"),
    BenchOption("--batch-size", "tiles per model batch, for every variant (64)", int, 64),
    BenchOption("--region-tiles", "micromet model tiles per side of one slide read (8)", int, 8),
    BenchOption("--repeats", "runs of every variant; medians are reported (3)", int, 3),
    BenchOption("--skip-tiatoolbox", "do not install or run TIAToolbox"),
    BenchOption("--tiatoolbox-version", "TIAToolbox release to install (2.1.3)", str, "2.1.3"),
    BenchOption("--write-docs", "write the results section into --docs"),
    BenchOption(
        "--docs", "Markdown file for --write-docs (docs/benchmarks.md)", Path, Path("docs/benchmarks.md")
    ),
    BenchOption("--work-dir", "slides, models, venv and run outputs (.bench)", Path, Path(".bench")),
    BenchOption("--timeout-s", "longest one variant run may take, in s (1800)", float, 1800.0),
)


def add_bench_options(parser: argparse.ArgumentParser) -> None:
    """Add every ``BENCH_OPTIONS`` entry to ``parser``."""
    for option in BENCH_OPTIONS:
        if option.kind is None:
            parser.add_argument(option.flag, action="store_true", help=option.help)
        else:
            parser.add_argument(
                option.flag,
                type=option.kind,
                default=option.default,
                choices=option.choices,
                help=option.help,
            )


def bench_argv(args: argparse.Namespace) -> list[str]:
    """The harness command-line arguments that reproduce the options in ``args``."""
    argv: list[str] = []
    for option in BENCH_OPTIONS:
        value = getattr(args, option.dest, None)
        if option.kind is None:
            if value:
                argv.append(option.flag)
        elif value is not None:
            argv.extend([option.flag, str(value)])
    return argv


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


def run(args: argparse.Namespace) -> int:
    """Run the harness in a child Python process; returns its exit code."""
    script = find_bench_script()
    command = [sys.executable, str(script), *bench_argv(args)]
    return subprocess.call(command)
