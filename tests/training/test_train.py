"""Training: a tiny run on synthetic slides checkpoints, stops, resumes exactly, and its
checkpoint loads for inference; settings resolve and round-trip through config.toml."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import shapely
import torch

from pipeline.cli import main as cli_main
from pipeline.errors import ConfigError
from pipeline.models import load_checkpoint, load_training_state
from pipeline.slides.annotations import read_annotations
from pipeline.synthetic.generate import PlantedDeposit, SynthConfig, generate_slide
from pipeline.training.config import (
    TrainSettings,
    settings_from_dict,
    settings_to_dict,
    settings_to_toml,
)
from pipeline.training.sampling import read_sample_index
from pipeline.training.train import lr_factor, main


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny synthetic slides with ASAP XML beside them: two with a deposit, one without."""
    folder = tmp_path_factory.mktemp("slides")
    for seed, deposits in ((1, (0.15,)), (2, (0.15,)), (3, ())):
        config = SynthConfig(
            width_px=400,
            height_px=320,
            mpp=2.0,
            seed=seed,
            tile_size_px=128,
            deposits=tuple(PlantedDeposit(d) for d in deposits),
        )
        generate_slide(config, folder / f"node_{seed}.tif")
    return folder


def _settings(slide_dir: Path, out: Path, **train: Any) -> TrainSettings:
    values = {
        "train": {
            "out_dir": str(out),
            "tile_size_px": 32,
            "mpp": 2.0,
            "epochs": 2,
            "batch_size": 8,
            "num_workers": 0,
            "device": "cpu",
            "lr": 0.01,
            **train,
        },
        "data": {"slides": [str(slide_dir)], "val_fraction": 0.4},
        "sampling": {"tumor_per_slide": 8, "normal_per_slide": 8, "normal_margin_um": 16.0},
    }
    return settings_from_dict(values)


@pytest.fixture(scope="module")
def full_run(slide_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted two-epoch run."""
    out = tmp_path_factory.mktemp("full")
    result = main(_settings(slide_dir, out))
    assert not result.stopped_early and result.epochs_done == 2
    return out


def test_a_run_writes_config_index_checkpoints_and_metrics(full_run: Path) -> None:
    assert {"config.toml", "samples.csv", "last.pt", "best.pt", "metrics.csv"} <= {
        p.name for p in full_run.iterdir()
    }
    with (full_run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["0.0", "1.0"]
    assert all(float(row["n_train"]) > 0 and row["val_auc"] != "" for row in rows)
    samples = read_sample_index(full_run / "samples.csv")
    by_slide: dict[str, set[str]] = {}
    for sample in samples:
        by_slide.setdefault(sample.slide, set()).add(sample.split)
    assert all(len(splits) == 1 for splits in by_slide.values())  # split by slide
    assert {"train", "val"} == {next(iter(s)) for s in by_slide.values()}


def test_the_checkpoint_loads_for_inference_with_a_complete_card(full_run: Path) -> None:
    model, card = load_checkpoint(full_run / "best.pt")
    assert not model.training
    assert (card.architecture, card.tile_size_px, card.mpp) == ("micronet", 32, 2.0)
    assert 0.0 < card.threshold < 1.0 and "val_auc" in card.metrics
    assert "3 slides" in card.training_data
    with torch.inference_mode():
        logits = model(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 2)


def test_micromet_infer_scores_a_slide_with_the_trained_checkpoint(
    full_run: Path, slide_dir: Path, tmp_path: Path
) -> None:
    code = cli_main(
        [
            "infer",
            str(slide_dir / "node_1.tif"),
            "--out",
            str(tmp_path / "batch"),
            "--model",
            str(full_run / "best.pt"),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--no-refine",
            "--no-cells",
        ]
    )
    assert code == 0
    assert (tmp_path / "batch" / "node_1" / "report.json").exists()


@pytest.mark.slow
def test_an_interrupted_run_resumes_exactly_where_it_stopped(
    full_run: Path, slide_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "interrupted"
    settings = _settings(slide_dir, out, max_steps=5)
    stopped = main(settings)
    assert stopped.stopped_early and stopped.global_step == 5
    state = load_training_state(out / "last.pt")
    steps_per_epoch = state["global_step"] - state["step_in_epoch"]
    assert (state["epoch"], state["global_step"]) == (1, 5) and 0 < state["step_in_epoch"] < 5
    assert steps_per_epoch == 5 - state["step_in_epoch"]
    adam_steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {5}

    resumed_settings = dataclasses.replace(
        settings, train=dataclasses.replace(settings.train, max_steps=None)
    )
    resumed = main(resumed_settings, resume=out / "last.pt")
    assert not resumed.stopped_early and resumed.epochs_done == 2
    final = load_training_state(out / "last.pt")
    assert final["global_step"] == 2 * steps_per_epoch
    assert int(next(iter(final["optimizer"]["state"].values()))["step"]) == final["global_step"]
    reference, _ = load_checkpoint(full_run / "last.pt")
    continued, _ = load_checkpoint(out / "last.pt")
    for (name, a), b in zip(reference.state_dict().items(), continued.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # same weights as the uninterrupted run


def test_hard_negative_mining_adds_normal_tiles_outside_tumor(slide_dir: Path, tmp_path: Path) -> None:
    settings = _settings(
        slide_dir,
        tmp_path / "mining",
        epochs=2,
        hard_negative_rounds=1,
        hard_negative_candidates_per_slide=12,
        hard_negatives_per_slide=4,
        hard_negative_min_probability=0.0,
    )
    main(settings)
    mined = [
        s for s in read_sample_index(tmp_path / "mining" / "samples_round1.csv") if s.kind == "hard_negative"
    ]
    assert mined and all(s.label == 0 and s.split == "train" for s in mined)
    for sample in mined:
        xml = Path(sample.slide).with_suffix(".xml")
        tumor = [shapely.Polygon(a.vertices_xy) for a in read_annotations(xml)]
        assert not any(p.contains(shapely.Point(sample.x_px, sample.y_px)) for p in tumor)
    assert load_training_state(tmp_path / "mining" / "last.pt")["round"] == 1


def test_settings_round_trip_through_config_toml(full_run: Path) -> None:
    stored = tomllib.loads((full_run / "config.toml").read_text())
    settings = settings_from_dict(stored)
    assert settings_to_dict(settings) == load_training_state(full_run / "last.pt")["config"]
    assert settings_from_dict(tomllib.loads(settings_to_toml(settings))) == settings


def test_settings_errors_name_the_source_and_setting() -> None:
    with pytest.raises(ConfigError, match=r"run.toml: unknown setting 'epoch'"):
        settings_from_dict({"train": {"epoch": 3}, "data": {"slides": ["x"]}}, source="run.toml")
    with pytest.raises(ConfigError, match="no training data"):
        settings_from_dict({})
    with pytest.raises(ConfigError, match="patch_mpp"):
        settings_from_dict({"data": {"patches": ["p"]}})
    with pytest.raises(ConfigError, match="unknown sections"):
        settings_from_dict({"trian": {}})
    with pytest.raises(ConfigError, match="resnet9000"):
        settings_from_dict({"train": {"architecture": "resnet9000"}, "data": {"slides": ["x"]}})


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[train]\nepochs = 3\nlr = 0.5\n[data]\nslides = ["a"]\n')
    settings = settings_from_dict(tomllib.loads(path.read_text()), {"train": {"lr": 0.01, "epochs": None}})
    assert (settings.train.epochs, settings.train.lr) == (3, 0.01)


def test_resume_with_other_settings_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(["train", "--resume", str(tmp_path / "last.pt"), "--lr", "0.1"])
    assert code == 2
    assert "--lr" in capsys.readouterr().err


def _one_epoch_config(path: Path, slide_dir: Path) -> Path:
    """A TOML for a one-epoch run on the conftest slides (32 px tiles at 2 µm/px, 8 tiles a slide)."""
    path.write_text(
        f"[train]\ntile_size_px = 32\nmpp = 2.0\nepochs = 1\nbatch_size = 8\nnum_workers = 0\n"
        f'[data]\nslides = ["{slide_dir}"]\nval_fraction = 0.4\n'
        f"[sampling]\ntumor_per_slide = 4\nnormal_per_slide = 4\n"
    )
    return path


def test_cli_train_runs_from_a_config_file_and_reports_checkpoints(
    slide_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _one_epoch_config(tmp_path / "run.toml", slide_dir)
    out = tmp_path / "cli_run"
    code = cli_main(["train", "--config", str(config), "--out", str(out), "--device", "cpu", "--no-progress"])
    assert code == 0
    assert "finished: 1 epochs" in capsys.readouterr().out
    assert tomllib.loads((out / "config.toml").read_text())["train"]["out_dir"] == str(out)


def test_a_copied_run_resumes_in_its_own_folder_and_leaves_the_original_alone(
    slide_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _one_epoch_config(tmp_path / "run.toml", slide_dir)
    first = tmp_path / "first"
    command = ["train", "--config", str(config), "--out", str(first), "--device", "cpu", "--no-progress"]
    assert cli_main(command) == 0
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    assert cli_main(["train", "--resume", str(copy / "last.pt"), "--epochs", "2", "--no-progress"]) == 0
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before  # the original run is untouched
    assert load_training_state(copy / "last.pt")["epoch"] == 2
    assert tomllib.loads((copy / "config.toml").read_text())["train"]["out_dir"] == str(copy)
    assert f"last {copy / 'last.pt'}" in capsys.readouterr().out


def test_learning_rate_schedule_warms_up_then_decays() -> None:
    assert lr_factor("cosine", 0.0, 0.1) == pytest.approx(1e-3)
    assert lr_factor("cosine", 0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor("cosine", 1.0, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("onecycle", 0.3, 0.0) == pytest.approx(1.0)
    assert lr_factor("onecycle", 1.0, 0.0) == pytest.approx(1e-4)
    assert math.isclose(lr_factor("cosine", 0.55, 0.1), 0.5, abs_tol=1e-9)


def test_cli_train_reads_webp_patch_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for name, value in (("tumor", 70), ("normal", 215)):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for index in range(4):
                pixels = torch.full((48, 48, 3), value + index, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"p{index}.webp", lossless=True)
    out = tmp_path / "webp_run"
    code = cli_main(
        ["train", "--patches", str(tmp_path / "train"), "--val-patches", str(tmp_path / "val"),
         "--patch-mpp", "0.972", "--tile-size-px", "32", "--model-mpp", "0.972", "--epochs", "1",
         "--batch-size", "4", "--workers", "0", "--out", str(out), "--device", "cpu", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    assert "finished: 1 epochs" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert float(rows[-1]["n_train"]) == 8 and float(rows[-1]["val_n"]) == 8


def test_train_prints_a_line_per_epoch_when_stderr_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for name, value in (("tumor", 70), ("normal", 215)):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for index in range(5):
                pixels = torch.full((48, 48, 3), value + index, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"p{index}.png")
    out = tmp_path / "run"
    code = cli_main(
        ["train", "--patches", str(tmp_path / "train"), "--val-patches", str(tmp_path / "val"),
         "--patch-mpp", "0.972", "--tile-size-px", "32", "--model-mpp", "0.972", "--epochs", "2",
         "--batch-size", "4", "--workers", "0", "--out", str(out), "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err  # captured: not a terminal, so no bars
    epoch_lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1", "epoch 2"]
    assert all(" over 2 batches, val AUC " in line and ", val loss " in line for line in epoch_lines)
    assert "2 of the 10 training patches sit out each epoch" in caplog.text  # 10 patches, batch 4


def test_epoch_line_and_help_name_the_real_flags() -> None:
    from pipeline.cli.train import epoch_line, flag_name

    line = epoch_line(2, [0.5, 0.3], {"val_auc": 0.91234, "val_loss": 0.3333, "epoch": 2.0})
    assert line == "epoch 3: train loss 0.400 over 2 batches, val AUC 0.912, val loss 0.333"
    assert epoch_line(0, [], {}) == "epoch 1: no training batch"
    assert flag_name("num_workers") == "--workers" and flag_name("max_steps") == "--max-steps"
    parser = argparse.ArgumentParser()
    from pipeline.cli import train as train_command

    train_command.add_arguments(parser)
    text = parser.format_help()
    assert "--num-workers" not in text and "--workers N" in text
