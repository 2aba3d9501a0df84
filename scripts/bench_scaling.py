"""Scaling and memory benchmark: ``micromet infer`` time against tissue area, and peak memory
on a CAMELYON-size slide.

The command line of ``pipeline.benchmarks.scaling`` (what it measures and how: its docstring
and docs/benchmarks.md).

    .venv/bin/python scripts/bench_scaling.py [--sizes 5000,10000,...] [--skip-camelyon]
        [--work-dir .bench/scaling] [--model models/default.pt] [--repeats 1] [--write-docs]
"""

from __future__ import annotations

import sys

from pipeline.benchmarks.scaling import main

if __name__ == "__main__":
    sys.exit(main())
