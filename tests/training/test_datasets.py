"""Datasets: physical-scale resizing, patch folders, slide tiles read per process, PCam."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_pyramid_tiff
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.training.datasets import (
    PatchFolderDataset,
    PatchImageError,
    PCamDataset,
    SlideTileDataset,
    find_pcam_files,
    fit_to_tile,
    list_patch_folder,
    load_rgb,
)
from pipeline.training.sampling import PatchSample


def _square_image(side_px: int, square_px: int) -> np.ndarray:
    image = np.full((side_px, side_px, 3), 230, dtype=np.uint8)
    start = (side_px - square_px) // 2
    image[start : start + square_px, start : start + square_px] = (60, 20, 120)
    return image


def _dark_width_px(tile: np.ndarray) -> int:
    return int((tile[tile.shape[0] // 2, :, 0] < 145).sum())


def test_fit_to_tile_converts_physical_scale_not_pixel_count() -> None:
    # 256 px at 0.25 µm/px holding a 100 px (25 µm) square -> 64 px at 1.0 µm/px: 25 px square
    tile = fit_to_tile(_square_image(256, 100), 0.25, 1.0, 64)
    assert tile.shape == (64, 64, 3) and tile.dtype == np.uint8
    assert abs(_dark_width_px(tile) - 25) <= 1
    # the same patch at 0.5 µm/px is twice as large physically: 50 µm square, centre-cropped
    assert abs(_dark_width_px(fit_to_tile(_square_image(256, 100), 0.5, 1.0, 64)) - 50) <= 1


def test_fit_to_tile_pads_small_patches_by_mirroring_and_crops_large_ones_centrally() -> None:
    small = np.arange(60 * 60 * 3, dtype=np.uint8).reshape(60, 60, 3)
    padded = fit_to_tile(small, 1.0, 1.0, 64)
    assert padded.shape == (64, 64, 3)
    assert np.array_equal(padded[2:62, 2:62], small)
    assert np.array_equal(padded[1, 2:62], small[0]) and np.array_equal(padded[0, 2:62], small[1])
    large = np.arange(96 * 96 * 3, dtype=np.uint8).reshape(96, 96, 3)
    assert np.array_equal(fit_to_tile(large, 1.0, 1.0, 64), large[16:80, 16:80])


def test_fit_to_tile_rejects_a_non_positive_mpp() -> None:
    with pytest.raises(ValueError, match="mpp"):
        fit_to_tile(np.zeros((8, 8, 3), np.uint8), 0.0, 1.0, 32)


def test_load_rgb_composites_transparency_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    rgb = load_rgb(tmp_path / "a.png")
    assert rgb.shape == (4, 4, 3)
    assert tuple(rgb[0, 0]) == (200, 0, 0) and tuple(rgb[3, 3]) == (255, 255, 255)


def test_load_rgb_names_bad_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(PatchImageError, match=r"broken\.png"):
        load_rgb(bad)
    with pytest.raises(PatchImageError, match=r"missing\.png: patch image not found"):
        load_rgb(tmp_path / "missing.png")


def _patch_folder(root: Path) -> Path:
    for name, value in (("tumor", 60), ("normal", 220)):
        (root / name).mkdir(parents=True)
        for index, suffix in enumerate((".png", ".jpg", ".tif")):
            Image.fromarray(np.full((40, 40, 3), value, np.uint8)).save(root / name / f"p{index}{suffix}")
    (root / "tumor" / "notes.txt").write_text("ignored")
    return root


def test_patch_folder_dataset_labels_by_folder_and_serves_model_tiles(tmp_path: Path) -> None:
    items = list_patch_folder(_patch_folder(tmp_path / "patches"))
    assert sorted(label for _, label in items) == [0, 0, 0, 1, 1, 1]
    dataset = PatchFolderDataset(items, patch_mpp=0.5, tile_size_px=32, mpp=1.0)
    tile, label = dataset[0]
    assert tile.shape == (32, 32, 3) and tile.dtype == torch.uint8
    assert label == items[0][1] and dataset.labels == [label for _, label in items]


def test_patch_folder_without_class_folders_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tumor/ and normal/"):
        list_patch_folder(tmp_path)


def test_slide_tiles_are_centred_on_the_sample_and_handles_stay_per_process(tmp_path: Path) -> None:
    image = np.full((600, 800, 3), 235, dtype=np.uint8)
    image[280:320, 380:420] = (40, 20, 90)  # a 40 px (20 µm) dark square centred at (400, 300)
    slide = write_pyramid_tiff(tmp_path / "s.tif", image, mpp=0.5, n_levels=2)
    dataset = SlideTileDataset([PatchSample(str(slide), 400.0, 300.0, 1)], tile_size_px=40, mpp=1.0)
    tile, label = dataset[0]
    assert label == 1 and tile.shape == (40, 40, 3)
    dark = tile.numpy()[..., 0] < 120
    rows, cols = np.nonzero(dark)
    assert abs(rows.mean() - 19.5) <= 1.0 and abs(cols.mean() - 19.5) <= 1.0
    assert 15 <= dark.sum() ** 0.5 <= 25  # 20 µm at 1.0 µm/px
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._slides == {} and len(dataset._slides) == 1
    assert torch.equal(copy[0][0], tile)
    dataset.close()


def test_pcam_without_h5py_asks_for_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ConfigError, match="pip install h5py"):
        PCamDataset(tmp_path / "x.h5", tmp_path / "y.h5", 64, 1.0)


def test_find_pcam_files_pairs_x_and_y_by_split(tmp_path: Path) -> None:
    for name in ("train_x", "train_y", "valid_x"):
        (tmp_path / f"camelyonpatch_level_2_split_{name}.h5").write_bytes(b"")
    assert list(find_pcam_files(tmp_path)) == ["train"]
    with pytest.raises(ConfigError, match="no PatchCamelyon files"):
        find_pcam_files(tmp_path / "none")


def test_pcam_patches_are_brought_to_the_model_resolution(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    x = np.zeros((3, 96, 96, 3), dtype=np.uint8)
    x[:, 40:56, 40:56] = 255  # 16 px at 0.972 µm/px -> about 15.6 px at 1.0 µm/px
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_valid_x.h5", "w") as handle:
        handle["x"] = x
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_valid_y.h5", "w") as handle:
        handle["y"] = np.array([0, 1, 1], dtype=np.uint8).reshape(3, 1, 1, 1)
    x_path, y_path = find_pcam_files(tmp_path)["valid"]
    dataset = PCamDataset(x_path, y_path, tile_size_px=64, mpp=1.0)
    assert len(dataset) == 3 and dataset.labels == [0, 1, 1]
    tile, label = dataset[2]
    assert label == 1 and tile.shape == (64, 64, 3)
    assert 14 <= int((tile.numpy()[32, :, 0] > 128).sum()) <= 17


@pytest.mark.parametrize(("batch_size", "left_out"), [(32, 16), (16, 0), (20, 0)])
def test_the_loader_says_how_many_patches_sit_out_each_epoch_and_why(
    batch_size: int, left_out: int, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.training.datasets import make_loader

    dataset = [(torch.zeros(3), 0)] * 400
    with caplog.at_level("WARNING", logger="pipeline.training.datasets"):
        loader = make_loader(dataset, batch_size, 0, True, (0, 0))  # type: ignore[arg-type]
        make_loader(dataset, batch_size, 0, True, (0, 1))  # later epochs say nothing more
    assert sum(len(labels) for _, labels in loader) == 400 - left_out
    if left_out:
        assert caplog.messages == [
            f"training: {left_out} of the 400 training patches sit out each epoch (a different "
            f"{left_out} each time, shuffled): the last incomplete batch is dropped so every step "
            f"has {batch_size} patches; choose a --batch-size that divides 400 to use them all"
        ]
    else:
        assert caplog.messages == []
