"""pipeline.benchmarks.scorers: a checkpoint's tile and region scorers for array benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.benchmarks.scorers import checkpoint_scorers
from pipeline.config import InferenceConfig
from pipeline.detection import precision
from pipeline.detection.inference import prepare_model
from pipeline.detection.precision import PrecisionProbe
from pipeline.models import ModelCard, build_model, save_checkpoint


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
    # tiles are scored in fp32 on every CPU (benchmark figures must repeat), as regions are
    np.testing.assert_allclose(grid.reshape(-1), score(tiles), atol=1e-4)


def test_tiles_are_scored_in_fp32_where_auto_would_choose_bf16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "auto" on a CPU with native bf16 times a probe per process and may choose bf16 in one run
    # and fp32 in the next; a benchmark's heatmaps must not depend on that.
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: True)
    monkeypatch.setattr(precision, "probe_cpu_precision", lambda *_: PrecisionProbe(1.0, 0.1, "bf16"))
    torch.manual_seed(0)
    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0)
    model = build_model("micronet")
    path = save_checkpoint(tmp_path / "tiles.pt", model, card)
    tiles = np.random.default_rng(1).integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    auto = prepare_model(model, card, InferenceConfig(device="cpu"))
    assert auto.scorer.dtype == torch.bfloat16  # what infer would run under here
    fp32 = prepare_model(model, card, InferenceConfig(device="cpu", precision="fp32"))
    with torch.inference_mode():
        expected = fp32.scorer(torch.from_numpy(tiles)).numpy()
    np.testing.assert_array_equal(checkpoint_scorers(path)[0](tiles), expected)


def test_a_tile_model_has_no_region_scorer(tmp_path: Path) -> None:
    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0)
    path = save_checkpoint(tmp_path / "tiles.pt", build_model("micronet"), card)
    score, score_region, _ = checkpoint_scorers(path)
    p = score(np.zeros((5, 32, 32, 3), np.uint8))
    assert score_region is None and p.shape == (5,) and bool(((p >= 0) & (p <= 1)).all())
