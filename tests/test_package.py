"""The package and its command: imports stay light, every subcommand is listed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
SCRIPTS = PACKAGE.parent / "scripts"
TESTS = PACKAGE.parent / "tests"
STAGE_PACKAGES = ("slides", "detection", "deposits", "staging", "review", "batch", "training", "synthetic",
                  "evaluation", "models", "cli", "benchmarks")  # fmt: skip
MAX_MODULE_LINES = 520  # the style guide's "about 500"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """pipeline modules ``path`` imports anywhere (inside functions and TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found.update(name for name in names if name in modules)
    return found


def test_the_tree_shows_the_stages_each_package_saying_what_it_reads_and_produces() -> None:
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert {name for name in entries if not name.endswith(".py")} == set(STAGE_PACKAGES)
    assert len(entries) <= 17, sorted(entries)
    for name in STAGE_PACKAGES:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc) > 80, (
            f"pipeline/{name}/__init__.py needs a docstring: what it reads and produces"
        )


def test_no_module_is_over_about_500_lines() -> None:
    paths = [*PACKAGE.rglob("*.py"), *SCRIPTS.glob("*.py")]
    long = {str(p.relative_to(PACKAGE.parent)): n for p in paths
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}  # fmt: skip
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them): {long}"


def test_only_the_command_imports_the_cli() -> None:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    cli = {name for name in paths if name == "pipeline.cli" or name.startswith("pipeline.cli.")}
    others = {name: path for name, path in paths.items() if name not in cli and name != "pipeline.__main__"}
    found = {name: sorted(targets) for name, path in others.items() if (targets := _imports(path, cli))}
    assert not found, f"only pipeline/cli/ and pipeline/__main__.py may import pipeline.cli: {found}"


def _script_loads(path: Path, script_names: set[str]) -> list[str]:
    """How the test module ``path`` loads a script: imports of a scripts/ module's name, and any
    sys.path change or load of a module by its file path (which is how a script gets loaded)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found += [f"import {n}" for n in names if n.split(".")[0] in script_names]
        if isinstance(node, ast.Call):
            call = ast.unparse(node.func)
            if call.endswith(("spec_from_file_location", "run_path", "SourceFileLoader", "sys.path.insert",
                              "sys.path.append", "sys.path.extend")):
                found.append(f"{call}(...) on line {node.lineno}")
            module = node.args[0] if node.args and call.endswith("import_module") else None
            if isinstance(module, ast.Constant) and str(module.value).split(".")[0] in script_names:
                found.append(f"import_module({module.value!r})")
    return found


def test_no_test_imports_a_script() -> None:
    # The benchmarks' and scripts' logic that tests need lives in pipeline/ (pipeline.benchmarks,
    # pipeline.training.pcam_split, ...); scripts/ holds only command lines.
    script_names = {p.stem for p in SCRIPTS.glob("*.py")} | {"scripts"}
    found = {str(p.relative_to(TESTS)): loads for p in sorted(TESTS.rglob("*.py"))
             if (loads := _script_loads(p, script_names))}  # fmt: skip
    assert not found, f"tests load scripts (move what they need into pipeline/): {found}"


def test_no_import_cycle_between_modules() -> None:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if target.startswith(name + "."):
                continue  # a package's __init__ re-exporting its own modules
            assert state.get(target) != 1, " -> ".join([*path, name, target])
            if target not in state:
                visit(target, [*path, name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_tests_mirror_the_package() -> None:
    # tests/<stage>/ for each stage subpackage it tests (CLI tests in tests/cli/); at the top only
    # the tests of the package as a whole and of its top-level modules.
    stages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    folders = {p.name for p in TESTS.iterdir()
               if p.is_dir() and p.name != "fixtures" and not p.name.startswith((".", "_"))}  # fmt: skip
    assert folders <= stages, f"tests/ folders with no pipeline/ subpackage: {sorted(folders - stages)}"
    top_modules = {p.stem for p in PACKAGE.glob("*.py")}
    top_tests = {p.stem.removeprefix("test_") for p in TESTS.glob("test_*.py")}
    assert top_tests <= top_modules | {"package", "markers"}, (
        f"tests at the top of tests/ that belong in a stage folder: {sorted(top_tests - top_modules)}"
    )
    assert len(list(TESTS.rglob("test_*.py"))) > 3 * len(top_tests)


def test_no_batch_module_takes_command_line_arguments() -> None:
    # pipeline/batch/ receives one AnalysisSettings (and RayOptions); the command builds them.
    found = {}
    for path in sorted((PACKAGE / "batch").rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        if "argparse" in names:
            found[str(path.relative_to(PACKAGE.parent))] = "argparse"
    assert not found, f"pipeline/batch/ modules importing argparse (take AnalysisSettings instead): {found}"


def test_slides_are_reopened_through_their_source_outside_pipeline_slides() -> None:
    # A slide travels as one SlideSource (path, µm/px, where it came from) and is reopened with
    # source.open() / slide.source.open(); a (path, mpp) pair handed to open_slide or Slide
    # outside pipeline/slides/ is the loose pair the source replaces.
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "slides"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = getattr(func, "id", None) or getattr(func, "attr", "")
            overrides = any(keyword.arg == "mpp_override" for keyword in node.keywords)
            positional_mpp = name == "open_slide" and len(node.args) > 1
            if name in ("open_slide", "Slide") and (overrides or positional_mpp):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not found, f"slides reopened from a (path, mpp) pair instead of a SlideSource: {found}"


def test_every_package_names_its_public_names() -> None:
    # Each package's __init__ lists what it offers in __all__: its re-exported names, or (for a
    # package that loads its modules on use) every public module and subpackage.
    import importlib

    problems: list[str] = []
    for init in sorted(PACKAGE.rglob("__init__.py")):
        name = ".".join(init.relative_to(PACKAGE.parent).parent.parts)
        package = importlib.import_module(name)
        exported = getattr(package, "__all__", None)
        if exported is None:
            problems.append(f"{name}: no __all__")
            continue
        modules = {p.stem for p in init.parent.glob("*.py") if not p.stem.startswith("_")}
        modules |= {p.parent.name for p in init.parent.glob("*/__init__.py")}
        unknown = [n for n in exported if not hasattr(package, n) and n not in modules]
        if unknown:
            problems.append(f"{name}: __all__ names what it does not hold: {unknown}")
        reexports = [n for n in exported if n not in modules]
        if not reexports and set(exported) != modules:
            problems.append(f"{name}: __all__ leaves out modules {sorted(modules - set(exported))}")
    assert not problems, problems
