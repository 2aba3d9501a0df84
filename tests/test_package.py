"""The package and its command: imports stay light, every subcommand is listed."""

from __future__ import annotations

import subprocess
import sys

from pipeline.cli import COMMAND_MODULES, build_parser


def test_importing_pipeline_loads_neither_torch_nor_openslide() -> None:
    code = (
        "import sys, warnings, pipeline, pipeline.cli, pipeline.config, pipeline.staging\n"
        "heavy = [m for m in ('torch', 'openslide', 'ray', 'flask') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_help_lists_every_subcommand() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, check=True
    )
    for name in COMMAND_MODULES:
        assert f"    {name}" in result.stdout, name


def test_every_subcommand_module_registers() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert set(subparsers.choices) == set(COMMAND_MODULES)  # type: ignore[attr-defined]


def test_no_command_prints_help_and_exits_2() -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "COMMAND" in result.stdout
