"""The speed benchmark's options, defined once: ``scripts/bench.py`` (``speed.build_parser``)
and ``micromet bench`` (``pipeline/cli/bench.py``) both build their parsers from them, and
``bench_argv`` turns parsed options back into the harness's command line.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.models.device import PRECISIONS

__all__ = ["BENCH_OPTIONS", "BenchOption", "add_bench_options", "bench_argv"]


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
