"""Split the real PatchCamelyon patches by place, not by patch, and write data/pcam_places.csv.

    python scripts/split_pcam_by_place.py [--data ../shared/data] [--out data/pcam_places.csv]

Reads ../shared/data/pcam_kaggle (8,761 patches) and ../shared/data/pcam_hard_normals (1,679 hard
negatives), groups patches that share an identical textured window at any shift
(``pipeline.training.places``) and deals whole places to the parts: train 70 %, dev 15 % (every
choice: thresholds, seed rule, size calibration), test 15 % (reported once). Places made only
of hard normals go to train (85 %) and dev (15 %); a hard normal that shares pixels with a
PCam patch follows that patch's place. Seeded: the same data give the same file.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import SHARED_DATA_DIR  # noqa: E402
from pipeline.training.datasets import load_rgb  # noqa: E402
from pipeline.training.places import find_places, split_places  # noqa: E402

PCAM_FRACTIONS = {"train": 0.70, "dev": 0.15, "test": 0.15}
HARD_FRACTIONS = {"train": 0.85, "dev": 0.15}
SEED = 0


def read_rows(data: Path) -> list[tuple[str, str, int]]:
    """(source folder, file, label) of every patch: PCam first, then the hard normals."""
    rows = []
    for source in ("pcam_kaggle", "pcam_hard_normals"):
        with (data / source / "labels.csv").open(newline="", encoding="utf-8-sig") as handle:
            rows += sorted((source, r["file"], int(r["label"])) for r in csv.DictReader(handle))
    return rows


def assign_parts(rows: list[tuple[str, str, int]], places: np.ndarray) -> list[str]:
    labels = np.array([label for _, _, label in rows], dtype=np.int64)
    is_pcam = np.array([source == "pcam_kaggle" for source, _, _ in rows])
    pcam_places = set(places[is_pcam].tolist())
    parts = np.full(len(rows), "", dtype=object)
    in_pcam = np.isin(places, list(pcam_places))
    parts[in_pcam] = split_places(places[in_pcam], labels[in_pcam], PCAM_FRACTIONS, SEED)
    hard_only = ~in_pcam
    if hard_only.any():
        _, compact = np.unique(places[hard_only], return_inverse=True)
        parts[hard_only] = split_places(compact.astype(np.int64), labels[hard_only], HARD_FRACTIONS, SEED)
    return [str(p) for p in parts]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--out", type=Path, default=REPO / "data" / "pcam_places.csv")
    args = parser.parse_args(argv)
    rows = read_rows(args.data)
    patches = np.stack([load_rgb(args.data / source / name) for source, name, _ in rows])
    places = find_places(patches)
    parts = assign_parts(rows, places)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "file", "label", "place", "part"])
        for (source, name, label), place, part in zip(rows, places, parts, strict=True):
            writer.writerow([source, name, label, int(place), part])
    sizes = Counter(places.tolist())
    print(f"{len(rows)} patches, {len(sizes)} places, {sum(1 for s in sizes.values() if s > 1)} shared")
    for part in ("train", "dev", "test"):
        chosen = [i for i, p in enumerate(parts) if p == part]
        n_tumor = sum(rows[i][2] for i in chosen)
        n_hard = sum(rows[i][0] == "pcam_hard_normals" for i in chosen)
        print(f"{part}: {len(chosen)} patches ({n_tumor} tumor, {n_hard} hard normals)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
