"""The review fine-tuning benchmark's own logic (pipeline.benchmarks.review_finetune): the place
split keeps places apart, the reviews it writes reject every deposit and candidate and load back
as complete training reviews, and the fine-tuned weights get the default card's decision rules.
Small inputs only: no inference, no training."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.benchmarks import review_finetune as bench
from pipeline.benchmarks import review_finetune_slides as slides
from pipeline.benchmarks.review_finetune_report import finetuned_heading, removed_fraction, settings_line
from pipeline.errors import ConfigError
from pipeline.models import ModelCard, build_model, load_checkpoint, read_card, save_checkpoint
from pipeline.review.review_files import read_slide_review
from pipeline.review.reviews import REJECTED
from pipeline.training.review_samples import find_reviewed_slides, review_tile_samples
from tests.viewer_batch import GOOD_ID, XSS_FOLDER, build_viewer_batch, synthetic_slide


def _patches() -> list[slides.NormalPatch]:
    """40 places: 10 with a hard normal (one holds two patches), 30 without (two hold two)."""
    patch = slides.NormalPatch
    patches = [patch(f"hard/{i}.webp", f"h{i}", True) for i in range(10)]
    patches.append(patch("kaggle/h0_twin.webp", "h0", False))  # a PCam normal in a hard place
    patches += [patch(f"kaggle/{i}.webp", f"p{i}", False) for i in range(30)]
    patches += [patch("kaggle/p3_twin.webp", "p3", False), patch("kaggle/p7_twin.webp", "p7", False)]
    return patches


def test_the_halves_keep_places_apart_and_share_the_hard_normals() -> None:
    patches = _patches()
    halves = slides.split_places(patches, seed=4)
    reviewed, heldout = halves["reviewed"], halves["heldout"]
    assert {p.place for p in reviewed}.isdisjoint({p.place for p in heldout})
    assert sorted(reviewed + heldout, key=lambda p: p.file) == sorted(patches, key=lambda p: p.file)
    assert sum(p.hard for p in reviewed) == sum(p.hard for p in heldout) == 5
    assert len({p.place for p in reviewed}) == len({p.place for p in heldout}) == 20
    twins = {p.file for p in reviewed} & {"kaggle/h0_twin.webp", "hard/0.webp"}
    assert twins in (set(), {"kaggle/h0_twin.webp", "hard/0.webp"})  # a place stays whole
    assert slides.split_places(patches, seed=4) == halves
    assert slides.split_places(patches, seed=5) != halves


def test_dev_normals_read_only_the_dev_parts_tumor_free_patches(tmp_path: Path) -> None:
    csv_path = tmp_path / "places.csv"
    csv_path.write_text(
        "source,file,label,place,part\n"
        "pcam_kaggle,normal/a.webp,0,1,dev\n"
        "pcam_kaggle,tumor/b.webp,1,1,dev\n"
        "pcam_hard_normals,normal/c.webp,0,2,dev\n"
        "pcam_kaggle,normal/d.webp,0,3,train\n"
        "pcam_kaggle,normal/e.webp,0,4,test\n",
        encoding="utf-8",
    )
    normals = slides.dev_normals(csv_path)
    assert [(p.file, p.place, p.hard) for p in normals] == [
        ("pcam_kaggle/normal/a.webp", "1", False),
        ("pcam_hard_normals/normal/c.webp", "2", True),
    ]


def test_a_slide_is_a_mosaic_on_glass() -> None:
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 200, size=(6, 96, 96, 3), dtype=np.uint8)
    image = slides.slide_image(patches, side_mm=0.3, seed=1)
    mpp = slides.MODEL_MPP
    side_px, margin_px = round(300 / mpp), round(slides.GLASS_MARGIN_MM * 1000 / mpp)
    assert image.shape == (side_px + 2 * margin_px,) * 2 + (3,)
    assert (image[:margin_px] == slides.GLASS_RGB).all() and (image[:, -margin_px:] == slides.GLASS_RGB).all()
    assert image[margin_px:-margin_px, margin_px:-margin_px].max() < 200  # tissue only inside


@pytest.fixture
def batch(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A batch folder whose micro slide also has a candidate for review."""
    root = build_viewer_batch(tmp_path / "batch", synthetic_slide(tmp_path_factory)).root
    path = root / GOOD_ID / "report.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    report["candidates"] = [dict(report["deposits"][1], id=1)]
    path.write_text(json.dumps(report), encoding="utf-8")
    return root


def test_the_reviews_reject_everything_and_train_as_complete_reviews(batch: Path) -> None:
    rejected = bench.review_batch(batch)
    assert rejected == {GOOD_ID: 3, "<script>alert(1)</script>": 0}  # 2 deposits + 1 candidate
    review = read_slide_review(batch / GOOD_ID)
    assert review is not None and review.complete
    assert [d.key for d in review.deposits] == ["deposit 1", "deposit 2", "candidate 1"]
    assert all(d.decision == REJECTED for d in review.deposits)
    assert review.reviewed_category == "negative"
    empty = read_slide_review(batch / XSS_FOLDER)
    assert empty is not None and empty.complete and empty.deposits == ()
    slides = find_reviewed_slides([batch])
    assert sorted(s.review.slide_id for s in slides) == sorted(rejected)
    samples = review_tile_samples(slides, 4, seed=0)
    assert samples and all(s.kind == "hard_negative" and s.label == 0 for s in samples)


def test_a_folder_without_finished_slides_is_refused(tmp_path: Path, batch: Path) -> None:
    with pytest.raises(ConfigError, match="manifest"):
        bench.review_batch(tmp_path / "nothing")
    root = tmp_path / "failed"
    shutil.copytree(batch, root)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["slides"].values():
        entry["status"] = "failed"
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ConfigError, match="no finished slide"):
        bench.review_batch(root)


def test_the_fine_tuned_weights_get_the_default_cards_rules(tmp_path: Path) -> None:
    base = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0, threshold=0.5, training_data="t")
    rules = dataclasses.replace(
        base,
        threshold=0.62,
        stride_px=16,
        seed_threshold=0.9,
        confirm_threshold=0.85,
        size_calibration={"level": 0.8, "offset_mm": 0.0, "error_mm": [[9.0, 0.1]]},
    )
    torch.manual_seed(0)
    default = save_checkpoint(tmp_path / "default.pt", build_model("micronet"), rules)
    torch.manual_seed(1)
    trained_model = build_model("micronet")
    trained = save_checkpoint(tmp_path / "last.pt", trained_model, dataclasses.replace(base, threshold=0.41))
    out = bench.with_default_rules(trained, tmp_path / "finetuned.pt", default)
    model, card = load_checkpoint(out)
    for name in bench.RULE_FIELDS:
        assert getattr(card, name) == getattr(read_card(default), name), name
    assert card.training_data == "t" and "copied from" in card.notes
    for name, tensor in trained_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_the_fine_tuned_column_says_which_partner_it_scored_with() -> None:
    default = {"file": "default_partner.pt", "sha256": "a" * 64}
    tuned = {"file": "finetuned_partner.pt", "sha256": "b" * 64}
    assert finetuned_heading({"finetuned_partner": {}}) == "fine-tuned (alone)"
    kept = finetuned_heading({"default_partner": default, "finetuned_partner": default})
    assert kept == "fine-tuned (with the unchanged partner default_partner.pt)"
    both = finetuned_heading({"default_partner": default, "finetuned_partner": tuned})
    assert both == "fine-tuned (with its partner, fine-tuned alike, finetuned_partner.pt)"


def test_removed_fraction() -> None:
    assert removed_fraction(20, 2) == pytest.approx(0.9)
    assert removed_fraction(5, 0) == 1.0
    assert np.isnan(removed_fraction(0, 0))


def _default_pair(tmp_path: Path) -> tuple[Path, Path, ModelCard]:
    """(default.pt naming partner.pt beside it, a trained last.pt, the card without rules)."""
    from pipeline.models.partner import with_partner

    base = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0, threshold=0.5, training_data="t")
    folder = tmp_path / "models"
    folder.mkdir()
    torch.manual_seed(2)
    partner = save_checkpoint(
        folder / "partner.pt", build_model("micronet"), dataclasses.replace(base, stride_px=16)
    )
    rules = dataclasses.replace(
        base, threshold=0.58, stride_px=16, seed_threshold=0.85, confirm_threshold=0.8
    )
    torch.manual_seed(0)
    default = save_checkpoint(folder / "default.pt", build_model("micronet"), with_partner(rules, partner))
    torch.manual_seed(1)
    trained = save_checkpoint(tmp_path / "last.pt", build_model("micronet"), base)
    return default, trained, base


def test_keep_partner_puts_the_defaults_partner_beside_the_fine_tuned_model(tmp_path: Path) -> None:
    from pipeline.benchmarks.scorers import checkpoint_scorers
    from pipeline.models.partner import load_partner

    default, trained, _ = _default_pair(tmp_path)
    out_dir = tmp_path / "work"
    out_dir.mkdir()
    out = bench.with_default_rules(trained, out_dir / "finetuned.pt", default, keep_partner=True)
    card = read_card(out)
    assert card.partner == read_card(default).partner and card.partner["file"] == "partner.pt"
    assert (out_dir / "partner.pt").read_bytes() == (default.parent / "partner.pt").read_bytes()
    assert card.threshold == 0.58 and card.seed_threshold == 0.85 and "partner" in card.notes
    loaded = load_partner(out, card)
    assert loaded is not None and loaded[2] == card.partner["sha256"]
    # the patch figures score the fine-tuned model as a pair: the mean of both models
    tiles = np.random.default_rng(0).integers(0, 255, size=(5, 32, 32, 3), dtype=np.uint8)
    pair, threshold = bench.tile_scorer(out)
    alone = checkpoint_scorers(out)[0](tiles)
    partner = checkpoint_scorers(out_dir / "partner.pt")[0](tiles)
    assert threshold == 0.58
    np.testing.assert_allclose(pair(tiles), (alone + partner) / 2, rtol=1e-5)
    assert not np.allclose(pair(tiles), alone)
    # a second call keeps the identical copy; a changed copy is replaced by the right file
    (out_dir / "partner.pt").write_bytes(b"changed")
    bench.with_default_rules(trained, out_dir / "finetuned.pt", default, keep_partner=True)
    assert load_partner(out, read_card(out)) is not None


def test_without_keep_partner_the_fine_tuned_model_scores_alone(tmp_path: Path) -> None:
    default, trained, _ = _default_pair(tmp_path)
    out = bench.with_default_rules(trained, tmp_path / "finetuned.pt", default)
    assert read_card(out).partner == {} and not (tmp_path / "partner.pt").exists()
    assert bench.default_has_partner(default)


def test_keep_partner_refuses_a_default_without_partner(tmp_path: Path) -> None:
    _, trained, base = _default_pair(tmp_path)
    lone = save_checkpoint(tmp_path / "lone.pt", build_model("micronet"), base)
    assert not bench.default_has_partner(lone)
    with pytest.raises(ConfigError, match="--no-keep-partner"):
        bench.with_default_rules(trained, tmp_path / "finetuned.pt", lone, keep_partner=True)


def test_a_fine_tuned_partner_is_named_instead_of_the_defaults(tmp_path: Path) -> None:
    from pipeline.models.partner import load_partner

    default, trained, base = _default_pair(tmp_path)
    out_dir = tmp_path / "work"
    out_dir.mkdir()
    torch.manual_seed(3)
    tuned = save_checkpoint(
        out_dir / "finetuned_partner.pt", build_model("micronet"), dataclasses.replace(base, stride_px=16)
    )
    out = bench.with_default_rules(
        trained, out_dir / "finetuned.pt", default, keep_partner=True, partner=tuned
    )
    card = read_card(out)
    assert card.partner["file"] == "finetuned_partner.pt" and card.partner != read_card(default).partner
    assert not (out_dir / "partner.pt").exists() and "fine-tuned on the same reviews" in card.notes
    loaded = load_partner(out, card)
    assert loaded is not None and loaded[2] == card.partner["sha256"]


def test_finetune_partner_cannot_go_without_the_pair() -> None:
    with pytest.raises(SystemExit, match="--no-keep-partner"):
        bench.main(["run", "--finetune-partner", "--no-keep-partner"])


def test_same_surfaces_compares_names_and_pixels(tmp_path: Path) -> None:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for name in ("s1", "s2"):
            np.savez(tmp_path / folder / f"{name}.npz", image=image, truth="[]", heatmap=np.zeros(1))
    assert bench.same_surfaces(tmp_path / "a", tmp_path / "b")
    changed = image.copy()
    changed[3, 4, 1] = 1
    np.savez(tmp_path / "b" / "s2.npz", image=changed, truth="[]", heatmap=np.zeros(1))
    assert not bench.same_surfaces(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "s2.npz").unlink()
    assert not bench.same_surfaces(tmp_path / "a", tmp_path / "b")
    assert not bench.same_surfaces(tmp_path / "a", tmp_path / "empty")


def test_mining_and_the_partner_reach_micromet_train(tmp_path: Path) -> None:
    from pipeline.benchmarks.review_finetune_train import train_command
    from pipeline.cli.train import add_arguments

    args = argparse.Namespace(
        tiles_per_deposit=128, epochs=2, lr=3e-4, seed=0, negatives_per_slide=512, finetune_partner=True,
        control=False,
    )  # fmt: skip
    command = train_command(args, tmp_path, tmp_path / "batch", tmp_path / "patches")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parsed = parser.parse_args(command[command.index("train") + 1 :])
    assert parsed.review_negatives_per_slide == 512 and parsed.finetune_partner
    assert parsed.out == str(tmp_path / "train")
    args.negatives_per_slide, args.finetune_partner = 0, False
    plain = train_command(args, tmp_path, tmp_path / "b", tmp_path / "p")
    assert "--review-negatives-per-slide" not in plain and "--finetune-partner" not in plain
    args.control = True
    command = train_command(args, tmp_path, tmp_path / "b", tmp_path / "p")
    control = parser.parse_args(command[command.index("train") + 1 :])
    assert control.reviews is None and control.patches == [str(tmp_path / "p")]


def test_the_summary_says_how_the_fine_tuning_ran() -> None:
    settings = {"epochs": 2, "lr": 3e-4, "tiles_per_deposit": 128, "negatives_per_slide": 512,
                "finetune_partner": True}  # fmt: skip
    line = settings_line({"settings": settings})
    assert line == (
        "fine-tuning: 2 epochs, lr 0.0003, 128 review tiles per reviewed finding, "
        "512 hard negatives mined per reviewed slide, partner fine-tuned too"
    )
    settings.update(negatives_per_slide=0, finetune_partner=False)
    assert settings_line({"settings": settings}).endswith("per reviewed finding, no tissue mined")
    assert settings_line({}) == ""  # summaries written before settings were recorded
    settings["control"] = True
    assert "CONTROL: the train-part patches alone, no reviews" in settings_line({"settings": settings})
