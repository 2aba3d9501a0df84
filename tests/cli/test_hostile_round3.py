"""Issue 22 (hostile input, round 3): damaged slides that looked like glass, batch files a slide
could replace, concurrent runs, a Ray address that never answers, models near chance, and the
last-resort handler for anything unforeseen."""

from __future__ import annotations

import csv
import json
import socket
import struct
from pathlib import Path

import pytest
import tifffile
from conftest import draw_tissue_rgb, write_pyramid_tiff, write_untrained_checkpoint

from pipeline.cli import main
from pipeline.errors import ConfigError, OutputError, SlideOpenError, SlideQCError

SLIDE_MPP = 0.5


def _slide(path: Path) -> Path:
    return write_pyramid_tiff(path, draw_tissue_rgb(1500, 1100), SLIDE_MPP)


def _zero_level0_tiles(path: Path, tiles: list[int] | None = None) -> Path:
    """Zero the TileByteCounts of level 0 (all, or the given tile indices) in place."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["TileByteCounts"]  # type: ignore[union-attr]
        offset, count = tag.valueoffset, tag.count
    for index in range(count) if tiles is None else tiles:
        struct.pack_into("<I", data, offset + 4 * index, 0)
    path.write_bytes(bytes(data))
    return path


def _double_every_level(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            for name in ("ImageWidth", "ImageLength"):
                tag = page.tags[name]  # type: ignore[union-attr]
                struct.pack_into("<H" if tag.dtype == 3 else "<I", data, tag.valueoffset, tag.value * 2)
    path.write_bytes(bytes(data))
    return path


def _infer(slides: list[Path], out: Path, model: Path, *extra: str) -> int:
    return main(
        [
            "infer",
            *map(str, slides),
            "--out",
            str(out),
            "--model",
            str(model),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--no-refine",
            "--no-cells",
            "--quiet",
            *extra,
        ]
    )


# --- tissue unreadable at the scoring level ---------------------------------------------------


def test_empty_level0_tiles_under_tissue_are_found_in_the_tile_table(tmp_path: Path) -> None:
    from pipeline.slides.integrity import check_tile_tables

    intact = _slide(tmp_path / "intact.tif")
    assert check_tile_tables(intact) == []
    # the 3 x 3 tiles around the slide's centre (12 tiles across level 0)
    centre = [row * 12 + col for row in (3, 4, 5) for col in (5, 6, 7)]
    damaged = _zero_level0_tiles(_slide(tmp_path / "damaged.tif"), centre)
    empty = check_tile_tables(damaged)
    assert len(empty) == 9 and {t.level for t in empty} == {0}
    assert min(t.x_px for t in empty) == 5 * 128 and min(t.y_px for t in empty) == 3 * 128


def test_tissue_blank_at_the_scoring_level_fails_the_slide_naming_where(tmp_path: Path) -> None:
    from pipeline.config import TilingConfig, TissueConfig
    from pipeline.slides.integrity import check_integrity
    from pipeline.slides.qc import QCResult
    from pipeline.slides.slide import open_slide
    from pipeline.slides.tiling import plan_tiles
    from pipeline.slides.tissue import detect_tissue

    centre = [row * 12 + col for row in (3, 4, 5) for col in (5, 6, 7)]
    for name, tiles in (("all.tif", None), ("centre.tif", centre)):
        path = _zero_level0_tiles(_slide(tmp_path / name), tiles)
        with open_slide(path) as slide:
            tissue = detect_tissue(slide, TissueConfig())
            grid = plan_tiles(slide.dimensions, slide.mpp, tissue, TilingConfig(tile_size_px=32, mpp=0.5))
            empty_qc = QCResult((), 0, 1.0)
            with pytest.raises(SlideQCError, match=f"{name}: tissue unreadable.*TileByteCounts 0"):
                check_integrity(slide, tissue, grid, 0.5, 32, empty_qc, accept_qc_failures=False)
            accepted = check_integrity(slide, tissue, grid, 0.5, 32, empty_qc, accept_qc_failures=True)
            assert not accepted.passed and "tissue unreadable" in accepted.warning
    with open_slide(_slide(tmp_path / "intact.tif")) as slide:
        tissue = detect_tissue(slide, TissueConfig())
        grid = plan_tiles(slide.dimensions, slide.mpp, tissue, TilingConfig(tile_size_px=32, mpp=0.5))
        assert check_integrity(slide, tissue, grid, 0.5, 32, QCResult((), 0, 1.0), False).passed


def test_a_slide_blank_at_the_scoring_level_warns_in_every_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slide = _zero_level0_tiles(_slide(tmp_path / "blank_level0.tif"))
    model = write_untrained_checkpoint(tmp_path / "model.pt", mpp=SLIDE_MPP)
    out = tmp_path / "batch"
    assert _infer([slide], out, model, "--accept-qc-failures") == 0
    report = json.loads((out / "blank_level0" / "report.json").read_text())
    assert "tissue unreadable at full resolution" in report["qc"]["warning"]
    (row,) = csv.DictReader((out / "summary.csv").open())
    assert "tissue unreadable at full resolution" in row["qc_warning"]
    assert "tissue unreadable at full resolution" in capsys.readouterr().out


def test_every_level_doubled_in_the_header_is_refused(tmp_path: Path) -> None:
    from pipeline.slides.integrity import check_tile_tables

    slide = _double_every_level(_slide(tmp_path / "doubled.tif"))
    with pytest.raises(SlideOpenError, match=r"doubled\.tif: TIFF level 0 declares 3000 x 2200 px"):
        check_tile_tables(slide)
    model = write_untrained_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "batch"
    assert _infer([slide], out, model, "--accept-qc-failures") == 1
    entry = json.loads((out / "manifest.json").read_text())["slides"]["doubled"]
    assert entry["status"] == "failed" and "tile table lists 108" in entry["error"]


# --- the batch folder --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["manifest.json.tif", "summary.csv.tif", "patients.csv.tif"])
def test_a_slide_named_like_a_batch_file_never_replaces_it(tmp_path: Path, name: str) -> None:
    from pipeline.batch.folder import unique_slide_ids

    slide = _slide(tmp_path / name)
    ids = unique_slide_ids([slide, tmp_path / "manifest_json.tif"])
    assert ids[slide] == name.removesuffix(".tif").replace(".", "_")
    assert len(set(ids.values())) == 2
    out = tmp_path / "batch"
    model = write_untrained_checkpoint(tmp_path / "model.pt")
    _infer([slide], out, model, "--accept-qc-failures")
    assert (out / "manifest.json").is_file() and (out / "summary.csv").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["slides"]) == [ids[slide]]


def test_a_second_run_on_a_locked_batch_folder_refuses_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.batch.local import lock_batch_folder

    out = tmp_path / "batch"
    out.mkdir()
    model = write_untrained_checkpoint(tmp_path / "model.pt")
    slide = _slide(tmp_path / "s1.tif")
    with lock_batch_folder(out):  # a first run is still writing
        assert _infer([slide], out, model, "--accept-qc-failures") == 1
        err = capsys.readouterr().err
        assert "another micromet run is writing to this batch folder" in err
        assert len([line for line in err.splitlines() if ": error:" in line]) == 1
        assert not (out / "manifest.json").exists() and not (out / "s1").exists()
    held = lock_batch_folder(out)
    with pytest.raises(OutputError, match="another micromet run"), held, lock_batch_folder(out):
        pass
    assert _infer([slide], out, model, "--accept-qc-failures") == 0  # the lock went with the run


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_overwrite_with_a_file_or_link_as_the_partial_folder(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "batch"
    out.mkdir()
    target = tmp_path / "keep.txt"
    target.write_text("not micromet's")
    partial = out / ".s1.partial"
    if kind == "file":
        partial.write_text("x")
    else:
        partial.symlink_to(target)
    model = write_untrained_checkpoint(tmp_path / "model.pt")
    assert _infer([_slide(tmp_path / "s1.tif")], out, model, "--accept-qc-failures", "--overwrite") == 0
    assert (out / "s1" / "report.json").is_file() and target.read_text() == "not micromet's"


def test_sigterm_ends_the_batch_like_ctrl_c_and_removes_the_staging_folder(tmp_path: Path) -> None:
    import os
    import signal

    from pipeline.batch.local import run_batch

    seen: list[bool] = []

    def analyze(path: Path, slide_id: str, folder: Path) -> dict[str, object]:
        (folder / "heatmap.npy").write_bytes(b"half")
        seen.append(True)
        os.kill(os.getpid(), signal.SIGTERM)
        return {"category": "negative"}

    out = tmp_path / "batch"
    # Earlier tests (Ray) may leave handlers of their own: start from Python's defaults, so a
    # SIGTERM the batch does not catch can never end the test run itself.
    previous = (
        signal.signal(signal.SIGTERM, signal.SIG_DFL),
        signal.signal(signal.SIGINT, signal.default_int_handler),
    )
    try:
        with pytest.raises(KeyboardInterrupt):
            run_batch([_slide(tmp_path / "s1.tif")], out, analyze, {"k": 1})
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert seen == [True] and not list(out.glob(".*.partial")) and not (out / "s1").exists()


def test_an_mpp_csv_that_is_a_link_loop_is_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop = tmp_path / "mpp.csv"
    loop.symlink_to(loop)
    slide = _slide(tmp_path / "s1.tif")
    code = main(["infer", str(slide), "--out", str(tmp_path / "b"), "--mpp-csv", str(loop)])
    err = capsys.readouterr().err
    assert code == 1 and "mpp.csv" in err and "Traceback" not in err


def test_a_ray_address_that_never_answers_gives_up_after_a_stated_time() -> None:
    from pipeline.batch.distributed import check_reachable

    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError, match=r"127.0.0.1:\d+' within 10 s"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="within 10 s"):
        check_reachable("ray://127.0.0.1:1")
    check_reachable("auto")  # left to Ray


# --- the model's own validation figures ---------------------------------------------------------


def test_a_model_near_chance_or_without_figures_is_warned_about(tmp_path: Path) -> None:
    from pipeline.models import ModelCard
    from pipeline.models.card import card_quality_warning

    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0)
    assert "no validation AUC" in card_quality_warning(card)
    near_chance = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0, metrics={"val_auc": 0.56})
    assert "val_auc is 0.56, near chance" in card_quality_warning(near_chance)
    good = ModelCard(
        architecture="micronet",
        tile_size_px=32,
        mpp=2.0,
        metrics={"pcam_val_auc": 0.95, "pcam_test_auc": 0.96},
    )
    assert card_quality_warning(good) == ""


def test_the_model_warning_reaches_report_summary_and_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_untrained_checkpoint(tmp_path / "model.pt")  # its card has no metrics
    out = tmp_path / "batch"
    assert _infer([_slide(tmp_path / "s1.tif")], out, model, "--accept-qc-failures") == 0
    report = json.loads((out / "s1" / "report.json").read_text())
    assert "no validation AUC" in report["model"]["warning"]
    (row,) = csv.DictReader((out / "summary.csv").open())
    assert "no validation AUC" in row["model_warning"]
    assert "warning" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metrics": {"val_auc": float("nan")}}, "metrics"),
        ({"qc_reference": {"od_purple": [0.0, 1.0]}}, "qc_reference"),
    ],
)
def test_a_card_with_nan_metrics_or_unknown_qc_reference_names_is_refused(
    change: dict[str, object], message: str
) -> None:
    from pipeline.errors import CheckpointError
    from pipeline.models import ModelCard

    with pytest.raises(CheckpointError, match=message):
        ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0, **change)  # type: ignore[arg-type]


# --- the last resort ------------------------------------------------------------------------------


def test_an_unexpected_exception_is_one_line_naming_a_crash_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.cli.info as info

    def broken(args: object) -> int:
        raise ZeroDivisionError("a bug\nover two lines")

    monkeypatch.setattr(info, "run", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    assert main(["info", "x.svs"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("micromet info: internal error: ZeroDivisionError: a bug over two lines")
    (log,) = tmp_path.glob("micromet-crash-*.log")
    assert str(log) in err and "Traceback" in log.read_text() and "ZeroDivisionError" in log.read_text()


def test_info_refuses_a_header_with_every_level_doubled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slide = _double_every_level(_slide(tmp_path / "doubled.tif"))
    assert main(["info", "--no-tissue", str(slide)]) == 1
    err = capsys.readouterr().err
    assert "doubled.tif: TIFF level 0 declares 3000 x 2200 px" in err and "Traceback" not in err
    assert main(["info", "--no-tissue", str(_slide(tmp_path / "intact.tif"))]) == 0


def test_the_tile_tables_of_a_directory_chain_that_loops_are_read_once(tmp_path: Path) -> None:
    from bad_inputs import _tag_patches

    from pipeline.slides.integrity import check_tile_tables

    slide = _slide(tmp_path / "intact.tif")
    looping = tmp_path / "loop.tif"
    looping.write_bytes(_tag_patches(slide)["ifd_loops_to_itself"](slide.read_bytes()))
    assert check_tile_tables(looping) == []  # level 0 once, its tiles all hold data
