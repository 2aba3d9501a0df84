"""Fine-tuning from pathologist reviews (pipeline/training/review_samples.py, train --reviews
--init-model): tiles inside confirmed / drawn deposits are tumor, inside rejected ones hard
negatives; the checkpoint's card names the reviews that trained it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch

from pipeline.cli import main
from pipeline.detection.heatmap import load_heatmap, save_heatmap
from pipeline.errors import ConfigError
from pipeline.models import ModelCard, build_model, read_card, save_checkpoint
from pipeline.review.review_files import write_review
from pipeline.review.reviews import apply_edit, new_review
from pipeline.training.config import DataConfig, TrainConfig
from pipeline.training.review_samples import find_reviewed_slides, review_normal_samples, review_tile_samples
from pipeline.training.train import _load_initial_weights
from tests.viewer_batch import GOOD_ID, ViewerBatch, build_viewer_batch, synthetic_slide

DRAWN_XY = [[100.0, 100.0], [200.0, 100.0], [200.0, 180.0], [100.0, 180.0]]
TIME = "2026-01-02T03:04:05+00:00"


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> ViewerBatch:
    return build_viewer_batch(tmp_path_factory.mktemp("batch"), synthetic_slide(tmp_path_factory))


def _review(root: Path, complete: bool = True) -> None:
    """Dr Ana rejects the micro deposit (a false deposit), confirms the ITC, draws one."""
    report = json.loads((root / GOOD_ID / "report.json").read_text())
    review = new_review(GOOD_ID, report)
    edits = [
        {"op": "decide", "key": "deposit 1", "decision": "rejected"},
        {"op": "decide", "key": "deposit 2", "decision": "confirmed"},
        {"op": "draw", "outline_xy": DRAWN_XY},
    ]
    if complete:
        edits.append({"op": "status", "status": "complete"})
    for edit in edits:
        review = apply_edit(review, edit, review.revision, "Dr Ana", TIME)
    write_review(root / GOOD_ID, review)


@pytest.fixture
def reviewed(tmp_path: Path, batch: ViewerBatch) -> Path:
    root = tmp_path / "batch"
    shutil.copytree(batch.root, root)
    _review(root)
    return root


def test_rejected_deposits_give_hard_negatives_and_the_others_tumor(
    reviewed: Path, batch: ViewerBatch
) -> None:
    slides = find_reviewed_slides([reviewed])
    assert [s.review.slide_id for s in slides] == [GOOD_ID]
    samples = review_tile_samples(slides, 10, seed=0)
    deposits = {d["id"]: shapely.Polygon(d["outline_xy"]) for d in batch.good_report["deposits"]}
    negatives = [s for s in samples if s.kind == "hard_negative"]
    tumor = [s for s in samples if s.kind == "tumor"]
    assert len(negatives) == 10 and all(s.label == 0 for s in negatives)
    assert all(deposits[1].contains(shapely.Point(s.x_px, s.y_px)) for s in negatives)  # the rejected one
    assert len(tumor) == 20 and all(s.label == 1 for s in tumor)
    in_itc = [s for s in tumor if deposits[2].contains(shapely.Point(s.x_px, s.y_px))]
    in_drawn = [s for s in tumor if shapely.Polygon(DRAWN_XY).contains(shapely.Point(s.x_px, s.y_px))]
    assert len(in_itc) == len(in_drawn) == 10
    assert samples == review_tile_samples(slides, 10, seed=0)  # reproducible


def test_a_complete_review_mines_the_rest_of_its_tissue_for_hard_negatives(
    reviewed: Path, batch: ViewerBatch
) -> None:
    folder = reviewed / GOOD_ID
    heatmap = load_heatmap(folder)
    rows, cols = np.nonzero(np.isfinite(heatmap.probabilities))
    centres = heatmap.cell_center_xy(np.stack([rows, cols], axis=1).astype(float))
    outlines = [d["outline_xy"] for d in batch.good_report["deposits"]] + [DRAWN_XY]
    anywhere = shapely.union_all([shapely.Polygon(o) for o in outlines])
    distance = shapely.distance(shapely.points(centres), anywhere)
    far = np.flatnonzero(distance > 3 * heatmap.tile_size_l0_px)
    assert len(far) > 10
    values = heatmap.probabilities.copy()
    values[np.isfinite(values)] = 0.1
    values[rows[distance == 0], cols[distance == 0]] = 1.0  # every deposit scores highest
    top = far[[0, len(far) // 2, -1]]
    values[rows[top], cols[top]] = [0.97, 0.99, 0.98]
    save_heatmap(dataclasses.replace(heatmap, probabilities=values), folder)

    slides = find_reviewed_slides([reviewed])
    mined = review_normal_samples(slides, 3)
    assert {(s.x_px, s.y_px) for s in mined} == {tuple(c) for c in centres[top]}
    assert all(s.label == 0 and s.kind == "review_normal" and s.split == "train" for s in mined)
    everything = review_normal_samples(slides, 10**6)
    points = shapely.points([(s.x_px, s.y_px) for s in everything])
    deposits = {d["id"]: shapely.Polygon(d["outline_xy"]) for d in batch.good_report["deposits"]}
    kept = shapely.union(deposits[2], shapely.Polygon(DRAWN_XY))  # confirmed and drawn: tumor
    assert (shapely.distance(points, kept) > heatmap.tile_size_l0_px).all()  # no tile overlaps them
    assert not shapely.contains(deposits[1], points).any()  # the rejected one is sampled apart
    assert len(everything) < len(centres) and len(everything) > len(far)


def test_mining_a_reviewed_slide_without_its_heatmap_names_the_folder(reviewed: Path) -> None:
    (reviewed / GOOD_ID / "heatmap.npy").unlink()
    with pytest.raises(ConfigError, match=rf"{GOOD_ID}.*re-run `micromet infer`"):
        review_normal_samples(find_reviewed_slides([reviewed]), 5)
    with pytest.raises(ValueError, match="without reviews"):
        DataConfig(patches=("p",), patch_mpp=1.0, review_negatives_per_slide=5)


def test_a_review_in_progress_does_not_train(tmp_path: Path, batch: ViewerBatch) -> None:
    root = tmp_path / "batch"
    shutil.copytree(batch.root, root)
    _review(root, complete=False)
    with pytest.raises(ConfigError, match="no slide has a complete review"):
        find_reviewed_slides([root])


def test_train_fine_tunes_from_reviews_and_its_card_names_them(reviewed: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    card = ModelCard(
        architecture="micronet", tile_size_px=32, mpp=2.0, threshold=0.5, training_data="a test model",
        stride_px=16,
    )  # fmt: skip
    start = save_checkpoint(tmp_path / "start.pt", build_model("micronet"), card)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--reviews",
            str(reviewed),
            "--init-model",
            str(start),
            "--arch",
            "micronet",
            "--tile-size-px",
            "32",
            "--model-mpp",
            "2.0",
            "--epochs",
            "1",
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--no-progress",
            "--review-tiles-per-deposit",
            "8",
            "--review-negatives-per-slide",
            "5",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    new_card = read_card(out / "last.pt")
    training_data = new_card.training_data
    assert new_card.stride_px == 16  # the init model's heatmap stride is kept
    assert "no validation tiles" in new_card.notes  # reviews all train: its 0.5 was not chosen on data
    assert training_data.startswith(f"fine-tuned from {start}")
    assert f"{GOOD_ID} revision 4 by Dr Ana (sha256 " in training_data
    assert "16 tumor tiles" in training_data and "8 hard negatives in rejected" in training_data
    assert "5 hard negatives from the rest of the reviewed tissue" in training_data
    index = (out / "samples.csv").read_text()
    assert index.count("hard_negative") == 8 and index.count("review_normal") == 5


def test_initial_weights_are_copied_and_a_mismatched_card_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_model("micronet")
    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0, threshold=0.5, training_data="t")
    path = save_checkpoint(tmp_path / "start.pt", source, card)
    torch.manual_seed(2)
    model = build_model("micronet")
    _load_initial_weights(model, TrainConfig(tile_size_px=32, mpp=2.0, init_model=str(path)))
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    with pytest.raises(ConfigError, match=r"tile_size_px 32 \(run: 64\).*--tile-size-px"):
        _load_initial_weights(model, TrainConfig(tile_size_px=64, mpp=2.0, init_model=str(path)))


def test_fine_tuning_a_partnered_model_says_the_partner_is_left_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.models.partner import with_partner

    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0, threshold=0.5, training_data="t")
    partner = save_checkpoint(tmp_path / "partner.pt", build_model("micronet"), card)
    path = save_checkpoint(tmp_path / "start.pt", build_model("micronet"), with_partner(card, partner))
    with caplog.at_level("WARNING"):
        _load_initial_weights(
            build_model("micronet"), TrainConfig(tile_size_px=32, mpp=2.0, init_model=str(path))
        )
    assert "partner model partner.pt" in caplog.text and "has no partner" in caplog.text


def _train_args(reviewed: Path, start: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--reviews", str(reviewed), "--init-model", str(start), "--arch", "micronet",
        "--tile-size-px", "32", "--model-mpp", "2.0", "--epochs", "1",
        "--batch-size", "4", "--device", "cpu", "--workers", "0", "--no-progress",
        "--review-tiles-per-deposit", "8", "--out", str(out), *extra,
    ]  # fmt: skip


def test_finetune_partner_trains_both_models_and_writes_the_pair(
    reviewed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.models import load_checkpoint
    from pipeline.models.partner import load_partner, with_partner

    torch.manual_seed(3)
    card = ModelCard(
        architecture="micronet", tile_size_px=32, mpp=2.0, threshold=0.5, training_data="t", stride_px=16
    )  # fmt: skip
    partner = save_checkpoint(tmp_path / "partner.pt", build_model("micronet"), card)
    start = save_checkpoint(tmp_path / "start.pt", build_model("micronet"), with_partner(card, partner))
    out = tmp_path / "run"
    assert main(_train_args(reviewed, start, out, "--finetune-partner")) == 0
    assert f"pair: {out / 'pair.pt'}" in capsys.readouterr().out
    assert (out / "partner.pt").read_bytes() == (out / "partner" / "last.pt").read_bytes()
    partner_card = read_card(out / "partner" / "last.pt")
    assert partner_card.training_data.startswith(f"fine-tuned from {partner}")
    assert "8 hard negatives in rejected" in partner_card.training_data  # the same reviews trained it
    pair_model, pair_card = load_checkpoint(out / "pair.pt")
    loaded = load_partner(out / "pair.pt", pair_card)
    assert loaded is not None and pair_card.partner["file"] == "partner.pt"
    assert "seed, confirm and size calibration not measured on the pair" in pair_card.notes
    own, _ = load_checkpoint(out / "last.pt")
    for name, tensor in own.state_dict().items():
        assert torch.equal(pair_model.state_dict()[name], tensor), name
    started, _ = load_checkpoint(partner)
    moved = [n for n, t in loaded[0].state_dict().items() if not torch.equal(started.state_dict()[n], t)]
    assert moved  # the partner was trained, not copied

    # a run stopped before its pair was written resumes to it, without training the model again
    model_bytes = (out / "last.pt").read_bytes()
    (out / "pair.pt").unlink()
    (out / "partner.pt").unlink()
    assert main(["train", "--resume", str(out / "last.pt"), "--no-progress"]) == 0
    assert (out / "last.pt").read_bytes() == model_bytes
    assert load_partner(out / "pair.pt", read_card(out / "pair.pt")) is not None


def test_finetune_partner_refuses_a_model_without_partner(
    reviewed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0, threshold=0.5, training_data="t")
    start = save_checkpoint(tmp_path / "start.pt", build_model("micronet"), card)
    assert main(_train_args(reviewed, start, tmp_path / "run", "--finetune-partner")) != 0
    assert f"{start}: its card names no partner; drop --finetune-partner" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything trained
