"""Learning from reviews on real tissue (issue 24, item 4): does fine-tuning on reviews of the
false deposits of one part of a source's tumor-free tissue remove them on another part?

The command line of ``pipeline.benchmarks.review_finetune`` (its steps: its docstring and
docs/benchmarks.md, "Learning from reviews").

    python scripts/bench_review_finetune.py run [--work runs/review_finetune] [--epochs 2 ...]
        [--swap] [--lr 3e-4] [--tiles-per-deposit 32] [--seed 0] [--data ../shared/data]
        [--keep-partner / --no-keep-partner]  (default: keep the default model's partner, a pair)
    python scripts/bench_review_finetune.py slides [--work ...]
"""

from __future__ import annotations

import sys

from pipeline.benchmarks.review_finetune import main

if __name__ == "__main__":
    sys.exit(main())
