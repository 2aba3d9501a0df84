"""The PatchCamelyon split by place: reads data/pcam_places.csv (written by
scripts/split_pcam_by_place.py with ``places.split_places``) and the patches it lists under
../shared/data; produces (file, label) lists per part and the patches as arrays.

The default model was trained and tested on this split (scripts/train_default_model.py); the
tests and the runtime benchmark score its held-out test part.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import ConfigError
from pipeline.training.datasets import load_rgb

__all__ = ["PLACES_CSV", "load_pcam", "node_scale_rows", "split_pcam", "tumor_places"]

PLACES_CSV = Path(__file__).resolve().parents[2] / "data" / "pcam_places.csv"


def split_pcam(data: Path, places_csv: Path = PLACES_CSV) -> dict[str, list[tuple[str, int]]]:
    """(file relative to ``data``, label) per part, from the place split in ``places_csv``.

    Whole places (patches sharing pixels) sit in one part: train (PCam and hard normals),
    val = the dev part's PCam patches (thresholds), hard_dev = the dev part's hard normals
    (reported apart: a biased sample), test = the test part (reported once). Raises ConfigError
    naming the file when a listed patch is not under ``data``.
    """
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "hard_dev": [], "test": []}
    with places_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            item = (f"{row['source']}/{row['file']}", int(row["label"]))
            if not (data / item[0]).is_file():
                raise ConfigError(f"{data / item[0]}: listed in {places_csv} but missing; check --data")
            hard = row["source"] == "pcam_hard_normals"
            part = {"train": "train", "dev": "hard_dev" if hard else "val", "test": "test"}[row["part"]]
            splits[part].append(item)
    return splits


def load_pcam(data: Path, items: Sequence[tuple[str, int]]) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """The patches of ``items`` (N, H, W, 3) uint8 and their labels (N,) int64."""
    tiles = np.stack([load_rgb(data / name) for name, _ in items])
    return tiles, np.array([label for _, label in items], dtype=np.int64)


def _rows(places_csv: Path) -> list[dict[str, str]]:
    with places_csv.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _tumor_places(rows: Sequence[dict[str, str]]) -> set[str]:
    return {row["place"] for row in rows if row["label"] == "1"}


def tumor_places(places_csv: Path = PLACES_CSV) -> set[str]:
    """Places that hold a tumor patch. A PCam normal patch is normal in its central 32 px
    only; one that shares pixels with a tumor patch has that tumor in its border (test place
    1446: a cluster of large pale carcinoma cells in the lower third of the normal patch)."""
    return _tumor_places(_rows(places_csv))


def node_scale_rows(part: str, places_csv: Path = PLACES_CSV) -> list[dict[str, str]]:
    """The part's PCam rows that the node-scale benchmark builds surfaces from: every tumor
    patch, and the normal patches in no place that holds tumor (tumor-free material)."""
    rows = _rows(places_csv)
    near_tumor = _tumor_places(rows)
    return [
        row for row in rows
        if row["part"] == part and row["source"] == "pcam_kaggle"
        and (row["label"] == "1" or row["place"] not in near_tumor)
    ]  # fmt: skip
