"""Patch classification: physical-scale preparation, one row per file, bad-file policy."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_overflowing_checkpoint
from PIL import Image

from pipeline.cli import main as cli_main
from pipeline.errors import ConfigError
from pipeline.models import ModelCard, build_model, load_checkpoint, save_checkpoint
from pipeline.training.classify import (
    PatchScore,
    binary_metrics,
    choose_threshold,
    classify_patches,
    list_patch_files,
    load_patch_tile,
    roc_auc,
    score_batch,
    write_scores_csv,
)
from pipeline.training.datasets import PatchImageError, fit_to_tile, load_rgb


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=1.0, threshold=0.4)
    return save_checkpoint(tmp_path / "model.pt", build_model("micronet"), card)


@pytest.fixture
def patch_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "patches"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "sub/c.tif", "d.tiff"):
        Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(folder / name)
    (folder / "readme.txt").write_text("not a patch")
    return folder


def test_list_patch_files_finds_images_in_folders_and_keeps_given_files(patch_dir: Path) -> None:
    files = list_patch_files([patch_dir, patch_dir / "readme.txt"])
    assert [f.name for f in files] == ["a.png", "b.jpg", "d.tiff", "c.tif", "readme.txt"]
    with pytest.raises(ConfigError, match="not found"):
        list_patch_files([patch_dir / "missing"])
    empty = patch_dir.parent / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no patch images"):
        list_patch_files([empty])


def test_scores_equal_the_model_on_physically_resized_tiles(checkpoint: Path, patch_dir: Path) -> None:
    model, card = load_checkpoint(checkpoint)
    files = list_patch_files([patch_dir])
    scores = classify_patches(files, 0.5, model, card, torch.device("cpu"), batch_size=3)
    assert [s.path for s in scores] == [str(f) for f in files]
    expected_tiles = np.stack([fit_to_tile(load_rgb(f), 0.5, 1.0, 32) for f in files])
    expected = score_batch(
        model, torch.from_numpy(expected_tiles), torch.device("cpu"), (card.mean, card.std)
    )
    got = np.array([s.tumor_probability for s in scores], dtype=np.float32)
    assert np.allclose(got, expected, atol=1e-6)
    assert np.all((got >= 0) & (got <= 1))
    # 80 px at 0.5 µm/px is 40 µm: the 32 px tile at 1.0 µm/px is a centre crop of it
    assert load_patch_tile(files[0], 0.5, card).shape == (32, 32, 3)


def test_a_bad_file_stops_with_its_name_unless_skipped(checkpoint: Path, patch_dir: Path) -> None:
    (patch_dir / "broken.png").write_bytes(b"\x89PNG truncated")
    model, card = load_checkpoint(checkpoint)
    files = list_patch_files([patch_dir])
    with pytest.raises(PatchImageError, match=r"broken\.png"):
        classify_patches(files, 0.5, model, card, torch.device("cpu"))
    scores = classify_patches(files, 0.5, model, card, torch.device("cpu"), batch_size=2, skip_bad=True)
    assert [s.path for s in scores] == [str(f) for f in files]  # order kept around the failure
    bad = [s for s in scores if s.tumor_probability is None]
    assert len(bad) == 1 and "broken.png" in bad[0].error and bad[0].path.endswith("broken.png")


def test_cli_classify_writes_one_row_per_file(
    checkpoint: Path, patch_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scores.csv"
    code = cli_main(
        [
            "classify",
            str(patch_dir),
            "--mpp",
            "0.5",
            "--out",
            str(out),
            "--model",
            str(checkpoint),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and all(0 <= float(r["tumor_probability"]) <= 1 and r["error"] == "" for r in rows)
    assert "scored 4 of 4 patches" in capsys.readouterr().out


def test_cli_classify_reports_bad_files(
    checkpoint: Path, patch_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (patch_dir / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "scores.csv"
    args = ["classify", str(patch_dir), "--mpp", "0.5", "--out", str(out), "--model", str(checkpoint)]
    assert cli_main(args) == 1
    assert "broken.jpg" in capsys.readouterr().err and not out.exists()
    assert cli_main([*args, "--skip-bad"]) == 1
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and sum(r["tumor_probability"] == "" for r in rows) == 1


def test_write_scores_csv_round_trips(tmp_path: Path) -> None:
    path = write_scores_csv(
        tmp_path / "o" / "s.csv", [PatchScore("x.png", 0.25), PatchScore("y.png", None, "bad")]
    )
    assert path.read_text().splitlines() == ["path,tumor_probability,error", "x.png,0.250000,", "y.png,,bad"]


def test_roc_auc_matches_hand_computed_values_with_ties() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8], np.float32), labels) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5], np.float32), labels) == pytest.approx(0.5)
    assert np.isnan(roc_auc(np.array([0.1, 0.2], np.float32), np.array([1, 1])))
    metrics = binary_metrics(np.array([0.1, 0.4, 0.35, 0.8], np.float32), labels, threshold=0.3)
    assert metrics["accuracy"] == pytest.approx(0.75) and metrics["n"] == 4.0


def test_threshold_maximises_youden_and_breaks_ties_toward_one_half() -> None:
    separable = np.array([0.01, 0.02, 0.97, 0.99], np.float32)
    assert choose_threshold(separable, np.array([0, 0, 1, 1])) == pytest.approx(0.5)
    overlapping = np.array([0.1, 0.6, 0.65, 0.72, 0.3, 0.8, 0.9], np.float32)
    # J is best (2/3) only for thresholds in (0.72, 0.8]; the candidate nearest 0.5 is 0.73
    assert choose_threshold(overlapping, np.array([0, 0, 0, 0, 1, 1, 1])) == pytest.approx(0.73)
    assert choose_threshold(separable, np.array([1, 1, 1, 1])) == 0.5


def test_cli_classify_refuses_non_finite_scores_and_writes_no_csv(
    patch_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = write_overflowing_checkpoint(tmp_path / "overflow.pt", mpp=1.0)
    out = tmp_path / "scores.csv"
    args = ["classify", str(patch_dir), "--mpp", "0.5", "--out", str(out), "--model", str(checkpoint)]
    assert cli_main([*args, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    # one error line (the untrained model's card also earns a warning line: no validation AUC)
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "NaN or infinite tumor probabilities" in errors[0]
    assert not out.exists() and not list(tmp_path.glob(".scores.csv*"))


def test_lossless_webp_patches_are_read_with_their_exact_pixels(checkpoint: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    path = tmp_path / "patch.webp"
    Image.fromarray(pixels).save(path, lossless=True)
    assert np.array_equal(load_rgb(path), pixels)
    files = list_patch_files([tmp_path])
    assert files == [path]
    model, card = load_checkpoint(checkpoint)
    scores = classify_patches(files, 0.972, model, card, torch.device("cpu"))
    assert not scores[0].error and 0.0 <= (scores[0].tumor_probability or -1.0) <= 1.0
