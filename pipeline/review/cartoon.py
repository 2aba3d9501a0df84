"""Review: reads the ground truth written beside synthetic slides, produces the notice that
slides drawn as cartoons give categories that mean nothing.

``micromet synth`` and ``micromet demo`` write ``<stem>.truth.json`` beside each slide; its
"texture" is "cartoon" (drawn cells) or "real" (painted from real H&E). A model trained on
real tissue does not know cartoon tumor, so the categories and pN stages of cartoon slides
are not meaningful: report.html, the viewer and ``micromet stage`` say so on their first
screen and mark those categories.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from pipeline.batch.folder import read_manifest
from pipeline.errors import MicrometError

CARTOON_TEXTURE = "cartoon"
NOT_MEANINGFUL = "not meaningful"
CARTOON_MARK = "not meaningful: cartoon slide"
TRUTH_SUFFIX = ".truth.json"


def truth_path(slide_path: Path) -> Path:
    """Where ``micromet synth`` writes a slide's ground truth: ``<stem>.truth.json`` beside it."""
    return slide_path.with_name(slide_path.stem + TRUTH_SUFFIX)


def is_cartoon_slide(slide_path: Path | None) -> bool:
    """Whether ``slide_path`` is a micromet synthetic slide drawn as a cartoon: its truth file
    names micromet's generator and texture "cartoon" (files written before textures existed
    have no "texture" and were all cartoons). False when there is no readable truth file."""
    if slide_path is None:
        return False
    try:
        data = json.loads(truth_path(Path(slide_path)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or not str(data.get("generator", "")).startswith("micromet"):
        return False
    return bool(data.get("texture", CARTOON_TEXTURE) == CARTOON_TEXTURE)


def batch_cartoon_slides(batch_dir: Path) -> list[str]:
    """Slide ids of a batch folder (BATCH_DIR/manifest.json) whose slide files are cartoons,
    sorted. Slide paths are taken as the manifest records them (relative ones from the batch
    folder). An unreadable manifest gives none: the readers of the results report it."""
    try:
        slides = read_manifest(batch_dir).slides
    except MicrometError:
        return []
    found = []
    for slide_id, entry in slides.items():
        if entry.path and is_cartoon_slide(_from_batch(batch_dir, Path(entry.path))):
            found.append(slide_id)
    return sorted(found)


def _from_batch(batch_dir: Path, path: Path) -> Path:
    return path if path.is_absolute() else batch_dir / path


def cartoon_notice(cartoon_ids: Collection[str], n_slides: int) -> str:
    """The first-screen notice for a batch with cartoon slides ("" when there are none)."""
    if not cartoon_ids:
        return ""
    which = "All" if len(cartoon_ids) >= n_slides else f"{len(cartoon_ids)} of {n_slides}"
    return (
        f"{which} slides here are synthetic cartoons (drawn cells, not tissue): the model "
        "learned real tumor and does not recognise cartoon tumor, so their categories and "
        f"the pN stages made from them are {NOT_MEANINGFUL}. Paint synthetic slides from real "
        "texture (micromet synth --texture real) to test the pipeline."
    )


def cartoon_context(slides: Iterable[tuple[str, Path | None]]) -> dict[str, Any]:
    """What the templates need to mark cartoon slides, from (slide id, slide file) pairs:
    ``cartoon_ids`` (a set) and ``cartoon_notice`` ("" without cartoon slides)."""
    pairs = list(slides)
    ids = {slide_id for slide_id, path in pairs if is_cartoon_slide(path)}
    return {"cartoon_ids": ids, "cartoon_notice": cartoon_notice(ids, len(pairs))}
