"""The default model's scoring of one batch, alone and beside a busy Python thread, under each
OpenMP wait policy (docs/benchmarks.md, "OpenMP wait policy on a small CPU").

    python scripts/bench_omp_wait.py [--precision bf16] [--batches 60]

Each policy runs in a fresh process (OpenMP reads OMP_WAIT_POLICY when torch loads): "default"
is libgomp's own (OMP_WAIT_POLICY empty), then PASSIVE and ACTIVE. The busy thread stands in
for micromet's read-ahead thread (numpy work that releases the GIL).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import dataclasses, sys, threading, time
import numpy as np, torch
from pipeline.config import InferenceConfig
from pipeline.detection.inference import prepare_model
from pipeline.models import load_checkpoint

model, card = load_checkpoint("models/default.pt")
scorer = prepare_model(model, card, dataclasses.replace(InferenceConfig(), precision=sys.argv[1])).scorer
tiles = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (64, 96, 96, 3), dtype=np.uint8))
batches = int(sys.argv[2])

def ms_per_batch():
    with torch.inference_mode():
        for _ in range(3):
            scorer(tiles)
        started = time.perf_counter()
        for _ in range(batches):
            scorer(tiles)
    return (time.perf_counter() - started) / batches * 1000

stop = threading.Event()
def busy():
    image = np.random.default_rng(1).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    while not stop.is_set():
        image.reshape(256, 4, 256, 4, 3).mean(axis=(1, 3))

alone = ms_per_batch()
thread = threading.Thread(target=busy)
thread.start()
beside = ms_per_batch()
stop.set()
thread.join()
print(f"{alone:.1f} {beside:.1f} {torch.get_num_threads()}")
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args()
    columns = ("OMP_WAIT_POLICY", "ms per batch of 64, alone", "beside a busy thread", "torch threads")
    print("| " + " | ".join(columns) + f" ({args.precision}) |")
    print("| --- | ---: | ---: | ---: |")
    for policy in ("", "PASSIVE", "ACTIVE"):
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        command = [sys.executable, "-c", CHILD, args.precision, str(args.batches)]
        out = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=True)
        alone, beside, threads = out.stdout.split()
        print(f"| {policy or 'default (libgomp)'} | {alone} | {beside} | {threads} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
