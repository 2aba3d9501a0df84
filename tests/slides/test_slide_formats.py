"""Slide file suffixes (pipeline/slides/formats.py): one list, cut the same way by the batch
folder's slide ids and by staging's slide names, and listed nowhere else in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.batch.folder import slide_id_for
from pipeline.slides.formats import OPENSLIDE_SUFFIXES, SLIDE_SUFFIXES
from pipeline.staging import slide_key

PACKAGE = Path(__file__).resolve().parents[2] / "pipeline"


@pytest.mark.parametrize("suffix", SLIDE_SUFFIXES)
def test_the_batch_folder_and_staging_cut_every_slide_suffix_alike(suffix: str) -> None:
    for name in (f"patient_004_node_4{suffix}", f"patient_004_node_4{suffix.upper()}"):
        assert slide_id_for(Path("in") / name) == slide_key(f"in/{name}") == "patient_004_node_4"


def test_slide_suffixes_are_lower_case_and_unique() -> None:
    # every reader compares them with the file name lower-cased
    assert all(s.startswith(".") and s == s.lower() for s in SLIDE_SUFFIXES)
    assert len(set(SLIDE_SUFFIXES)) == len(SLIDE_SUFFIXES)


def _suffix_lists(path: Path) -> list[int]:
    """Lines of tuple or list literals in ``path`` naming two or more whole-slide suffixes."""
    wsi = set(OPENSLIDE_SUFFIXES) - {".tif", ".tiff"}  # TIFF also names plain images
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            names = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if len(names & wsi) >= 2:
                lines.append(node.lineno)
    return lines


def test_no_other_module_lists_slide_suffixes() -> None:
    found = {str(p.relative_to(PACKAGE)): lines for p in PACKAGE.rglob("*.py")
             if p.name != "formats.py" and (lines := _suffix_lists(p))}  # fmt: skip
    assert not found, f"slide suffixes listed outside pipeline/slides/formats.py: {found}"
