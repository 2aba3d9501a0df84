"""Tests of pipeline/detection/inference.py and pipeline/slides/readers.py: region reads, scoring, errors."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import tifffile
import torch
from conftest import draw_tissue_rgb, write_pyramid_tiff
from numpy.typing import NDArray
from torch import nn

from pipeline.config import InferenceConfig, TilingConfig
from pipeline.detection.heatmap import heatmap_from_scores
from pipeline.detection.inference import naive_score_tiles, score_tiles, score_tiles_with_stats
from pipeline.errors import CheckpointError, ConfigError, SlideOpenError
from pipeline.models import ModelCard, build_model
from pipeline.slides import readers
from pipeline.slides.readers import (
    RegionDataset,
    RegionTiles,
    plan_regions,
    read_block_tiles,
    read_geometry,
    read_one_tile,
    tile_level_xy,
)
from pipeline.slides.slide import SlideSource, open_slide
from pipeline.slides.tiling import TileGrid, plan_tiles
from pipeline.slides.tissue import TissueMask

SLIDE_MPP = 0.5
SLIDE_SIZE = (700, 560)  # level-0 (width, height): not a multiple of the tile grid
TILE_PX = 32
# fp32: these tests pin the reading engine against the fp32 reference scorer.
ENGINE = InferenceConfig(num_workers=2, region_tiles=3, batch_size=7, device="cpu", precision="fp32")


def at_slide_mpp(path: Path) -> SlideSource:
    """The test slide read at SLIDE_MPP µm/px, as a batch hands an opened slide's source on."""
    return SlideSource.with_mpp(path, SLIDE_MPP)

# (model mpp, stride at model mpp): what the region reader must reproduce exactly.
CASES = {
    "level0-same-mpp": (0.5, None),
    "level0-resized": (0.8, None),
    "level1-resized": (1.5, None),
    "level1-overlapping": (1.0, 16),
}


@pytest.fixture(scope="module")
def slide_image() -> NDArray[np.uint8]:
    return draw_tissue_rgb(*SLIDE_SIZE, seed=3)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory, slide_image: NDArray[np.uint8]) -> Path:
    path = tmp_path_factory.mktemp("inference") / "node.tif"
    return write_pyramid_tiff(path, slide_image, mpp=SLIDE_MPP, tile_px=128)


def mask_of(image: NDArray[np.uint8], background: int = 242, step: int = 4) -> TissueMask:
    """Tissue = any pixel that is not the flat background, sampled every ``step`` px."""
    mask = (image[::step, ::step] != background).any(axis=-1)
    height, width = image.shape[:2]
    return TissueMask(mask=mask, mask_mpp=SLIDE_MPP * step, slide_dimensions=(width, height))


def grid_for(image: NDArray[np.uint8], mpp: float, stride_px: int | None) -> TileGrid:
    config = TilingConfig(tile_size_px=TILE_PX, mpp=mpp, stride_px=stride_px)
    height, width = image.shape[:2]
    return plan_tiles((width, height), SLIDE_MPP, mask_of(image), config)


def sensitive_micronet() -> nn.Module:
    """A seeded random MicroNet whose head is scaled so probabilities spread over (0, 1)."""
    torch.manual_seed(0)
    model = build_model("micronet")
    with torch.no_grad():
        head = model.classifier
        assert isinstance(head, nn.Linear)
        head.weight.mul_(300.0)
    return model.eval()


def card_for(mpp: float) -> ModelCard:
    return ModelCard(architecture="micronet", tile_size_px=TILE_PX, mpp=mpp)


@pytest.mark.parametrize("case", list(CASES))
def test_region_tiles_equal_one_tile_reads_pixel_for_pixel(
    case: str, slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    mpp, stride = CASES[case]
    grid = grid_for(slide_image, mpp, stride)
    plan = plan_regions(grid.heatmap_rc, 3)
    with open_slide(slide_path) as slide:
        geometry = read_geometry(slide, TILE_PX, mpp)
        level_xy = tile_level_xy(grid.xy_px, geometry)
        for block in range(plan.n_regions):
            indices = plan.block(block)
            tiles = read_block_tiles(slide, level_xy[indices], geometry)
            for tile, index in zip(tiles, indices, strict=True):
                reference = read_one_tile(slide, grid.xy_px[index], geometry)
                np.testing.assert_array_equal(tile, reference)
    assert plan.n_regions < len(grid)


def test_non_integer_downsample_keeps_region_tiles_within_openslide_sub_pixel_phase(
    tmp_path: Path,
) -> None:
    # 701 x 561 px halves to 351 x 281: downsample 1.9968, so OpenSlide resamples every level-1
    # read by a sub-pixel phase that differs per read; region and one-tile reads then agree
    # only closely (see pipeline/slides/readers.py).
    image = draw_tissue_rgb(701, 561, seed=3)
    path = write_pyramid_tiff(tmp_path / "odd.tif", image, mpp=SLIDE_MPP, tile_px=128)
    grid = grid_for(image, 1.0, None)
    plan = plan_regions(grid.heatmap_rc, 3)
    with open_slide(path) as slide:
        geometry = read_geometry(slide, TILE_PX, 1.0)
        assert geometry.level == 1 and geometry.downsample != 2.0
        level_xy = tile_level_xy(grid.xy_px, geometry)
        for block in range(plan.n_regions):
            indices = plan.block(block)
            tiles = read_block_tiles(slide, level_xy[indices], geometry).astype(np.float64)
            for tile, index in zip(tiles, indices, strict=True):
                reference = read_one_tile(slide, grid.xy_px[index], geometry)
                assert np.abs(tile - reference).mean() < 5.0  # grey levels out of 255


@pytest.mark.parametrize("case", list(CASES))
def test_engine_scores_equal_the_one_tile_at_a_time_loop(
    case: str, slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    mpp, stride = CASES[case]
    grid, card, model = grid_for(slide_image, mpp, stride), card_for(mpp), sensitive_micronet()
    reference = naive_score_tiles(at_slide_mpp(slide_path), grid, model, card)
    scores, stats = score_tiles_with_stats(at_slide_mpp(slide_path), grid, model, card, ENGINE)
    assert scores.dtype == np.float32 and scores.shape == (len(grid),)
    np.testing.assert_allclose(scores, reference, rtol=0, atol=1e-4)
    # The comparison means something only if tiles get visibly different scores.
    assert float(reference.std()) > 0.05
    assert stats.n_tiles == len(grid) and stats.n_regions < len(grid)


def test_reading_in_the_main_process_gives_the_same_scores(
    slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    mpp, stride = CASES["level0-resized"]
    grid, card, model = grid_for(slide_image, mpp, stride), card_for(mpp), sensitive_micronet()
    with_workers = score_tiles(at_slide_mpp(slide_path), grid, model, card, ENGINE)
    in_process = InferenceConfig(num_workers=0, region_tiles=2, batch_size=5, device="cpu", precision="fp32")
    one_per_read = InferenceConfig(
        num_workers=0, region_tiles=1, batch_size=64, device="cpu", precision="fp32"
    )
    for config in (in_process, one_per_read):
        scores = score_tiles(at_slide_mpp(slide_path), grid, model, card, config)
        np.testing.assert_allclose(scores, with_workers, rtol=0, atol=1e-4)


def test_workers_read_at_the_mpp_override(tmp_path: Path, slide_image: NDArray[np.uint8]) -> None:
    no_mpp = write_pyramid_tiff(tmp_path / "no_mpp.tif", slide_image, mpp=None, tile_px=128)
    reference_path = write_pyramid_tiff(tmp_path / "mpp.tif", slide_image, mpp=SLIDE_MPP)
    grid, card, model = grid_for(slide_image, 1.0, None), card_for(1.0), sensitive_micronet()
    scores = score_tiles(at_slide_mpp(no_mpp), grid, model, card, ENGINE)
    expected = score_tiles(at_slide_mpp(reference_path), grid, model, card, ENGINE)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-4)


def test_truncated_slide_raises_slide_open_error_naming_the_file(
    tmp_path: Path, slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(slide_path.read_bytes()[: slide_path.stat().st_size // 2])
    grid, card = grid_for(slide_image, 0.5, None), card_for(0.5)
    with pytest.raises(SlideOpenError, match=r"truncated\.tif"):
        score_tiles(at_slide_mpp(truncated), grid, sensitive_micronet(), card, ENGINE)


def corrupt_level0_tiles(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose level-0 JPEG tiles are zeroed after their first two bytes."""
    data = bytearray(source.read_bytes())
    with tifffile.TiffFile(source) as tif:
        page = tif.pages[0]
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            data[offset + 2 : offset + count] = bytes(count - 2)
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_region_in_a_reader_raises_slide_open_error_naming_the_file(
    num_workers: int, tmp_path: Path, slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    corrupt = corrupt_level0_tiles(slide_path, tmp_path / "corrupt.tif")
    grid, card = grid_for(slide_image, 0.5, None), card_for(0.5)
    config = InferenceConfig(num_workers=num_workers, region_tiles=3, batch_size=7, device="cpu")
    with pytest.raises(SlideOpenError, match=r"corrupt\.tif") as caught:
        score_tiles(at_slide_mpp(corrupt), grid, sensitive_micronet(), card, config)
    assert "Traceback" not in str(caught.value)
    assert "truncated or corrupt" in str(caught.value)


def test_reader_process_that_dies_raises_slide_open_error_naming_the_file(
    monkeypatch: pytest.MonkeyPatch, slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    def crash(*args: object) -> NDArray[np.uint8]:
        os._exit(3)  # what a segfault in the decoder looks like from the main process

    monkeypatch.setattr(readers, "read_block_tiles", crash)
    grid, card = grid_for(slide_image, 0.5, None), card_for(0.5)
    with pytest.raises(SlideOpenError, match=r"node\.tif: a tile reader process stopped"):
        score_tiles(at_slide_mpp(slide_path), grid, sensitive_micronet(), card, ENGINE)


class DarknessNet(nn.Module):
    """Tumor logit rises as a tile gets darker: mean intensity below 0.5 means tumor."""

    def __init__(self) -> None:
        super().__init__()
        self.gray = nn.Conv2d(3, 1, kernel_size=1, bias=False)  # runs in bf16 under autocast
        nn.init.constant_(self.gray.weight, 1.0 / 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tumor = 40.0 * (0.5 - self.gray(x).float().mean(dim=(1, 2, 3)))
        return torch.stack([torch.zeros_like(tumor), tumor], dim=1)


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_heatmap_puts_each_score_at_its_tiles_cell(
    precision: Literal["auto", "bf16"], tmp_path: Path
) -> None:
    # 64 level-0 px tiles (32 px at 1.0 µm/px): a 10 x 8 grid; tissue on rows 1-6, cols 1-8,
    # a dark deposit exactly on rows 4-5, cols 3-4.
    image = np.full((512, 640, 3), 242, dtype=np.uint8)
    image[64:448, 64:576] = (222, 160, 200)
    image[256:384, 192:320] = (40, 20, 60)
    path = write_pyramid_tiff(tmp_path / "deposit.tif", image, mpp=SLIDE_MPP)
    grid = plan_tiles((640, 512), SLIDE_MPP, mask_of(image), TilingConfig(TILE_PX, mpp=1.0))
    card = ModelCard("micronet", TILE_PX, 1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    config = dataclasses.replace(ENGINE, precision=precision)  # bf16: CPU autocast
    scores = score_tiles(at_slide_mpp(path), grid, DarknessNet(), card, config)
    values = heatmap_from_scores(grid, scores).probabilities
    assert values.shape == (8, 10)
    tissue = np.zeros((8, 10), dtype=bool)
    tissue[1:7, 1:9] = True
    deposit = np.zeros((8, 10), dtype=bool)
    deposit[4:6, 3:5] = True
    assert np.isnan(values[~tissue]).all()
    assert (values[deposit] > 0.99).all()
    assert (values[tissue & ~deposit] < 0.01).all()


def test_progress_counts_every_tile_once_and_stats_add_up(
    slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    grid, card = grid_for(slide_image, 0.5, None), card_for(0.5)
    calls: list[int] = []
    threads_before = torch.get_num_threads()
    _, stats = score_tiles_with_stats(
        at_slide_mpp(slide_path), grid, sensitive_micronet(), card, ENGINE, calls.append
    )
    assert sum(calls) == len(grid) and all(count > 0 for count in calls)
    assert stats.n_regions == plan_regions(grid.heatmap_rc, 3).n_regions
    assert stats.wait_s + stats.compute_s == pytest.approx(stats.seconds, rel=1e-6)
    assert stats.tiles_per_s == pytest.approx(len(grid) / stats.seconds)
    assert stats.device == "cpu" and stats.read_level == 0
    assert stats.precision == "fp32"
    assert torch.get_num_threads() == threads_before


def test_stats_name_the_autocast_the_tiles_were_scored_under(
    slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    grid, card = grid_for(slide_image, 0.5, None), card_for(0.5)
    config = dataclasses.replace(ENGINE, precision="bf16", num_workers=0)
    scores, stats = score_tiles_with_stats(at_slide_mpp(slide_path), grid, sensitive_micronet(), card, config)
    reference, _ = score_tiles_with_stats(at_slide_mpp(slide_path), grid, sensitive_micronet(), card, ENGINE)
    assert stats.precision == "bf16"
    np.testing.assert_allclose(scores, reference, rtol=0, atol=0.02)


def test_grid_planned_for_another_tile_size_is_refused(
    slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    grid = grid_for(slide_image, 0.5, None)
    card = ModelCard(architecture="micronet", tile_size_px=64, mpp=0.5)
    with pytest.raises(ConfigError, match="tile_size_px"):
        score_tiles(at_slide_mpp(slide_path), grid, sensitive_micronet(), card, ENGINE)


def test_plan_regions_groups_neighbouring_cells_and_covers_every_tile_once() -> None:
    rows, cols = np.meshgrid(np.arange(7), np.arange(5), indexing="ij")
    rc = np.stack([rows.ravel(), cols.ravel()], axis=1)[::2]  # every other cell: gaps
    plan = plan_regions(rc, 3)
    np.testing.assert_array_equal(np.sort(plan.order), np.arange(len(rc)))
    blocks = [rc[plan.block(index)] for index in range(plan.n_regions)]
    assert len(blocks) == 3 * 2  # ceil(7 / 3) x ceil(5 / 3)
    for cells in blocks:
        assert len({tuple(cell) for cell in cells // 3}) == 1
    assert plan_regions(np.zeros((0, 2), np.int64), 3).n_regions == 0


def test_batch_norm_folding_leaves_the_callers_model_alone(
    slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    grid, card, model = grid_for(slide_image, 0.5, None), card_for(0.5), sensitive_micronet()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    score_tiles(at_slide_mpp(slide_path), grid, model, card, ENGINE)
    assert any(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


class BranchingNet(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it, so it is scored unfused."""

    def __init__(self) -> None:
        super().__init__()
        self.body = sensitive_micronet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.body(x)
        if float(logits.sum()) > 1e9:  # never true; only there to stop tracing
            return -logits
        return logits


def test_a_model_torch_fx_cannot_trace_is_scored_unfused(
    slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    grid, card, model = grid_for(slide_image, 0.5, None), card_for(0.5), BranchingNet().eval()
    reference = naive_score_tiles(at_slide_mpp(slide_path), grid, model, card)
    scores = score_tiles(at_slide_mpp(slide_path), grid, model, card, ENGINE)
    np.testing.assert_allclose(scores, reference, rtol=0, atol=1e-6)


def test_region_items_join_blocks_up_to_the_minimum_and_cover_every_tile_once(
    slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    grid = grid_for(slide_image, 0.5, None)
    plan = plan_regions(grid.heatmap_rc, 2)
    with open_slide(slide_path) as slide:
        geometry = read_geometry(slide, TILE_PX, 0.5)
        level_xy = tile_level_xy(grid.xy_px, geometry)
        expected = {int(i): read_one_tile(slide, grid.xy_px[i], geometry) for i in range(len(grid))}
    dataset = RegionDataset(at_slide_mpp(slide_path), geometry, level_xy, plan, min_item_tiles=10)
    items = list(dataset)
    assert all(isinstance(item, RegionTiles) for item in items)
    sizes = [len(item.indices) for item in items if isinstance(item, RegionTiles)]
    assert all(size >= 10 for size in sizes[:-1]) and len(items) < plan.n_regions
    seen = np.concatenate([item.indices for item in items if isinstance(item, RegionTiles)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(len(grid)))
    for item in items:
        assert isinstance(item, RegionTiles) and isinstance(item.tiles, np.ndarray)
        for index, tile in zip(item.indices, item.tiles, strict=True):
            np.testing.assert_array_equal(tile, expected[int(index)])


def test_the_cards_stain_normalisation_is_applied_to_every_tile(
    slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    mpp, stride = CASES["level0-resized"]
    grid, model = grid_for(slide_image, mpp, stride), sensitive_micronet()
    card = dataclasses.replace(card_for(mpp), stain_normalization="macenko")
    reference = naive_score_tiles(at_slide_mpp(slide_path), grid, model, card)
    scores = score_tiles(at_slide_mpp(slide_path), grid, model, card, ENGINE)
    np.testing.assert_allclose(scores, reference, rtol=0, atol=1e-4)
    plain = score_tiles(at_slide_mpp(slide_path), grid, model, card_for(mpp), ENGINE)
    assert float(np.abs(plain - scores).max()) > 1e-3  # normalisation changed the tiles


def overflowing_micronet() -> nn.Module:
    """Finite weights whose activations overflow to inf (then inf - inf = NaN) on any tile."""
    model = sensitive_micronet()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.mul_(1e20)
    return model


@pytest.mark.parametrize("num_workers", [0, 2])
def test_non_finite_model_output_is_refused_naming_the_slide(
    num_workers: int, slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    grid, card = grid_for(slide_image, 1.0, None), card_for(1.0)
    config = InferenceConfig(num_workers=num_workers, region_tiles=3, batch_size=7, device="cpu")
    with pytest.raises(CheckpointError, match=r"node\.tif: the model gave NaN or infinite") as caught:
        score_tiles(at_slide_mpp(slide_path), grid, overflowing_micronet(), card, config)
    assert "\n" not in str(caught.value) and "--model" in str(caught.value)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        naive_score_tiles(at_slide_mpp(slide_path), grid, overflowing_micronet(), card)


# A process that scores a slide with 2 reader processes that hang in their first read (after
# leaving a marker file), so the test can kill it while its readers are busy.
_HANGING_SCORER = """
import sys, time
from pathlib import Path
import numpy as np
from pipeline.slides import readers
from pipeline.config import InferenceConfig, TilingConfig
from pipeline.detection.inference import score_tiles
from pipeline.models import ModelCard, build_model
from pipeline.slides.slide import SlideSource
from pipeline.slides.tiling import plan_tiles
from pipeline.slides.tissue import TissueMask

slide, markers = Path(sys.argv[1]), Path(sys.argv[2])

def hang(*args):
    (markers / f"reader-{__import__('os').getpid()}").touch()
    time.sleep(600)

readers.read_block_tiles = hang
mask = TissueMask(mask=np.ones((140, 175), bool), mask_mpp=2.0, slide_dimensions=(700, 560))
grid = plan_tiles((700, 560), 0.5, mask, TilingConfig(tile_size_px=32, mpp=1.0))
card = ModelCard(architecture="micronet", tile_size_px=32, mpp=1.0)
config = InferenceConfig(num_workers=2, region_tiles=2, batch_size=8, device="cpu")
score_tiles(SlideSource.with_mpp(slide, 0.5), grid, build_model("micronet"), card, config)
"""


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its exit status is left


def _wait_for(condition: Callable[[], bool], limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_reader_processes_end_when_their_parent_is_killed(tmp_path: Path, slide_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", _HANGING_SCORER, str(slide_path), str(markers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    readers_pids: set[int] = set()
    try:
        assert _wait_for(lambda: len(list(markers.iterdir())) == 2, 600)  # imports can be slow
        readers_pids = {int(marker.name.split("-")[1]) for marker in markers.iterdir()}
        assert readers_pids <= _children(process.pid)
        process.kill()
        process.wait()
        assert _wait_for(lambda: not any(_alive(pid) for pid in readers_pids), 10)
    finally:
        process.kill()
        process.wait()
        for pid in filter(_alive, readers_pids):  # leave no sleeper behind when the test fails
            os.kill(pid, signal.SIGKILL)


def test_the_fitted_cpu_plan_probes_the_slide_and_model_and_keeps_the_scores(
    monkeypatch: pytest.MonkeyPatch, slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    from pipeline.detection import cpu_plan

    monkeypatch.setattr(cpu_plan, "MIN_TILES_FOR_READERS", 0)  # probe even this small grid
    mpp, stride = CASES["level0-resized"]
    grid, card, model = grid_for(slide_image, mpp, stride), card_for(mpp), sensitive_micronet()
    fitted = InferenceConfig(num_workers=None, region_tiles=2, batch_size=5, device="cpu", precision="fp32")
    scores, stats = score_tiles_with_stats(at_slide_mpp(slide_path), grid, model, card, fitted)
    plan = stats.cpu_plan
    assert plan.read_s_per_tile is not None and plan.read_s_per_tile > 0
    assert plan.compute_s_per_tile is not None and plan.compute_s_per_tile > 0
    assert plan.torch_threads == stats.cpu_threads >= 1 and plan.num_workers >= 0
    expected = score_tiles(at_slide_mpp(slide_path), grid, model, card, ENGINE)
    np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_a_prepared_model_is_folded_once_and_serves_every_call(
    monkeypatch: pytest.MonkeyPatch, slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    from pipeline.detection import inference

    folds: list[int] = []
    fold = inference._fuse_batch_norms
    monkeypatch.setattr(inference, "_fuse_batch_norms", lambda m: folds.append(1) or fold(m))
    grid, card, model = grid_for(slide_image, 0.5, None), card_for(0.5), sensitive_micronet()
    prepared = inference.prepare_model(model, card, ENGINE)
    first, _ = inference.score_prepared(at_slide_mpp(slide_path), grid, prepared, ENGINE)
    half = dataclasses.replace(grid, xy_px=grid.xy_px[::2], heatmap_rc=grid.heatmap_rc[::2],
                               tissue_fraction=grid.tissue_fraction[::2])  # fmt: skip
    second, _ = inference.score_prepared(at_slide_mpp(slide_path), half, prepared, ENGINE)
    assert len(folds) == 1
    np.testing.assert_allclose(second, first[::2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        first, score_tiles(at_slide_mpp(slide_path), grid, model, card, ENGINE), atol=1e-6
    )


def test_score_tiles_never_serves_stale_weights_after_training_changes_them(
    slide_path: Path, slide_image: NDArray[np.uint8]
) -> None:
    # Hard-negative mining scores with the model it is training: each call sees its weights now.
    grid, card, model = grid_for(slide_image, 0.5, None), card_for(0.5), sensitive_micronet()
    before = score_tiles(at_slide_mpp(slide_path), grid, model, card, ENGINE)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(-1.0)
    after = score_tiles(at_slide_mpp(slide_path), grid, model, card, ENGINE)
    assert np.max(np.abs(after - before)) > 0.05
    np.testing.assert_allclose(
        after, naive_score_tiles(at_slide_mpp(slide_path), grid, model, card), atol=1e-4
    )


def test_read_ahead_keeps_the_order_and_raises_the_readers_error_here() -> None:
    from pipeline.slides.readers import read_ahead

    assert list(read_ahead(iter(range(50)), 3)) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        raise SlideOpenError("slide.svs: cannot read")

    with pytest.raises(SlideOpenError, match=r"slide\.svs"):
        list(read_ahead(failing(), 2))


def test_stopping_early_ends_the_read_ahead_thread() -> None:
    import threading

    from pipeline.slides.readers import read_ahead

    items = read_ahead(iter(range(10_000)), 2)
    assert next(items) == 0
    items.close()  # what a scoring error does: the generator is closed
    assert not any(t.name == "micromet-read-ahead" for t in threading.enumerate())
