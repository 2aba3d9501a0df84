"""Tests of pipeline/batch/distributed.py (with distributed_pool.py and distributed_worker.py): Ray
batch runs match local runs, survive lost workers, record bad slides once, and fail clearly
without Ray or a writable output folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from conftest import FIXTURES, REPO_ROOT, draw_tissue_rgb, write_pyramid_tiff

from pipeline.batch.analyze import run_local_batch
from pipeline.batch.distributed import (
    RayOptions,
    cluster_capacity,
    connect,
    run_batch_on_ray,
    slot_resources,
)
from pipeline.batch.distributed_pool import ActorPool, dispatch, is_lost_worker
from pipeline.batch.distributed_worker import SlideWorker, WorkItem, WorkResult
from pipeline.batch.folder import LOCK_FILE
from pipeline.batch.local import SlideOutcome
from pipeline.batch.settings import AnalysisSettings
from pipeline.cli import main
from pipeline.errors import ConfigError, MicrometError, OutputError
from pipeline.models import ModelCard, build_model, save_checkpoint

SLIDE_MPP = 0.5
SLIDE_SIZE = (1500, 1200)  # level-0 (width, height)
TRUNCATED = FIXTURES / "bad_slides" / "truncated.tif"
# Reader processes inside Ray workers would nest process pools; score in the worker itself.
# fp32: "auto" times a probe in every process on a CPU with native bf16 and may choose
# differently in the Ray workers and here; this test is about where a slide runs, not precision.
INFERENCE = {"device": "cpu", "num_workers": 0, "precision": "fp32"}
# Refinement and cell counts are the slow stages and do not depend on where a slide runs.
DEPOSITS = {"refine": False, "count_cells": False}
# The seeded untrained model scores tissue tiles 0.472-0.474: this threshold yields deposits.
THRESHOLD = 0.4733


class FaultyWorker(SlideWorker):
    """A worker that logs every slide attempt to ``OUT/../attempts.log`` and, when the file
    ``OUT/../crash-<slide_id>`` exists, removes it and kills its own process after writing the
    slide's files into the staging folder (a worker lost part-way through a slide).
    """

    def analyze_into(self, path: Path, slide_id: str, folder: Path) -> dict[str, Any]:
        control = self.out_dir.parent
        with (control / "attempts.log").open("a") as log_file:
            log_file.write(f"{slide_id}\n")
        report = super().analyze_into(path, slide_id, folder)
        try:
            (control / f"crash-{slide_id}").unlink()
        except FileNotFoundError:
            return report
        staged = sorted(p.name for p in folder.iterdir())
        (control / f"crashed-{slide_id}.txt").write_text("\n".join(staged))
        os._exit(1)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local two-CPU Ray cluster for this module; test-defined workers are shipped by value."""
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # On a loaded 2-core machine a worker importing torch can take over Ray's default 60 s to
    # register (one run failed so under load and passed alone): give start-up time, not retries.
    slow_start = {"worker_register_timeout_seconds": 600, "raylet_start_wait_time_s": 600}
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             _system_config=slow_start)
    yield ray
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    card = ModelCard(
        architecture="micronet", tile_size_px=32, mpp=2.0, threshold=THRESHOLD, training_data="test"
    )
    path = tmp_path_factory.mktemp("model") / "micronet.pt"
    return save_checkpoint(path, build_model("micronet"), card)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("slides")
    return [
        write_pyramid_tiff(folder / f"node_{seed}.tif", draw_tissue_rgb(*SLIDE_SIZE, seed=seed), SLIDE_MPP)
        for seed in range(2)
    ]


def settings_for(model_path: Path) -> AnalysisSettings:
    # The conftest slides are a pink blob, not lymph node: slide QC would refuse them.
    qc = {"accept_qc_failures": True}
    return AnalysisSettings(model_path, None, {"inference": INFERENCE, "deposits": DEPOSITS, "qc": qc})


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def statuses(out_dir: Path) -> dict[str, str]:
    return {sid: entry["status"] for sid, entry in read_json(out_dir / "manifest.json")["slides"].items()}


def leftovers(out_dir: Path) -> list[str]:
    """Hidden staging or replaced folders left in a batch folder (the batch lock file stays)."""
    return sorted(p.name for p in out_dir.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE)


@pytest.fixture(scope="module")
def local_run(slides: list[Path], model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two good slides analysed on this machine, without Ray."""
    out_dir = tmp_path_factory.mktemp("local") / "out"
    run_local_batch(slides, out_dir, settings_for(model_path).build())
    return out_dir


@pytest.fixture(scope="module")
def faulty_run(
    ray_cluster: Any, slides: list[Path], model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[SlideOutcome], list[SlideOutcome]]:
    """One Ray batch: a good slide, a slide whose worker dies once part-way, a truncated file."""
    control = tmp_path_factory.mktemp("faulty")
    corrupt = shutil.copy(TRUNCATED, control / "corrupt.tif")
    (control / f"crash-{slides[1].stem}").touch()
    out_dir = control / "out"
    seen: list[SlideOutcome] = []
    outcomes = run_batch_on_ray(
        [slides[0], slides[1], Path(corrupt)],
        out_dir,
        settings_for(model_path),
        RayOptions(address="auto", cpus_per_slide=1),
        on_slide_done=seen.append,
        worker_class=FaultyWorker,
    )
    return out_dir, outcomes, seen


@pytest.mark.ray
def test_ray_batch_matches_the_local_run(
    faulty_run: tuple[Path, list[SlideOutcome], list[SlideOutcome]], local_run: Path, slides: list[Path]
) -> None:
    ray_out = faulty_run[0]
    ray_statuses = statuses(ray_out)
    assert statuses(local_run) == {s.stem: "done" for s in slides}
    assert {s.stem: ray_statuses[s.stem] for s in slides} == statuses(local_run)
    n_deposits = 0
    for slide in slides:
        local_heatmap = np.load(local_run / slide.stem / "heatmap.npy")
        ray_heatmap = np.load(ray_out / slide.stem / "heatmap.npy")
        assert local_heatmap.shape == ray_heatmap.shape and local_heatmap.size > 0
        np.testing.assert_allclose(ray_heatmap, local_heatmap, atol=1e-6, equal_nan=True)
        local_report = read_json(local_run / slide.stem / "report.json")
        ray_report = read_json(ray_out / slide.stem / "report.json")
        assert ray_report["category"] == local_report["category"]
        assert ray_report["score"] == pytest.approx(local_report["score"], abs=1e-6)
        assert [d["max_diameter_mm"] for d in ray_report["deposits"]] == pytest.approx(
            [d["max_diameter_mm"] for d in local_report["deposits"]]
        )
        n_deposits += len(local_report["deposits"])
    assert n_deposits > 0, "the test model found no deposits: lower its card threshold"
    manifests = [read_json(out / "manifest.json") for out in (ray_out, local_run)]
    assert manifests[0]["settings_key"] == manifests[1]["settings_key"]
    assert (ray_out / "summary.csv").read_text().count("\n") == 1 + 3


@pytest.mark.ray
def test_lost_worker_slide_is_retried_and_written_exactly_once(
    faulty_run: tuple[Path, list[SlideOutcome], list[SlideOutcome]], slides: list[Path]
) -> None:
    out_dir, outcomes, seen = faulty_run
    crashed = slides[1].stem
    # The worker really died part-way: the slide's files were staged, not yet in place.
    staged = (out_dir.parent / f"crashed-{crashed}.txt").read_text().split()
    assert "heatmap.npy" in staged and "report.json" in staged
    assert not (out_dir.parent / f"crash-{crashed}").exists()

    by_id = {o.slide_id: o for o in outcomes}
    assert [o.slide_id for o in outcomes] == [slides[0].stem, crashed, "corrupt"]
    assert by_id[slides[0].stem].status == by_id[crashed].status == "done"
    manifest = read_json(out_dir / "manifest.json")["slides"]
    assert manifest[crashed]["attempts"] == 2 and manifest[slides[0].stem]["attempts"] == 1
    attempts = (out_dir.parent / "attempts.log").read_text().split()
    assert attempts.count(crashed) == 2 and attempts.count(slides[0].stem) == 1
    assert leftovers(out_dir) == []
    assert sorted(p.name for p in out_dir.iterdir() if p.is_dir()) == sorted([slides[0].stem, crashed])
    for slide_id in (slides[0].stem, crashed):
        assert read_json(out_dir / slide_id / "report.json")["slide_id"] == slide_id
    assert sorted(o.slide_id for o in seen) == sorted(by_id)


@pytest.mark.ray
def test_corrupt_slide_is_recorded_failed_once_and_not_retried(
    faulty_run: tuple[Path, list[SlideOutcome], list[SlideOutcome]],
) -> None:
    out_dir, outcomes, _ = faulty_run
    corrupt = next(o for o in outcomes if o.slide_id == "corrupt")
    assert corrupt.status == "failed"
    assert corrupt.error is not None and "corrupt.tif" in corrupt.error
    entry = read_json(out_dir / "manifest.json")["slides"]["corrupt"]
    assert entry["status"] == "failed" and entry["attempts"] == 1 and entry["error"] == corrupt.error
    assert (out_dir.parent / "attempts.log").read_text().split().count("corrupt") == 1
    assert not (out_dir / "corrupt").exists()


@pytest.mark.ray
def test_cli_ray_run_skips_slides_a_local_run_finished(
    ray_cluster: Any, local_run: Path, slides: list[Path], model_path: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_dir = shutil.copytree(local_run, tmp_path / "out")
    reports = [out_dir / s.stem / "report.json" for s in slides]
    before = [r.stat().st_mtime_ns for r in reports]
    argv = ["infer", *map(str, slides), "--out", str(out_dir), "--model", str(model_path), "--ray", "auto"]
    argv += ["--device", "cpu", "--precision", "fp32", "--workers", "0", "--no-refine", "--no-cells"]
    argv += ["--cpus-per-slide", "1"]
    argv += ["--accept-qc-failures"]
    assert main(argv) == 0
    assert [r.stat().st_mtime_ns for r in reports] == before
    assert statuses(out_dir) == statuses(local_run)
    # Progress on stderr (not a terminal here: plain lines), one per slide.
    assert f"[{len(slides)}/{len(slides)}] " in capsys.readouterr().err


class ScriptedPool(ActorPool):
    """An ``ActorPool`` with one slot that answers from a list instead of a cluster."""

    def __init__(self, answers: list[WorkResult | BaseException]) -> None:
        self.answers = answers
        self.in_flight: list[WorkItem] = []
        self.submitted: list[str] = []

    @property
    def has_idle(self) -> bool:
        return not self.in_flight

    @property
    def busy(self) -> bool:
        return bool(self.in_flight)

    def submit(self, item: WorkItem) -> None:
        self.in_flight.append(item)
        self.submitted.append(item.slide_id)

    def next_finished(self) -> tuple[WorkItem, WorkResult | BaseException]:
        return self.in_flight.pop(), self.answers.pop(0)

    def release_idle(self) -> None:
        pass


@pytest.mark.ray
def test_slide_whose_worker_always_dies_is_failed_after_max_attempts(tmp_path: Path) -> None:
    ray_exceptions = pytest.importorskip("ray.exceptions")
    staging = tmp_path / ".node.partial"
    staging.mkdir()
    (staging / "heatmap.npy").write_bytes(b"half")
    pool = ScriptedPool([ray_exceptions.WorkerCrashedError(), ray_exceptions.NodeDiedError("node-b")])
    results = list(dispatch(pool, [WorkItem(tmp_path / "node.tif", "node")], 2, tmp_path))
    assert pool.submitted == ["node", "node"]
    [(item, result, attempts)] = results
    assert item.slide_id == "node"
    assert attempts == 2 and result.report is None
    assert result.error is not None and "died 2 times" in result.error and "node.tif" in result.error
    assert not staging.exists()


def test_worker_that_cannot_run_stops_the_run(tmp_path: Path) -> None:
    fatal = WorkResult("node", None, "worker on node b cannot load the model", 0.0, "b", fatal=True)
    pool = ScriptedPool([fatal])
    with pytest.raises(MicrometError, match=r"cannot load the model.*re-run"):
        list(dispatch(pool, [WorkItem(tmp_path / "node.tif", "node")], 3, tmp_path))


def test_worker_with_other_settings_refuses_to_write(
    slides: list[Path], model_path: Path, tmp_path: Path
) -> None:
    worker = SlideWorker(settings_for(model_path).absolute(), str(tmp_path), "0" * 16)
    result = worker.analyze(str(slides[0]), slides[0].stem)
    assert result.fatal and result.report is None
    assert result.error is not None and "differs between nodes" in result.error
    assert list(tmp_path.iterdir()) == []


def test_worker_without_the_model_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model.pt"
    worker = SlideWorker(AnalysisSettings(missing, None, {"inference": INFERENCE}), str(tmp_path), "0" * 16)
    result = worker.analyze(str(tmp_path / "node.tif"), "node")
    assert result.fatal and result.error is not None and "no_such_model.pt" in result.error


@pytest.mark.ray
def test_lost_worker_errors_are_told_apart_from_bugs() -> None:
    ray_exceptions = pytest.importorskip("ray.exceptions")
    assert is_lost_worker(ray_exceptions.ActorDiedError())
    assert is_lost_worker(ray_exceptions.WorkerCrashedError())
    assert not is_lost_worker(ValueError("a bug"))


@pytest.mark.ray
def test_gpus_asked_on_a_cluster_without_gpus_is_a_config_error(ray_cluster: Any) -> None:
    assert slot_resources(ray_cluster, RayOptions()) == (1.0, 0.0)
    assert slot_resources(ray_cluster, RayOptions(cpus_per_slide=2)) == (2.0, 0.0)
    with pytest.raises(ConfigError, match="no GPUs"):
        slot_resources(ray_cluster, RayOptions(gpus_per_slide=1))


def test_slots_are_counted_node_by_node_and_use_gpus_when_there() -> None:
    def node(cpus: float, gpus: float, alive: bool = True) -> dict[str, Any]:
        return {"Alive": alive, "Resources": {"CPU": cpus, "GPU": gpus}}

    fake_ray = SimpleNamespace(nodes=lambda: [node(8, 1), node(8, 1), node(64, 8, alive=False)])
    assert cluster_capacity(fake_ray, cpus=1, gpus=1) == 2
    assert cluster_capacity(fake_ray, cpus=1, gpus=2) == 0  # a slot never spans two nodes
    assert cluster_capacity(fake_ray, cpus=2, gpus=0.5) == 4
    assert cluster_capacity(fake_ray, cpus=3, gpus=0) == 4

    fake_ray.cluster_resources = lambda: {"CPU": 16.0, "GPU": 2.0}
    assert slot_resources(fake_ray, RayOptions()) == (1.0, 1.0)
    assert slot_resources(fake_ray, RayOptions(), cpu_only=True) == (1.0, 0.0)
    assert slot_resources(fake_ray, RayOptions(gpus_per_slide=0.5)) == (1.0, 0.5)


def test_missing_ray_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    slide = shutil.copy(TRUNCATED, tmp_path / "node.tif")
    code = main(["infer", str(slide), "--out", str(tmp_path / "out"), "--ray", "auto"])
    assert code == 1
    assert "pip install micromet[ray]" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"pip install micromet\[ray\]"):
        run_batch_on_ray([Path(slide)], tmp_path / "out", AnalysisSettings(), RayOptions())


def test_without_ray_flag_nothing_of_ray_is_imported() -> None:
    code = (
        "import sys; import pipeline.cli, pipeline.batch.distributed, pipeline.batch.analyze, "
        "pipeline.batch.local; "
        "pipeline.cli.build_parser(); assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


@pytest.mark.ray
def test_unwritable_output_folder_is_rejected_before_any_work(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    missing_model = AnalysisSettings(model_path=tmp_path / "no_model.pt")
    with pytest.raises(OutputError, match="not writable"):
        run_batch_on_ray([tmp_path / "node.tif"], blocker / "out", missing_model, RayOptions())


def test_unreachable_cluster_says_how_to_start_one() -> None:
    def refuse(**kwargs: Any) -> None:
        raise ConnectionError("Could not find any running Ray instance")

    fake_ray = SimpleNamespace(is_initialized=lambda: False, init=refuse)
    with pytest.raises(ConfigError, match="ray start --head"):
        connect(fake_ray, "auto")


@pytest.mark.parametrize(
    "options", [{"cpus_per_slide": 0}, {"gpus_per_slide": -1}, {"max_attempts": 0}, {"address": " "}]
)
def test_bad_ray_options_name_the_field(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        RayOptions(**options)


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--ray", "auto", "--cpus-per-slide", "-2"], "--ray options: cpus_per_slide=-2.0 is out of range"),
     (["--gpus-per-slide", "1"], "--gpus-per-slide and --cpus-per-slide need --ray")],
)
def test_bad_ray_flags_are_one_error_before_any_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    slide = shutil.copy(TRUNCATED, tmp_path / "node.tif")
    code = main(["infer", str(slide), "--out", str(tmp_path / "out"), *flags])
    assert code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
