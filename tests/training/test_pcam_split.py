"""The PCam split by place (pipeline/training/pcam_split.py): parts from data/pcam_places.csv's
rows, hard normals of the dev part reported apart, and a clear error for a missing patch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.training.pcam_split import PLACES_CSV, load_pcam, split_pcam

ROWS = [("pcam_kaggle", "a.png", "1", "train"), ("pcam_hard_normals", "b.png", "0", "train"),
        ("pcam_kaggle", "c.png", "0", "dev"), ("pcam_hard_normals", "d.png", "0", "dev"),
        ("pcam_kaggle", "e.png", "1", "test")]  # fmt: skip


def _places(tmp_path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    csv_path = tmp_path / "places.csv"
    lines = ["source,file,label,part", *(",".join(row) for row in rows)]
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for index, (source, name, _, _) in enumerate(rows):
        (tmp_path / source).mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), index * 40, np.uint8)).save(tmp_path / source / name)
    return csv_path


def test_each_row_goes_to_its_part_and_loads_with_its_label(tmp_path: Path) -> None:
    splits = split_pcam(tmp_path, _places(tmp_path, ROWS))
    assert splits == {"train": [("pcam_kaggle/a.png", 1), ("pcam_hard_normals/b.png", 0)],
                      "val": [("pcam_kaggle/c.png", 0)], "hard_dev": [("pcam_hard_normals/d.png", 0)],
                      "test": [("pcam_kaggle/e.png", 1)]}  # fmt: skip
    tiles, labels = load_pcam(tmp_path, splits["train"])
    assert tiles.shape == (2, 8, 8, 3) and tiles.dtype == np.uint8 and labels.tolist() == [1, 0]
    assert int(tiles[1, 0, 0, 0]) == 40


def test_a_listed_patch_that_is_missing_names_the_file(tmp_path: Path) -> None:
    csv_path = _places(tmp_path, ROWS)
    (tmp_path / "pcam_kaggle" / "e.png").unlink()
    with pytest.raises(ConfigError, match=r"e\.png: listed in .*places\.csv but missing; check --data"):
        split_pcam(tmp_path, csv_path)


def test_the_repository_split_file_is_the_default() -> None:
    assert PLACES_CSV.is_file() and PLACES_CSV.parent.name == "data"
    assert PLACES_CSV.read_text(encoding="utf-8").startswith("source,file,label")
