"""The committed default model: loads, carries a complete card, and ranks real tumor patches
above real normal patches (CAMELYON16, ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, require_shared_data

from pipeline.classify import classify_patches, list_patch_files
from pipeline.models import ModelCard, default_model_path, file_sha256, load_checkpoint

C16_MPP = 0.243  # CAMELYON16 level 0
MAX_MODEL_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def default_model() -> tuple[torch.nn.Module, ModelCard]:
    path = default_model_path()
    assert path == REPO_ROOT / "models" / "default.pt"
    return load_checkpoint(path)


def test_default_model_is_small_and_loads_in_eval_mode(
    default_model: tuple[torch.nn.Module, ModelCard],
) -> None:
    model, _ = default_model
    assert not model.training
    assert default_model_path().stat().st_size < MAX_MODEL_BYTES
    assert len(file_sha256(default_model_path())) == 64


def test_default_model_card_is_complete_and_says_it_is_not_clinical(
    default_model: tuple[torch.nn.Module, ModelCard],
) -> None:
    _, card = default_model
    assert card.architecture == "micronet"
    assert 32 <= card.tile_size_px <= 256 and 0.2 <= card.mpp <= 2.0
    assert 0.0 < card.threshold < 1.0
    assert card.stain_normalization is None
    text = card.training_data
    assert "synthetic" in text and "tumor_064" in text and "held out" in text
    assert "NOT A CLINICAL MODEL" in card.notes
    metrics = card.metrics
    for key in ("synthetic_val_auc", "real_c16_tumor_064_holdout_auc", "real_c16_tumor_064_holdout_n"):
        assert key in metrics
    assert set(card.software) >= {"torch", "micromet"}


def test_model_card_markdown_matches_the_checkpoint(default_model: tuple[torch.nn.Module, ModelCard]) -> None:
    _, card = default_model
    text = (REPO_ROOT / "models" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "not a clinical model" in text.lower()
    assert f"**{card.threshold:.2f}**" in text
    assert f"{card.mpp} µm/px" in text and "tumor_064" in text
    assert "micromet train" in text


def _mean_scores(model: torch.nn.Module, card: ModelCard, folder: Path) -> tuple[float, float]:
    files = list_patch_files([folder / "tumor", folder / "normal"])
    scores = classify_patches(files, C16_MPP, model, card, torch.device("cpu"))
    tumor = [s.tumor_probability or 0.0 for s in scores if "/tumor/" in s.path]
    normal = [s.tumor_probability or 0.0 for s in scores if "/normal/" in s.path]
    assert len(tumor) == 28 and len(normal) == 29
    return float(np.mean(tumor)), float(np.mean(normal))


def test_default_model_scores_real_tumor_patches_above_normal_ones(
    default_model: tuple[torch.nn.Module, ModelCard],
) -> None:
    folder = require_shared_data("camelyon16_patches")
    model, card = default_model
    tumor, normal = _mean_scores(model, card, folder)
    assert tumor > normal + 0.1, f"mean tumor {tumor:.3f} vs normal {normal:.3f}"
