"""The speed benchmark harness's pure parts: options, medians, ratios, tables, the docs section,
the TIAToolbox tile mask, a failing child run, and the read-limit loop on a tiny slide.
TIAToolbox itself is never installed here."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.benchmarks import harness, speed, tia, variants
from pipeline.benchmarks import speed_report as report
from pipeline.cli import build_parser
from pipeline.cli.bench import bench_argv, find_bench_script
from pipeline.config import TilingConfig, TissueConfig
from pipeline.errors import ConfigError
from pipeline.slides.slide import open_slide
from pipeline.slides.tiling import plan_tiles
from pipeline.slides.tissue import detect_tissue

REPO_ROOT = Path(__file__).resolve().parents[2]


def result(variant: str, n_tiles: int, seconds: float, rss: float = 100.0, error: str | None = None) -> Any:
    return variants.RunResult(variant, n_tiles, seconds, rss, 0.0, rss * 2, error=error)


def test_defaults_match_the_brief() -> None:
    args = speed.parse_args([])
    assert (args.width, args.height, args.mpp) == (20000, 20000, 0.25)
    assert (args.repeats, args.workers, args.batch_size) == (3, None, 64)  # None: automatic CPU plan
    assert args.precision == "auto" and not args.both_models
    assert args.model is None and args.architecture is None
    assert not args.skip_tiatoolbox and not args.write_docs


def test_both_models_measures_the_default_model_and_resnet18_under_their_own_headings() -> None:
    runs = speed.model_runs(speed.parse_args(["--both-models", "--repeats", "1"]))
    assert [(r.model, r.architecture) for r in runs] == [(None, None), (None, "resnet18")]
    assert (runs[1].tile_size_px, runs[1].model_mpp, runs[1].repeats) == (224, 0.5, 1)
    headings = [speed.section_heading(r) for r in runs]
    assert "the default model" in headings[0] and "resnet18 224 px at 0.5" in headings[1]
    native_bf16 = harness.cpu_kind().endswith("; native bf16)")
    assert all(("CPU without native bf16" in h) != native_bf16 for h in headings)
    assert len(set(headings)) == 2 and all(h.startswith("## Speed") for h in headings)
    assert speed.model_runs(speed.parse_args([]))[0].architecture is None


def test_both_models_with_a_model_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        speed.parse_args(["--both-models", "--architecture", "resnet50"])
    assert caught.value.code == 2 and "--both-models" in capsys.readouterr().err


def test_model_and_architecture_together_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        speed.parse_args(["--model", "m.pt", "--architecture", "resnet18"])
    assert exit_info.value.code == 2
    assert "exclude each other" in capsys.readouterr().err


def test_zero_repeats_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        speed.parse_args(["--repeats", "0"])
    assert "--repeats 0 is out of range" in capsys.readouterr().err


def test_micromet_bench_forwards_the_options_it_parsed() -> None:
    args = build_parser().parse_args(
        ["bench", "--width", "6000", "--architecture", "resnet18", "--skip-tiatoolbox", "--workers", "0"]
    )
    forwarded = speed.parse_args(bench_argv(args))
    assert (forwarded.width, forwarded.architecture, forwarded.workers) == (6000, "resnet18", 0)
    assert forwarded.skip_tiatoolbox and not forwarded.write_docs
    assert forwarded.height == 20000  # defaults travel too


def test_bench_command_explains_where_the_harness_is(tmp_path: Path) -> None:
    assert find_bench_script() == REPO_ROOT / "scripts" / "bench.py"
    with pytest.raises(ConfigError, match="source repository"):
        find_bench_script(tmp_path)


def test_summary_takes_medians_of_successful_runs_only() -> None:
    runs = [
        result("micromet", 100, 2.0, 300),
        result("micromet", 100, 4.0, 100),
        result("micromet", 100, 1.0, 200),
        result("micromet", 0, 0.0, error="boom"),
    ]
    summary = report.summarize("micromet", runs)
    assert (summary.runs, summary.failed, summary.n_tiles) == (3, 1, 100)
    assert summary.seconds == 2.0
    assert summary.tiles_per_s == 50.0  # median of 50, 25, 100
    assert summary.peak_rss_main_mb == 200 and summary.peak_rss_tree_mb == 400
    assert summary.error is None


def test_summary_of_only_failures_keeps_the_error() -> None:
    summary = report.summarize("tiatoolbox", [result("tiatoolbox", 0, 0.0, error="exit 1: ImportError")])
    assert summary.runs == 0 and summary.seconds is None
    assert summary.error == "exit 1: ImportError"


def test_speed_ratio_is_tiles_per_second_over_tiles_per_second() -> None:
    fast = report.summarize("micromet", [result("micromet", 100, 2.0)])
    slow = report.summarize("read_limit", [result("read_limit", 100, 8.0)])
    assert report.speed_ratio(fast, slow) == pytest.approx(4.0)
    assert report.speed_ratio(slow, fast) == pytest.approx(0.25)
    failed = report.summarize("tiatoolbox", [result("tiatoolbox", 0, 0.0, error="x")])
    assert report.speed_ratio(fast, failed) is None


def test_tables_show_numbers_and_failures() -> None:
    summaries = [
        report.summarize("read_limit", [result("read_limit", 1234, 2.0)]),
        report.summarize("micromet", [result("micromet", 1234, 4.0)]),
        report.summarize("tiatoolbox", [result("tiatoolbox", 0, 0.0, error="no")]),
    ]
    table = report.render_table(summaries)
    assert "| read limit |" in table and "| 1,234 | 2.00 | 617.0 | 100 / 200 | 1 of 1 |" in table
    assert "| TIAToolbox |" in table and "failed" in table and "0 of 1" in table
    ratios = report.render_ratios(summaries)
    assert "| micromet end to end | 0.50 | n/a |" in ratios


def test_replace_section_rewrites_only_its_own_section() -> None:
    heading = report.SECTION_HEADING
    text = (
        f"# Benchmarks\n\nintro\n\n## Viewer\n\nviewer text\n\n{heading}\n\nold numbers\n\n## Later\n\nkeep\n"
    )
    updated = harness.replace_section(text, heading, f"{heading}\n\nnew numbers\n")
    assert "old numbers" not in updated and "new numbers" in updated
    assert updated.index("## Viewer") < updated.index(heading) < updated.index("## Later")
    assert "viewer text" in updated and updated.endswith("## Later\n\nkeep\n")
    assert harness.replace_section(updated, heading, f"{heading}\n\nnew numbers\n") == updated


def test_replace_section_appends_when_absent() -> None:
    heading = report.SECTION_HEADING
    updated = harness.replace_section("# Benchmarks\n\n## Viewer\n\nx\n", heading, f"{heading}\n\nbody\n")
    assert updated == f"# Benchmarks\n\n## Viewer\n\nx\n\n{heading}\n\nbody\n"


def tiatoolbox_selects(mask: np.ndarray, shape: tuple[int, int], tile_px: int) -> set[tuple[int, int]]:
    """TIAToolbox 2.1's patch filter (PatchExtractor.filter_coordinates, min_mask_ratio 0) on a
    patch grid with stride = tile, partial edge patches included (its default)."""
    width, height = shape
    scale = np.array(mask.shape[1::-1]) / np.array([width, height])
    kept = set()
    for row in range(math.ceil(height / tile_px)):
        for col in range(math.ceil(width / tile_px)):
            box = np.array([col, row, col + 1, row + 1], np.float32) * tile_px
            box[[0, 2]] = np.clip(box[[0, 2]] * scale[0], 0, mask.shape[1])
            box[[1, 3]] = np.clip(box[[1, 3]] * scale[1], 0, mask.shape[0])
            x0, y0, x1, y1 = box.astype(np.int32).tolist()
            if np.count_nonzero(mask[y0:y1, x0:x1]) > 0:
                kept.add((row, col))
    return kept


@pytest.mark.parametrize(("shape", "tile_px"), [((4992, 3120), 96), ((5000, 5000), 64), ((1280, 960), 64)])
def test_tile_mask_makes_tiatoolbox_keep_exactly_the_planned_tiles(
    shape: tuple[int, int], tile_px: int
) -> None:
    rows, cols = shape[1] // tile_px, shape[0] // tile_px
    rng = np.random.default_rng(3)
    picks = zip(rng.integers(0, rows, 300), rng.integers(0, cols, 300), strict=True)
    planned = {(int(r), int(c)) for r, c in picks}
    planned |= {(rows - 1, cols - 1), (0, 0)}  # the corners, where rounding would bite
    rc = np.array(sorted(planned), dtype=np.int64)
    mask = variants.tile_mask(rc, (float(shape[0]), float(shape[1])), tile_px)
    assert tiatoolbox_selects(mask, shape, tile_px) == planned


def test_tia_requirements_drop_torch_and_use_headless_opencv() -> None:
    requires = [
        "torch<2.13.0,>=2.5.0",
        "torchvision<0.28",
        "opencv-python<5.0.0,>=4.6.0",
        "numpy<2.4",
        "pytest; extra == 'dev'",
        "Click<8.4.2,>=8.2.0",
    ]
    assert tia.tia_requirements(requires) == [
        "opencv-python-headless<5.0.0,>=4.6.0",
        "numpy<2.4",
        "Click<8.4.2,>=8.2.0",
    ]


def test_pip_failure_tail_keeps_the_error_not_the_index_chatter() -> None:
    output = "Looking in indexes: somewhere\nWARNING: Location 'x' is ignored\nERROR: No matching dist\n"
    assert tia._tail(output) == "ERROR: No matching dist"


def test_a_failing_child_run_reports_its_output(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('ImportError: no tiatoolbox'); sys.exit(3)"]
    run = speed.run_child(command, "tiatoolbox", tmp_path / "r.json", tmp_path / "r.log", timeout_s=60)
    assert run.error is not None and "exit 3" in run.error and "ImportError: no tiatoolbox" in run.error


def test_a_child_run_returns_its_result_and_memory(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    code = (
        "import sys; from pipeline.benchmarks import variants as v; "
        "x = bytearray(50 * 2**20); import time; time.sleep(0.5); "
        "v.RunResult('read_limit', 10, 0.5, 60.0).save(__import__('pathlib').Path(sys.argv[1]))"
    )
    run = speed.run_child(
        [sys.executable, "-c", code, str(out)], "read_limit", out, tmp_path / "r.log", timeout_s=60
    )
    assert run.error is None and run.n_tiles == 10 and run.tiles_per_s == 20.0
    if Path("/proc/self/status").exists():
        assert run.peak_rss_tree_mb is not None and run.peak_rss_tree_mb > 50


def test_section_says_why_tiatoolbox_was_not_measured(tmp_path: Path) -> None:
    spec = variants.BenchSpec("s.svs", 0.25, "m.pt", 64, 1.0, "cpu", 2, 64, 4, "g.npz", str(tmp_path))
    context = report.RunContext(
        "python scripts/bench.py", "1 x 1 px", "model", 1, harness.machine_facts(), 1.0
    )
    env = tia.TiaEnv(None, error="pip install of tiatoolbox's requirements failed (exit 1): no torch")
    section = report.render_section(context, spec, 10, {"read_limit": [result("read_limit", 10, 1.0)]}, env)
    assert section.startswith(report.SECTION_HEADING)
    assert "**not measured**" in section and "failed (exit 1): no torch" in section
    assert "Reproduce: `python scripts/bench.py`" in section


def test_section_says_when_end_to_end_scores_a_partner_too(tmp_path: Path) -> None:
    from pipeline.models import ModelCard, build_model, save_checkpoint
    from pipeline.models.partner import with_partner

    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=1.0)
    partner = save_checkpoint(tmp_path / "p.pt", build_model("micronet"), card)
    for model, expected in (("p.pt", False), ("m.pt", True)):
        if expected:
            save_checkpoint(tmp_path / model, build_model("micronet"), with_partner(card, partner))
        spec = variants.BenchSpec(
            "s.svs", 0.25, str(tmp_path / model), 32, 1.0, "cpu", 2, 64, 4, "g.npz", str(tmp_path)
        )
        context = report.RunContext("bench", "1 x 1 px", "model", 1, harness.machine_facts(), 1.0)
        section = report.render_section(
            context, spec, 10, {"read_limit": [result("read_limit", 10, 1.0)]}, None
        )
        assert ("names a partner (p.pt)" in section) == expected


def _tiny_spec(slide: Path, slide_mpp: float, workers: int, folder: Path) -> variants.BenchSpec:
    """A spec for the tiny slide's 32 px grid at 1 µm/px saved as folder/grid.npz."""
    grid, out = str(folder / "grid.npz"), str(folder)
    return variants.BenchSpec(str(slide), slide_mpp, "unused.pt", 32, 1.0, "cpu", workers, 8, 2, grid, out)


def test_read_limit_reads_every_planned_tile(tiny_slide: Path, tmp_path: Path) -> None:
    with open_slide(tiny_slide) as slide:
        tissue = detect_tissue(slide, TissueConfig())
        grid = plan_tiles(slide.dimensions, slide.mpp, tissue, TilingConfig(tile_size_px=32, mpp=1.0))
    variants.save_grid(grid, tmp_path / "grid.npz")
    reloaded = variants.load_grid(tmp_path / "grid.npz")
    assert np.array_equal(reloaded.xy_px, grid.xy_px) and reloaded.grid_shape == grid.grid_shape
    for workers in (0, 2):
        spec = _tiny_spec(tiny_slide, grid.slide_mpp, workers, tmp_path)
        n_tiles, facts = variants.read_limit(spec)
        assert n_tiles == len(grid) > 10
        assert facts["workers"] == workers and facts["n_regions"] < len(grid)


@pytest.mark.slow
def test_a_measured_variant_runs_the_package_in_a_fresh_process(tiny_slide: Path, tmp_path: Path) -> None:
    with open_slide(tiny_slide) as slide:
        tissue = detect_tissue(slide, TissueConfig())
        grid = plan_tiles(slide.dimensions, slide.mpp, tissue, TilingConfig(tile_size_px=32, mpp=1.0))
    variants.save_grid(grid, tmp_path / "grid.npz")
    spec = _tiny_spec(tiny_slide, grid.slide_mpp, 0, tmp_path)
    spec.save(tmp_path / "spec.json")
    command = speed.variant_command("read_limit", tmp_path / "spec.json", tmp_path / "r.json", 0, None)
    assert command[1:3] == ["-m", "pipeline.benchmarks.speed"]  # no script of a source checkout
    run = speed.run_child(command, "read_limit", tmp_path / "r.json", tmp_path / "r.log", timeout_s=120)
    assert run.error is None and run.n_tiles == len(grid) > 10 and run.extra["workers"] == 0


def test_the_tiatoolbox_runner_started_by_path_imports_the_package(tmp_path: Path) -> None:
    # TIAToolbox's venv runs the runner by its path; it must still find pipeline.benchmarks and
    # then fail on the missing TIAToolbox (never installed here), reporting it.
    spec = variants.BenchSpec("s.svs", 0.25, "m.pt", 64, 1.0, "cpu", 0, 64, 4, "g.npz", str(tmp_path))
    spec.save(tmp_path / "spec.json")
    env = tia.TiaEnv(Path(sys.executable), "tiatoolbox (none)")
    command = speed.variant_command("tiatoolbox", tmp_path / "spec.json", tmp_path / "r.json", 0, env)
    assert Path(command[1]) == speed.TIA_RUNNER and speed.TIA_RUNNER.is_file()
    run = speed.run_child(command, "tiatoolbox", tmp_path / "r.json", tmp_path / "r.log", timeout_s=120)
    assert run.error is not None and "No module named 'tiatoolbox'" in run.error


def test_write_docs_section_starts_a_missing_file_and_keeps_other_sections(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    harness.write_docs_section(docs, "## A", "## A\n\none\n")
    assert docs.read_text(encoding="utf-8") == "# Benchmarks\n\n## A\n\none\n"
    harness.write_docs_section(docs, "## B", "## B\n\nkept\n")
    harness.write_docs_section(docs, "## A", "## A\n\ntwo\n")
    assert docs.read_text(encoding="utf-8") == "# Benchmarks\n\n## A\n\ntwo\n\n## B\n\nkept\n"


@pytest.mark.parametrize(
    ("architecture", "stride_px", "mode"), [("dense96", 32, "dense"), ("micronet", None, "tiles")]
)
def test_the_compute_limit_runs_a_dense_model_in_its_dense_form(
    tmp_path: Path, architecture: str, stride_px: int | None, mode: str
) -> None:
    from pipeline.models import ModelCard, build_model, save_checkpoint

    tile_px = 96 if architecture == "dense96" else 32
    card = ModelCard(architecture=architecture, tile_size_px=tile_px, mpp=1.0, stride_px=stride_px,
                     training_data="untrained test model")  # fmt: skip
    model = save_checkpoint(tmp_path / "m.pt", build_model(architecture), card)
    rc = np.stack(np.divmod(np.arange(300), 20), axis=1)  # 300 cells, 15 x 20
    np.savez(tmp_path / "grid.npz", xy_px=rc[:, ::-1] * 32, heatmap_rc=rc, tissue_fraction=np.ones(300),
             meta=np.array("{}"))  # fmt: skip
    spec = variants.BenchSpec(slide="unused", slide_mpp=1.0, model=str(model), tile_size_px=tile_px,
                              model_mpp=1.0, device="cpu", workers=0, batch_size=64, region_tiles=8,
                              grid=str(tmp_path / "grid.npz"), out_dir=str(tmp_path), stride_px=stride_px,
                              precision="fp32")  # fmt: skip
    n_tiles, facts = variants.compute_limit(spec)
    assert n_tiles == 300 and facts["mode"] == mode and facts["seconds"] > 0
