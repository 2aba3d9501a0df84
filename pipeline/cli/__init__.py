"""The ``micromet`` command: parses arguments and hands each subcommand to its module.

Each subcommand lives in ``pipeline/cli/<name>.py`` and exposes
``register(subparsers)``; the command functions stay thin and import heavy
libraries (torch, openslide) only when they run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pipeline import __version__
from pipeline.errors import MicrometError

# Subcommand modules, in the order `micromet --help` lists them.
COMMAND_MODULES = (
    "synth",
    "info",
    "infer",
    "stage",
    "classify",
    "train",
    "evaluate",
    "report",
    "view",
    "bench",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="micromet",
        description="Find and measure lymph-node metastases in whole-slide images.",
    )
    parser.add_argument("--version", action="version", version=f"micromet {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"pipeline.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"pipeline.cli.{name}":
                continue  # command not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code: int = args.run(args)
        return code
    except MicrometError as exc:
        print(f"micromet {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"micromet {args.command}: interrupted", file=sys.stderr)
        return 130
