"""Issue 22 audit: items of the hostile-input list that had no test of their own, or whose test
stopped short of the command a user runs (docs/hostile_inputs.md lists every item and its test).

Unreadable files and folders are simulated by refusing the system calls that read them (the
tests may run as root, whom file permissions do not stop); a full disk by a write that raises
ENOSPC.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import draw_tissue_rgb, run_cli, write_pyramid_tiff, write_untrained_checkpoint
from PIL import Image

SLIDE_MPP = 0.5


def _run(args: list[object]) -> tuple[int, str]:
    return run_cli(args)


def _one_error(code: int, err: str, *names: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 1 and len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert all(name in lines[0] for name in names), lines[0]
    return lines[0]


def _slide(path: Path) -> Path:
    return write_pyramid_tiff(path, draw_tissue_rgb(600, 400), SLIDE_MPP, n_levels=1)


def _patch_folder(root: Path) -> Path:
    for name in ("tumor", "normal"):
        (root / name).mkdir(parents=True)
        for index in range(2):
            Image.fromarray(draw_tissue_rgb(48, 48, seed=index)).save(root / name / f"{index}.png")
    return root


# --- unreadable files and folders ----------------------------------------------------------------


@contextlib.contextmanager
def _unreadable(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Iterator[None]:
    """``folder`` as a folder without read and search permission: listing it, and reaching
    anything inside it, fail with EACCES (as for a user other than root)."""
    real_scandir, real_listdir, real_stat = os.scandir, os.listdir, os.stat

    def refused(path: Any) -> bool:
        return isinstance(path, (str, os.PathLike)) and Path(os.fspath(path)) == folder

    def inside(path: Any) -> bool:
        return isinstance(path, (str, os.PathLike)) and folder in Path(os.fspath(path)).parents

    def scandir(path: Any = ".") -> Any:
        if refused(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    def listdir(path: Any = ".") -> Any:
        if refused(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_listdir(path)

    def stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if inside(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "scandir", scandir)
        patch.setattr(os, "listdir", listdir)
        patch.setattr(os, "stat", stat)
        yield


def test_an_unreadable_slide_is_called_unreadable_not_an_unsupported_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slide = _slide(tmp_path / "locked.tif")
    real_open = Path.open

    def refuse(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == slide:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    line = _one_error(*_run(["info", "--no-tissue", slide]), "locked.tif", "cannot read the file (Permission")
    assert "not a supported slide format" not in line


def test_an_unreadable_folder_is_one_line_in_every_command_that_reads_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = write_untrained_checkpoint(tmp_path / "model.pt", mpp=SLIDE_MPP)
    slide = _slide(tmp_path / "s1.tif")
    patches = _patch_folder(tmp_path / "patches")
    locked = tmp_path / "locked"
    locked.mkdir()
    train = ["--out", tmp_path / "run", "--epochs", "1", "--device", "cpu", "--workers", "0", "--no-progress"]
    commands: list[list[object]] = [
        ["info", locked],
        ["infer", locked, "--out", tmp_path / "batch", "--model", model],
        ["classify", locked, "--mpp", "0.5", "--model", model, "--out", tmp_path / "scores.csv"],
        ["train", "--slides", locked, *train],
        ["train", "--patches", locked, "--patch-mpp", "1.0", *train],
        # an unread annotation folder made every slide a normal one
        ["train", "--slides", slide, "--annotations", locked, "--patches", patches, "--patch-mpp", "1.0",
         *train],
        ["report", locked],
        ["evaluate", "--batch", locked, "--out", tmp_path / "evaluation"],
        ["review", "import", locked, "s1", tmp_path / "review.geojson", "--reviewer", "Dr A"],
    ]
    with _unreadable(monkeypatch, locked):
        for command in commands:
            _one_error(*_run(command), str(locked), "cannot read", "Permission denied")
    for left in ("batch", "scores.csv", "run", "evaluation"):
        assert not (tmp_path / left).exists(), left


def test_an_unreadable_class_folder_of_a_patch_folder_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.errors import SlideOpenError
    from pipeline.training.datasets import list_patch_folder

    patches = _patch_folder(tmp_path / "patches")
    assert len(list_patch_folder(patches)) == 4
    unread = pytest.raises(SlideOpenError, match="tumor: cannot read")
    with _unreadable(monkeypatch, patches / "tumor"), unread:
        list_patch_folder(patches)  # once trained as normal-only data, silently


@pytest.mark.parametrize("command", ["infer", "train", "stage"])
def test_an_unreadable_config_is_one_line_in_every_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    config = tmp_path / "locked.toml"
    config.write_text("[tissue]\n")
    real_open = Path.open

    def refuse(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == config:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(self, *args, **kwargs)

    categories = tmp_path / "categories.csv"
    categories.write_text("slide,category\npatient_001_node_0.tif,macro\n")
    args: dict[str, list[object]] = {
        "infer": ["infer", _slide(tmp_path / "s1.tif"), "--out", tmp_path / "out"],
        "train": ["train", "--patches", _patch_folder(tmp_path / "p"), "--patch-mpp", "1.0", "--out",
                  tmp_path / "out", "--no-progress"],
        "stage": ["stage", "--categories", categories, "--out", tmp_path / "out"],
    }
    monkeypatch.setattr(Path, "open", refuse)
    _one_error(*_run([*args[command], "--config", config]), "locked.toml", "cannot read the config file")
    assert not (tmp_path / "out").exists()


# --- a full disk ---------------------------------------------------------------------------------


class _FullDisk(io.RawIOBase):
    """A file on a disk with 4 KiB left: writes succeed until they would pass it, then fail."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._room = 4096

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= size
        return size

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def test_a_full_disk_while_saving_a_checkpoint_is_one_error_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save writing straight into a file on a full disk raised RuntimeError ("unexpected
    pos"), which reached the user as an internal error."""
    from pipeline.errors import CheckpointError
    from pipeline.models import ModelCard, build_model, save_checkpoint

    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0)
    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: _FullDisk(fd))
    with pytest.raises(CheckpointError, match=r"last\.pt: cannot write checkpoint .*No space left on device"):
        save_checkpoint(tmp_path / "last.pt", build_model("micronet"), card)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_train_on_a_disk_that_fills_at_the_checkpoint_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fdopen = os.fdopen

    def fill_at_checkpoints(fd: int, *args: Any, **kwargs: Any) -> Any:
        if ".pt." in os.readlink(f"/proc/self/fd/{fd}"):
            return _FullDisk(fd)
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fill_at_checkpoints)
    out = tmp_path / "run"
    patches = _patch_folder(tmp_path / "patches")
    code, err = _run(["train", "--patches", patches, "--patch-mpp", "1.0", "--out", out, "--epochs", "1",
                      "--device", "cpu", "--workers", "0", "--no-progress", "--tile-size-px", "32",
                      "--batch-size", "2"])
    _one_error(code, err, "last.pt", "No space left on device")
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.pt"))


def test_train_out_that_cannot_be_made_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    """An unwritable --out (here below a file, which stops root too)."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep")
    patches = _patch_folder(tmp_path / "patches")
    code, err = _run(["train", "--patches", patches, "--patch-mpp", "1.0", "--out", blocker / "run",
                      "--epochs", "1", "--device", "cpu", "--workers", "0", "--no-progress",
                      "--tile-size-px", "32"])
    _one_error(code, err, "notes.txt/run", "cannot write here")
    assert blocker.read_text() == "keep"


# --- Ray -------------------------------------------------------------------------------------------


@pytest.mark.ray
def test_infer_on_a_ray_address_nobody_answers_is_one_line_and_no_batch_folder(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = write_untrained_checkpoint(tmp_path / "model.pt", mpp=SLIDE_MPP)
    out = tmp_path / "batch"
    code, err = _run(["infer", _slide(tmp_path / "s1.tif"), "--out", out, "--model", model,
                      "--ray", f"127.0.0.1:{port}"])
    _one_error(code, err, f"127.0.0.1:{port}", "within 10 s")
    assert not out.exists()


# --- model cards ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [({"metrics": {"val_auc": float("nan")}}, "metrics"),
     ({"metrics": {"val_auc": float("inf")}}, "metrics"),
     ({"qc_reference": {"od_purple": [0.0, 1.0]}}, "qc_reference")],
)
def test_infer_refuses_a_checkpoint_whose_card_has_nan_metrics_or_unknown_qc_names(
    tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    import torch

    payload = torch.load(write_untrained_checkpoint(tmp_path / "model.pt", mpp=SLIDE_MPP), weights_only=True)
    payload["card"] = {**payload["card"], **change}
    edited = tmp_path / "edited.pt"
    torch.save(payload, edited)
    out = tmp_path / "batch"
    code, err = _run(["infer", _slide(tmp_path / "s1.tif"), "--out", out, "--model", edited])
    _one_error(code, err, "edited.pt", named)
    assert not out.exists()


# --- the viewer and DNS rebinding -------------------------------------------------------------------


@pytest.fixture(scope="module")
def viewer_batch_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.viewer_batch import build_viewer_batch, synthetic_slide

    return build_viewer_batch(tmp_path_factory.mktemp("batch"), synthetic_slide(tmp_path_factory)).root


REBINDING_HOSTS = ("rebind.evil.example", "localhost.evil.example", "127.0.0.1.nip.io", "evil@127.0.0.1",
                   "127.0.0.1@evil.example", "", "0.0.0.0:8000", "127.1:8000", "localhost.",
                   "[::ffff:127.0.0.1]")


def test_tiles_and_deep_zoom_refuse_a_host_that_is_not_this_machine(viewer_batch_root: Path) -> None:
    """The tile and Deep Zoom routes too (the rebinding test in test_viewer_review covers the
    pages, the slide list and heatmaps), and Host spellings that only look local."""
    from pipeline.review.viewer.app import create_app
    from tests.viewer_batch import GOOD_ID

    client = create_app(viewer_batch_root).test_client()
    for url in (f"/dz/{GOOD_ID}.dzi", f"/dz/{GOOD_ID}_files/0/0_0.jpeg", f"/api/slide/{GOOD_ID}"):
        assert client.get(url, headers={"Host": "LOCALHOST:8000"}).status_code == 200, url
        codes = {host: client.get(url, headers={"Host": host}).status_code for host in REBINDING_HOSTS}
        assert set(codes.values()) == {403}, (url, codes)


# --- a large single-level image through infer ---------------------------------------------------------


@pytest.mark.slow
def test_infer_on_a_16k_single_level_tiff_keeps_memory_far_below_its_level0(tmp_path: Path) -> None:
    """Issue 22: ``infer`` on a 32768² single-level TIFF did not finish in 150 s (``info`` took
    19 GB). By hand on this code: 32768² in 4 min 19 s on 2 busy cores at nice 19 (117 s of
    CPU), 1.0 GB peak RSS. Here 16384² (level 0 alone is 805 MB as RGB, 4,096 tiles scored),
    held to the bound of the ``info`` test in test_plain_images.py."""
    import json
    import subprocess
    import sys

    import numpy as np
    import tifffile

    side = 16384
    tile = np.full((512, 512, 3), (205, 120, 175), np.uint8)  # tissue with small glass holes
    tile[128:384, 128:384] = 238
    path = tmp_path / "single_level.tif"
    tifffile.imwrite(path, (tile for _ in range((side // 512) ** 2)), shape=(side, side, 3), dtype=np.uint8,
                     tile=(512, 512), photometric="rgb", compression="zlib",
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    model = write_untrained_checkpoint(tmp_path / "model.pt", mpp=2.0)
    out = tmp_path / "batch"
    code = (
        "import resource, sys; from pipeline.cli import main; code = main(sys.argv[1:]); "
        "print('RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code, "infer", str(path), "--out", str(out), "--model", str(model), "--device",
         "cpu", "--workers", "0", "--accept-qc-failures", "--no-refine", "--no-cells", "--quiet"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)}, timeout=900, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "single_level" / "report.json").read_text())
    assert report["slide"]["dimensions"] == [side, side]
    assert sum(report["inference"]["tiles_by_mode"].values()) > 3000
    rss_mb = int(result.stdout.split("RSS_KB")[1]) / 1024
    assert rss_mb < 2400, f"infer used {rss_mb:.0f} MB"


@pytest.mark.parametrize("kind", ["file", "link_to_folder"])
def test_overwrite_with_a_file_or_link_as_the_result_folder_keeps_its_target_and_no_trash(
    tmp_path: Path, kind: str
) -> None:
    """A file or a link (to someone's folder) where a slide's result folder goes: the link is
    replaced, what it points to is kept, and no ``.<id>.old-*`` entry is left behind."""
    out = tmp_path / "batch"
    out.mkdir()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "a.txt").write_text("not micromet's")
    if kind == "file":
        (out / "s1").write_text("x")
    else:
        (out / "s1").symlink_to(precious)
    model = write_untrained_checkpoint(tmp_path / "model.pt", mpp=SLIDE_MPP)
    code, _ = _run(["infer", _slide(tmp_path / "s1.tif"), "--out", out, "--model", model, "--device", "cpu",
                    "--workers", "0", "--no-refine", "--no-cells", "--accept-qc-failures", "--overwrite"])
    assert code == 0 and (out / "s1" / "report.json").is_file() and not (out / "s1").is_symlink()
    assert [p.name for p in precious.iterdir()] == ["a.txt"]
    assert (precious / "a.txt").read_text() == "not micromet's"
    assert not list(out.glob(".s1.*"))


# --- damaged batch folders read by report, evaluate and the viewer -------------------------------------


def _batch_folder(root: Path, report: dict[str, Any]) -> Path:
    """A one-slide batch folder ("s1", done) holding ``report`` as its report.json."""
    import json

    (root / "s1").mkdir(parents=True)
    manifest = {"slides": {"s1": {"status": "done", "output_dir": "s1", "path": str(root / "gone.tif")}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "s1" / "report.json").write_text(json.dumps(report))
    return root


def test_a_batch_manifest_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    batch = _batch_folder(tmp_path / "batch", {"slide_id": "s1", "category": "negative", "deposits": []})
    (batch / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    reference = tmp_path / "reference.csv"
    reference.write_text("slide,class\ns1,Tumor\n")
    evaluate = ["evaluate", "--batch", batch, "--reference", reference, "--out", tmp_path / "evaluation"]
    for command in (["report", batch, "--out", tmp_path / "report.html"], evaluate):
        _one_error(*_run(command), "manifest.json", "nested too deeply")
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "evaluation").exists()


@pytest.mark.parametrize("field", ["deposits", "candidates"])
def test_a_report_whose_deposits_are_not_a_list_is_named_in_the_report_and_viewer(
    tmp_path: Path, field: str
) -> None:
    """``report`` drew such a slide's outlines and ended in an internal error."""
    from pipeline.review.viewer.app import create_app

    report = {"slide_id": "s1", "category": "micro", "score": 0.9, "deposits": [],
              "slide": {"mpp": SLIDE_MPP, "dimensions": [600, 400]}, field: "x"}
    batch = _batch_folder(tmp_path / "batch", report)
    html = tmp_path / "report.html"
    code, err = _run(["report", batch, "--out", html])
    assert code == 0 and "Traceback" not in err and "internal error" not in err, err
    assert f"&#39;{field}&#39; is not a list; re-run the slide" in html.read_text()
    listing = create_app(batch).test_client().get("/api/slides", headers={"Host": "127.0.0.1"}).get_json()
    (slide,) = listing["slides"]
    assert f"'{field}' is not a list" in str(slide)


@pytest.mark.parametrize("pattern", ["{root}/**/*.tif", "{root}/*/*.tif"])
def test_a_glob_reaching_an_unreadable_folder_refuses_rather_than_leaving_its_slides_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pattern: str
) -> None:
    from pipeline.batch.local import collect_slides
    from pipeline.errors import SlideOpenError

    root = tmp_path / "slides"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / f"{name}.tif").write_bytes(b"not read here")
    (root / ".hidden").mkdir()
    item = pattern.format(root=root)
    assert [p.name for p in collect_slides([item])] == ["a.tif", "b.tif"]
    with _unreadable(monkeypatch, root / ".hidden"):  # glob never lists hidden folders: not an error
        assert len(collect_slides([item])) == 2
    with _unreadable(monkeypatch, root / "b"), pytest.raises(SlideOpenError) as caught:
        collect_slides([item])
    message = str(caught.value)
    assert message.startswith(f"{root / 'b'}: cannot read this folder (Permission denied)")
    assert "fix its permissions or narrow the pattern" in message and "\n" not in message
    with pytest.raises(SlideOpenError, match="no slide files found"):  # a missing root is not unreadable
        collect_slides([str(tmp_path / "nowhere" / "**" / "*.tif")])
