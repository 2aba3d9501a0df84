"""The CPU split between reader processes and torch threads, fitted to the work."""

from __future__ import annotations

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
