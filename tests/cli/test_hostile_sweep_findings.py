"""Bad inputs found by the hostile sweep (issue 22, scripts/hostile_sweep.py), each refused in
one line naming what to fix: no traceback, no hang, nothing of the user's replaced."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from conftest import draw_tissue_rgb, run_cli, write_untrained_checkpoint
from PIL import Image


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err and "internal error" not in err, err
    return [line for line in err.splitlines() if "error:" in line]


@pytest.mark.parametrize(
    "args",
    [
        ["info", "slide.tif", "--mpp=--"],
        ["classify", "patch.png", "--mpp=--", "--out", "scores.csv"],
        ["evaluate", "--batch", "batch", "--out", "eval", "--seed=--"],
        ["evaluate", "--batch", "batch", "--out", "eval", "--tolerance-um=--"],
        ["report", "batch", "--thumbnail-px=--"],
        ["synth", "--out", "synth", "--deposit=--"],
        ["view", "batch", "--port=--"],
        ["demo", "--seed=--"],
    ],
)
def test_a_flag_given_double_dash_as_its_value_is_a_usage_error(args: list[str], tmp_path: Path) -> None:
    # argparse reads "--flag=--" as an empty list without calling the flag's type
    code, err = run_cli([a if a.startswith("-") or a in ("info", "classify", "evaluate", "report", "synth",
                                                          "view", "demo") else tmp_path / a for a in args])
    lines = _error_lines(err)
    assert code == 2 and len(lines) == 1 and "'--' is not a value" in lines[0], err


@pytest.mark.parametrize("command", [
    ["info"], ["stage", "--out", "x.csv", "--categories"], ["infer", "--out", "out"],
    ["train", "--out", "run", "--config"], ["classify", "--mpp", "0.5", "--out", "x.csv"],
])
def test_a_path_too_long_for_the_system_is_one_error_line_naming_it(
    command: list[str], tmp_path: Path
) -> None:
    args = [tmp_path / a if a in ("x.csv", "out", "run") else a for a in command]
    code, err = run_cli([*args, tmp_path / ("n" * 300)])
    lines = _error_lines(err)
    assert code == 1 and len(lines) == 1 and "nnnnnnnn" in lines[0], err


def test_classify_refuses_a_folder_out_and_a_fifo_out_and_keeps_the_fifo(tmp_path: Path) -> None:
    model = write_untrained_checkpoint(tmp_path / "model.pt")
    patch = tmp_path / "patch.png"
    Image.fromarray(draw_tissue_rgb(64, 64)).save(patch)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for out in (tmp_path, fifo):
        code, err = run_cli(["classify", patch, "--mpp", "0.5", "--model", model, "--device", "cpu",
                             "--no-progress", "--out", out])
        lines = _error_lines(err)
        assert code == 1 and len(lines) == 1 and "cannot write here" in lines[0], err
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


@pytest.mark.parametrize("command", [["report"], ["view", "--no-browser", "--port", "0"]])
def test_a_batch_folder_that_is_a_symlink_loop_is_refused(command: list[str], tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    code, err = run_cli([*command, loop])
    lines = _error_lines(err)
    assert code == 1 and len(lines) == 1 and str(loop) in lines[0], err


def test_an_mpp_csv_that_is_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    from pipeline.errors import ConfigError
    from pipeline.slides.metadata import read_mpp_csv

    fifo = tmp_path / "mpp.csv"
    os.mkfifo(fifo)

    def release() -> None:  # were the FIFO opened, this ends the read (empty) instead of hanging
        fd = os.open(fifo, os.O_WRONLY)
        os.close(fd)

    opener = threading.Timer(10.0, release)
    opener.daemon = True
    opener.start()
    with pytest.raises(ConfigError, match="not a regular file"):
        read_mpp_csv(fifo)
    opener.cancel()


def test_report_refuses_an_out_that_would_replace_the_batch_manifest(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    manifest = batch / "manifest.json"
    manifest.write_text('{"slides": {}}\n')
    for name in ("manifest.json", "summary.csv"):
        (batch / name).touch(exist_ok=True)
        code, err = run_cli(["report", batch, "--out", batch / name])
        lines = _error_lines(err)
        assert code == 1 and len(lines) == 1 and "would replace a file of the batch" in lines[0], err
    assert manifest.read_text() == '{"slides": {}}\n'


@pytest.mark.parametrize("args", [
    ["info", ""], ["infer", "slide.tif", "--out="], ["stage", "--categories", "c.csv", "--out", ""],
])
def test_an_empty_value_is_a_usage_error_not_the_current_folder(args: list[str]) -> None:
    code, err = run_cli(args)
    lines = _error_lines(err)
    assert code == 2 and len(lines) == 1 and "is empty; give a value" in lines[0], err


def test_demo_refuses_a_bad_model_before_writing_any_slide(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, err = run_cli(["demo", "--out", out, "--model", tmp_path / "missing.pt"])
    lines = _error_lines(err)
    assert code == 1 and len(lines) == 1 and "missing.pt" in lines[0], err
    assert not any(out.rglob("*.tif")) and not any(out.rglob("*.svs"))


def test_bench_refuses_a_work_dir_that_is_a_file_and_a_bad_model_before_its_child(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    (tmp_path / "empty.pt").touch()
    for extra in (["--work-dir", precious], ["--work-dir", tmp_path / "w", "--model", tmp_path / "none.pt"],
                  ["--work-dir", tmp_path / "w", "--model", tmp_path / "empty.pt"]):
        code, err = run_cli(["bench", "--skip-tiatoolbox", *extra])
        lines = _error_lines(err)
        assert code == 1 and len(lines) == 1, err
    assert precious.read_text() == "keep"


def test_stage_refuses_an_out_that_would_replace_the_batch_manifest(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    manifest = batch / "manifest.json"
    manifest.write_text("{}\n")
    code, err = run_cli(["stage", "--batch", batch, "--out", manifest])
    lines = _error_lines(err)
    assert code == 1 and len(lines) == 1 and "would replace a file of the batch" in lines[0], err
    assert manifest.read_text() == "{}\n"


def test_classify_refuses_an_out_that_is_one_of_its_patches(tmp_path: Path) -> None:
    model = write_untrained_checkpoint(tmp_path / "model.pt")
    patch = tmp_path / "patch.png"
    Image.fromarray(draw_tissue_rgb(64, 64)).save(patch)
    before = patch.read_bytes()
    code, err = run_cli(["classify", patch, "--mpp", "0.5", "--model", model, "--out", patch])
    lines = _error_lines(err)
    assert code == 1 and len(lines) == 1 and "one of the patches" in lines[0], err
    assert patch.read_bytes() == before


def test_stage_refuses_a_config_section_it_does_not_read(tmp_path: Path) -> None:
    config = tmp_path / "stage.toml"
    config.write_text("[stage]\nscheme = 'ajcc'\n")  # misspelt [staging]: the scheme would go unread
    categories = tmp_path / "categories.csv"
    categories.write_text("slide,category\npatient_000_node_0,negative\n")
    code, err = run_cli(["stage", "--categories", categories, "--config", config, "--out",
        tmp_path / "out.csv"])
    lines = _error_lines(err)
    assert code == 1 and len(lines) == 1 and "unknown sections ['stage']" in lines[0], err


def test_a_patient_mapping_with_a_nul_byte_is_refused_naming_the_line(tmp_path: Path) -> None:
    from pipeline.errors import StagingError
    from pipeline.staging.tables import read_patient_mapping_csv

    path = tmp_path / "patients.csv"
    path.write_text("slide,patient\npatient_000_node_0,pat\x00ient\n")
    with pytest.raises(StagingError, match=r"patients\.csv: line 2: a NUL byte"):
        read_patient_mapping_csv(path)


def test_a_reference_csv_that_is_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    from pipeline.errors import EvaluationError
    from pipeline.evaluation.inputs import read_camelyon16_reference_csv, read_camelyon17_stages_csv

    fifo = tmp_path / "reference.csv"
    os.mkfifo(fifo)

    def release() -> None:
        os.close(os.open(fifo, os.O_WRONLY))

    for reader in (read_camelyon16_reference_csv, read_camelyon17_stages_csv):
        opener = threading.Timer(10.0, release)
        opener.daemon = True
        opener.start()
        with pytest.raises(EvaluationError, match="not a regular file"):
            reader(fifo)
        opener.cancel()


@pytest.mark.parametrize(
    "flag", ["--model-mpp=inf", "--mpp=nan", "--width=0", "--repeats=-1", "--timeout-s=inf"]
)
def test_bench_refuses_a_number_out_of_range_before_its_child_generates_a_slide(
    flag: str, tmp_path: Path
) -> None:
    code, err = run_cli(["bench", flag, "--skip-tiatoolbox", "--work-dir", tmp_path / "w"])
    lines = _error_lines(err)
    assert code == 1 and len(lines) == 1 and flag.split("=")[0] in lines[0], err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", [["info"], ["infer", "--mpp", "0.5", "--out", "out"]])
def test_a_newline_in_a_slide_name_cannot_split_the_error_line(command: list[str], tmp_path: Path) -> None:
    slide = tmp_path / "node\nfake.svs"
    slide.write_bytes(b"not a slide")
    args = [tmp_path / a if a == "out" else a for a in command]
    code, err = run_cli([*args, slide])
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    # info: one error line; infer: its progress line and its closing "failed:" line, each whole
    assert code != 0 and len(lines) == (1 if command == ["info"] else 2), err
    assert all("node\\nfake.svs: OpenSlide cannot read this file" in line for line in lines), err
