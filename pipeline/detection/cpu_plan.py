"""Inference: fits the CPU split between reading tiles and scoring them to the work at hand.

Reads a quick probe of one slide's reads and of the model's scoring (seconds per tile each);
produces a ``CpuPlan``: how many reader processes and how many torch threads. On a CPU the
two sides share the same cores. A small model is read-bound (reader processes pay off); a
real-size one is compute-bound, and every core taken by a reader is a core the model loses:
measured with the 1.2 M-parameter default model on a 2-core machine, one 12,000 x 10,000 px
slide took 32 s with two reader processes and 22 s reading in the scoring process.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable

# Fewer tiles than this are read in the scoring process: starting reader processes costs
# about a second, more than reading a small grid takes.
MIN_TILES_FOR_READERS = 2000
# Below this share of the CPU work in reading, a run is compute-bound: all cores score and a
# thread of the scoring process reads ahead (OpenSlide reads release the GIL). Measured with
# the default model under bf16 on 2 cores (reading 28-33 % of the work, 10,866 tiles): 16.0 s
# with the read-ahead thread, 17-19 s reading between batches, 20-21 s with one reader
# process and one scoring thread. Above it, reading needs cores of its own: reader processes.
COMPUTE_BOUND_READ_SHARE = 0.5

# On a machine of at most this many cores the read-ahead thread shares a core with torch's
# OpenMP team, and libgomp's default (spinning) wait makes the whole team stall while one
# member is descheduled: measured on a 2-core Intel Xeon (AMX, bf16), a batch of 64 tiles took
# 30 ms alone and 134 ms beside a busy thread, 63 ms with passive waiting; end to end the
# default pair took 11.4-12.1 s against 13.2-14.3 s (4 interleaved pairs of runs), while the
# model alone slowed from 4.7-5.1 s to 5.3-5.8 s (docs/benchmarks.md, "OpenMP wait policy").
PASSIVE_OMP_WAIT_MAX_CORES = 4

ProbeSeconds = Callable[[], float]


def prefer_passive_omp_wait(cores: int | None = None) -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE for this process and its children on a machine of at most
    PASSIVE_OMP_WAIT_MAX_CORES cores (``cores``: ``usable_cores()`` by default), unless the user
    set OMP_WAIT_POLICY. OpenMP reads it once, when torch is first imported, so this does
    nothing once torch is loaded. Returns whether it set it."""
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    if (cores if cores is not None else usable_cores()) > PASSIVE_OMP_WAIT_MAX_CORES:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


@dataclasses.dataclass(frozen=True)
class CpuPlan:
    """Reader processes and torch threads for one scoring run, and why.

    read_s_per_tile / compute_s_per_tile: the probe's single-core seconds per tile (None when
    no probe ran). reason: one line for report.json and the log. read_ahead_thread: with no
    reader process, a thread of the scoring process reads the next blocks while it scores.
    """

    num_workers: int
    torch_threads: int
    read_s_per_tile: float | None
    compute_s_per_tile: float | None
    reason: str
    read_ahead_thread: bool = False

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for report.json."""
        return dataclasses.asdict(self)


def usable_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def fixed_plan(num_workers: int, on_cpu: bool, default_threads: int) -> CpuPlan:
    """The plan for a user-set reader count: on the CPU, one core per reader (up to half)."""
    cores = usable_cores()
    threads = max(1, cores - min(num_workers, cores // 2)) if on_cpu else default_threads
    return CpuPlan(num_workers, threads, None, None, f"{num_workers} reader process(es) set by the user")


def plan_cpu(
    n_tiles: int, on_cpu: bool, default_threads: int, probe_read: ProbeSeconds, probe_compute: ProbeSeconds
) -> CpuPlan:
    """Choose reader processes and torch threads for ``n_tiles`` tiles.

    probe_read / probe_compute: return single-core seconds per tile for reading and for
    scoring; called only when the choice depends on them. On a GPU the cores all read.
    """
    cores = usable_cores()
    if not on_cpu:
        workers = max(1, min(cores - 1, 8))
        return CpuPlan(workers, default_threads, None, None, "GPU: the CPU cores read, the device scores")
    if cores < 2 or n_tiles < MIN_TILES_FOR_READERS:
        why = "one core" if cores < 2 else f"{n_tiles} tiles: fewer than {MIN_TILES_FOR_READERS}"
        reason = f"read by a thread of the scoring process ({why})"
        return CpuPlan(0, cores, None, None, reason, read_ahead_thread=cores >= 2)
    read_s, compute_s = probe_read(), probe_compute()
    share = read_s / (read_s + compute_s) if read_s + compute_s > 0 else 1.0
    if share < COMPUTE_BOUND_READ_SHARE:
        reason = (
            f"compute-bound (reading is {share:.0%} of the work): every core scores, a thread reads ahead"
        )
        return CpuPlan(0, cores, read_s, compute_s, reason, read_ahead_thread=True)
    workers = min(cores - 1, max(1, round(cores * share)))
    reason = f"reading is {share:.0%} of the work: {workers} reader(s), {cores - workers} scoring thread(s)"
    return CpuPlan(workers, max(1, cores - workers), read_s, compute_s, reason)
