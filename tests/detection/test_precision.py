"""The automatic scoring precision on a CPU is measured on the model at hand, not assumed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.detection import precision
from pipeline.detection.precision import BF16_MIN_SPEEDUP, PROBE_REPEATS, probe_cpu_precision, scoring_dtype


def _timer(fp32_s: float, bf16_s: float) -> Iterator[float]:
    """A clock that makes every fp32 call take fp32_s and every bf16 call bf16_s."""
    now = 0.0
    for step in ([fp32_s] * (PROBE_REPEATS + 1)) + ([bf16_s] * (PROBE_REPEATS + 1)):
        yield now
        now += step
        yield now


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()


@pytest.mark.parametrize(
    ("fp32_s", "bf16_s", "chosen"),
    [(1.0, 0.5, "bf16"), (1.0, 0.99 / BF16_MIN_SPEEDUP, "bf16"), (1.0, 0.95, "fp32"), (1.0, 2.0, "fp32")],
)
def test_bf16_is_chosen_only_where_the_probe_measures_it_clearly_faster(
    fp32_s: float, bf16_s: float, chosen: str
) -> None:
    clock = _timer(fp32_s, bf16_s)
    probe = probe_cpu_precision(_model(), 24, timer=lambda: next(clock))
    assert probe.chosen == chosen
    assert probe.fp32_s == pytest.approx(fp32_s) and probe.bf16_s == pytest.approx(bf16_s)
    assert probe.to_dict()["chosen"] == chosen


def test_auto_probes_only_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: False)
    assert scoring_dtype(_model(), 24, cpu, "auto") == (None, None)  # emulated bf16: fp32, no probe
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: True)
    assert scoring_dtype(_model(), 24, cpu, "fp32") == (None, None)  # the user's choice stands
    assert scoring_dtype(_model(), 24, cpu, "bf16") == (torch.bfloat16, None)
    dtype, probe = scoring_dtype(_model(), 24, cpu, "auto")  # real timings on this machine
    assert probe is not None and probe.fp32_s > 0 and probe.bf16_s > 0
    assert dtype == (torch.bfloat16 if probe.chosen == "bf16" else None)


def test_the_report_records_the_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import json

    from conftest import draw_tissue_rgb, write_pyramid_tiff, write_untrained_checkpoint

    from pipeline.batch.analyze import run_local_batch
    from pipeline.batch.settings import AnalysisSettings

    slide = write_pyramid_tiff(tmp_path / "node.tif", draw_tissue_rgb(900, 700, seed=0), mpp=0.5)
    model = write_untrained_checkpoint(tmp_path / "model.pt")
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: True)
    measured = precision.PrecisionProbe(0.2, 0.1, "bf16")
    monkeypatch.setattr(precision, "probe_cpu_precision", lambda model, size: measured)
    overrides = {
        "inference": {"device": "cpu", "num_workers": 0, "batch_size": 16, "cascade": False},
        "qc": {"accept_qc_failures": True},  # a drawn blob, not lymph node
        "deposits": {"refine": False, "count_cells": False},
    }
    context = AnalysisSettings(model_path=model, overrides=overrides).build()
    (outcome,) = run_local_batch([slide], tmp_path / "out", context)
    assert outcome.status == "done", outcome.error
    inference = json.loads((tmp_path / "out" / "node" / "report.json").read_text())["inference"]
    assert inference["precision"] == "bf16"
    assert inference["precision_probe"] == {"fp32_s": 0.2, "bf16_s": 0.1, "chosen": "bf16", "tiles": 32}


def test_one_probe_decides_for_the_tile_and_the_dense_form_of_a_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.config import InferenceConfig
    from pipeline.detection.inference import prepare_model
    from pipeline.models.architectures import Dense96
    from tests.detection.test_dense_inference import card_for

    calls: list[int] = []

    def probe(model: nn.Module, size: int) -> precision.PrecisionProbe:
        calls.append(size)
        return precision.PrecisionProbe(0.2, 0.1, "bf16")

    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: True)
    monkeypatch.setattr(precision, "probe_cpu_precision", probe)
    model = Dense96(channels=(8, 8, 16, 16, 16)).eval()
    prepared = prepare_model(model, card_for(), InferenceConfig(device="cpu"))
    assert prepared.dense is not None and calls == [card_for().tile_size_px]
    assert prepared.scorer.dtype == prepared.dense.dtype == torch.bfloat16
    assert prepared.dense.probe is prepared.scorer.probe
