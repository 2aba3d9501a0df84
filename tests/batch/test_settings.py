"""Tests of pipeline/batch/settings.py: one frozen, picklable AnalysisSettings built once from
the flags, and the AnalysisContext built from it reading the user's choices through it."""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path
from typing import Any

import pytest
from conftest import write_untrained_checkpoint

from pipeline.batch.local import settings_key
from pipeline.batch.settings import AnalysisSettings
from pipeline.cli import build_parser

# The settings() keys report.json, run.json and the resume key are made of, in order.
SETTINGS_KEYS = [
    "model_sha256", "threshold", "seed_threshold", "confirm_threshold", "confirm_model", "size_calibrated",
    "mpp_override", "mpp_by_slide", "force_mpp", "whole_slide", "qc", "tissue", "tiling",
    "inference", "deposits",
]  # fmt: skip


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_checkpoint(tmp_path_factory.mktemp("model") / "test.pt")


def full_settings(model_path: Path) -> AnalysisSettings:
    return AnalysisSettings(
        model_path=model_path,
        config_path=None,
        overrides={"inference": {"device": "cpu", "num_workers": 0}, "deposits": {"threshold": 0.6}},
        mpp_override=0.25,
        force_mpp=True,
        mpp_by_slide={"node_b": 0.3, "node_a": 0.4},
        whole_slide=True,
    )


def test_settings_survive_a_pickle_round_trip_and_build_the_same_context(model_path: Path) -> None:
    settings = full_settings(model_path)
    copy = pickle.loads(pickle.dumps(settings))
    assert type(copy) is AnalysisSettings and copy == settings
    assert settings_key(copy.build().settings()) == settings_key(settings.build().settings())


def test_settings_from_infer_flags_hold_every_choice_once(model_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    argv = ["infer", "s.tif", "--out", str(tmp_path / "out"), "--model", str(model_path),
            "--config", str(config), "--mpp", "0.5", "--force-mpp", "--no-tissue",
            "--device", "cpu", "--threshold", "0.6", "--stride-px", "16"]  # fmt: skip
    settings = AnalysisSettings.from_flags(vars(build_parser().parse_args(argv)), {"s": 0.45})
    assert (settings.model_path, settings.config_path) == (model_path, config)
    assert (settings.mpp_override, settings.force_mpp, settings.whole_slide) == (0.5, True, True)
    assert settings.mpp_by_slide == {"s": 0.45}
    assert settings.overrides["deposits"]["threshold"] == 0.6
    assert settings.overrides["tiling"]["stride_px"] == 16
    assert settings.overrides["inference"]["batch_size"] is None  # not given
    assert settings.device == "cpu"


def test_flags_left_out_mean_the_defaults() -> None:
    settings = AnalysisSettings.from_flags({})
    assert (settings.model_path, settings.config_path, settings.mpp_override) == (None, None, None)
    assert all(value is None for section in settings.overrides.values() for value in section.values())
    assert (settings.force_mpp, settings.whole_slide, dict(settings.mpp_by_slide)) == (False, False, {})
    assert settings.device == "auto"


def test_settings_are_frozen_and_keep_their_own_copies() -> None:
    overrides: dict[str, dict[str, Any]] = {"deposits": {"threshold": 0.6}}
    per_slide = {"a": 0.3}
    settings = AnalysisSettings(overrides=overrides, mpp_by_slide=per_slide)
    overrides["deposits"]["threshold"] = 0.1
    per_slide["b"] = 0.4
    assert settings.overrides["deposits"]["threshold"] == 0.6
    assert dict(settings.mpp_by_slide) == {"a": 0.3}
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.mpp_override = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"overrides": {"deposit": {"threshold": 0.5}}}, r"overrides=\['deposit'\]"),
     ({"mpp_override": 0.0}, "mpp_override=0.0"),
     ({"mpp_override": math.nan}, "mpp_override=nan"),
     ({"mpp_by_slide": {"a": -0.25}}, r"mpp_by_slide\['a'\]=-0.25")],
)
def test_bad_settings_name_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AnalysisSettings(**fields)


def test_absolute_settings_name_absolute_files(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(model_path.parent)
    settings = AnalysisSettings(model_path=Path(model_path.name), config_path=Path("run.toml")).absolute()
    assert settings.model_path == model_path.resolve()
    assert settings.config_path == model_path.parent.resolve() / "run.toml"


def test_the_context_reads_the_users_choices_through_its_settings(model_path: Path) -> None:
    settings = full_settings(model_path)
    context = settings.build(device="cpu")
    assert context.analysis is settings
    assert (context.force_mpp, context.whole_slide) == (True, True)
    assert context.user_mpp("node_a") == (0.4, "--mpp-csv")
    assert context.user_mpp("node_c") == (0.25, "--mpp")
    resolved = context.settings()
    assert list(resolved) == SETTINGS_KEYS
    assert resolved["mpp_by_slide"] == {"node_a": 0.4, "node_b": 0.3}  # sorted
    assert (resolved["mpp_override"], resolved["force_mpp"], resolved["whole_slide"]) == (0.25, True, True)
    assert resolved["deposits"]["threshold"] == 0.6


def test_a_device_given_to_build_leaves_the_settings_and_the_key_alone(model_path: Path) -> None:
    settings = dataclasses.replace(full_settings(model_path), overrides={"inference": {"num_workers": 0}})
    on_cpu = settings.build(device="cpu")
    assert on_cpu.inference.device == "cpu"
    assert settings.overrides == {"inference": {"num_workers": 0}}
    assert settings_key(on_cpu.settings()) == settings_key(settings.build().settings())
