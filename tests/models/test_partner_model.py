"""A model card's partner (pipeline.models.partner): a second checkpoint whose probabilities are
averaged with the model's for the heatmap, checked by SHA-256 and geometry, never silently dropped."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from pipeline.detection.heatmap import load_heatmap
from pipeline.errors import CheckpointError
from pipeline.models import ModelCard, build_model, file_sha256, read_card, save_checkpoint
from pipeline.models.partner import load_partner, with_partner
from pipeline.synthetic.pyramid_tiff import draw_tissue_rgb, write_pyramid_tiff


def write_model(
    path: Path, seed: int, tile_size_px: int = 32, mpp: float = 1.0, partner: Path | None = None
) -> Path:
    import torch

    torch.manual_seed(seed)
    card = ModelCard(
        architecture="micronet", tile_size_px=tile_size_px, mpp=mpp, training_data="untrained test model"
    )
    if partner is not None:
        card = with_partner(card, partner)
    return save_checkpoint(path, build_model("micronet"), card)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    partner = write_model(folder / "partner.pt", seed=1)
    return {
        "alone": write_model(folder / "alone.pt", seed=0),
        "partner": partner,
        "paired": write_model(folder / "paired.pt", seed=0, partner=partner),
    }


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pyramid_tiff(
        tmp_path_factory.mktemp("slide") / "node.tif", draw_tissue_rgb(900, 700, seed=3), 0.5
    )


def heatmap_of(model_path: Path, slide: Path, folder: Path, **inference: Any) -> NDArray[np.float32]:
    from pipeline.batch.analyze import analyze_slide
    from pipeline.batch.settings import AnalysisSettings

    overrides = {
        "inference": {"device": "cpu", "precision": "fp32", "num_workers": 0, "cascade": False, **inference},
        "deposits": {"refine": False, "count_cells": False},
        "qc": {"accept_qc_failures": True},
    }
    context = AnalysisSettings(model_path=model_path, overrides=overrides).build()
    folder.mkdir()
    report = analyze_slide(context, slide, slide.stem, folder)
    assert report["model"]["partner"] == (
        None
        if context.partner is None
        else {
            "file": "partner.pt",
            "sha256": file_sha256(model_path.parent / "partner.pt"),
            "architecture": context.partner[1].architecture,
        }
    )
    return load_heatmap(folder).probabilities


def test_the_heatmap_is_the_average_of_the_model_and_its_partner(
    models: dict[str, Path], slide: Path, tmp_path: Path
) -> None:
    alone = heatmap_of(models["alone"], slide, tmp_path / "alone")
    partner = heatmap_of(models["partner"], slide, tmp_path / "partner")
    paired = heatmap_of(models["paired"], slide, tmp_path / "paired")
    scored = np.isfinite(alone)
    assert scored.sum() > 50 and np.array_equal(scored, np.isfinite(paired))
    assert np.abs(alone[scored] - partner[scored]).max() > 1e-3  # two different models
    np.testing.assert_allclose(paired[scored], (alone[scored] + partner[scored]) / 2, atol=1e-6)


def test_under_the_cascade_every_cell_near_a_suspicious_tile_is_the_average(
    models: dict[str, Path], slide: Path, tmp_path: Path
) -> None:
    alone = heatmap_of(models["alone"], slide, tmp_path / "alone")
    partner = heatmap_of(models["partner"], slide, tmp_path / "partner")
    # a screen threshold of 0 makes every block suspicious: the whole heatmap is scored in full
    paired = heatmap_of(
        models["paired"], slide, tmp_path / "paired", cascade=True, cascade_screen_threshold=0.0
    )
    scored = np.isfinite(alone)
    np.testing.assert_allclose(paired[scored], (alone[scored] + partner[scored]) / 2, atol=1e-6)


def write_dense_model(path: Path, seed: int, partner: Path | None = None) -> Path:
    import torch

    torch.manual_seed(seed)
    card = ModelCard(
        architecture="dense96", tile_size_px=96, mpp=1.0, stride_px=32, training_data="untrained test model"
    )
    if partner is not None:
        card = with_partner(card, partner)
    return save_checkpoint(path, build_model("dense96"), card)


def test_two_dense_partners_are_scored_in_one_pass_with_the_same_average(
    slide: Path, tmp_path: Path
) -> None:
    from pipeline.batch.folder import REPORT_JSON, read_report

    folder = tmp_path / "models"
    folder.mkdir()
    partner = write_dense_model(folder / "partner.pt", seed=1)
    alone = heatmap_of(write_dense_model(folder / "alone.pt", seed=0), slide, tmp_path / "alone")
    other = heatmap_of(partner, slide, tmp_path / "partner")
    paired_model = write_dense_model(folder / "paired.pt", seed=0, partner=partner)
    paired = heatmap_of(paired_model, slide, tmp_path / "paired")
    scored = np.isfinite(alone)
    assert scored.sum() > 50 and np.array_equal(scored, np.isfinite(paired))
    assert np.abs(alone[scored] - other[scored]).max() > 1e-4  # two different models
    np.testing.assert_allclose(paired[scored], (alone[scored] + other[scored]) / 2, atol=1e-5)
    inference = read_report(tmp_path / "paired" / REPORT_JSON)["inference"]
    assert inference["mode"] == "dense"
    partner = inference["partner"]
    assert (partner["tiles"], partner["mode"], partner["one_pass"]) == (int(scored.sum()), "dense", True)


def test_a_tile_by_tile_pair_is_scored_in_two_passes(
    models: dict[str, Path], slide: Path, tmp_path: Path
) -> None:
    from pipeline.batch.folder import REPORT_JSON, read_report

    heatmap_of(models["paired"], slide, tmp_path / "paired")
    partner = read_report(tmp_path / "paired" / REPORT_JSON)["inference"]["partner"]
    assert partner["one_pass"] is False and partner["mode"] == "tiles"


def test_a_missing_partner_is_an_error_naming_the_file(models: dict[str, Path], tmp_path: Path) -> None:
    lonely = shutil.copy(models["paired"], tmp_path / "paired.pt")
    with pytest.raises(CheckpointError, match=r"partner model partner\.pt, which is missing"):
        load_partner(Path(lonely), read_card(lonely))


def test_a_changed_partner_file_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    paired = Path(shutil.copy(models["paired"], tmp_path / "paired.pt"))
    write_model(tmp_path / "partner.pt", seed=7)  # same name, other weights
    with pytest.raises(CheckpointError, match=r"SHA-256 .* is not the"):
        load_partner(paired, read_card(paired))


@pytest.mark.parametrize(
    ("change", "field"),
    [({"tile_size_px": 48}, "tile_size_px"), ({"mpp": 2.0}, "mpp")],
)
def test_a_partner_reading_other_tiles_is_refused(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    partner = write_model(tmp_path / "partner.pt", seed=1, **change)
    paired = write_model(tmp_path / "paired.pt", seed=0, partner=partner)
    with pytest.raises(CheckpointError, match=f"has {field}="):
        load_partner(paired, read_card(paired))


def test_a_partner_cannot_name_a_partner(tmp_path: Path) -> None:
    last = write_model(tmp_path / "last.pt", seed=2)
    middle = write_model(tmp_path / "middle.pt", seed=1, partner=last)
    first = write_model(tmp_path / "first.pt", seed=0, partner=middle)
    with pytest.raises(CheckpointError, match="cannot name a partner of its own"):
        load_partner(first, read_card(first))


@pytest.mark.parametrize(
    "partner",
    [
        {"file": "../elsewhere.pt", "sha256": "0" * 64},
        {"file": "partner.pt", "sha256": "XYZ"},
        {"file": "partner.pt"},
        {"file": "", "sha256": "0" * 64},
    ],
)
def test_a_malformed_partner_field_names_the_field(partner: dict[str, str]) -> None:
    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0)
    with pytest.raises(CheckpointError, match="field partner="):
        dataclasses.replace(card, partner=partner)


def test_the_partner_round_trips_through_the_checkpoint(models: dict[str, Path]) -> None:
    card = read_card(models["paired"])
    assert card.partner == {"file": "partner.pt", "sha256": file_sha256(models["partner"])}
    assert read_card(models["alone"]).partner == {}


def test_classify_averages_the_model_and_its_partner(models: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    from pipeline.models import load_checkpoint
    from pipeline.training.classify import classify_patches

    rng = np.random.default_rng(0)
    files = []
    for index in range(4):
        files.append(tmp_path / f"patch_{index}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(files[-1])
    import torch

    device = torch.device("cpu")

    def probabilities(name: str, with_partner: bool) -> NDArray[np.float64]:
        model, card = load_checkpoint(models[name])
        partner = load_partner(models[name], card) if with_partner else None
        scores = classify_patches(
            files, 1.0, model, card, device, partner=None if partner is None else partner[:2]
        )
        return np.array([s.tumor_probability for s in scores], dtype=np.float64)

    expected = (probabilities("alone", False) + probabilities("partner", False)) / 2
    np.testing.assert_allclose(probabilities("paired", True), expected, atol=1e-6)
