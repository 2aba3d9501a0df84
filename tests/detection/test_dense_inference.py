"""Exact dense inference (pipeline/detection/dense.py): a slide's grid scored region by region with
``dense_logits`` gives the tile-by-tile probabilities, heatmap, deposits and category."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import draw_tissue_rgb, write_pyramid_tiff
from numpy.typing import NDArray
from torch import nn

from pipeline.config import InferenceConfig, TilingConfig
from pipeline.detection.cascade import cascade_scores
from pipeline.detection.dense import DENSE_BLOCK_CELLS, dense_forward, plan_dense
from pipeline.detection.inference import InferenceStats, prepare_model, score_prepared, score_tiles_with_stats
from pipeline.errors import SlideOpenError
from pipeline.models import ModelCard, build_model, save_checkpoint
from pipeline.models.architectures import Dense96
from pipeline.slides import readers
from pipeline.slides.readers import read_geometry
from pipeline.slides.slide import SlideSource, open_slide
from pipeline.slides.tiling import TileGrid, plan_tiles, subset_grid

# The synthetic slide: 0.5 µm/px, scored at 1.0 µm/px (pyramid level 1, downsample 2).
SLIDE_MPP = 0.5
# The CAMELYON17 tiles in ../shared/data: level 0 at 0.243 µm/px (its README).
C17_MPP = 0.243
MODEL_MPP = 1.0
TILE_PX, STRIDE_PX = 96, 32
FP32 = InferenceConfig(device="cpu", precision="fp32", num_workers=0, cascade=False)
TILES = dataclasses.replace(FP32, dense=False)
# Dense and tile-by-tile probabilities agree to float rounding (about 1e-7); the issue asks 1e-4.
ATOL = 1e-4


def at_slide_mpp(path: Path) -> SlideSource:
    """The test slide read at SLIDE_MPP µm/px, as a batch hands an opened slide's source on."""
    return SlideSource.with_mpp(path, SLIDE_MPP)


def random_dense96(channels: tuple[int, ...] = (32, 64, 128, 256, 256), seed: int = 0) -> Dense96:
    """A seeded Dense96 in eval mode with random BatchNorm statistics (so folding them matters)."""
    torch.manual_seed(seed)
    model = Dense96(channels=channels)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def card_for(threshold: float = 0.5) -> ModelCard:
    return ModelCard(
        architecture="dense96",
        tile_size_px=TILE_PX,
        mpp=MODEL_MPP,
        stride_px=STRIDE_PX,
        threshold=threshold,
        training_data="untrained test model",
    )


def spread_over_tissue(model: Dense96, slide_path: Path, card: ModelCard, tumor_share: float) -> Dense96:
    """``model`` fitted to the grid of ``slide_path`` so that its tumor probabilities spread over
    (0, 1) and about ``tumor_share`` of the cells reach 0.5; the test needs deposits, and a random
    network's outputs barely differ from tile to tile. Its BatchNorm statistics become those of
    the slide (as training leaves them), and its head reads the direction in which the grid's
    features vary most: the gain needed, and the float rounding it magnifies, stay small."""
    image = level_image(slide_path, card.mpp)  # cell (row, col) of its dense output: grid cell (row, col)
    rc = plan_grid(slide_path, card.mpp).heatmap_rc
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    x = (x - torch.tensor(card.mean).view(1, 3, 1, 1)) / torch.tensor(card.std).view(1, 3, 1, 1)
    batch_norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    for module in batch_norms:
        module.reset_running_stats()
        module.momentum = None  # running statistics: those of this one pass
    with torch.no_grad():
        model.train()(x)
        model.eval()
        features = model.features(x)[0][:, rc[:, 0], rc[:, 1]].T  # (cells, channels)
    direction = torch.linalg.svd(features - features.mean(dim=0), full_matrices=False).Vh[0]
    projection = features @ direction
    gain = 4.0 / float(projection.std())
    centre = float(torch.quantile(projection, 1.0 - tumor_share))
    with torch.no_grad():
        weight, bias = model.head.weight, model.head.bias
        assert bias is not None
        weight[1] = weight[0] + gain * direction.view(-1, 1, 1)
        bias[1] = bias[0] - gain * centre
    return model


def plan_grid(slide_path: Path, mpp: float = MODEL_MPP, stride_px: int = STRIDE_PX) -> TileGrid:
    from pipeline.config import TissueConfig
    from pipeline.slides.tissue import detect_tissue

    with open_slide(slide_path) as slide:
        tiling = TilingConfig(tile_size_px=TILE_PX, mpp=mpp, stride_px=stride_px)
        return plan_tiles(slide.dimensions, slide.mpp, detect_tissue(slide, TissueConfig()), tiling)


def level_image(slide_path: Path, mpp: float) -> NDArray[np.uint8]:
    """The whole slide read at the pyramid level of ``mpp`` (which must match it exactly)."""
    with open_slide(slide_path) as slide:
        geometry = read_geometry(slide, TILE_PX, mpp)
        width, height = slide.info.level_dimensions[geometry.level]
        return slide.read_region_rgb(0, 0, geometry.level, width, height)


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 1400 x 800 px at 0.5 µm/px: a 10 x 19 grid at 1.0 µm/px (two blocks of columns, the
    # second partial), one tissue ellipse.
    path = tmp_path_factory.mktemp("dense") / "synthetic.tif"
    return write_pyramid_tiff(path, draw_tissue_rgb(1400, 800, seed=5), mpp=SLIDE_MPP)


@pytest.fixture(scope="module")
def small_model(synthetic_slide: Path) -> Dense96:
    """A Dense96 with few channels (the same geometry, a tenth of the compute) whose
    probabilities spread over (0, 1) on the synthetic slide."""
    model = random_dense96(channels=(8, 8, 16, 16, 16))
    return spread_over_tissue(model, synthetic_slide, card_for(), tumor_share=0.2)


def scores(
    slide_path: Path, grid: TileGrid, model: nn.Module, config: InferenceConfig, card: ModelCard | None = None
) -> tuple[NDArray[np.float32], InferenceStats]:
    source = SlideSource.with_mpp(slide_path, grid.slide_mpp)
    return score_tiles_with_stats(source, grid, model, card or card_for(), config)


# --- Whole pipeline: probabilities, heatmap, deposits and category ------------------------------


def real_tissue_slide(folder: Path) -> tuple[Path, float]:
    """The top-left 1536 px of a real CAMELYON17 tile (0.243 µm/px) as a pyramidal TIFF, and the
    model µm/px to read it at: 0.972, its level 2 (a 10 x 10 grid)."""
    from tests.real_slides import c17_rgb

    image = np.ascontiguousarray(c17_rgb("centre_1")[:1536, :1536])
    return write_pyramid_tiff(folder / "real.tif", image, C17_MPP, n_levels=3, tile_px=256), 4 * C17_MPP


def synthetic_tissue_slide(folder: Path) -> tuple[Path, float]:
    """The synthetic slide, and the model µm/px to read it at (its level 1)."""
    return write_pyramid_tiff(
        folder / "synthetic.tif", draw_tissue_rgb(1100, 800, seed=5), SLIDE_MPP
    ), MODEL_MPP


def analyze(model_path: Path, slide_path: Path, folder: Path, dense: bool) -> dict[str, Any]:
    from pipeline.batch.analyze import analyze_slide
    from pipeline.batch.settings import AnalysisSettings

    inference = {"device": "cpu", "precision": "fp32", "num_workers": 0, "dense": dense, "cascade": False}
    overrides = {
        "inference": inference,
        "deposits": {"refine": False, "count_cells": False},
        "qc": {"accept_qc_failures": True},
    }
    context = AnalysisSettings(model_path=model_path, overrides=overrides).build()
    folder.mkdir()
    return analyze_slide(context, slide_path, slide_path.stem, folder)


def assert_same_deposits(found: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """The same deposits: every category, count, flag and pixel box equal; probabilities, and
    the sizes and outlines measured from them, within float rounding."""
    assert len(found) == len(expected)
    for deposit, reference in zip(found, expected, strict=True):
        assert deposit.keys() == reference.keys()
        for key, value in reference.items():
            if isinstance(value, float) or key == "outline_xy":
                np.testing.assert_allclose(deposit[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
            else:
                assert deposit[key] == value, key


@pytest.mark.parametrize(
    "make_slide",
    [
        pytest.param(synthetic_tissue_slide, id="synthetic"),
        pytest.param(real_tissue_slide, id="real-tissue", marks=pytest.mark.shared_data),
    ],
)
def test_dense_and_tile_by_tile_give_the_same_heatmap_deposits_and_category(
    make_slide: Any, tmp_path: Path
) -> None:
    slide_path, model_mpp = make_slide(tmp_path)
    card = dataclasses.replace(card_for(), mpp=model_mpp, seed_threshold=0.7)
    model = spread_over_tissue(random_dense96(), slide_path, card, tumor_share=0.2)
    model_path = save_checkpoint(tmp_path / "dense96.pt", model, card)
    tiles = analyze(model_path, slide_path, tmp_path / "tiles", dense=False)
    dense = analyze(model_path, slide_path, tmp_path / "dense", dense=True)
    tiles_map = np.load(tmp_path / "tiles" / "heatmap.npy")
    dense_map = np.load(tmp_path / "dense" / "heatmap.npy")
    scored = np.isfinite(tiles_map)
    assert np.array_equal(scored, np.isfinite(dense_map)) and scored.sum() >= 60
    np.testing.assert_allclose(dense_map[scored], tiles_map[scored], rtol=0, atol=ATOL)
    assert 0.05 < np.mean(tiles_map[scored] >= card.threshold) < 0.5  # the test has tumor cells
    assert (dense_map >= card.threshold).tolist() == (tiles_map >= card.threshold).tolist()
    assert dense["deposits"]
    assert_same_deposits(dense["deposits"], tiles["deposits"])
    assert dense["category"] == tiles["category"]
    assert json.loads((tmp_path / "dense" / "report.json").read_text())["category"] == dense["category"]


# --- Scoring: which grids are scored densely, and how ------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dense_scores_equal_tile_scores_and_stats_say_dense(
    num_workers: int, synthetic_slide: Path, small_model: Dense96
) -> None:
    grid = plan_grid(synthetic_slide)
    config = dataclasses.replace(FP32, num_workers=num_workers)  # regions read here or by readers
    dense, dense_stats = scores(synthetic_slide, grid, small_model, config)
    tiles, tile_stats = scores(synthetic_slide, grid, small_model, TILES)
    assert (dense_stats.mode, tile_stats.mode) == ("dense", "tiles")
    assert dense_stats.n_tiles == tile_stats.n_tiles == len(grid)
    assert grid.grid_shape == (10, 19) and dense_stats.n_regions == 2  # two blocks of 16 x 16 cells
    assert not np.isnan(dense).any()
    np.testing.assert_allclose(dense, tiles, rtol=0, atol=ATOL)
    assert np.ptp(tiles) > 0.5  # the tiles differ, so a misplaced cell would show


def test_a_grid_ending_in_partial_blocks_with_holes_is_scored_exactly(
    synthetic_slide: Path, small_model: Dense96
) -> None:
    full = plan_grid(synthetic_slide)
    rows, cols = full.grid_shape
    assert rows % DENSE_BLOCK_CELLS and cols % DENSE_BLOCK_CELLS  # the last blocks are partial
    rc = full.heatmap_rc
    # tissue that ends two cells into the second block, with holes: cells of the regions' boxes
    # outside the grid
    keep = (rc[:, 1] <= DENSE_BLOCK_CELLS + 1) & ((rc[:, 0] + 2 * rc[:, 1]) % 7 != 0)
    grid = subset_grid(full, np.flatnonzero(keep))
    assert (grid.heatmap_rc[:, 1] >= DENSE_BLOCK_CELLS).sum() >= 4
    progress: list[int] = []
    dense, stats = score_tiles_with_stats(
        at_slide_mpp(synthetic_slide), grid, small_model, card_for(), FP32, progress.append
    )
    tiles, _ = scores(synthetic_slide, grid, small_model, TILES)
    assert stats.mode == "dense" and sum(progress) == len(grid) and not np.isnan(dense).any()
    np.testing.assert_allclose(dense, tiles, rtol=0, atol=ATOL)
    # a strip one cell wide: regions 96 px wide
    strip = subset_grid(full, np.flatnonzero(rc[:, 1] == int(np.median(rc[:, 1]))))
    dense, stats = scores(synthetic_slide, strip, small_model, FP32)
    assert stats.mode == "dense" and len(strip) >= 4
    np.testing.assert_allclose(
        dense, scores(synthetic_slide, strip, small_model, TILES)[0], rtol=0, atol=ATOL
    )
    # one cell alone: its 96 px region costs what its tile costs, so it is scored as a tile
    assert scores(synthetic_slide, subset_grid(full, np.array([0])), small_model, FP32)[1].mode == "tiles"


def test_a_sparse_grid_and_a_grid_off_the_lattice_are_scored_tile_by_tile(
    synthetic_slide: Path, small_model: Dense96
) -> None:
    full = plan_grid(synthetic_slide)
    card = card_for()
    prepared = prepare_model(small_model, card, FP32)
    with open_slide(synthetic_slide) as slide:
        geometry = read_geometry(slide, TILE_PX, MODEL_MPP)
    # the cascade's screen (one cell in nine): its regions would cost more than its tiles
    screen = subset_grid(full, np.flatnonzero((full.heatmap_rc % 3 == 0).all(axis=1)))
    assert plan_dense(screen, geometry, card, prepared.dense) is None
    assert plan_dense(full, geometry, card, prepared.dense) is not None
    # a grid at half the card's stride: its tiles are not on the model's 32 px lattice
    fine = plan_grid(synthetic_slide, stride_px=16)
    dense, stats = scores(synthetic_slide, fine, small_model, FP32)
    assert stats.mode == "tiles"
    tiles, _ = scores(synthetic_slide, fine, small_model, TILES)
    np.testing.assert_array_equal(dense, tiles)
    _, screen_stats = scores(synthetic_slide, screen, small_model, FP32)
    assert screen_stats.mode == "tiles"


def test_the_cascade_scores_its_suspicious_blocks_densely_and_agrees_with_tile_scoring(
    synthetic_slide: Path,
) -> None:
    grid = plan_grid(synthetic_slide)
    card = card_for()
    model = spread_over_tissue(
        random_dense96(channels=(8, 8, 16, 16, 16)), synthetic_slide, card, tumor_share=0.1
    )
    modes: dict[bool, list[str]] = {True: [], False: []}

    def cascade(dense: bool) -> NDArray[np.float32]:
        config = dataclasses.replace(FP32, dense=dense)
        prepared = prepare_model(model, card, config)

        def score(indices: NDArray[np.int64]) -> NDArray[np.float32]:
            out, stats = score_prepared(
                at_slide_mpp(synthetic_slide), subset_grid(grid, indices), prepared, config
            )
            modes[dense].append(stats.mode)
            return out

        return cascade_scores(grid, score, 0.2)[0]

    with_dense, tile_only = cascade(True), cascade(False)
    assert modes == {True: ["tiles", "dense"], False: ["tiles", "tiles"]}  # screen, then full scoring
    np.testing.assert_allclose(with_dense, tile_only, rtol=0, atol=ATOL)


def test_a_model_without_dense_logits_or_with_dense_off_is_scored_tile_by_tile(synthetic_slide: Path) -> None:
    grid = plan_grid(synthetic_slide)
    torch.manual_seed(0)
    pcamnet = build_model("pcamnet").eval()
    card = dataclasses.replace(card_for(), architecture="pcamnet")
    assert dense_forward(pcamnet, card) is None
    prepared = prepare_model(pcamnet, card, FP32)
    assert prepared.dense is None
    _, stats = score_prepared(at_slide_mpp(synthetic_slide), grid, prepared, FP32)
    assert stats.mode == "tiles" and stats.n_tiles == len(grid)
    # a dense model with dense=False is neither prepared nor scored densely
    dense_model = random_dense96(channels=(8, 8, 16, 16, 16))
    assert prepare_model(dense_model, card_for(), TILES).dense is None
    assert prepare_model(dense_model, card_for(), FP32).dense is not None


def test_a_card_whose_stride_or_stain_normalisation_breaks_exactness_turns_dense_off(
    small_model: Dense96,
) -> None:
    assert dense_forward(small_model, card_for()) is not None
    assert dense_forward(small_model, dataclasses.replace(card_for(), stride_px=None)) is None
    assert dense_forward(small_model, dataclasses.replace(card_for(), stride_px=48)) is None  # not its stride
    assert dense_forward(small_model, dataclasses.replace(card_for(), stride_px=16)) is None
    assert dense_forward(small_model, dataclasses.replace(card_for(), stain_normalization="macenko")) is None


class TileOnlyDense96(Dense96):
    """A Dense96 whose dense_logits fails on anything larger than a tile (a misdeclared model)."""

    def dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > TILE_PX:
            raise RuntimeError("Calculated padded input size per channel: (1 x 1). Kernel size: (3 x 3).")
        return super().dense_logits(x)


def test_a_model_whose_dense_logits_fails_on_regions_is_scored_tile_by_tile(synthetic_slide: Path) -> None:
    model = TileOnlyDense96(channels=(8, 8, 16, 16, 16)).eval()
    assert dense_forward(model, card_for()) is None
    grid = plan_grid(synthetic_slide)
    probabilities, stats = scores(synthetic_slide, grid, model, FP32)
    assert stats.mode == "tiles" and np.isfinite(probabilities).all()


# --- Read failures: as tile by tile ------------------------------------------------------------


def corrupt_tiles(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose JPEG tiles on levels 0 and 1 are zeroed after two bytes (a
    level that fails is read again from level 0: both must fail)."""
    import tifffile

    data = bytearray(source.read_bytes())
    with tifffile.TiffFile(source) as tif:
        for page in tif.pages[:2]:
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):  # type: ignore[union-attr]
                data[offset + 2 : offset + count] = bytes(count - 2)
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_corrupt_region_raises_slide_open_error_naming_the_file(
    num_workers: int, tmp_path: Path, synthetic_slide: Path, small_model: Dense96
) -> None:
    corrupt = corrupt_tiles(synthetic_slide, tmp_path / "corrupt.tif")
    grid = plan_grid(synthetic_slide)
    config = dataclasses.replace(FP32, num_workers=num_workers)
    with pytest.raises(SlideOpenError, match=r"corrupt\.tif") as caught:
        scores(corrupt, grid, small_model, config)
    assert "Traceback" not in str(caught.value) and "truncated or corrupt" in str(caught.value)


def test_a_reader_process_that_dies_raises_slide_open_error_naming_the_file(
    monkeypatch: pytest.MonkeyPatch, synthetic_slide: Path, small_model: Dense96
) -> None:
    def crash(*args: object) -> NDArray[np.uint8]:
        os._exit(3)  # what a segfault in the decoder looks like from the main process

    monkeypatch.setattr(readers, "read_block_region", crash)
    config = dataclasses.replace(FP32, num_workers=1)
    with pytest.raises(SlideOpenError, match=r"synthetic\.tif: a tile reader process stopped"):
        scores(synthetic_slide, plan_grid(synthetic_slide), small_model, config)


def test_whole_region_items_are_the_boxes_around_each_blocks_cells(synthetic_slide: Path) -> None:
    from pipeline.slides.readers import RegionDataset, plan_regions, tile_level_xy

    grid = plan_grid(synthetic_slide)
    with open_slide(synthetic_slide) as slide:
        geometry = read_geometry(slide, TILE_PX, MODEL_MPP)
    plan = dataclasses.replace(plan_regions(grid.heatmap_rc, 4), whole_regions=True)
    level_xy = tile_level_xy(grid.xy_px, geometry)
    dataset = RegionDataset(at_slide_mpp(synthetic_slide), geometry, level_xy, plan, min_item_tiles=100)
    image = level_image(synthetic_slide, MODEL_MPP)
    items = list(dataset)
    assert len(items) == plan.n_regions  # never joined: regions differ in size
    for item in items:
        assert isinstance(item, readers.RegionTiles)
        (x0, y0), (x1, y1) = level_xy[item.indices].min(axis=0), level_xy[item.indices].max(axis=0)
        assert item.tiles.shape == (1, y1 - y0 + TILE_PX, x1 - x0 + TILE_PX, 3)
        np.testing.assert_array_equal(item.tiles[0], image[y0 : y1 + TILE_PX, x0 : x1 + TILE_PX])


def test_a_pair_is_prepared_as_one_only_when_both_models_score_densely() -> None:
    from pipeline.config import InferenceConfig
    from pipeline.detection.paired import prepare_pair
    from pipeline.models import build_model

    config = InferenceConfig(device="cpu", precision="fp32")
    card = card_for()
    first, second = random_dense96(seed=0), random_dense96(seed=1)
    prepared = prepare_pair(first, second, card, config)
    assert prepared is not None and prepared.dense is not None
    region = torch.rand(1, 3, TILE_PX + 2 * STRIDE_PX, TILE_PX + STRIDE_PX)
    with torch.inference_mode():
        mean = torch.softmax(first.dense_logits(region), 1) + torch.softmax(second.dense_logits(region), 1)
        mean = mean / 2
        paired = torch.softmax(prepared.dense.model(region.contiguous(memory_format=torch.channels_last)), 1)
    torch.testing.assert_close(paired, mean, atol=1e-5, rtol=0)
    assert prepare_pair(first, build_model("pcamnet").eval(), card, config) is None  # one is tile by tile
    assert prepare_pair(first, second, card, dataclasses.replace(config, dense=False)) is None
