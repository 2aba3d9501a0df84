"""Scoring precision: reads the requested precision and the prepared model; produces the autocast
dtype tiles are scored under, measured rather than assumed where the choice depends on the CPU.

``--precision auto`` on a CPU with native bf16 (AVX512-BF16 or AMX) used to mean bf16 always.
That gain is a property of one CPU, not of the design: bf16 was 1.6-2.3x faster than fp32 on one
AMD EPYC and slower than fp32 with 2 threads on an Intel Xeon with AVX512-BF16
(docs/benchmarks.md). So "auto" there times a short probe of both on the model at hand and keeps
bf16 only where it is clearly faster. Without native bf16 the CPU emulates it (slower than
fp32 in every measurement here) and "auto" is fp32 with no probe; on a GPU "auto" is bf16 or fp16
(``pipeline.models.device.autocast_dtype``). An explicit --precision is never changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pipeline.models.device import native_cpu_bf16, precision_name, scoring_autocast_dtype

PROBE_TILES = 32
PROBE_REPEATS = 3
# bf16 must beat fp32 by this factor to be chosen: a tie keeps the exact fp32 probabilities.
BF16_MIN_SPEEDUP = 1.15

Timer = Callable[[], float]


@dataclasses.dataclass(frozen=True)
class PrecisionProbe:
    """What the probe measured: median seconds per probe batch in fp32 and bf16, and the choice."""

    fp32_s: float
    bf16_s: float
    chosen: str
    tiles: int = PROBE_TILES

    def to_dict(self) -> dict[str, Any]:
        """For report.json's inference section."""
        return {"fp32_s": round(self.fp32_s, 5), "bf16_s": round(self.bf16_s, 5), "chosen": self.chosen,
                "tiles": self.tiles}  # fmt: skip


def _median_seconds(
    model: nn.Module, batch: torch.Tensor, dtype: torch.dtype | None, timer: Timer
) -> float:
    times: list[float] = []
    for repeat in range(PROBE_REPEATS + 1):  # the first call warms up (allocations, kernels)
        context: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if dtype is not None:
            context = torch.autocast(device_type="cpu", dtype=dtype)
        started = timer()
        with torch.inference_mode(), context:
            model(batch)
        elapsed = timer() - started
        if repeat:
            times.append(elapsed)
    return statistics.median(times)


def probe_cpu_precision(
    model: nn.Module, tile_size_px: int, timer: Timer = time.perf_counter
) -> PrecisionProbe:
    """Time ``model`` (prepared, on the CPU) on a batch of tiles in fp32 and under bf16
    autocast; bf16 is chosen only when at least ``BF16_MIN_SPEEDUP`` times faster."""
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand((PROBE_TILES, 3, tile_size_px, tile_size_px), generator=generator)
    batch = batch.contiguous(memory_format=torch.channels_last)
    fp32_s = _median_seconds(model, batch, None, timer)
    bf16_s = _median_seconds(model, batch, torch.bfloat16, timer)
    chosen = torch.bfloat16 if bf16_s * BF16_MIN_SPEEDUP <= fp32_s else None
    return PrecisionProbe(fp32_s, bf16_s, precision_name(chosen))


def scoring_dtype(
    model: nn.Module, tile_size_px: int, device: torch.device, precision: str
) -> tuple[torch.dtype | None, PrecisionProbe | None]:
    """The autocast dtype to score under (None: fp32), and the probe when one decided it."""
    if precision == "auto" and device.type == "cpu":
        if not native_cpu_bf16():
            return None, None  # emulated bf16 is slower than fp32 in every measurement here
        probe = probe_cpu_precision(model, tile_size_px)
        return (torch.bfloat16 if probe.chosen == "bf16" else None), probe
    return scoring_autocast_dtype(device, precision), None
