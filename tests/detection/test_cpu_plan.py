"""The CPU split between reader processes and torch threads, fitted to the work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.detection import cpu_plan
from pipeline.detection.cpu_plan import MIN_TILES_FOR_READERS, fixed_plan, plan_cpu


def _never() -> float:
    raise AssertionError("the probe must not run here")


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_plan, "usable_cores", lambda: 4)


def test_a_compute_bound_run_gives_every_core_to_the_model(four_cores: None) -> None:
    plan = plan_cpu(50_000, True, 4, lambda: 0.0002, lambda: 0.004)
    assert (plan.num_workers, plan.torch_threads) == (0, 4)
    assert plan.read_s_per_tile == 0.0002 and plan.compute_s_per_tile == 0.004
    assert "compute-bound" in plan.reason and plan.read_ahead_thread
    # reading a third of the work: still better overlapped by a thread than given a core
    third = plan_cpu(50_000, True, 4, lambda: 0.001, lambda: 0.002)
    assert (third.num_workers, third.torch_threads, third.read_ahead_thread) == (0, 4, True)


def test_a_read_bound_run_splits_the_cores_by_the_share_of_reading(four_cores: None) -> None:
    plan = plan_cpu(50_000, True, 4, lambda: 0.003, lambda: 0.001)  # reading 75 % of the work
    assert (plan.num_workers, plan.torch_threads) == (3, 1) and not plan.read_ahead_thread
    even = plan_cpu(50_000, True, 4, lambda: 0.001, lambda: 0.001)
    assert (even.num_workers, even.torch_threads) == (2, 2)


def test_small_grids_and_single_cores_read_in_process_without_probing(
    monkeypatch: pytest.MonkeyPatch, four_cores: None
) -> None:
    small = plan_cpu(MIN_TILES_FOR_READERS - 1, True, 4, _never, _never)
    assert (small.num_workers, small.torch_threads) == (0, 4) and small.read_ahead_thread
    monkeypatch.setattr(cpu_plan, "usable_cores", lambda: 1)
    single = plan_cpu(50_000, True, 1, _never, _never)
    assert (single.num_workers, single.torch_threads) == (0, 1) and not single.read_ahead_thread


def test_on_a_gpu_the_cores_read(four_cores: None) -> None:
    plan = plan_cpu(50_000, False, 7, _never, _never)
    assert plan.num_workers == 3 and plan.torch_threads == 7


def test_a_user_set_reader_count_is_kept(four_cores: None) -> None:
    plan = fixed_plan(2, True, 4)
    assert (plan.num_workers, plan.torch_threads) == (2, 2)
    assert "set by the user" in plan.reason and plan.to_dict()["num_workers"] == 2
    assert not fixed_plan(0, True, 4).read_ahead_thread  # --workers 0: read between batches


@pytest.fixture
def before_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a fresh ``micromet`` process: torch not imported yet, OMP_WAIT_POLICY unset."""
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)


def test_passive_omp_wait_is_set_on_a_small_machine_only(before_torch: None) -> None:
    assert not cpu_plan.prefer_passive_omp_wait(cores=cpu_plan.PASSIVE_OMP_WAIT_MAX_CORES + 1)
    assert "OMP_WAIT_POLICY" not in os.environ
    assert cpu_plan.prefer_passive_omp_wait(cores=2)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_a_users_omp_wait_policy_is_kept(before_torch: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert not cpu_plan.prefer_passive_omp_wait(cores=2)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_passive_omp_wait_is_not_set_once_torch_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401  (OpenMP has read its settings: setting one now would be a lie)

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert not cpu_plan.prefer_passive_omp_wait(cores=2)
    assert "OMP_WAIT_POLICY" not in os.environ


def test_the_command_and_the_bench_set_it_before_torch_loads() -> None:
    """Their entry points call prefer_passive_omp_wait first; importing them must not load torch."""
    code = "import sys, pipeline.cli, pipeline.benchmarks.speed; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
