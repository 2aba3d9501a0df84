"""Shared test fixtures: the shared reference data and tiny generated pyramidal TIFFs."""

from __future__ import annotations

import contextlib
import io
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import SHARED_DATA_DIR
from pipeline.synthetic.pyramid_tiff import draw_tissue_rgb as draw_tissue_rgb  # tests import both from here
from pipeline.synthetic.pyramid_tiff import write_pyramid_tiff as write_pyramid_tiff
from tests.slow_tests import is_listed_slow

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def require_shared_data(relative: str = "") -> Path:
    """Path under ../shared/data; skip outside CI and fail under CI=true when it is missing."""
    path = SHARED_DATA_DIR / relative
    if not path.exists():
        message = f"{path} not found: the reference data lives in ../shared/data beside the repo"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True, scope="session")
def default_sigint_handler() -> Iterator[None]:
    """Python's own SIGINT handler for the whole session. A runner started in the background
    inherits SIGINT ignored; the batch then leaves SIGTERM alone and a test that sends itself
    SIGTERM (the batch's clean stop) would end the whole test run instead."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def shared_data() -> Path:
    """The ../shared/data folder (skips outside CI, fails under CI=true if missing)."""
    return require_shared_data()


@pytest.fixture
def tiny_slide(tmp_path: Path) -> Iterator[Path]:
    """A 1500 x 1100 px pyramidal TIFF at 0.5 µm/px with one tissue blob."""
    yield write_pyramid_tiff(tmp_path / "tiny.tif", draw_tissue_rgb(1500, 1100), mpp=0.5)


def run_cli(args: list[object]) -> tuple[int, str]:
    """``micromet ARGS`` in this process: exit code (argparse's SystemExit included) and stderr."""
    from pipeline.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def write_untrained_checkpoint(path: Path, mpp: float = 2.0, threshold: float = 0.5) -> Path:
    """A seeded, untrained MicroNet checkpoint (32 px tiles at ``mpp``) for plumbing tests."""
    import torch

    from pipeline.models import ModelCard, build_model, save_checkpoint

    torch.manual_seed(0)
    card = ModelCard(
        architecture="micronet",
        tile_size_px=32,
        mpp=mpp,
        threshold=threshold,
        training_data="untrained test model",
    )
    return save_checkpoint(path, build_model("micronet"), card)


def write_overflowing_checkpoint(path: Path, mpp: float) -> Path:
    """A MicroNet checkpoint with finite weights whose activations overflow: its output is NaN."""
    import torch

    from pipeline.models import ModelCard, build_model, save_checkpoint

    model = build_model("micronet")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.mul_(1e20)
    return save_checkpoint(path, model, ModelCard(architecture="micronet", tile_size_px=32, mpp=mpp))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` the tests listed in tests/slow_tests.py (before ``-m`` selects)."""
    for item in items:
        if is_listed_slow(item.nodeid):
            item.add_marker(pytest.mark.slow)
