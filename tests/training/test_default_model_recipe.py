"""models/default_train.toml and default_partner_train.toml: the default pair's training
settings, which ``micromet train --config`` reads, are the ones scripts/train_default_model.py runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config_file
from pipeline.models import read_card
from pipeline.training.config import settings_from_dict, settings_to_toml
from pipeline.training.default_model import DEFAULT_RECIPES, default_model_settings

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("name", sorted(DEFAULT_RECIPES))
def test_the_committed_toml_is_the_recipe_and_micromet_train_reads_it(name: str) -> None:
    path = MODELS / name
    expected = default_model_settings(DEFAULT_RECIPES[name])
    assert path.read_text(encoding="utf-8") == settings_to_toml(expected)
    assert settings_from_dict(load_config_file(path), {}, source=str(path)) == expected


def test_the_recipes_train_the_shipped_architectures_at_their_tiles() -> None:
    card = read_card(MODELS / "default.pt")
    partner = read_card(MODELS / card.partner["file"])
    for name, shipped in (("default_train.toml", card), ("default_partner_train.toml", partner)):
        settings = default_model_settings(DEFAULT_RECIPES[name])
        assert settings.train.architecture == shipped.architecture
        assert (settings.train.tile_size_px, settings.train.mpp) == (shipped.tile_size_px, shipped.mpp)
