"""The pytest markers a developer selects tests by are on every test that needs them.

``shared_data``: the test (or a fixture or helper it uses) calls ``require_shared_data`` or
takes the ``shared_data`` fixture. ``ray``: it starts Ray (``importorskip("ray...")``).
``browser``: it drives Chromium (playwright). Found by reading the test files, so a new test
that forgets its marker fails here rather than slipping into ``make test-fast``.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent
HELPER_MODULES = ("conftest", "real_slides", "viewer_batch", "bad_inputs", "polygon_reference")


def _needs(node: ast.AST) -> set[str]:
    """Markers the body of ``node`` needs by itself (without following names)."""
    found: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and child.id in ("require_shared_data", "SHARED_DATA_DIR"):
            found.add("shared_data")
        if isinstance(child, ast.arg) and child.arg == "shared_data":
            found.add("shared_data")
        if isinstance(child, ast.Call) and _called_name(child) == "importorskip" and child.args:
            first = child.args[0]
            if isinstance(first, ast.Constant) and str(first.value).split(".")[0] == "ray":
                found.add("ray")
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in child.names] + [getattr(child, "module", None) or ""]
            if any(name.split(".")[0] == "playwright" for name in names):
                found.add("browser")
    return found


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _used_names(node: ast.AST) -> set[str]:
    """Names a function reads, and the fixtures its parameters ask for."""
    names = {child.id for child in ast.walk(node) if isinstance(child, ast.Name)}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        names |= {arg.arg for arg in node.args.args}
        for decorator in node.decorator_list:  # @pytest.mark.usefixtures("x")
            constants = [c for c in ast.walk(decorator) if isinstance(c, ast.Constant)]
            names |= {c.value for c in constants if isinstance(c.value, str)}
    return names


def _markers(node: ast.AST) -> set[str]:
    """``pytest.mark.X`` names in decorators or a ``pytestmark`` value."""
    return {
        child.attr
        for child in ast.walk(node)
        if isinstance(child, ast.Attribute)
        and isinstance(child.value, ast.Attribute)
        and child.value.attr == "mark"
    }


@dataclasses.dataclass
class Module:
    functions: dict[str, ast.FunctionDef]
    module_marks: set[str]
    tree: ast.Module


def _parse(path: Path) -> Module:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions: dict[str, ast.FunctionDef] = {}
    marks: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            functions[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    functions[f"{node.name}.{item.name}"] = item
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
            marks |= _markers(node.value)
    return Module(functions, marks, tree)


def _needs_of(name: str, modules: list[Module], seen: set[str]) -> set[str]:
    """Markers needed by the module-level function ``name`` (first module that defines it),
    following the functions, fixtures and helpers it uses."""
    if name in seen:
        return set()
    seen.add(name)
    for module in modules:
        node = module.functions.get(name)
        if node is None:
            continue
        found = _needs(node)
        for used in _used_names(node) - {name}:
            found |= _needs_of(used, modules, seen)
        return found
    return set()


def missing_markers() -> list[str]:
    """``file::test: marker`` for every test lacking a marker it needs."""
    helpers = [_parse(TESTS / f"{name}.py") for name in HELPER_MODULES if (TESTS / f"{name}.py").exists()]
    problems: list[str] = []
    for path in sorted(TESTS.rglob("test_*.py")):
        module = _parse(path)
        for name, node in module.functions.items():
            short = name.split(".")[-1]
            if not short.startswith("test_"):
                continue
            needed = _needs_of(name, [module, *helpers], set())
            have = module.module_marks | _markers(ast.Module(body=list(node.decorator_list), type_ignores=[]))
            class_name = name.split(".")[0] if "." in name else None
            if class_name:
                for cls in module.tree.body:
                    if isinstance(cls, ast.ClassDef) and cls.name == class_name:
                        have |= _markers(ast.Module(body=list(cls.decorator_list), type_ignores=[]))
            problems += [f"{path.name}::{name}: {marker}" for marker in sorted(needed - have)]
    return problems


def test_every_test_carries_the_markers_it_needs() -> None:
    problems = missing_markers()
    assert not problems, "add these markers:\n" + "\n".join(problems)


def test_the_markers_are_declared_and_make_selects_with_them() -> None:
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    for marker in ("slow", "shared_data", "browser", "ray"):
        assert re.search(rf'"{marker}: ', pyproject), f"marker {marker} not declared in pyproject.toml"
    makefile = (REPO_ROOT / "Makefile").read_text()
    fast = re.search(r"^test-fast:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    markers = re.search(r"^FAST_MARKERS := (.*)$", makefile, re.MULTILINE)
    assert fast is not None and markers is not None, "make test-fast is missing"
    assert '-m "$(FAST_MARKERS)"' in fast.group(1)
    assert markers.group(1) == "not slow and not browser and not ray"


def test_the_check_finds_a_missing_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "test_sample.py").write_text(
        "import pytest\nfrom conftest import require_shared_data\n\n"
        "def _helper():\n    return require_shared_data('x')\n\n"
        "@pytest.fixture\ndef data():\n    return _helper()\n\n"
        "def test_unmarked(data):\n    pass\n\n"
        "@pytest.mark.shared_data\ndef test_marked(data):\n    pass\n\n"
        "def test_ray():\n    pytest.importorskip('ray')\n"
    )
    (tmp_path / "conftest.py").write_text("def require_shared_data(x):\n    return x\n")
    monkeypatch.setattr(sys.modules[__name__], "TESTS", tmp_path)
    expected = ["test_sample.py::test_unmarked: shared_data", "test_sample.py::test_ray: ray"]
    assert missing_markers() == expected


def test_every_test_listed_slow_exists() -> None:
    """tests/slow_tests.py names real tests: a renamed or removed test there would silently
    come back into ``make test-fast``."""
    from tests.slow_tests import SLOW_TESTS

    missing = []
    for relative, names in SLOW_TESTS.items():
        path = REPO_ROOT / relative
        functions = _parse(path).functions if path.is_file() else {}
        missing += [f"{relative}::{name}" for name in names if name not in functions]
    assert not missing, "not found (update tests/slow_tests.py):\n" + "\n".join(missing)


def test_a_listed_test_matches_with_and_without_parameters_and_nothing_else_does() -> None:
    from tests.slow_tests import SLOW_TESTS, is_listed_slow

    relative, names = next(iter(SLOW_TESTS.items()))
    assert is_listed_slow(f"{relative}::{names[0]}[param]") and is_listed_slow(f"{relative}::{names[0]}")
    assert not is_listed_slow(f"{relative}::test_not_listed") and not is_listed_slow(f"other.py::{names[0]}")
