"""Node-scale evaluation material: the split by place (pipeline.training.places), the committed
split file, the surfaces of pipeline.evaluation.node_scale, and the resampling augmentation."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.evaluation.node_scale import (
    SHAPES,
    _max_feret_px,
    deposit_mask,
    feathered_mosaic,
    heatmap_of_surface,
    owner_map,
    paste_deposit,
    place_bootstrap_upper_95,
    poisson_upper_95,
    size_class,
    wilson_95,
)
from pipeline.training.augment import AugmentConfig, resample
from pipeline.training.places import PlaceConfig, find_places, split_places
from tests.conftest import require_shared_data

REPO = Path(__file__).resolve().parents[2]
PLACES_CSV = REPO / "data" / "pcam_places.csv"


def textured(seed: int, side: int = 300) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


# --- places ----------------------------------------------------------------------------------


def test_overlapping_crops_at_any_shift_are_one_place() -> None:
    big = textured(0)
    a, b = big[0:96, 0:96], big[41:137, 53:149]  # share a 55 x 43 px region at an odd shift
    c = big[200:296, 200:296]  # shares nothing with a or b
    d = big[100:196, 75:171]  # shares a region with b only
    places = find_places(np.stack([a, b, c, d]))
    assert places[0] == places[1] == places[3]
    assert places[2] != places[0]


def test_blank_glass_is_no_place() -> None:
    glass = np.full((96, 96, 3), 242, dtype=np.uint8)
    places = find_places(np.stack([glass, glass.copy(), textured(1)[:96, :96]]))
    assert len(set(places.tolist())) == 3


def test_a_sliver_narrower_than_the_window_is_not_a_shared_place() -> None:
    big = textured(2)
    a, b = big[0:96, 0:96], big[0:96, 90:186]  # 6 px wide overlap: below an 8 px window
    places = find_places(np.stack([a, b]), PlaceConfig(window_px=8))
    assert places[0] != places[1]


def test_split_keeps_places_whole_and_near_the_fractions() -> None:
    rng = np.random.default_rng(0)
    places = np.repeat(np.arange(400), rng.integers(1, 4, 400))
    labels = (rng.random(len(places)) < 0.4).astype(np.int64)
    parts = split_places(places, labels, {"train": 0.7, "dev": 0.15, "test": 0.15}, seed=0)
    for place in np.unique(places):
        assert len(set(parts[places == place].tolist())) == 1
    for name, share in (("train", 0.7), ("dev", 0.15), ("test", 0.15)):
        assert abs(float(np.mean(parts == name)) - share) < 0.03


def test_place_config_checks_its_ranges() -> None:
    with pytest.raises(ValueError, match="window_px"):
        PlaceConfig(window_px=1)
    with pytest.raises(ValueError, match="min_window_std"):
        PlaceConfig(min_window_std=float("nan"))


def test_committed_split_never_puts_one_place_in_two_parts() -> None:
    parts_of: dict[str, set[str]] = defaultdict(set)
    with PLACES_CSV.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        parts_of[row["place"]].add(row["part"])
    assert all(len(parts) == 1 for parts in parts_of.values())
    hard_test = [r for r in rows if r["source"] == "pcam_hard_normals" and r["part"] == "test"]
    assert hard_test == []  # hard normals are a biased sample: never in the test part
    assert {r["part"] for r in rows} == {"train", "dev", "test"}


def test_no_tumor_free_surface_uses_a_normal_patch_that_shares_pixels_with_tumor() -> None:
    """A PCam normal patch is normal in its central 32 px only; the node-scale benchmark's
    tumor-free material leaves out every normal patch whose place holds a tumor patch."""
    from pipeline.training.pcam_split import node_scale_rows, tumor_places

    near_tumor = tumor_places()
    with PLACES_CSV.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for part in ("dev", "test"):
        used = node_scale_rows(part)
        normals = [r for r in used if r["label"] == "0"]
        assert normals and not {r["place"] for r in normals} & near_tumor
        all_normals = [
            r for r in rows if r["part"] == part and r["source"] == "pcam_kaggle" and r["label"] == "0"
        ]
        left_out = [r["file"] for r in all_normals if r not in used]
        assert left_out == [r["file"] for r in all_normals if r["place"] in near_tumor]
    assert "normal/463187ed840108334129f07b6d29eaae48677dcb.webp" in {
        r["file"] for r in rows if r["place"] in near_tumor and r["label"] == "0"
    }  # test place 1446: carcinoma cells in the normal patch's border


@pytest.mark.shared_data
def test_committed_split_lists_every_shared_patch() -> None:
    data = require_shared_data()
    listed = set()
    with PLACES_CSV.open(newline="", encoding="utf-8") as handle:
        listed = {(r["source"], r["file"]) for r in csv.DictReader(handle)}
    for source in ("pcam_kaggle", "pcam_hard_normals"):
        with (data / source / "labels.csv").open(newline="", encoding="utf-8-sig") as handle:
            files = {(source, r["file"]) for r in csv.DictReader(handle)}
        assert files <= listed


# --- surfaces --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("diameter_mm", [0.05, 0.15, 0.6])
def test_deposit_mask_has_the_asked_largest_dimension(shape: str, diameter_mm: float) -> None:
    mask = deposit_mask(shape, diameter_mm, 0.972, np.random.default_rng(3))
    measured_mm = _max_feret_px(mask) * 0.972 / 1000
    assert measured_mm == pytest.approx(diameter_mm, abs=2 * 0.972 / 1000)


def test_feathered_mosaic_uses_the_patches_and_blends_seams() -> None:
    patches = np.stack([np.full((96, 96, 3), v, dtype=np.uint8) for v in (40, 200)])
    mosaic = feathered_mosaic(patches, (300, 260), np.random.default_rng(0))
    assert mosaic.shape == (300, 260, 3) and mosaic.dtype == np.uint8
    values = set(np.unique(mosaic).tolist())
    assert {40, 200} <= values  # patch interiors
    assert any(40 < v < 200 for v in values)  # blended seams, no hard edge


def test_the_owner_map_gives_each_pixel_the_patch_placed_there() -> None:
    patches = np.stack([np.full((96, 96, 3), 10 * (v + 1), dtype=np.uint8) for v in range(7)])
    placed: list[np.ndarray] = []
    mosaic = feathered_mosaic(patches, (300, 260), np.random.default_rng(0), placed=placed)
    assert np.array_equal(mosaic, feathered_mosaic(patches, (300, 260), np.random.default_rng(0)))
    grid = placed[0]
    owner = owner_map(grid, (300, 260), 96)
    assert owner.shape == (300, 260) and grid.shape == (4, 4)  # step 80 px
    for (r, c), index in np.ndenumerate(grid):
        y, x = min(r * 80 + 48, 299), min(c * 80 + 48, 259)  # a patch's centre: never blended
        if y == r * 80 + 48 and x == c * 80 + 48:
            assert mosaic[y, x, 0] == 10 * (index + 1) and owner[y, x] == index
    assert set(np.unique(owner)) == set(np.unique(grid))


def test_the_place_bound_widens_when_the_false_deposits_crowd_in_one_place() -> None:
    areas = {str(i): 1.0 for i in range(50)}  # 50 places of 1 mm² each, 10 false deposits
    spread = place_bootstrap_upper_95({str(i): 1 for i in range(10)}, areas)
    crowded = place_bootstrap_upper_95({"0": 10}, areas)
    assert 10 / 50 < spread < crowded  # the same rate, 0.2 per mm²: one look-alike place is less sure
    assert crowded > poisson_upper_95(10, 50.0)  # and wider than a Poisson bound over 50 mm²
    assert place_bootstrap_upper_95({}, areas) == 0.0


def test_paste_deposit_reports_the_pasted_size_and_blends_the_edge() -> None:
    background = np.full((400, 400, 3), 230, dtype=np.uint8)
    tumor = np.full((400, 400, 3), 60, dtype=np.uint8)
    mask = deposit_mask("disc", 0.2, 1.0, np.random.default_rng(0))
    image, truth = paste_deposit(background, tumor, mask, (200, 210), 1.0, "disc")
    assert truth.diameter_mm == pytest.approx(0.2, abs=0.002)
    assert image[200, 210, 0] == 60 and image[5, 5, 0] == 230
    row = image[200, :, 0]
    assert any(60 < v < 230 for v in row)  # the edge is blended, not cut


def test_heatmap_of_surface_scores_every_grid_tile() -> None:
    image = np.zeros((96 + 32 * 4, 96 + 32 * 2, 3), dtype=np.uint8)
    image[:, 100:] = 255

    def mean_score(tiles: np.ndarray) -> np.ndarray:
        return tiles.reshape(len(tiles), -1).mean(axis=1).astype(np.float32) / 255

    heatmap = heatmap_of_surface(image, 0.972, 96, 32, mean_score, batch=4)
    assert heatmap.shape == (5, 3)
    assert heatmap.probabilities[0, 0] < heatmap.probabilities[0, 2]


def _random_dense96() -> torch.nn.Module:
    from pipeline.models.architectures import build_model

    torch.manual_seed(0)
    model = build_model("dense96").eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics, as after training
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("stride_px", [32, 16])
def test_dense_surface_heatmap_equals_tile_by_tile(stride_px: int) -> None:
    model = _random_dense96()

    def tiles(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
            return torch.softmax(model(x), 1)[:, 1].numpy()

    def region(image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
            return torch.softmax(model.dense_logits(x), 1)[0, 1].numpy()

    # a surface taller than one dense band, with a partial cell at the right and bottom
    image = np.random.default_rng(1).integers(0, 256, (96 + 32 * 17 + 20, 96 + 32 * 3 + 7, 3), dtype=np.uint8)
    tile_wise = heatmap_of_surface(image, 0.972, 96, stride_px, tiles).probabilities
    dense = heatmap_of_surface(image, 0.972, 96, stride_px, tiles, region_score=region, model_stride_px=32)
    assert dense.probabilities.shape == tile_wise.shape
    assert not np.isnan(dense.probabilities).any()
    assert np.abs(dense.probabilities - tile_wise).max() < 1e-5
    with pytest.raises(ValueError, match="does not divide"):
        heatmap_of_surface(image, 0.972, 96, 24, tiles, region_score=region, model_stride_px=32)


def test_size_classes_and_intervals() -> None:
    assert [size_class(d) for d in (0.15, 0.2, 0.21, 2.0, 2.1)] == ["itc", "itc", "micro", "micro", "macro"]
    assert poisson_upper_95(0, 15.0) == pytest.approx(2.996 / 15.0, rel=1e-3)
    low, high = wilson_95(7, 8)
    assert low < 7 / 8 < high


# --- resampling augmentation -------------------------------------------------------------------


def test_resample_changes_a_share_of_tiles_and_keeps_shape_and_range() -> None:
    tiles = torch.rand(64, 3, 96, 96)
    out = resample(tiles, torch.Generator().manual_seed(0), 0.5, 0.5)
    assert out.shape == tiles.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    changed = [(out[i] - tiles[i]).abs().max().item() > 1e-6 for i in range(64)]
    assert 16 <= sum(changed) <= 48
    assert torch.equal(resample(tiles, torch.Generator().manual_seed(0), 0.0, 0.5), tiles)


def test_resample_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="resample_min_scale"):
        AugmentConfig(resample_min_scale=0.1)
    with pytest.raises(ValueError, match="resample_probability"):
        AugmentConfig(resample_probability=1.5)
