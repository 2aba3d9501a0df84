"""Compute runtimes on the CPU: speed and score agreement of each way to run a model.

For the shipped default model and for ResNet-18 (224 px, untrained, seed 0), it times the
model alone on batches of tiles with every CPU runtime the ecosystem offers here, and compares
each runtime's tumor probabilities with plain fp32 eager PyTorch on **real** tiles:

* fp32 eager: the unmodified model, NCHW (the reference every other row is compared with);
* micromet fp32: BatchNorms folded, channels_last (``pipeline.detection.inference``'s prepared model);
* micromet bf16: the same under bfloat16 autocast (native on CPUs with AVX512-BF16 or AMX);
* torch.compile (inductor), fp32 and bf16; the first call's compile seconds are reported;
* ONNX Runtime (CPU execution provider), exported with ``torch.onnx.export``;
* int8 static quantisation (``torch.ao`` FX graph mode, x86 backend, calibrated on real tiles).

Real tiles: for the default model the held-out PatchCamelyon test split of
``scripts/train_default_model.py`` (1,314 patches) and the 57 CAMELYON16 level-0 patches;
for ResNet-18 the 57 CAMELYON16 patches resampled to 0.5 µm/px. Agreement: largest and mean
absolute probability difference, and how many tiles cross the card's deposit threshold (0.80)
and seed threshold (0.90) differently.

Usage: .venv/bin/python scripts/bench_runtimes.py [--threads 2] [--seconds 6] [--write-docs]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from pipeline.benchmarks.harness import replace_section
from pipeline.config import CAMELYON_LEVEL0_MPP, PCAM_MPP, SHARED_DATA_DIR, InferenceConfig
from pipeline.detection.inference import _torch_threads, prepare_model
from pipeline.models import ModelCard, build_model, load_checkpoint
from pipeline.training.classify import roc_auc
from pipeline.training.datasets import fit_to_tile, load_rgb
from pipeline.training.pcam_split import load_pcam, split_pcam

REPO = Path(__file__).resolve().parents[1]
SECTION_HEADING = "## Compute runtimes on the CPU (issue 14, item 2)"
BATCH = 64
Runner = Callable[[torch.Tensor], torch.Tensor]  # uint8 NHWC tiles -> (B,) probabilities


def real_tiles(card: ModelCard) -> tuple[NDArray[np.uint8], NDArray[np.int64], str]:
    """Real tiles at the card's tile size and µm/px, their labels, and what they are."""
    c16 = [(p, 1) for p in sorted((SHARED_DATA_DIR / "camelyon16_patches" / "tumor").glob("*.png"))]
    c16 += [(p, 0) for p in sorted((SHARED_DATA_DIR / "camelyon16_patches" / "normal").glob("*.png"))]
    tiles = [fit_to_tile(load_rgb(p), CAMELYON_LEVEL0_MPP, card.mpp, card.tile_size_px) for p, _ in c16]
    labels = [label for _, label in c16]
    what = f"{len(c16)} CAMELYON16 patches"
    if card.tile_size_px == 96 and abs(card.mpp - PCAM_MPP) < 1e-3:
        pcam, pcam_labels = load_pcam(SHARED_DATA_DIR, split_pcam(SHARED_DATA_DIR)["test"])
        tiles, labels = [*pcam, *tiles], [*pcam_labels.tolist(), *labels]
        what = f"{len(pcam)} PCam test patches + {what}"
    return np.stack(tiles), np.asarray(labels, dtype=np.int64), what


def _normalise(card: ModelCard) -> Callable[[torch.Tensor], torch.Tensor]:
    mean = torch.tensor(card.mean).view(1, 3, 1, 1)
    std = torch.tensor(card.std).view(1, 3, 1, 1)
    return lambda tiles: (tiles.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(torch.as_tensor(logits).float(), dim=1)[:, 1]


def eager_runner(model: torch.nn.Module, card: ModelCard) -> Runner:
    """The unmodified model in fp32, NCHW: the reference."""
    reference, normalise = copy.deepcopy(model).eval(), _normalise(card)
    return lambda tiles: _probabilities(reference(normalise(tiles)))


def micromet_runner(model: torch.nn.Module, card: ModelCard, precision: str, compile_model: bool) -> Runner:
    """micromet's own scorer: folded BatchNorms, channels_last, the given autocast."""
    config = InferenceConfig(device="cpu", precision=precision, compile=compile_model)  # type: ignore[arg-type]
    return prepare_model(copy.deepcopy(model), card, config).scorer


def onnx_runner(model: torch.nn.Module, card: ModelCard, threads: int, folder: Path) -> Runner:
    """ONNX Runtime's CPU execution provider on an exported copy of the model."""
    import onnxruntime as ort

    path = folder / "model.onnx"
    example = torch.zeros(2, 3, card.tile_size_px, card.tile_size_px)
    torch.onnx.export(
        copy.deepcopy(model).eval(),
        (example,),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}},
        dynamo=False,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    normalise = _normalise(card)
    return lambda tiles: _probabilities(
        torch.from_numpy(session.run(None, {"x": normalise(tiles).numpy()})[0])
    )


def int8_runner(model: torch.nn.Module, card: ModelCard, calibration: NDArray[np.uint8]) -> Runner:
    """Static int8 quantisation (FX graph mode, x86 backend), calibrated on real tiles."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    normalise = _normalise(card)
    example = normalise(torch.from_numpy(calibration[:BATCH]))
    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (example,))
    for start in range(0, len(calibration), BATCH):
        prepared(normalise(torch.from_numpy(calibration[start : start + BATCH])))
    quantised = convert_fx(prepared)
    return lambda tiles: _probabilities(quantised(normalise(tiles)))


def score_all(runner: Runner, tiles: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Probabilities of every tile, in batches."""
    parts = [runner(torch.from_numpy(tiles[i : i + BATCH])).numpy() for i in range(0, len(tiles), BATCH)]
    return np.concatenate(parts).astype(np.float32)


def tiles_per_s(runner: Runner, tile_size_px: int, seconds: float) -> list[float]:
    """Three timed passes of about ``seconds / 3`` each on random batches (after a warm-up)."""
    batch = torch.randint(0, 256, (BATCH, tile_size_px, tile_size_px, 3), dtype=torch.uint8)
    runner(batch)
    rates = []
    for _ in range(3):
        started, n = time.perf_counter(), 0
        while time.perf_counter() - started < seconds / 3:
            runner(batch)
            n += BATCH
        rates.append(n / (time.perf_counter() - started))
    return rates


def runtimes(
    model: torch.nn.Module, card: ModelCard, calibration: NDArray[np.uint8], threads: int, folder: Path
) -> dict[str, Callable[[], Runner]]:
    """Every runtime, built lazily (a runtime that cannot be built is reported, not fatal)."""
    return {
        "fp32 eager (reference)": lambda: eager_runner(model, card),
        "micromet fp32 (folded, channels_last)": lambda: micromet_runner(model, card, "fp32", False),
        "micromet bf16 autocast": lambda: micromet_runner(model, card, "bf16", False),
        "torch.compile fp32": lambda: micromet_runner(model, card, "fp32", True),
        "torch.compile bf16": lambda: micromet_runner(model, card, "bf16", True),
        "ONNX Runtime fp32": lambda: onnx_runner(model, card, threads, folder),
        "int8 static (FX, x86)": lambda: int8_runner(model, card, calibration),
    }


def agreement(p: NDArray[np.float32], reference: NDArray[np.float32], card: ModelCard) -> dict[str, float]:
    """Largest / mean |difference| and threshold crossings that differ from the reference."""
    seed = card.seed_threshold if card.seed_threshold is not None else card.threshold
    return {
        "max_abs": float(np.max(np.abs(p - reference))),
        "mean_abs": float(np.mean(np.abs(p - reference))),
        "flips_threshold": int(np.sum((p >= card.threshold) != (reference >= card.threshold))),
        "flips_seed": int(np.sum((p >= seed) != (reference >= seed))),
    }


def measure_model(name: str, model: torch.nn.Module, card: ModelCard, args: argparse.Namespace) -> list[str]:
    """Markdown rows of one model: one per runtime."""
    tiles, labels, what = real_tiles(card)
    rows = [
        f"\n**{name}** ({card.tile_size_px} px at {card.mpp:g} µm/px; agreement on {what}):\n",
        "| runtime | tiles/s (median of 3) | x fp32 eager | first call s | max / mean abs. diff. | "
        "tiles crossing 0.80 / 0.90 differently | AUC |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    reference_rate, reference = None, None
    with tempfile.TemporaryDirectory() as tmp, _torch_threads(args.threads), torch.inference_mode():
        for label, build in runtimes(model, card, tiles[::4], args.threads, Path(tmp)).items():
            try:
                runner = build()
                started = time.perf_counter()
                runner(torch.from_numpy(tiles[:BATCH]))
                first_s = time.perf_counter() - started
                p = score_all(runner, tiles)
                rate = statistics.median(tiles_per_s(runner, card.tile_size_px, args.seconds))
            except Exception as exc:
                rows.append(
                    f"| {label} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]} | | | | | |"
                )
                continue
            reference_rate = reference_rate or rate
            reference = p if reference is None else reference
            a = agreement(p, reference, card)
            auc = roc_auc(p, labels) if len(set(labels.tolist())) == 2 else float("nan")
            rows.append(
                f"| {label} | {rate:,.1f} | {rate / reference_rate:.2f} | {first_s:.2f} | "
                f"{a['max_abs']:.4f} / {a['mean_abs']:.5f} | {a['flips_threshold']} / "
                f"{a['flips_seed']} of {len(p):,} | {auc:.4f} |"
            )
            print(rows[-1], file=sys.stderr)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime threads (2)")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per runtime (6)")
    parser.add_argument("--write-docs", action="store_true", help="write the section into docs/benchmarks.md")
    args = parser.parse_args(argv)
    if not SHARED_DATA_DIR.is_dir():
        parser.error(f"{SHARED_DATA_DIR} not found: the real tiles live in ../shared/data beside the repo")
    default_model, default_card = load_checkpoint(REPO / "models" / "default.pt")
    torch.manual_seed(0)
    resnet_card = ModelCard(
        architecture="resnet18",
        tile_size_px=224,
        mpp=0.5,
        training_data="none",
        threshold=0.8,
        seed_threshold=0.9,
    )
    rows = measure_model("default model (pcamnet)", default_model, default_card, args)
    rows += measure_model("ResNet-18, untrained (seed 0)", build_model("resnet18").eval(), resnet_card, args)
    cpu = torch.backends.cpu.get_cpu_capability()
    bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    section = "\n".join(
        [
            SECTION_HEADING,
            "",
            f"What: the model alone on batches of {BATCH} uint8 tiles (normalisation included), "
            f"{args.threads} torch threads, on a CPU with capability {cpu} and native bf16 {bf16}; "
            "scores compared with fp32 eager on real tiles. "
            f"torch {torch.__version__}. Load average at the end: {__import__('os').getloadavg()[0]:.1f}.",
            *rows,
            "",
            "Reproduce: `.venv/bin/python scripts/bench_runtimes.py --write-docs`",
            "",
        ]
    )
    print(section)
    if args.write_docs:
        docs = REPO / "docs" / "benchmarks.md"
        docs.write_text(
            replace_section(docs.read_text(encoding="utf-8"), SECTION_HEADING, section), encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
