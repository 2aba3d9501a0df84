"""The review fine-tuning benchmark's slides (step 1 of ``review_finetune``): the node-scale
split's dev part (data/pcam_places.csv) keeps its tumor-free patches, split by place into two
halves, each written as two pyramidal TIFF mosaics on white glass.

Reads data/pcam_places.csv and the patches under the data folder; writes
``<work>/slides/<half>/<half>_{hard,mixed}.tiff`` and ``<work>/slides/halves.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.config import PCAM_MPP

__all__ = [
    "GLASS_MARGIN_MM",
    "GLASS_RGB",
    "HALVES",
    "HARD_SOURCE",
    "MODEL_MPP",
    "PATCH_SIDE_MM",
    "PLACES_CSV",
    "REPO",
    "SLIDE_SIDE_MM",
    "NormalPatch",
    "build_slides",
    "dev_normals",
    "slide_image",
    "split_places",
]

REPO = Path(__file__).resolve().parents[2]
PLACES_CSV = REPO / "data" / "pcam_places.csv"
MODEL_MPP = PCAM_MPP
HALVES = ("reviewed", "heldout")
HARD_SOURCE = "pcam_hard_normals"
# side of each slide's tissue (a square mosaic), mm: hard normals only / all normals of a half
SLIDE_SIDE_MM = {"hard": 2.0, "mixed": 3.0}
GLASS_MARGIN_MM = 0.25
GLASS_RGB = (242, 242, 242)
PATCH_SIDE_MM = 96 * MODEL_MPP / 1000


@dataclasses.dataclass(frozen=True)
class NormalPatch:
    """A tumor-free patch of the split: its file under the data folder, its place, hard or not."""

    file: str
    place: str
    hard: bool


def dev_normals(places_csv: Path) -> list[NormalPatch]:
    """The dev part's tumor-free patches (PCam normals and hard normals), in file order."""
    with places_csv.open(newline="", encoding="utf-8") as handle:
        return [
            NormalPatch(f"{row['source']}/{row['file']}", row["place"], row["source"] == HARD_SOURCE)
            for row in csv.DictReader(handle)
            if row["part"] == "dev" and row["label"] == "0"
        ]


def split_places(patches: Sequence[NormalPatch], seed: int) -> dict[str, list[NormalPatch]]:
    """The patches in two halves by place (a place never in both), seeded; places holding a
    hard normal are split apart from the others so each half gets about half of each kind."""
    hard_places = sorted({p.place for p in patches if p.hard})
    plain_places = sorted({p.place for p in patches} - set(hard_places))
    rng = np.random.default_rng(seed)
    reviewed: set[str] = set()
    for places in (hard_places, plain_places):
        order = rng.permutation(len(places))
        reviewed.update(places[i] for i in order[: (len(places) + 1) // 2])
    return {
        "reviewed": [p for p in patches if p.place in reviewed],
        "heldout": [p for p in patches if p.place not in reviewed],
    }


def slide_image(patches: NDArray[np.uint8], side_mm: float, seed: int) -> NDArray[np.uint8]:
    """A square feathered mosaic (node-scale code) of ``side_mm`` on a margin of white glass.

    ``patches``: (n, h, w, 3) uint8. Returns (side + 2 margins) px square, uint8 RGB, at MODEL_MPP.
    """
    from pipeline.evaluation.node_scale import feathered_mosaic

    side_px = round(side_mm * 1000 / MODEL_MPP)
    margin_px = round(GLASS_MARGIN_MM * 1000 / MODEL_MPP)
    mosaic = feathered_mosaic(patches, (side_px, side_px), np.random.default_rng(seed))
    image = np.empty((side_px + 2 * margin_px,) * 2 + (3,), dtype=np.uint8)
    image[:] = GLASS_RGB
    image[margin_px : margin_px + side_px, margin_px : margin_px + side_px] = mosaic
    return image


def _half_slides(
    folder: Path, half: str, patches: Sequence[NormalPatch], data: Path, seed: int
) -> dict[str, Any]:
    """Write one half's two slides into ``folder``; slide name -> its tissue and patch counts."""
    from pipeline.synthetic.pyramid_tiff import write_pyramid_tiff
    from pipeline.training.datasets import load_rgb

    folder.mkdir(parents=True, exist_ok=True)
    pools = {"hard": [p for p in patches if p.hard], "mixed": list(patches)}
    slides = {}
    for k, (kind, pool) in enumerate(pools.items()):
        rgb = np.stack([load_rgb(data / p.file) for p in pool])
        side_mm = SLIDE_SIDE_MM[kind]
        write_pyramid_tiff(folder / f"{half}_{kind}.tiff", slide_image(rgb, side_mm, seed + k), MODEL_MPP)
        slides[f"{half}_{kind}"] = {
            "tissue_mm2": side_mm**2,
            "patches": len(pool),
            "hard_patches": sum(p.hard for p in pool),
            "distinct_tissue_mm2": len(pool) * PATCH_SIDE_MM**2,
        }
    return slides


def build_slides(work: Path, data: Path, seed: int) -> dict[str, Any]:
    """Write work/slides/<half>/<half>_{hard,mixed}.tiff and work/slides/halves.json (skipped
    when halves.json is there); returns what halves.json holds."""
    done = work / "slides" / "halves.json"
    if done.is_file():
        return dict(json.loads(done.read_text(encoding="utf-8")))
    halves = split_places(dev_normals(PLACES_CSV), seed)
    facts: dict[str, Any] = {"seed": seed, "mpp": MODEL_MPP, "halves": {}}
    for h, (half, patches) in enumerate(halves.items()):
        slides = _half_slides(work / "slides" / half, half, patches, data, seed * 100 + h * 10)
        facts["halves"][half] = {
            "places": len({p.place for p in patches}),
            "patches": len(patches),
            "hard_patches": sum(p.hard for p in patches),
            "slides": slides,
        }
    done.write_text(json.dumps(facts, indent=1), encoding="utf-8")
    return facts
