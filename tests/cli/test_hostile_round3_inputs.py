"""Issue 22 (hostile input, round 3): reference and stage CSVs, training data and settings,
numeric flags and output paths that used to pass silently or end in a traceback."""

from __future__ import annotations

import csv
import os
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import draw_tissue_rgb, run_cli, write_pyramid_tiff, write_untrained_checkpoint
from PIL import Image

from pipeline.errors import ConfigError, EvaluationError, MissingMppError, OutputError


def _run(args: list[object]) -> tuple[int, str]:
    return run_cli(args)


def _one_error(code: int, err: str, expected_code: int, *names: str) -> None:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == expected_code and len(lines) == 1, err
    assert "Traceback" not in err
    assert all(name in lines[0] for name in names), lines[0]


# --- reference CSVs ---------------------------------------------------------------------------


def test_a_slide_twice_in_a_camelyon16_reference_is_refused_naming_both_rows(tmp_path: Path) -> None:
    from pipeline.evaluation.inputs import read_camelyon16_reference_csv

    path = tmp_path / "reference.csv"
    path.write_text("slide,class\nTest_001,Tumor\nTest_002,Normal\nTest_001,Normal\n")
    with pytest.raises(EvaluationError, match=r"reference\.csv: line 4: slide 'Test_001'.*first on line 2"):
        read_camelyon16_reference_csv(path)
    path.write_bytes(b"\xef\xbb\xbfslide,class\nTest_001,Tumor\n")  # a BOM
    assert read_camelyon16_reference_csv(path) == {"Test_001": True}


def test_a_patient_twice_in_a_camelyon17_stages_csv_is_refused_and_a_bom_is_read(tmp_path: Path) -> None:
    from pipeline.evaluation.inputs import read_camelyon17_stages_csv

    path = tmp_path / "stages.csv"
    path.write_text("patient,stage\npatient_004.zip,pN0\npatient_004_node_0.tif,negative\n"
                    "patient_004.zip,pN2\n")
    with pytest.raises(EvaluationError, match=r"line 4: patient 'patient_004\.zip'.*first on line 2"):
        read_camelyon17_stages_csv(path)
    path.write_bytes(b"\xef\xbb\xbfpatient,stage\npatient_004.zip,pN1\n")
    assert read_camelyon17_stages_csv(path) == {"patient_004": "pN1"}


def test_a_sample_index_with_a_bom_reads_and_a_short_row_is_named(tmp_path: Path) -> None:
    from pipeline.training.sampling import PatchSample, read_sample_index, write_sample_index

    sample = PatchSample("a.tif", 1.5, 2.5, 1, "train", "tumor")
    path = write_sample_index(tmp_path / "samples.csv", [sample])
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_sample_index(bom) == read_sample_index(path)
    assert not list(tmp_path.glob(".*.tmp"))
    short = tmp_path / "short.csv"
    short.write_text(path.read_text().splitlines()[0] + "\na.tif,1.0\n")
    with pytest.raises(ConfigError, match=r"short\.csv: line 2: bad sample row"):
        read_sample_index(short)


# --- training settings and data -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"train": {"optimizer": "sgd", "momentum": float("nan")}}, "momentum"),
        ({"train": {"momentum": -1.0}}, "momentum"),
        ({"train": {"seed": 2**64}}, "seed"),
        ({"train": 5}, "train = 5"),
        ({"data": "x"}, "data = 'x'"),
        ({"data": {"patch_mpp": "0.5", "patches": ["p"]}}, "patch_mpp"),
        ({"data": {"patch_mpp": 0.0, "patches": ["p"]}}, "patch_mpp"),
        ({"data": {"patch_mpp": 1e308, "patches": ["p"]}}, "patch_mpp"),
        ({"data": {"slides": ["s.tif"], "index": 5}}, "index"),
        ({"train": {"epochs": 2.5}}, "epochs"),
        ({"train": {"deterministic": "false"}}, "deterministic"),
    ],
)
def test_bad_training_settings_are_refused_naming_the_setting(values: dict[str, object], named: str) -> None:
    from pipeline.training.config import settings_from_dict

    values = {"data": {"slides": ["s.tif"]}, **values}
    with pytest.raises(ConfigError, match=named):
        settings_from_dict(values, source="run.toml")


def _patch_folder(root: Path, classes: tuple[str, ...], n: int = 3) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(n):
            Image.fromarray(draw_tissue_rgb(48, 48, seed=index)).save(root / name / f"{index}.png")
    return root


def test_training_on_one_class_is_refused_and_leaves_no_run_folder(tmp_path: Path) -> None:
    patches = _patch_folder(tmp_path / "patches", ("tumor",), n=1)
    out = tmp_path / "run"
    code, err = _run(["train", "--patches", patches, "--patch-mpp", "1.0", "--out", out, "--epochs", "1",
                      "--device", "cpu", "--workers", "0", "--no-progress", "--tile-size-px", "32"])
    _one_error(code, err, 1, "1 tumor and 0 normal tiles")
    assert not out.exists()


def _pcam_pair(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "camelyonpatch_level_2_split_train_x.h5", "w") as handle:
        handle["x"] = x
    with h5py.File(folder / "camelyonpatch_level_2_split_train_y.h5", "w") as handle:
        handle["y"] = y
    return folder


@pytest.mark.parametrize(
    ("name", "x", "y", "message"),
    [
        ("float_x", np.random.default_rng(0).random((4, 96, 96, 3)), np.array([0, 1, 0, 1]), "float64"),
        ("grey_x", np.zeros((4, 96, 96), np.uint8), np.array([0, 1, 0, 1]), "shape"),
        ("rgba_x", np.zeros((4, 96, 96, 4), np.uint8), np.array([0, 1, 0, 1]), "shape"),
        ("empty", np.zeros((0, 96, 96, 3), np.uint8), np.zeros(0, np.uint8), "0 patches"),
        ("labels_2", np.zeros((4, 96, 96, 3), np.uint8), np.array([0, 1, 2, 1]), "0 .normal. or 1"),
    ],
)
def test_a_damaged_pcam_pair_is_refused_naming_the_file(
    tmp_path: Path, name: str, x: np.ndarray, y: np.ndarray, message: str
) -> None:
    from pipeline.training.datasets import PCamDataset, find_pcam_files

    folder = _pcam_pair(tmp_path / name, x, y)
    x_path, y_path = find_pcam_files(folder)["train"]
    with pytest.raises(ConfigError, match=message):
        PCamDataset(x_path, y_path, 32, 2.0)
    out = tmp_path / f"run_{name}"
    code, err = _run(["train", "--pcam", folder, "--out", out, "--epochs", "1", "--device", "cpu",
                      "--workers", "0", "--no-progress"])
    _one_error(code, err, 1, "camelyonpatch_level_2_split_train_")
    assert not out.exists()


def test_train_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    patches = _patch_folder(tmp_path / "patches", ("tumor", "normal"))
    out = tmp_path / "run.txt"
    out.write_text("keep")
    code, err = _run(["train", "--patches", patches, "--patch-mpp", "1.0", "--out", out, "--epochs", "1",
                      "--device", "cpu", "--workers", "0", "--no-progress", "--tile-size-px", "32"])
    _one_error(code, err, 1, "run.txt", "is a file")
    assert out.read_text() == "keep"


# --- numeric flags ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "1e308", "1e-308", "1_0", "-0.5", "0", "abc"])
def test_classify_and_infer_refuse_an_implausible_or_odd_mpp(tmp_path: Path, value: str) -> None:
    commands: list[list[object]] = [
        ["classify", "x.png", "--out", tmp_path / "s.csv"],
        ["infer", "x.tif", "--out", tmp_path / "b"],
        ["info", "x.tif"],
    ]
    for command in commands:
        code, err = _run([*command, f"--mpp={value}"])
        _one_error(code, err, 2, "--mpp", value)
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "args",
    [["train", "--patch-mpp=0"], ["train", "--patch-mpp=nan"], ["train", "--slide-mpp=-1"],
     ["train", "--model-mpp=1e308"], ["train", f"--seed={2**64}"], ["evaluate", "--seed=-1"]],
)
def test_out_of_range_training_and_evaluation_flags_are_usage_errors(args: list[str]) -> None:
    code, err = _run(args)
    _one_error(code, err, 2, args[1].split("=")[0])


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height px (its data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_a_png_declaring_20000_px_a_side_is_refused_or_skipped(tmp_path: Path) -> None:
    huge = _png_declaring(tmp_path / "huge.png", 20000, 20000)
    model = write_untrained_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "scores.csv"
    args = ["classify", huge, "--mpp", "0.5", "--model", model, "--out", out, "--device", "cpu",
            "--no-progress"]
    code, err = _run(args)
    _one_error(code, err, 1, "huge.png", "pixels")
    assert not out.exists()
    good = tmp_path / "good.png"
    Image.fromarray(draw_tissue_rgb(64, 64)).save(good)
    code, _ = _run([args[0], args[1], good, *args[2:], "--skip-bad"])
    rows = list(csv.DictReader(out.open()))
    assert code == 1 and [bool(r["error"]) for r in rows] == [True, False]


# --- mpp sources -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [("slide,mpp\ns1,0.5,extra\n", "line 2: more cells"),
     ("slide,mpp,mpp\ns1,0.5,0.25\n", "appear more than once"),
     ("slide,mpp\ns\x001,0.5\n", "control characters"),
     ("slide,mpp\ns1,1_0\n", "not a number")],
)
def test_a_damaged_mpp_csv_is_refused_naming_the_line(tmp_path: Path, text: str, message: str) -> None:
    from pipeline.slides.metadata import read_mpp_csv

    path = tmp_path / "mpp.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_mpp_csv(path)


def test_a_negative_aperio_mpp_is_called_not_positive() -> None:
    from pipeline.slides.metadata import read_mpp

    with pytest.raises(MissingMppError, match=r"-0\.5 x -0\.5 µm/px, which is not positive"):
        read_mpp(Path("s.svs"), {"openslide.mpp-x": "-0.5", "openslide.mpp-y": "-0.5"})


def test_a_negative_objective_power_is_recorded_as_unknown() -> None:
    from pipeline.batch.analyze import _slide_facts

    for power, kept in ((-40.0, None), (0.0, None), (40.0, 40.0), (None, None)):
        info = SimpleNamespace(to_dict=lambda p=power: {"objective_power": p, "level_dimensions": []})
        slide = SimpleNamespace(info=info, path=Path("s.svs"))
        assert _slide_facts(slide, 0.5, 1.0)["objective_power"] == kept  # type: ignore[arg-type]


def test_a_symbolic_link_loop_among_the_slides_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "loop.tif").symlink_to(tmp_path / "loop.tif")
    code, err = _run(["infer", f"{tmp_path}/*.tif", "--out", tmp_path / "batch"])
    _one_error(code, err, 1, "loop.tif", "symbolic link loop")
    assert not (tmp_path / "batch").exists()


# --- settings files and outputs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [("tissue = 5\n", "tissue = 5 is not a section"),
     ("[inference]\ncascade = 'false'\n", "cascade='false' is str; expected true or false"),
     ("[tiling]\nstride_px = 16.5\n", "stride_px=16.5 is float; expected a whole number"),
     ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply|not a valid TOML"),
     ("[deposits]\nseed_threshold = 0.3\n", "seed_threshold 0.3 is below the deposit threshold 0.5")],
)
def test_a_bad_infer_config_is_one_error_naming_it(tmp_path: Path, text: str, message: str) -> None:
    from pipeline.batch.settings import AnalysisSettings

    config = tmp_path / "bad.toml"
    config.write_text(text)
    model = write_untrained_checkpoint(tmp_path / "model.pt")
    with pytest.raises(ConfigError, match=message):
        AnalysisSettings(model_path=model, config_path=config).build()
    slide = write_pyramid_tiff(tmp_path / "s.tif", draw_tissue_rgb(300, 200), 0.5, n_levels=1)
    code, err = _run(["infer", slide, "--out", tmp_path / "batch", "--model", model, "--config", config])
    _one_error(code, err, 1, "bad.toml")
    assert not (tmp_path / "batch").exists()


def test_a_seed_threshold_flag_below_the_threshold_is_refused(tmp_path: Path) -> None:
    model = write_untrained_checkpoint(tmp_path / "model.pt", threshold=0.5)
    slide = write_pyramid_tiff(tmp_path / "s.tif", draw_tissue_rgb(300, 200), 0.5, n_levels=1)
    code, err = _run(["infer", slide, "--out", tmp_path / "batch", "--model", model,
                      "--seed-threshold", "0.3"])
    _one_error(code, err, 1, "seed_threshold 0.3")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_an_output_that_is_a_fifo_is_refused_and_kept(tmp_path: Path) -> None:
    from pipeline.outputs import atomic_write_text

    fifo = tmp_path / "out.csv"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="not a regular file"):
        atomic_write_text(fifo, "x")
    categories = tmp_path / "categories.csv"
    categories.write_text("slide,category\npatient_001_node_0.tif,macro\n")
    code, err = _run(["stage", "--categories", categories, "--out", fifo])
    _one_error(code, err, 1, "out.csv")
    assert fifo.is_fifo()


def test_train_refuses_an_oversized_patch_first_and_a_broken_one_in_one_line(tmp_path: Path) -> None:
    patches = _patch_folder(tmp_path / "patches", ("tumor", "normal"), n=2)
    huge = _png_declaring(patches / "tumor" / "huge.png", 20000, 20000)
    args = ["--patch-mpp", "1.0", "--epochs", "1", "--device", "cpu", "--no-progress", "--tile-size-px", "32",
            "--batch-size", "2"]
    out = tmp_path / "run"
    code, err = _run(["train", "--patches", patches, "--out", out, "--workers", "0", *args])
    _one_error(code, err, 1, "huge.png")
    assert not out.exists()
    # a header that reads but data that does not: found by a reader process mid-epoch, its
    # traceback is not the user's message
    _png_declaring(huge, 48, 48)
    code, err = _run(["train", "--patches", patches, "--out", tmp_path / "run2", "--workers", "1", *args])
    _one_error(code, err, 1, "huge.png", "cannot read the patch image")
    assert "Original Traceback" not in err


def test_an_unreadable_config_or_slide_folder_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.batch.local import collect_slides
    from pipeline.config import load_config_file
    from pipeline.errors import SlideOpenError

    config = tmp_path / "locked.toml"
    config.write_text("[tissue]\n")
    folder = tmp_path / "locked"
    folder.mkdir()
    real_open, real_iterdir = Path.open, Path.iterdir

    def refuse_open(self: Path, *args: object, **kwargs: object) -> object:
        if self == config:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    def refuse_iterdir(self: Path) -> object:
        if self == folder:
            raise PermissionError(13, "Permission denied")
        return real_iterdir(self)

    monkeypatch.setattr(Path, "open", refuse_open)
    monkeypatch.setattr(Path, "iterdir", refuse_iterdir)
    with pytest.raises(ConfigError, match=r"locked\.toml: cannot read the config file \(Permission denied\)"):
        load_config_file(config)
    with pytest.raises(SlideOpenError, match=r"locked: cannot read this input \(Permission denied\)"):
        collect_slides([str(folder)])


def test_a_full_disk_while_writing_the_sample_index_is_one_error_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.training.sampling import PatchSample, write_sample_index

    def no_space(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OutputError, match=r"samples\.csv: cannot write here \(No space left on device\)"):
        write_sample_index(tmp_path / "samples.csv", [PatchSample("a.tif", 1.0, 2.0, 0, "train", "normal")])
    assert list(tmp_path.iterdir()) == []


def test_a_screen_threshold_above_the_deposit_threshold_is_said_not_silently_lowered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pipeline.config import DepositConfig, InferenceConfig, check_thresholds

    with caplog.at_level("WARNING"):
        check_thresholds(DepositConfig(), InferenceConfig(cascade_screen_threshold=0.3), 0.1, "flags")
    assert "screen threshold 0.3 is above the deposit threshold 0.1: screening at 0.1" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        check_thresholds(DepositConfig(seed_threshold=0.9), InferenceConfig(), 0.5, "flags")
    assert caplog.text == ""
