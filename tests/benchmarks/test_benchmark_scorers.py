"""pipeline.benchmarks.scorers: a checkpoint's tile and region scorers for array benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.benchmarks.scorers import checkpoint_scorers
from pipeline.models import ModelCard, build_model, native_cpu_bf16, save_checkpoint
from pipeline.models.device import SCORING_BF16_TOLERANCE


def test_a_dense_model_scores_a_region_as_its_tiles_at_the_card_stride(tmp_path: Path) -> None:
    torch.manual_seed(0)
    card = ModelCard(architecture="dense96", tile_size_px=96, mpp=0.972, stride_px=32)
    path = save_checkpoint(tmp_path / "dense.pt", build_model("dense96"), card)
    score, score_region, loaded = checkpoint_scorers(path)
    assert score_region is not None and loaded.stride_px == 32
    region = np.random.default_rng(0).integers(0, 255, (96 + 3 * 32, 96 + 2 * 32, 3), dtype=np.uint8)
    grid = score_region(region)
    tiles = np.stack([region[r * 32 : r * 32 + 96, c * 32 : c * 32 + 96] for r in range(4) for c in range(3)])
    assert grid.shape == (4, 3)
    # tiles are scored as infer scores them: under bf16 where the CPU has it natively
    tolerance = SCORING_BF16_TOLERANCE if native_cpu_bf16() else 1e-4
    np.testing.assert_allclose(grid.reshape(-1), score(tiles), atol=tolerance)


def test_a_tile_model_has_no_region_scorer(tmp_path: Path) -> None:
    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0)
    path = save_checkpoint(tmp_path / "tiles.pt", build_model("micronet"), card)
    score, score_region, _ = checkpoint_scorers(path)
    p = score(np.zeros((5, 32, 32, 3), np.uint8))
    assert score_region is None and p.shape == (5,) and bool(((p >= 0) & (p <= 1)).all())
