"""Progress of ``micromet infer``: live bars on a terminal (a pseudo-terminal here), plain
lines when stderr is not one, nothing with --quiet."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch
from conftest import draw_tissue_rgb, write_pyramid_tiff

from pipeline.batch.local import SlideOutcome
from pipeline.cli.progress import BatchProgress, ProgressMode, choose_mode
from pipeline.models import ModelCard, build_model, save_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _terminal() -> tuple[int, int]:
    """A pseudo-terminal (master, slave) of 120 x 40 characters, as a real one has a size."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    return master, slave


def _read_all(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0.2)[0]:
        try:
            data = os.read(fd, 65536)
        except OSError:  # the terminal's other side closed
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def _drive(progress: BatchProgress) -> None:
    """Two slides: the first scores 100 tiles in four steps and is done, the second fails."""
    tiles = progress.tile_callback("node_0")
    assert tiles is not None
    tiles.start(100)
    for _ in range(4):
        tiles(25)
    progress.slide_done(SlideOutcome("node_0", "node_0.tif", "done", category="micro", seconds=2.0))
    progress.tile_callback("node_1")
    progress.slide_done(SlideOutcome("node_1", "node_1.tif", "failed", error="cannot open", seconds=0.1))


def test_mode_follows_the_terminal_and_quiet() -> None:
    master, slave = _terminal()
    try:
        with os.fdopen(slave, "w", closefd=False) as terminal:
            assert choose_mode(False, terminal) is ProgressMode.BARS
            assert choose_mode(True, terminal) is ProgressMode.QUIET
    finally:
        os.close(master)
        os.close(slave)
    assert choose_mode(False, io.StringIO()) is ProgressMode.LINES
    assert choose_mode(True, io.StringIO()) is ProgressMode.QUIET


def test_bars_on_a_pseudo_terminal_show_tiles_and_slides_done_and_failed() -> None:
    master, slave = _terminal()
    try:
        with os.fdopen(slave, "w", closefd=False) as terminal:
            with BatchProgress(2, choose_mode(False, terminal), terminal) as progress:
                _drive(progress)
            terminal.flush()
        shown = _read_all(master)
    finally:
        os.close(master)
        os.close(slave)
    assert "\r" in shown  # redrawn in place: a live bar
    assert "node_0:" in shown and "/100 [" in shown and "tile/s" in shown  # tiles of the slide
    assert "slides" in shown and "2/2" in shown
    assert "1 done, 1 failed" in shown


def test_plain_lines_when_stderr_is_not_a_terminal() -> None:
    stream = io.StringIO()
    with BatchProgress(2, choose_mode(False, stream), stream) as progress:
        _drive(progress)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines == [
        "[1/2] node_0: 100 tiles to score",
        "node_0: 25/100 tiles scored (25 %)",
        "node_0: 50/100 tiles scored (50 %)",
        "node_0: 75/100 tiles scored (75 %)",
        "[1/2] node_0: done (micro) in 2.0 s; 1 done, 0 failed",
        "[2/2] node_1: failed: cannot open in 0.1 s; 1 done, 1 failed",
    ]


@pytest.mark.parametrize(
    ("updates", "expected"),
    [
        ([100], ["100/100 tiles scored (100 %)"]),  # all tiles in one update: one line, not three
        (
            [30, 40, 30],
            ["30/100 tiles scored (30 %)", "70/100 tiles scored (70 %)", "100/100 tiles scored (100 %)"],
        ),
        ([10, 10, 10], ["30/100 tiles scored (30 %)"]),
    ],
)
def test_plain_lines_state_the_share_actually_scored(updates: list[int], expected: list[str]) -> None:
    stream = io.StringIO()
    progress = BatchProgress(1, ProgressMode.LINES, stream)
    tiles = progress.tile_callback("node_0")
    assert tiles is not None
    tiles.start(100)
    for n_scored in updates:
        tiles(n_scored)
    lines = stream.getvalue().splitlines()[1:]
    assert lines == [f"node_0: {line}" for line in expected]


def test_quiet_prints_nothing() -> None:
    stream = io.StringIO()
    with BatchProgress(2, choose_mode(True, stream), stream) as progress:
        assert progress.tile_callback("node_0") is None
        progress.slide_done(SlideOutcome("node_0", "node_0.tif", "done", seconds=1.0))
    assert stream.getvalue() == ""


@pytest.fixture(scope="module")
def infer_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("progress")
    slide = write_pyramid_tiff(folder / "node_0.tif", draw_tissue_rgb(500, 400, seed=1), mpp=0.5)
    torch.manual_seed(0)
    card = ModelCard(
        architecture="micronet", tile_size_px=32, mpp=2.0, threshold=0.5, training_data="untrained test model"
    )
    model = folder / "test.pt"
    save_checkpoint(model, build_model("micronet"), card)
    return [
        sys.executable, "-m", "pipeline", "infer", str(slide), "--model", str(model), "--device", "cpu",
        "--workers", "0", "--no-refine", "--no-cells",
    ]


@pytest.mark.slow
def test_infer_shows_live_progress_on_a_terminal_only(infer_args: list[str], tmp_path: Path) -> None:
    master, slave = _terminal()
    try:
        run = subprocess.run(
            [*infer_args, "--out", str(tmp_path / "tty")], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=slave, cwd=REPO, timeout=600, check=False,
        )
        shown = _read_all(master)
    finally:
        os.close(master)
        os.close(slave)
    assert run.returncode in (0, 1), shown
    assert "\r" in shown and "slides" in shown and "1/1" in shown
    assert "done, " in shown and "failed" in shown
    piped = subprocess.run(
        [*infer_args, "--out", str(tmp_path / "pipe")], stdin=subprocess.DEVNULL,
        capture_output=True, text=True, cwd=REPO, timeout=600, check=False,
    )
    assert "\r" not in piped.stderr
    assert "[1/1] node_0: " in piped.stderr
    assert "1 done, 0 failed" in piped.stderr or "0 done, 1 failed" in piped.stderr
    quiet = subprocess.run(
        [*infer_args, "--out", str(tmp_path / "quiet"), "--quiet"], stdin=subprocess.DEVNULL,
        capture_output=True, text=True, cwd=REPO, timeout=600, check=False,
    )
    assert "[1/1]" not in quiet.stderr and "\r" not in quiet.stderr
