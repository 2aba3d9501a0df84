"""Models stage: picks the torch device and autocast precision for scoring and training.

Reads the requested device/precision strings (from ``InferenceConfig``); produces a
``torch.device`` and the autocast dtype (or None for full fp32). The precision names are
defined here only; importing this module does not import torch (its functions do), so the
settings and the command line read them without it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal, get_args

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# "auto": what suits the device (``autocast_dtype``, ``scoring_autocast_dtype``); "fp32": no
# autocast; "bf16", "fp16": autocast to that dtype.
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
# Scoring under bf16 autocast on a CPU with native bf16 (AVX512-BF16 or AMX) was 1.6-2.3x
# faster than fp32 and moved real-tile probabilities by at most 0.012 (1,371 real tiles,
# docs/benchmarks.md, scripts/bench_runtimes.py): only a tile that close to a threshold can
# cross it. Without native bf16 the CPU emulates it, slower than fp32.
SCORING_BF16_TOLERANCE = 0.02


class DeviceUnavailableError(ConfigError):
    """A device that was asked for explicitly (cuda, cuda:N, mps) is not available here."""


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _cuda_device(requested: str) -> torch.device:
    import torch

    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={requested!r} was requested but CUDA is not available "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
            "use --device cpu or --device auto"
        )
    device = torch.device(requested)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceUnavailableError(
            f"device={requested!r} was requested but only {count} CUDA device(s) exist "
            f"(cuda:0 to cuda:{count - 1}); pick one of those or use --device auto"
        )
    return device


def choose_device(requested: str) -> torch.device:
    """The torch device for ``requested``: "auto", "cpu", "cuda", "cuda:N" or "mps".

    "auto" picks CUDA, then Apple MPS, then CPU. Raises DeviceUnavailableError (a ConfigError)
    when an explicit accelerator is missing, ConfigError for an unknown device string.
    """
    import torch

    name = requested.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif _mps_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
        logger.info("device auto -> %s", device)
        return device
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise DeviceUnavailableError(
                "device='mps' was requested but Apple MPS is not available on this machine; "
                "use --device cpu or --device auto"
            )
        return torch.device("mps")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        return _cuda_device(name)
    raise ConfigError(f"device={requested!r} is not allowed; use auto, cpu, cuda, cuda:N or mps")


def _cuda_bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``device`` and ``precision``, or None for plain fp32.

    precision "auto": bf16 on CUDA when the GPU supports it, else fp16; None on CPU and MPS.
    "fp32": None. "bf16"/"fp16": that dtype, where the device supports it.
    Raises ConfigError for an unknown precision or one the device cannot run.
    """
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not allowed; use {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    kind = device.type
    if precision == "auto":
        if kind == "cuda":
            return torch.bfloat16 if _cuda_bf16_supported() else torch.float16
        return None  # CPU/MPS autocast is often slower or less accurate than fp32 here
    if precision == "bf16":
        if kind == "cuda" and not _cuda_bf16_supported():
            raise ConfigError(
                "precision='bf16' was requested but this GPU does not support bfloat16; "
                "use --precision fp16 or auto"
            )
        return torch.bfloat16
    if kind == "cpu":
        raise ConfigError("precision='fp16' is not supported on CPU; use --precision bf16, fp32 or auto")
    return torch.float16


def native_cpu_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles)."""
    import torch

    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def scoring_autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for scoring tiles (inference only; training keeps ``autocast_dtype``).

    Like ``autocast_dtype``, except that "auto" on a CPU with native bf16 gives bf16: its
    probabilities stay within ``SCORING_BF16_TOLERANCE`` of fp32 (measured, see above).
    """
    import torch

    if precision == "auto" and device.type == "cpu":
        return torch.bfloat16 if native_cpu_bf16() else None
    return autocast_dtype(device, precision)


def precision_name(dtype: torch.dtype | None) -> str:
    """"fp32", "bf16" or "fp16": the name of an autocast dtype (None: plain fp32)."""
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32") if dtype else "fp32"
