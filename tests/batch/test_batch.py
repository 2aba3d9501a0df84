"""Batch runs: one folder per slide, manifest, resume after interruption, failure isolation."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    FIXTURES,
    draw_tissue_rgb,
    write_overflowing_checkpoint,
    write_pyramid_tiff,
    write_untrained_checkpoint,
)

from pipeline.batch.analyze import run_local_batch
from pipeline.batch.local import SlideOutcome, collect_slides
from pipeline.batch.settings import AnalysisContext, AnalysisSettings
from pipeline.cli import main
from pipeline.detection.heatmap import load_heatmap
from pipeline.errors import SlideOpenError
from pipeline.models import ModelCard, build_model, save_checkpoint

# The conftest slides are a pink blob, not lymph node: slide QC would refuse them.
FAST = {
    "inference": {"device": "cpu", "num_workers": 0, "batch_size": 16},
    "qc": {"accept_qc_failures": True},
}


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    for index in range(3):
        write_pyramid_tiff(folder / f"node_{index}.tif", draw_tissue_rgb(900, 700, seed=index), mpp=0.5)
    return folder


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_checkpoint(tmp_path_factory.mktemp("model") / "test.pt")


def _context(model_path: Path) -> AnalysisContext:
    overrides = {**FAST, "deposits": {"refine": False, "count_cells": False}}
    return AnalysisSettings(model_path=model_path, overrides=overrides).build()


def test_every_slide_gets_a_complete_folder_and_a_manifest_entry(
    slide_dir: Path, model_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    outcomes = run_local_batch(collect_slides([str(slide_dir)]), out, _context(model_path))
    assert [o.status for o in outcomes] == ["done"] * 3
    manifest = json.loads((out / "manifest.json").read_text())
    for index in range(3):
        folder = out / f"node_{index}"
        for name in (
            "heatmap.npy",
            "heatmap.json",
            "overlay.png",
            "report.json",
            "run.json",
            "deposits.geojson",
            "deposits.xml",
            "detections.csv",
        ):
            assert (folder / name).is_file(), name
        report = json.loads((folder / "report.json").read_text())
        assert report["category"] in ("negative", "itc", "micro", "macro")
        assert 0.0 <= report["score"] <= 1.0
        assert manifest["slides"][f"node_{index}"]["status"] == "done"
        heatmap = load_heatmap(folder)
        assert np.nanmax(heatmap.probabilities) == pytest.approx(report["score"], abs=1e-6)
    assert not list(out.glob(".*partial*"))
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 4 and summary[0].startswith("slide_id,status,category")


def test_interrupted_run_resumes_without_recomputing_finished_slides(
    slide_dir: Path, model_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    slides = collect_slides([str(slide_dir)])
    context = _context(model_path)

    def stop_after_first(outcome: SlideOutcome) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_local_batch(slides, out, context, on_slide_done=stop_after_first)
    first_report = out / "node_0" / "report.json"
    mtime = first_report.stat().st_mtime_ns
    assert not (out / "node_1").exists()
    # The summary is written even though the run stopped: it lists the finished slide.
    assert (out / "summary.csv").read_text().splitlines()[1].startswith("node_0,done,")
    outcomes = run_local_batch(slides, out, context)
    assert [o.status for o in outcomes] == ["skipped", "done", "done"]
    assert first_report.stat().st_mtime_ns == mtime
    again = run_local_batch(slides, out, context, overwrite=True)
    assert [o.status for o in again] == ["done"] * 3
    assert first_report.stat().st_mtime_ns != mtime


def test_changed_settings_recompute_a_finished_slide(
    slide_dir: Path, model_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    slides = collect_slides([str(slide_dir / "node_0.tif")])
    run_local_batch(slides, out, _context(model_path))
    deposits = {"threshold": 0.9, "refine": False, "count_cells": False}
    changed = AnalysisSettings(model_path=model_path, overrides={**FAST, "deposits": deposits}).build()
    assert [o.status for o in run_local_batch(slides, out, changed)] == ["done"]
    assert json.loads((out / "node_0" / "report.json").read_text())["model"]["threshold"] == 0.9


def test_a_corrupt_slide_is_recorded_and_the_others_finish(
    slide_dir: Path, model_path: Path, tmp_path: Path
) -> None:
    batch = tmp_path / "slides"
    shutil.copytree(slide_dir, batch)
    shutil.copy(FIXTURES / "bad_slides" / "truncated.tif", batch / "broken.tif")
    shutil.copy(FIXTURES / "bad_slides" / "no_resolution.tif", batch / "nompp.tif")
    out = tmp_path / "out"
    outcomes = run_local_batch(collect_slides([str(batch)]), out, _context(model_path))
    status = {o.slide_id: o.status for o in outcomes}
    assert status == {
        "broken": "failed",
        "node_0": "done",
        "node_1": "done",
        "node_2": "done",
        "nompp": "failed",
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert "broken.tif" in manifest["slides"]["broken"]["error"]
    assert "--mpp" in manifest["slides"]["nompp"]["error"]
    assert not (out / "broken").exists()
    assert not list(out.glob(".*partial*"))


def test_infer_command_exits_non_zero_when_a_slide_fails(
    slide_dir: Path, model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    slides = [slide_dir / "node_0.tif", FIXTURES / "bad_slides" / "empty.svs"]
    code = main(_infer_args(slides, out, model_path))
    captured = capsys.readouterr()
    assert code == 1
    assert "empty.svs" in captured.err
    assert "node_0" in captured.out and "failed" in captured.out


def test_blank_slide_fails_with_no_tissue(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    outcomes = run_local_batch([FIXTURES / "bad_slides" / "blank_no_tissue.tif"], out, _context(model_path))
    assert outcomes[0].status == "failed"
    assert "blank_no_tissue.tif" in (outcomes[0].error or "")
    assert "tissue" in (outcomes[0].error or "")


def test_inputs_that_match_nothing_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(SlideOpenError, match="no such file"):
        collect_slides([str(tmp_path / "missing.svs")])
    with pytest.raises(SlideOpenError, match="no slide files"):
        collect_slides([str(tmp_path)])


def test_globs_and_duplicate_stems_get_unique_ids(slide_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(slide_dir / "node_0.tif", other / "node_0.tif")
    slides = collect_slides([str(slide_dir / "*.tif"), str(other)])
    assert len(slides) == 4
    from pipeline.batch.folder import unique_slide_ids

    ids = unique_slide_ids(slides)
    assert sorted(ids.values()) == ["node_0", "node_0-2", "node_1", "node_2"]


def test_tile_geometry_comes_from_the_model_card(model_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[tiling]\ntile_size_px = 64\n")
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="model card"):
        AnalysisSettings(model_path, config, FAST).build()


def _strict_json(path: Path) -> dict:  # type: ignore[type-arg]
    def refuse(name: str) -> None:
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    data: dict = json.loads(path.read_text(), parse_constant=refuse)  # type: ignore[type-arg]
    return data


def _infer_args(slides: list[Path], out: Path, model: Path) -> list[str]:
    """``micromet infer`` on ``slides`` with the test model: CPU, no readers, refinement or cell
    counting, and QC failures accepted (the drawn test tissue is not lymph node)."""
    return ["infer", *map(str, slides), "--out", str(out), "--model", str(model), "--device", "cpu",
            "--workers", "0", "--no-refine", "--no-cells", "--accept-qc-failures"]  # fmt: skip


def _infer(slide: Path, out: Path, model: Path) -> int:
    return main(_infer_args([slide], out, model))


def test_a_model_with_non_finite_output_fails_the_slide_and_never_says_negative(
    slide_dir: Path, tmp_path: Path
) -> None:
    checkpoint = write_overflowing_checkpoint(tmp_path / "overflow.pt", mpp=2.0)
    out = tmp_path / "out"
    outcomes = run_local_batch([slide_dir / "node_0.tif"], out, _context(checkpoint))
    assert [(o.status, o.category, o.score) for o in outcomes] == [("failed", None, None)]
    entry = _strict_json(out / "manifest.json")["slides"]["node_0"]
    assert entry["status"] == "failed" and entry.get("category") is None
    assert "node_0.tif" in entry["error"] and "NaN or infinite" in entry["error"]
    assert not (out / "node_0").exists()


@pytest.mark.parametrize("change", ["nan_weight", "tiny_std"])
def test_a_broken_checkpoint_is_refused_before_any_slide(
    change: str, slide_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0)
    checkpoint = save_checkpoint(tmp_path / "broken.pt", build_model("micronet"), card)
    payload = torch.load(checkpoint, weights_only=True)
    if change == "nan_weight":
        payload["state_dict"]["classifier.weight"][0, 0] = float("nan")
        from pipeline.models import weights_sha256

        payload["weights_sha256"] = weights_sha256(payload["state_dict"])
    else:
        payload["card"]["std"] = [1e-300, 1e-300, 1e-300]
    torch.save(payload, checkpoint)
    out = tmp_path / "out"
    assert _infer(slide_dir / "node_0.tif", out, checkpoint) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.pt" in err[0]
    assert not (out / "node_0").exists()


def test_json_outputs_are_strict_and_a_nan_writes_nothing(tmp_path: Path) -> None:
    from pipeline.outputs import atomic_write_json

    with pytest.raises(ValueError, match="JSON"):
        atomic_write_json(tmp_path / "report.json", {"score": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_an_empty_folder_among_the_inputs_is_reported(
    slide_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "scans"
    empty.mkdir()
    with caplog.at_level("WARNING", logger="pipeline.batch.local"):
        slides = collect_slides([str(empty), str(slide_dir / "node_0.tif")])
    assert slides == [(slide_dir / "node_0.tif").resolve()]
    assert any(str(empty) in r.getMessage() and "no slide files" in r.getMessage() for r in caplog.records)


def test_an_empty_folder_named_like_a_slide_fails_the_batch(
    slide_dir: Path, model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "x.svs"
    folder.mkdir()
    out = tmp_path / "out"
    code = main(_infer_args([folder, slide_dir / "node_0.tif"], out, model_path))
    assert code == 1
    assert "x.svs" in capsys.readouterr().err
    slides = _strict_json(out / "manifest.json")["slides"]
    assert slides["x"]["status"] == "failed" and "not a file" in slides["x"]["error"]
    assert "node_0" in slides


# `micromet infer` over two slides with 2 reader processes, its slide analysis cut down to
# scoring (so only the batch, the readers and the command are under test). argv[1] says
# where a SIGINT arrives: "finaliser" (inside a __del__, as when it lands while readers
# start or stop: Python prints "Exception ignored" and drops it), "reader-start" (sent by
# a reader as it starts), "terminal" (to the whole process group while readers read).
_INTERRUPTED_INFER = """
import json, os, signal, sys, time
from pathlib import Path
import numpy as np
from pipeline.batch import analyze
from pipeline.detection import inference
from pipeline.slides import readers
from pipeline.cli import main
from pipeline.config import TilingConfig
from pipeline.slides.slide import SlideSource
from pipeline.slides.tiling import plan_tiles
from pipeline.slides.tissue import TissueMask

where, markers, out, model, *slides = sys.argv[1:]

def score_only(context, path, slide_id, folder, *rest):
    mask = TissueMask(mask=np.ones((70, 90), bool), mask_mpp=5.0, slide_dimensions=(900, 700))
    tiling = TilingConfig(tile_size_px=context.card.tile_size_px, mpp=context.card.mpp)
    grid = plan_tiles((900, 700), 0.5, mask, tiling)
    source = SlideSource.with_mpp(path, 0.5)
    scores = inference.score_tiles(source, grid, context.model, context.card, context.inference)
    report = {"category": "negative", "score": float(scores.max()), "slide": {}, "deposits": []}
    (folder / "report.json").write_text(json.dumps(report))
    return report

analyze.analyze_slide = score_only

class Finaliser:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the signal is handled here, inside __del__

make_loader, end_with_parent = inference._make_loader, inference.end_with_parent
read_block = readers.read_block_tiles
if where == "finaliser":
    def patched_make_loader(*args):
        Finaliser()
        return make_loader(*args)
    inference._make_loader = patched_make_loader
elif where == "reader-start":
    def interrupt_parent(parent_pid, worker_id=0):
        end_with_parent(parent_pid, worker_id)
        if worker_id == 0:
            os.kill(parent_pid, signal.SIGINT)
    inference.end_with_parent = interrupt_parent
else:
    def slow_read(*args):
        Path(markers, f"reader-{os.getpid()}").touch()
        time.sleep(2.0)
        return read_block(*args)
    readers.read_block_tiles = slow_read
sys.exit(main(["infer", *slides, "--out", out, "--model", model, "--device", "cpu", "--workers", "2",
               "--region-tiles", "2"]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["finaliser", "reader-start", "terminal"])
def test_ctrl_c_always_ends_the_batch_as_interrupted(
    where: str, slide_dir: Path, model_path: Path, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    markers, out = tmp_path / "markers", tmp_path / "out"
    markers.mkdir()
    slides = [str(slide_dir / "node_0.tif"), str(slide_dir / "node_1.tif")]
    process = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_INFER, where, str(markers), str(out), str(model_path), *slides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    try:
        if where == "terminal":  # Ctrl-C once a reader reads (imports take minutes on a busy machine)
            deadline = time.monotonic() + 600
            while not any(markers.iterdir()):
                assert process.poll() is None and time.monotonic() < deadline, "no reader started"
                time.sleep(0.05)
            os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=300)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "micromet infer: interrupted"
    assert "Traceback" not in err and "Exception ignored" not in err
    slides_done = _strict_json(out / "manifest.json")["slides"] if (out / "manifest.json").exists() else {}
    assert "node_1" not in slides_done  # the batch stopped at the first slide
    assert all(entry["status"] == "done" for entry in slides_done.values())


def test_a_threshold_from_the_user_is_marked_as_such_in_report_and_summary(
    slide_dir: Path, model_path: Path, tmp_path: Path
) -> None:
    import csv

    for flags, source in (
        ([], "model card"),
        (["--threshold", "0.7"], "user"),
        (["--seed-threshold", "0.9"], "user"),
    ):
        out = tmp_path / source.replace(" ", "_") / str(len(flags))
        assert main([*_infer_args([slide_dir / "node_0.tif"], out, model_path), *flags]) == 0
        report = json.loads((out / "node_0" / "report.json").read_text())
        assert report["model"]["threshold_source"] == source
        (row,) = csv.DictReader((out / "summary.csv").open())
        assert row["threshold_source"] == source and float(row["threshold"]) == report["model"]["threshold"]



def test_after_ctrl_c_a_half_built_readers_finaliser_prints_no_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader pool interrupted while starting raises in its __del__; after the one-line
    "interrupted" that goes to the debug log, not to the terminal as a traceback. Other
    finalisers' errors still show."""
    from pipeline.cli import quiet_finalisers_after_interrupt

    class _MultiProcessingDataLoaderIter:
        def __del__(self) -> None:
            raise AttributeError("'_MultiProcessingDataLoaderIter' object has no attribute '_workers_status'")

    class Other:
        def __del__(self) -> None:
            raise ValueError("a bug elsewhere")

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    _MultiProcessingDataLoaderIter()  # before an interrupt: Python reports it
    assert "_workers_status" in capsys.readouterr().err
    quiet_finalisers_after_interrupt()
    _MultiProcessingDataLoaderIter()
    assert capsys.readouterr().err == ""
    Other()
    assert "a bug elsewhere" in capsys.readouterr().err
