"""Speed benchmark harness: micromet against the read limit, the compute limit and TIAToolbox.

The command line of ``pipeline.benchmarks.speed`` (what it measures and how: its docstring and
docs/benchmarks.md); ``micromet bench`` takes the same options.

Usage: .venv/bin/python scripts/bench.py [--width 20000 --height 20000 --mpp 0.25]
    [--model models/default.pt | --architecture resnet18] [--device auto] [--workers 2]
    [--batch-size 64] [--repeats 3] [--skip-tiatoolbox] [--write-docs]
"""

from __future__ import annotations

import sys

from pipeline.benchmarks.speed import main

if __name__ == "__main__":
    sys.exit(main())
