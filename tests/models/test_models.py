"""Tests for pipeline.models.architectures and pipeline.models.device."""

from __future__ import annotations

import inspect
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.hub
from torch import nn

from pipeline.errors import CheckpointError, ConfigError, MicrometError
from pipeline.models import architectures, device
from pipeline.models.architectures import (
    ARCHITECTURES,
    MicroNet,
    UnknownArchitectureError,
    available_architectures,
    build_model,
)
from pipeline.models.device import DeviceUnavailableError, autocast_dtype, choose_device

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED_ARCHITECTURES = {
    "dense96",
    "dense96_wide",
    "micronet",
    "pcamnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
}


def _logits(model: nn.Module, batch: int, size_px: int) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.inference_mode():
        return model(torch.rand(batch, 3, size_px, size_px))  # type: ignore[no-any-return]


def test_registry_lists_every_supported_architecture() -> None:
    assert set(ARCHITECTURES) == EXPECTED_ARCHITECTURES
    assert available_architectures() == tuple(sorted(EXPECTED_ARCHITECTURES))


@pytest.mark.parametrize("name", sorted(EXPECTED_ARCHITECTURES))
def test_every_architecture_gives_two_logits_at_96_and_224_px(name: str) -> None:
    model = build_model(name).eval()
    small = _logits(model, batch=2, size_px=96)
    assert small.shape == (2, 2)
    assert small.dtype == torch.float32
    assert torch.isfinite(small).all()
    if name == "resnet50":
        return  # the slowest backbone on 2 CPU cores; its 224 px path is resnet34's
    large = _logits(model, batch=1, size_px=224)
    assert large.shape == (1, 2)
    assert torch.isfinite(large).all()


@pytest.mark.parametrize("name", ["dense96", "dense96_wide"])
def test_dense_architectures_score_a_region_exactly_as_its_tiles(name: str) -> None:
    """A region of 96 + 32 k px gives, cell for cell, the logits of its 96 px tiles at a 32 px
    stride (valid convolutions, aligned pools), with BatchNorm statistics that are not 0 / 1."""
    torch.manual_seed(1)
    model = build_model(name)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    model.eval()
    region = torch.rand(1, 3, 96 + 32 * 4, 96 + 32 * 3)
    crops = [(32 * row, 32 * col) for row in range(5) for col in range(4)]
    tiles = torch.stack([region[0, :, y : y + 96, x : x + 96] for y, x in crops])
    with torch.inference_mode():
        dense = model.dense_logits(region)  # type: ignore[operator]
        tile_logits = model(tiles)
    assert dense.shape == (1, 2, 5, 4)
    torch.testing.assert_close(dense[0].permute(1, 2, 0).reshape(-1, 2), tile_logits, atol=1e-4, rtol=0)


def test_num_classes_sets_the_head_width() -> None:
    model = build_model("mobilenet_v3_small", num_classes=3).eval()
    assert _logits(model, batch=1, size_px=64).shape == (1, 3)


def test_num_classes_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_model("micronet", num_classes=1)


def test_unknown_architecture_lists_the_available_names() -> None:
    with pytest.raises(UnknownArchitectureError) as info:
        build_model("vgg16")
    message = str(info.value)
    assert "vgg16" in message
    for name in EXPECTED_ARCHITECTURES:
        assert name in message
    # Callers may catch it as either a micromet error or a plain ValueError.
    assert isinstance(info.value, CheckpointError)
    assert isinstance(info.value, ValueError)


def test_micronet_is_small_and_runs_on_any_tile_of_32_px_or_more() -> None:
    model = MicroNet().eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 < n_params < 1_000_000
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2)
        assert model(torch.rand(3, 3, 40, 57)).shape == (3, 2)
        assert model(torch.rand(1, 3, 300, 300)).shape == (1, 2)


def test_micronet_trains_one_step() -> None:
    torch.manual_seed(0)
    model = MicroNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tiles = torch.rand(4, 3, 48, 48)
    labels = torch.tensor([0, 1, 0, 1])
    before = model.classifier.weight.detach().clone()
    loss = nn.functional.cross_entropy(model(tiles), labels)
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    assert not torch.equal(before, model.classifier.weight)


@pytest.mark.parametrize("name", ["micronet", "resnet18"])
def test_channels_last_gives_the_same_logits(name: str) -> None:
    model = build_model(name).eval()
    tiles = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = model(tiles)
        model = model.to(memory_format=torch.channels_last)
        got = model(tiles.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_building_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access while building a model")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    try:
        import torchvision.models._api as tv_api
    except ImportError:  # pragma: no cover - layout of a future torchvision
        tv_api = None
    if tv_api is not None and hasattr(tv_api, "load_state_dict_from_url"):
        monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse)
    with torch.device("meta"):  # the builders run in full; meta only skips weight init cost
        for name in sorted(EXPECTED_ARCHITECTURES):
            assert isinstance(build_model(name), nn.Module)


def test_architectures_source_only_asks_for_no_weights() -> None:
    source = inspect.getsource(architectures)
    assert set(re.findall(r"weights=(\w+)", source)) == {"None"}
    assert "IMAGENET1K" not in source
    assert "load_state_dict_from_url" not in source


def test_importing_pipeline_does_not_import_torch() -> None:
    code = "import sys, pipeline; sys.exit(1 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=False)
    assert result.returncode == 0


# --- device choice -----------------------------------------------------------------------


def _no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "_mps_available", lambda: False)


def test_auto_falls_back_to_cpu_without_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_accelerators(monkeypatch)
    assert choose_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "_mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto").type == "mps"


def test_cpu_is_always_available() -> None:
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("requested", ["cuda", "cuda:0", "mps"])
def test_explicit_missing_accelerator_says_what_to_use(
    monkeypatch: pytest.MonkeyPatch, requested: str
) -> None:
    _no_accelerators(monkeypatch)
    with pytest.raises(DeviceUnavailableError) as info:
        choose_device(requested)
    assert requested in str(info.value)
    assert "--device cpu" in str(info.value)
    assert isinstance(info.value, MicrometError)


def test_cuda_index_beyond_the_device_count_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert choose_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceUnavailableError, match="only 2 CUDA"):
        choose_device("cuda:2")


@pytest.mark.parametrize("requested", ["tpu", "cuda:x", "", "gpu"])
def test_unknown_device_string_lists_the_choices(requested: str) -> None:
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        choose_device(requested)


def test_cpu_precision_auto_and_fp32_mean_no_autocast() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") is None
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_scoring_auto_precision_on_cpu_follows_native_bf16(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype | None
) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "native_cpu_bf16", lambda: native)
    assert device.scoring_autocast_dtype(cpu, "auto") is expected
    assert device.scoring_autocast_dtype(cpu, "fp32") is None
    assert device.scoring_autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert autocast_dtype(cpu, "auto") is None  # training keeps fp32 on the CPU
    assert device.precision_name(device.scoring_autocast_dtype(cpu, "auto")) == ("bf16" if native else "fp32")


def test_cpu_fp16_is_refused_with_alternatives() -> None:
    with pytest.raises(ConfigError, match="bf16, fp32 or auto"):
        autocast_dtype(torch.device("cpu"), "fp16")


def test_cuda_auto_precision_uses_bf16_when_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(device, "_cuda_bf16_supported", lambda: True)
    assert autocast_dtype(cuda, "auto") is torch.bfloat16
    assert autocast_dtype(cuda, "fp16") is torch.float16
    assert autocast_dtype(cuda, "fp32") is None
    monkeypatch.setattr(device, "_cuda_bf16_supported", lambda: False)
    assert autocast_dtype(cuda, "auto") is torch.float16
    with pytest.raises(ConfigError, match="bfloat16"):
        autocast_dtype(cuda, "bf16")


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ConfigError, match="precision='int8'"):
        autocast_dtype(torch.device("cpu"), "int8")


def test_pcamnet_has_about_a_million_parameters_and_scores_pcam_and_smaller_tiles() -> None:
    model = build_model("pcamnet").eval()
    n_parameters = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n_parameters <= 1_500_000
    for size_px in (64, 96):
        logits = _logits(model, 3, size_px)
        assert logits.shape == (3, 2) and torch.isfinite(logits).all()
