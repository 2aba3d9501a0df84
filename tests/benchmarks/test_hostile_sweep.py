"""The hostile-input sweep (issue 22): its runner tells a traceback, a hang, a silent acceptance,
lost data and a clean refusal apart, and a seeded sample of the real cases runs through it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.benchmarks import hostile_report, hostile_sweep
from pipeline.benchmarks.hostile_cases import (
    MPP,
    PROB,
    SEED,
    Case,
    Guard,
    Step,
    flag_cases,
    must_refuse_value,
    path_cases,
)
from pipeline.benchmarks.hostile_sweep import Outcome
from pipeline.cli import main


def _run(cases: list[Case], tmp_path: Path, timeout_s: float = 60.0) -> dict[str, Outcome]:
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir(exist_ok=True)
    outcomes = hostile_sweep.run_cases(cases, main, fixtures, tmp_path, timeout_s, 2, lambda outcome: None)
    return {outcome.case_id: outcome for outcome in outcomes}


def _info_case(name: str, must_refuse: bool, **extra: object) -> Case:
    return Case(name, "test", "info", ("info", "{case}/missing.tif"), must_refuse,
        **extra)  # type: ignore[arg-type]


def test_the_runner_tells_a_traceback_a_hang_an_acceptance_lost_data_and_a_refusal_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.cli.info

    def misbehave(args: object) -> int:
        # the forked case sees this stand-in for `micromet info`: each slide name asks for one fault
        slide = str(getattr(args, "slides", [""])[0])
        if "crash" in slide:
            raise ZeroDivisionError("a bug")
        if "sleep" in slide:
            time.sleep(600)
        if "delete" in slide:
            Path(slide).with_name("precious.txt").unlink()
        if "refuse" in slide:
            from pipeline.errors import ConfigError

            raise ConfigError(f"{slide}: not a slide; pass a slide file")
        return 0

    monkeypatch.setattr(pipeline.cli.info, "run", misbehave)
    keep = Guard("{case}/precious.txt", "bytes", b"keep")
    cases = [
        Case("crash", "test", "info", ("info", "{case}/crash.tif"), True),
        Case("accepted_bad", "test", "info", ("info", "{case}/fine.tif"), True),
        Case("accepted_ok", "test", "info", ("info", "{case}/fine.tif"), False),
        Case("lost", "test", "info", ("info", "{case}/delete.tif"), False,
             (Step("write", "{case}/precious.txt", b"keep"),), (keep,)),
        Case("refused", "test", "info", ("info", "{case}/refuse.tif"), True),
        Case("usage", "test", "info", ("info", "{case}/x.tif", "--mpp=nan"), True),
    ]
    outcomes = _run(cases, tmp_path)
    # a tiny time limit on a case that sleeps: a hang, its process group killed
    outcomes.update(_run([Case("hang", "test", "info", ("info", "{case}/sleep.tif"), True)], tmp_path, 2.0))
    verdicts = {name: outcome.verdict for name, outcome in outcomes.items()}
    assert verdicts == {"crash": "traceback", "hang": "hang", "accepted_bad": "silent_acceptance",
                        "accepted_ok": "accepted", "lost": "data_loss", "refused": "refused",
                        "usage": "refused"}
    assert "ZeroDivisionError" in outcomes["crash"].detail
    assert "refuse.tif: not a slide" in outcomes["refused"].detail
    assert outcomes["hang"].exit_code is None
    assert not list((tmp_path / "cases").iterdir())  # every case folder removed


def test_a_file_written_outside_the_case_folder_is_data_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.cli.info

    def litter(args: object) -> int:
        (tmp_path / "litter.txt").write_text("x")
        return 0

    monkeypatch.setattr(pipeline.cli.info, "run", litter)
    outcome = _run([_info_case("litter", False)], tmp_path)["litter"]
    assert outcome.verdict == "data_loss" and "litter.txt" in outcome.detail


def test_hostile_values_are_marked_must_refuse_only_where_no_reading_is_valid() -> None:
    assert all(must_refuse_value(MPP, v) for v in ("nan", "inf", "0", "1e-308", "1_0", "", "0x10", "1e5"))
    assert not any(must_refuse_value(MPP, v) for v in ("0.5", " 0.5 ", "\u0663", "2"))
    assert must_refuse_value(PROB, "4.5") and not must_refuse_value(PROB, "0")
    assert must_refuse_value(SEED, "-1") and must_refuse_value(SEED, str(2**64))
    assert not must_refuse_value(SEED, "0")
    ids = [case.case_id for case in flag_cases() + path_cases()]
    assert len(ids) == len(set(ids)) > 1400


def test_a_seeded_sample_of_real_cases_runs_and_is_counted(tmp_path: Path) -> None:
    import importlib
    import random

    for module in ("torch", "pipeline.models", "pipeline.training.classify", "pipeline.slides"):
        importlib.import_module(module)  # imported once here, not in every forked case
    cases = [case for case in flag_cases() + path_cases() if case.command in {"info", "stage", "classify"}]
    sample = random.Random(22).sample(cases, 20)
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    outcomes = hostile_sweep.run_cases(sample, main, fixtures, tmp_path, 60.0, 2, lambda outcome: None)
    assert sorted(o.case_id for o in outcomes) == sorted(c.case_id for c in sample)
    summary = hostile_report.summarise(hostile_report.outcome_record(o) for o in outcomes)
    assert summary["cases"] == 20 and sum(summary["verdicts"].values()) == 20
    # no fixtures here: a case needing them still ends in a verdict, and none may crash or hang
    assert summary["verdicts"]["traceback"] == summary["verdicts"]["hang"] == 0, summary["failures"]
    assert summary["verdicts"]["refused"] >= 10
    section = hostile_report.markdown_section(summary, "test machine", "cmd", "today")
    assert "20 cases" in section and section.startswith(hostile_report.DOCS_START)
