"""Tests of pipeline/distributed.py: Ray batch runs match local runs, survive lost workers,
record bad slides once, and fail clearly without Ray or a writable output folder.
"""

from __future__ import annotations

import argparse
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

from pipeline.analyze import run_local_batch
from pipeline.batch import SlideOutcome
from pipeline.cli import main
from pipeline.distributed import (
    ContextSpec,
    RayOptions,
    SlideWorker,
    connect,
    run_batch_on_ray,
    run_ray_batch,
    slot_resources,
)
from pipeline.errors import ConfigError, MicrometError, OutputError
from pipeline.models import ModelCard, build_model, save_checkpoint

SLIDE_MPP = 0.5
SLIDE_SIZE = (1500, 1200)  # level-0 (width, height)
TRUNCATED = FIXTURES / "bad_slides" / "truncated.tif"
# Reader processes inside Ray workers would nest process pools; score in the worker itself.
INFERENCE = {"device": "cpu", "num_workers": 0}


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


class MismatchedWorker(SlideWorker):
    """A worker on a node that resolves other settings than the driver (e.g. another model)."""

    def __init__(self, spec: ContextSpec, out_dir: str, expected_key: str) -> None:
        super().__init__(spec, out_dir, "0" * 16)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local two-CPU Ray cluster for this module; test-defined workers are shipped by value."""
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0, threshold=0.5, training_data="test")
    path = tmp_path_factory.mktemp("model") / "micronet.pt"
    return save_checkpoint(path, build_model("micronet"), card)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("slides")
    return [
        write_pyramid_tiff(folder / f"node_{seed}.tif", draw_tissue_rgb(*SLIDE_SIZE, seed=seed), SLIDE_MPP)
        for seed in range(3)
    ]


def spec_for(model_path: Path) -> ContextSpec:
    return ContextSpec(model_path, None, {"inference": INFERENCE})


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def statuses(out_dir: Path) -> dict[str, str]:
    return {sid: entry["status"] for sid, entry in read_json(out_dir / "manifest.json")["slides"].items()}


def leftovers(out_dir: Path) -> list[str]:
    """Hidden staging or replaced folders left in a batch folder."""
    return sorted(p.name for p in out_dir.iterdir() if p.name.startswith("."))


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
    outcomes = run_ray_batch(
        [slides[0], slides[1], Path(corrupt)],
        out_dir,
        spec_for(model_path),
        RayOptions(address="auto", cpus_per_slide=1),
        on_slide_done=seen.append,
        worker_class=FaultyWorker,
    )
    return out_dir, outcomes, seen


def test_ray_batch_matches_the_local_run(
    ray_cluster: Any, slides: list[Path], model_path: Path, tmp_path: Path
) -> None:
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    run_local_batch(slides, local_out, spec_for(model_path).build())
    argv = ["infer", *map(str, slides), "--out", str(ray_out), "--model", str(model_path)]
    argv += ["--device", "cpu", "--workers", "0", "--ray", "auto", "--cpus-per-slide", "1"]
    assert main(argv) == 0

    assert statuses(ray_out) == statuses(local_out) == {s.stem: "done" for s in slides}
    for slide in slides:
        local_heatmap = np.load(local_out / slide.stem / "heatmap.npy")
        ray_heatmap = np.load(ray_out / slide.stem / "heatmap.npy")
        assert local_heatmap.shape == ray_heatmap.shape and local_heatmap.size > 0
        np.testing.assert_allclose(ray_heatmap, local_heatmap, atol=1e-6, equal_nan=True)
        local_report = read_json(local_out / slide.stem / "report.json")
        ray_report = read_json(ray_out / slide.stem / "report.json")
        assert ray_report["category"] == local_report["category"]
        assert ray_report["score"] == pytest.approx(local_report["score"], abs=1e-6)
        assert len(ray_report["deposits"]) == len(local_report["deposits"])
    assert (
        read_json(ray_out / "manifest.json")["settings_key"]
        == read_json(local_out / "manifest.json")["settings_key"]
    )
    assert (ray_out / "summary.csv").read_text().count("\n") == len(slides) + 1
    assert leftovers(ray_out) == []


def test_ray_run_resumes_a_finished_local_batch_without_recomputing(
    ray_cluster: Any, slides: list[Path], model_path: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    run_local_batch(slides[:1], out_dir, spec_for(model_path).build())
    report_before = (out_dir / slides[0].stem / "report.json").stat().st_mtime_ns
    outcomes = run_ray_batch(slides[:1], out_dir, spec_for(model_path), RayOptions())
    assert [o.status for o in outcomes] == ["skipped"]
    assert (out_dir / slides[0].stem / "report.json").stat().st_mtime_ns == report_before


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


def test_node_with_other_settings_stops_the_run_before_writing(
    ray_cluster: Any, slides: list[Path], model_path: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    with pytest.raises(MicrometError, match="differs between nodes"):
        run_ray_batch(slides[:1], out_dir, spec_for(model_path), RayOptions(), worker_class=MismatchedWorker)
    assert not (out_dir / "manifest.json").exists()
    assert not (out_dir / slides[0].stem).exists()


def test_gpus_asked_on_a_cluster_without_gpus_is_a_config_error(ray_cluster: Any) -> None:
    assert slot_resources(ray_cluster, RayOptions()) == (1.0, 0.0)
    with pytest.raises(ConfigError, match="no GPUs"):
        slot_resources(ray_cluster, RayOptions(gpus_per_slide=1))


def test_missing_ray_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    slide = shutil.copy(TRUNCATED, tmp_path / "node.tif")
    code = main(["infer", str(slide), "--out", str(tmp_path / "out"), "--ray", "auto"])
    assert code == 1
    assert "pip install micromet[ray]" in capsys.readouterr().err
    args = argparse.Namespace(ray="auto", out=tmp_path / "out", gpus_per_slide=None, cpus_per_slide=None)
    with pytest.raises(ConfigError, match=r"pip install micromet\[ray\]"):
        run_batch_on_ray([Path(slide)], args)


def test_without_ray_flag_nothing_of_ray_is_imported() -> None:
    code = (
        "import sys; import pipeline.cli, pipeline.distributed, pipeline.analyze, pipeline.batch; "
        "pipeline.cli.build_parser(); assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_unwritable_output_folder_is_rejected_before_any_work(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    missing_model = ContextSpec(tmp_path / "no_model.pt", None, {})
    with pytest.raises(OutputError, match="not writable"):
        run_ray_batch([tmp_path / "node.tif"], blocker / "out", missing_model, RayOptions())


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


def test_bad_per_slide_flag_is_a_config_error(tmp_path: Path) -> None:
    args = argparse.Namespace(ray="auto", out=tmp_path, gpus_per_slide=None, cpus_per_slide=-2.0)
    with pytest.raises(ConfigError, match="cpus_per_slide"):
        run_batch_on_ray([tmp_path / "node.tif"], args)
