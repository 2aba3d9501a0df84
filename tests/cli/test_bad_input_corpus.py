"""Every command over a generated corpus of damaged and hostile inputs (tests/bad_inputs.py):
no traceback, a non-zero exit, one error line naming the file, and nothing left half-written.

Commands run in-process through ``pipeline.cli.main``; commands that take many inputs get
them all in one run (``infer`` and ``info`` over every slide), the others run once per file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import shutil
import traceback
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from bad_configs import BAD_FLAGS
from bad_inputs import BadFile, ValidInputs, write_corpus
from conftest import draw_tissue_rgb, write_pyramid_tiff
from PIL import Image

from pipeline.cli import main

SLIDE_MPP = 0.5
# Damage still read as a valid slide (none left: a level 0 of 65535 x 380 px over a level 1 of
# 260 x 190 px, downsamples 252 in x and 2 in y, is now refused by slide.check_level_sizes).
OPEN_SLIDE_DEFECTS: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if ": error:" in line]


def run_cli(args: Sequence[str]) -> Run:
    """``main(args)`` with stdout, stderr and log records captured; an exception escaping
    main is recorded as a traceback (what a user would see)."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse usage errors
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:
                err.write(traceback.format_exc())
                code = -1
    finally:
        root.removeHandler(handler)
    return Run(code, out.getvalue(), err.getvalue())


@dataclasses.dataclass(frozen=True)
class Corpus:
    files: list[BadFile]
    valid: ValidInputs
    patch: Path
    root: Path

    def of(self, *kinds: str) -> list[BadFile]:
        return [f for f in self.files if f.kind in kinds]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    import torch

    from pipeline.models import ModelCard, build_model, save_checkpoint

    root = tmp_path_factory.mktemp("corpus")
    slide = write_pyramid_tiff(root / "valid.tif", draw_tissue_rgb(520, 380), SLIDE_MPP, n_levels=2)
    torch.manual_seed(0)
    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0, threshold=0.5,
                     training_data="untrained test model")
    checkpoint = save_checkpoint(root / "valid.pt", build_model("micronet"), card)
    patch = root / "patch.png"
    Image.fromarray(draw_tissue_rgb(64, 64)).save(patch)
    valid = ValidInputs(slide, checkpoint, (520, 380))
    files = write_corpus(root / "bad", valid)
    return Corpus(files, valid, patch, root)


def test_the_corpus_holds_at_least_400_bad_inputs(corpus: Corpus) -> None:
    kinds = {f.kind for f in corpus.files}
    assert len(corpus.files) + len(BAD_FLAGS) >= 400
    assert {"slide", "annotation", "checkpoint", "categories_csv", "mapping_csv", "infer_config",
            "train_config", "mpp_csv", "reference_csv", "stages_csv"} <= kinds
    assert all(f.path.is_file() for f in corpus.files)


def _check_one_error(run: Run, bad: BadFile, names: Sequence[str], problems: list[str],
                     outputs: Sequence[Path]) -> None:
    """A refused input: non-zero exit, one error line naming the file, no output written."""
    label = bad.path.name
    if "Traceback" in run.stdout + run.stderr:
        problems.append(f"{label}: traceback: {run.stderr[-400:]}")
        return
    if run.code == 0:
        if not bad.may_be_valid:
            problems.append(f"{label}: exit 0 on bad input (stderr {run.stderr[-200:]!r})")
        return
    if run.code != 1:
        problems.append(f"{label}: exit {run.code}, expected 1")
    if len(run.error_lines) != 1:
        problems.append(f"{label}: {len(run.error_lines)} error lines: {run.stderr[-400:]!r}")
    elif not any(name in run.error_lines[0] for name in names):
        problems.append(f"{label}: error does not name the file: {run.error_lines[0][:200]!r}")
    problems.extend(f"{label}: left {path} behind" for path in outputs if path.exists())


def _report(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


# --- slides --------------------------------------------------------------------------------


def test_infer_over_every_bad_slide_fails_each_with_one_line_and_no_partial_folder(
    corpus: Corpus, tmp_path: Path
) -> None:
    slides = corpus.of("slide")
    out = tmp_path / "batch"
    # slides that still open are analysed even where slide QC would stop them (the tiny
    # test slide has too little tissue), so damaged pixel data is read too
    accept_qc = [flag for flag in ("--accept-qc-failures",) if flag in run_cli(["infer", "--help"]).stdout]
    run = run_cli(["infer", *[f.path for f in slides], "--out", out, "--model", corpus.valid.checkpoint,
                   "--device", "cpu", "--workers", "0", "--no-refine", "--no-cells", *accept_qc])
    problems: list[str] = []
    if "Traceback" in run.stdout + run.stderr:
        problems.append(f"traceback: {run.stderr[-2000:]}")
    if run.code != 1:
        problems.append(f"exit {run.code}, expected 1")
    manifest = json.loads((out / "manifest.json").read_text())["slides"]
    by_path = {entry["path"]: (slide_id, entry) for slide_id, entry in manifest.items()}
    for bad in slides:
        slide_id, entry = by_path.get(str(bad.path.resolve()), by_path.get(str(bad.path), ("", {})))
        folder = out / entry.get("output_dir", slide_id or "?")
        if entry.get("status") == "done":
            if not bad.may_be_valid and bad.path.name not in OPEN_SLIDE_DEFECTS:
                problems.append(f"{bad.path.name}: analysed as a valid slide")
            elif not (folder / "report.json").is_file():
                problems.append(f"{bad.path.name}: done without report.json")
            continue
        error = str(entry.get("error") or "")
        if entry.get("status") != "failed" or not error:
            problems.append(f"{bad.path.name}: status {entry.get('status')!r}, error {error!r}")
        elif "\n" in error or bad.path.name not in error:
            problems.append(f"{bad.path.name}: error is not one line naming the file: {error[:200]!r}")
        if folder.exists() and any(folder.iterdir()):
            problems.append(f"{bad.path.name}: failed slide left {sorted(p.name for p in folder.iterdir())}")
    _report(problems)


def test_info_over_every_bad_slide_names_each_failure_once(corpus: Corpus) -> None:
    slides = corpus.of("slide")
    run = run_cli(["info", "--no-tissue", *[f.path for f in slides]])
    problems: list[str] = []
    if "Traceback" in run.stdout + run.stderr:
        problems.append(f"traceback: {run.stderr[-2000:]}")
    if run.code != 1:
        problems.append(f"exit {run.code}, expected 1")
    for bad in slides:
        lines = [line for line in run.error_lines if f"{bad.path}:" in line]
        # info reads headers only: damage found when tiles are read (bad tile offsets or
        # sizes) is the job of infer, above
        header_only = bad.may_be_valid or bad.path.name.startswith("header_")
        if len(lines) > 1 or (not lines and not header_only):
            problems.append(f"{bad.path.name}: {len(lines)} error lines")
    _report(problems)


def test_a_level0_header_with_a_different_aspect_than_level1_is_refused(corpus: Corpus) -> None:
    (bad,) = [f for f in corpus.of("slide") if f.path.name == "header_width_huge.tif"]
    run = run_cli(["info", "--no-tissue", bad.path])
    assert run.code == 1 and len(run.error_lines) == 1


# --- annotations ---------------------------------------------------------------------------


def _write_batch(batch: Path, size_wh: tuple[int, int]) -> None:
    """A finished one-slide batch ("s1") whose detections sit inside the valid outlines."""
    folder = batch / "s1"
    folder.mkdir(parents=True)
    (batch / "manifest.json").write_text(json.dumps(
        {"slides": {"s1": {"status": "done", "output_dir": "s1", "path": "/slides/s1.tif"}}}))
    report = {"slide_id": "s1", "category": "micro", "score": 0.9,
              "slide": {"mpp": SLIDE_MPP, "dimensions": list(size_wh)},
              "deposits": [{"id": 1, "category": "micro", "max_diameter_mm": 0.4,
                            "max_diameter_uncertainty_mm": 0.01, "area_mm2": 0.1,
                            "centroid_x_px": 300.0, "centroid_y_px": 300.0, "centroid_x_mm": 0.1,
                            "centroid_y_mm": 0.1, "bbox_x_px": 250, "bbox_y_px": 250,
                            "bbox_width_px": 100, "bbox_height_px": 100, "max_probability": 0.9,
                            "mean_probability": 0.8, "cell_count": None, "refined": False,
                            "outline_xy": []}]}
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "detections.csv").write_text("confidence,X,Y\n0.9,300,300\n")


def test_evaluate_refuses_every_bad_annotation_file(corpus: Corpus, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    _write_batch(batch, corpus.valid.annotation_size_wh)
    problems: list[str] = []
    for index, bad in enumerate(corpus.of("annotation")):
        truth = tmp_path / f"truth_{index}"
        truth.mkdir()
        target = truth / f"s1{bad.path.suffix}"
        shutil.copyfile(bad.path, target)
        out = tmp_path / f"eval_{index}"
        run = run_cli(["evaluate", "--batch", batch, "--truth-dir", truth, "--out", out,
                       "--bootstrap", "10"])
        _check_one_error(run, bad, [str(target)], problems, [out])
    _report(problems)


def test_review_import_refuses_every_bad_annotation_file(corpus: Corpus, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    _write_batch(batch, corpus.valid.annotation_size_wh)
    report = json.loads((batch / "s1" / "report.json").read_text())
    report["deposits"][0].update(id=1, area_mm2=0.01, outline_xy=[[250, 250], [350, 250], [350, 350]])
    (batch / "s1" / "report.json").write_text(json.dumps(report))
    review = batch / "s1" / "review.geojson"
    problems: list[str] = []
    for bad in corpus.of("annotation"):
        run = run_cli(["review", "import", batch, "s1", bad.path, "--reviewer", "Dr A"])
        _check_one_error(run, bad, [str(bad.path)], problems, [review])
        for name in ("review.geojson", "review.xml"):  # a readable file was imported: start afresh
            (batch / "s1" / name).unlink(missing_ok=True)
    _report(problems)


TRAIN_ANNOTATIONS = ("vertices_e15.json", "vertices_e300.json", "vertices_booleans.json",
                     "positive_null.json", "features_null.geojson", "klingon.xml")


def test_train_refuses_bad_annotations_and_leaves_no_run_folder(corpus: Corpus, tmp_path: Path) -> None:
    by_name = {f.path.name: f for f in corpus.of("annotation")}
    problems: list[str] = []
    for index, name in enumerate(TRAIN_ANNOTATIONS):
        bad = by_name[name]
        folder = tmp_path / f"ann_{index}"
        folder.mkdir()
        target = folder / f"valid{bad.path.suffix}"  # named after the slide's stem
        shutil.copyfile(bad.path, target)
        out = tmp_path / f"run_{index}"
        run = run_cli(["train", "--slides", corpus.valid.slide, "--annotations", folder, "--out", out,
                       "--epochs", "1", "--device", "cpu", "--workers", "0", "--no-progress",
                       "--tumor-per-slide", "4", "--normal-per-slide", "4"])
        _check_one_error(run, bad, [str(target)], problems, [out])
    _report(problems)


# --- checkpoints ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the malicious pickle's header
def test_classify_refuses_every_bad_checkpoint_and_writes_no_csv(corpus: Corpus, tmp_path: Path) -> None:
    problems: list[str] = []
    for index, bad in enumerate(corpus.of("checkpoint")):
        out = tmp_path / f"scores_{index}.csv"
        run = run_cli(["classify", "--model", bad.path, "--mpp", "0.5", "--out", out, "--device", "cpu",
                       "--no-progress", corpus.patch])
        _check_one_error(run, bad, [str(bad.path)], problems, [out])
    _report(problems)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_infer_and_train_refuse_every_bad_checkpoint_and_write_nothing(
    corpus: Corpus, tmp_path: Path
) -> None:
    """The same checkpoints as ``infer --model``, ``train --init-model`` and ``train --resume``
    (which would write beside the checkpoint)."""
    patches = tmp_path / "patches"
    for name in ("tumor", "normal"):
        (patches / name).mkdir(parents=True)
        for index in range(2):
            shutil.copyfile(corpus.patch, patches / name / f"{index}.png")
    checkpoints = corpus.of("checkpoint")
    beside = {path.name for path in checkpoints[0].path.parent.iterdir()}
    common = ["--device", "cpu", "--workers", "0", "--no-progress"]
    problems: list[str] = []
    for index, bad in enumerate(checkpoints):
        batch, fine_tuned = tmp_path / f"batch_{index}", tmp_path / f"run_{index}"
        runs: tuple[tuple[list[object], list[Path]], ...] = (
            (["infer", corpus.valid.slide, "--out", batch, "--model", bad.path, *common[:4]], [batch]),
            (["train", "--patches", patches, "--patch-mpp", "0.5", "--out", fine_tuned, "--init-model",
              bad.path, "--arch", "micronet", "--tile-size-px", "32", "--model-mpp", "2.0", "--epochs", "1",
              *common], [fine_tuned]),
            (["train", "--resume", bad.path, *common], []),
        )
        for args, outputs in runs:
            _check_one_error(run_cli([str(arg) for arg in args]), bad, [str(bad.path)], problems, outputs)
    new_files = {path.name for path in checkpoints[0].path.parent.iterdir()} - beside
    problems.extend(f"train --resume left {name} beside the checkpoints" for name in sorted(new_files))
    _report(problems)


# --- CSVs ----------------------------------------------------------------------------------


def test_stage_and_evaluate_refuse_every_bad_csv(corpus: Corpus, tmp_path: Path) -> None:
    good = tmp_path / "categories.csv"
    good.write_text("slide,category\npatient_001_node_0.tif,macro\npatient_001_node_1.tif,negative\n")
    batch = tmp_path / "batch"
    _write_batch(batch, corpus.valid.annotation_size_wh)
    problems: list[str] = []
    for index, bad in enumerate(corpus.of("categories_csv", "mapping_csv", "reference_csv")):
        out = tmp_path / f"out_{index}"
        if bad.kind == "categories_csv":
            args = ["stage", "--categories", bad.path, "--out", out]
        elif bad.kind == "mapping_csv":
            args = ["stage", "--categories", good, "--patients", bad.path, "--out", out]
        else:
            args = ["evaluate", "--batch", batch, "--reference", bad.path, "--out", out]
        _check_one_error(run_cli(args), bad, [str(bad.path)], problems, [out])
    _report(problems)


def test_a_valid_input_passes_the_same_checks(corpus: Corpus, tmp_path: Path) -> None:
    # the checks above are not vacuous: a valid run exits 0 and writes its outputs
    out = tmp_path / "scores.csv"
    run = run_cli(["classify", "--model", corpus.valid.checkpoint, "--mpp", "0.5", "--out", out,
                   "--device", "cpu", "--no-progress", corpus.patch])
    assert (run.code, run.error_lines) == (0, [])
    rows = out.read_text().splitlines()
    assert len(rows) == 2 and np.isfinite(float(rows[1].split(",")[1]))


# --- settings (issue 22) -------------------------------------------------------------------


def test_infer_refuses_every_bad_config_and_mpp_csv_before_any_output(corpus: Corpus, tmp_path: Path) -> None:
    problems: list[str] = []
    for index, bad in enumerate(corpus.of("infer_config", "mpp_csv")):
        out = tmp_path / f"batch_{index}"
        flag = "--config" if bad.kind == "infer_config" else "--mpp-csv"
        # no --device or --workers: those flags would override the config's bad values
        run = run_cli(["infer", corpus.valid.slide, "--out", out, "--model", corpus.valid.checkpoint,
                       flag, bad.path])
        _check_one_error(run, bad, [str(bad.path)], problems, [out])
    _report(problems)


def test_train_refuses_every_bad_config_and_leaves_no_run_folder(corpus: Corpus, tmp_path: Path) -> None:
    problems: list[str] = []
    for index, bad in enumerate(corpus.of("train_config")):
        out = tmp_path / f"run_{index}"
        # the only flags are those no config here sets: each bad value must reach the settings
        run = run_cli(["train", "--config", bad.path, "--slides", corpus.valid.slide, "--out", out,
                       "--no-progress"])
        _check_one_error(run, bad, [str(bad.path)], problems, [out])
    _report(problems)


def test_evaluate_refuses_every_bad_stage_csv(corpus: Corpus, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    _write_batch(batch, corpus.valid.annotation_size_wh)
    problems: list[str] = []
    for index, bad in enumerate(corpus.of("stages_csv")):
        out = tmp_path / f"eval_{index}"
        run = run_cli(["evaluate", "--batch", batch, "--stages", bad.path, "--out", out])
        _check_one_error(run, bad, [str(bad.path)], problems, [out])
    _report(problems)


def test_every_bad_flag_value_is_a_one_line_usage_error() -> None:
    problems: list[str] = []
    for command, flag in BAD_FLAGS:
        run = run_cli([command, flag])
        lines = [line for line in run.stderr.splitlines() if "error:" in line]
        name = flag.split("=")[0]
        if run.code != 2 or len(lines) != 1 or name not in lines[0] or "Traceback" in run.stderr:
            problems.append(f"{command} {flag}: exit {run.code}, {run.stderr[-300:]!r}")
    _report(problems)
