"""Benchmarks: read slides (synthetic, generated on first use) and a model, time micromet on
them, and produce the Markdown sections of docs/benchmarks.md.

- ``harness``: what every benchmark shares: the machine's facts (CPU kind, cores, RAM, load),
  the peak memory of a measured process tree, and rewriting one section of docs/benchmarks.md.
  Re-exported here.
- ``speed`` (``scripts/bench.py``, ``micromet bench``): micromet against the read limit, the
  compute limit and TIAToolbox on one synthetic slide; ``variants`` runs one measured variant
  per fresh process, ``tia`` installs and runs TIAToolbox in its own environment,
  ``speed_report`` makes the section.
- ``scaling`` (``scripts/bench_scaling.py``): ``micromet infer`` time against tissue area and
  peak memory on a CAMELYON-size slide; ``scaling_slides`` writes its slides, ``scaling_report``
  its section and plot.
- ``review_finetune`` (``scripts/bench_review_finetune.py``): learning from reviews on real
  tumor-free tissue (does fine-tuning on rejected false deposits of one half remove them on the
  other?); ``review_finetune_slides`` writes its slides, ``review_finetune_report`` its summary.
- ``scorers``: a checkpoint's tile and region scorers for benchmarks that score arrays (the
  node-scale surfaces of ``scripts/bench_node_scale.py``, patch sets), as ``micromet infer`` does.

The scripts in ``scripts/`` are their command lines. Importing this package loads the standard
library only (the TIAToolbox runner imports ``variants`` from another virtual environment).
"""

from __future__ import annotations

from pipeline.benchmarks.harness import (
    TreeRssSampler,
    cpu_kind,
    machine_facts,
    replace_section,
    write_docs_section,
)

__all__ = ["TreeRssSampler", "cpu_kind", "machine_facts", "replace_section", "write_docs_section"]
