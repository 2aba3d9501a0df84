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
from pipeline.errors import MicrometError, printable

__all__ = ["COMMAND_MODULES", "build_parser", "main", "write_crash_log"]

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
    "review",
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
    from pipeline.detection.cpu_plan import prefer_passive_omp_wait

    prefer_passive_omp_wait()  # before anything imports torch (pipeline.detection.cpu_plan)
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    _refuse_odd_values(parser, words)
    args = parser.parse_args(words)
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
        print(f"micromet {args.command}: error: {printable(_error_line(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"micromet {args.command}: interrupted", file=sys.stderr)
        quiet_finalisers_after_interrupt()
        return 130
    except OSError as exc:
        if exc.filename is None:
            return _internal_error(args.command, argv, exc)
        # a path the system refused (name too long, a link loop, no permission): the user's to fix
        print(f"micromet {args.command}: error: {printable(f'{exc.filename}: {exc.strerror or exc}')}; "
              "check the path", file=sys.stderr)
        return 1
    except Exception as exc:  # the last resort: a bug, reported in one line with its log
        return _internal_error(args.command, argv, exc)


def _refuse_odd_values(parser: argparse.ArgumentParser, words: list[str]) -> None:
    """A usage error for values argparse would take silently: "--flag=--" (an empty list that
    skips the flag's type) and an empty value (a path "" reads as ".", the current folder)."""
    for index, word in enumerate(words):
        if word.startswith("--") and word.endswith("=--"):
            parser.error(f"argument {word.split('=', 1)[0]}: '--' is not a value")
        if word == "" or (word.startswith("--") and word.endswith("=")):
            after_flag = index > 0 and words[index - 1].startswith("-")
            name = word[:-1] if word else words[index - 1] if after_flag else "SLIDE/PATH"
            parser.error(f"argument {name} is empty; give a value")


def quiet_finalisers_after_interrupt() -> None:
    """After Ctrl-C, a reader pool cut off while starting is finalised half-built and raises in
    its ``__del__`` ("'_MultiProcessingDataLoaderIter' object has no attribute
    '_workers_status'"), which Python would print as a traceback under the one-line
    "interrupted". From here on the finalisers of torch's DataLoader iterators log such errors
    at debug level; every other unraisable error goes to the hook that was there before."""
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        where = getattr(unraisable.object, "__qualname__", type(unraisable.object).__qualname__)
        if "DataLoaderIter" not in str(where):  # e.g. "_MultiProcessingDataLoaderIter.__del__"
            previous(unraisable)
            return
        logging.getLogger(__name__).debug(
            "after the interrupt, finalising %r: %r", unraisable.object, unraisable.exc_value
        )

    sys.unraisablehook = hook


def _internal_error(command: str, argv: Sequence[str] | None, exc: Exception) -> int:
    """Report a bug in one line naming its crash log; exit code 2."""
    log_path = write_crash_log(command, argv)
    print(
        f"micromet {command}: internal error: {type(exc).__name__}: {_one_line(exc)}; "
        f"the traceback is in {log_path}; please report it with that file",
        file=sys.stderr,
    )
    return 2


def _error_line(exc: MicrometError) -> str:
    """The error's message; for one re-raised by a DataLoader reader process (its message then
    holds the reader's traceback), the original message, its last line."""
    text = str(exc)
    if "\n" in text and "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        return last.split(": ", 1)[1] if last.startswith(type(exc).__module__) else last
    return text


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def write_crash_log(command: str, argv: Sequence[str] | None) -> str:
    """Write the exception being handled, with the command line, to a new file in the temporary
    folder; returns its path (or a note where even that cannot be written)."""
    import os
    import tempfile
    import time
    import traceback

    try:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        handle, path = tempfile.mkstemp(prefix=f"micromet-crash-{stamp}-", suffix=".log")
        with os.fdopen(handle, "w", encoding="utf-8", errors="replace") as stream:
            stream.write(f"micromet {__version__} {command}\n")
            stream.write(f"argv: {list(sys.argv if argv is None else argv)!r}\n\n")
            stream.write(traceback.format_exc())
    except OSError as exc:
        return f"(no crash log: {exc.strerror or exc})"
    return path
