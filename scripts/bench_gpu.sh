#!/usr/bin/env bash
# Issue 14, item 5: the speed figures on a GPU machine, as one short run (about 10 minutes).
# NOT RUN YET: no GPU machine was lent to this work; docs/benchmarks.md ("GPU") says so.
#
# Needs micromet installed in the active Python (pip install -e '.[dev]'); TIAToolbox is
# installed by the harness into .bench/gpu/tiatoolbox-venv on first use (needs PyPI) or
# skipped with SKIP_TIA=1. Writes into $OUT (or bench_out/gpu):
#   harness.md   both models on CUDA (AMP via --precision auto, pinned memory, reader processes)
#   camelyon.md  seconds and peak RSS of one CAMELYON-size slide (100,000 x 200,000 px)
set -euo pipefail
out="${OUT:-bench_out/gpu}"
mkdir -p "$out"
tia=()
if [[ "${SKIP_TIA:-0}" == 1 ]]; then tia=(--skip-tiatoolbox); fi
python scripts/bench.py --both-models --device cuda --repeats 2 --workers "${WORKERS:-8}" \
    --work-dir .bench/gpu --write-docs --docs "$out/harness.md" "${tia[@]}" 2>&1 | tee "$out/harness.log"
# micromet infer picks CUDA by itself (--device auto); only the CAMELYON-size slide, no scaling sweep.
python scripts/bench_scaling.py --sizes 5000 --work-dir .bench/gpu_scaling --write-docs 2>&1 | tee "$out/camelyon.log"
cp docs/benchmarks.md "$out/camelyon.md"
