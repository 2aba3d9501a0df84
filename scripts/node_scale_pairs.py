"""Dev-part experiment behind the default model's partner (docs/benchmarks.md, "Why a pair").

    python scripts/node_scale_pairs.py --work runs/ns_pcam_new --model runs/pcamnet16.pt \\
        --with runs/ns_dense32 --with-model runs/dense16.pt [--part dev]

Reads two node-scale runs of the same surfaces (``bench_node_scale.py score`` with each model)
and prints, for each heatmap (model A alone, the average of both) and each confirmation (8-pose
mean of A, of B, their mean, their minimum), the figures of every seed / confirm pair, with A's
outline threshold and dev size calibration. Dev only: the test part is read by ``report``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_node_scale import load_surfaces, make_scorer
from node_scale_report import dihedral_scorer, run_rules, summary

from pipeline.deposits.decide import DepositRules
from pipeline.deposits.measure import SizeCalibration
from pipeline.models.card import size_calibration_from_dict

SEEDS = (0.85, 0.9, 0.95)
CONFIRMS = (None, 0.7, 0.8, 0.85, 0.9)
Poses = Callable[[NDArray[np.int64]], NDArray[np.float32]]


def size_calibration(folder: Path) -> SizeCalibration:
    data = json.loads((folder / "calibration.json").read_text(encoding="utf-8"))["size_calibration"]
    return size_calibration_from_dict(data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--with", dest="other", type=Path, required=True)
    parser.add_argument("--with-model", type=Path, required=True)
    parser.add_argument("--part", default="dev", choices=("dev",))
    args = parser.parse_args(argv)
    mine = load_surfaces(args.work / args.part)
    theirs = {s.name: v for s, v in load_surfaces(args.other / args.part)}
    score_a, _, card = make_scorer(args.model)
    score_b, _, _ = make_scorer(args.with_model)
    size = size_calibration(args.work / "dev")
    tile = card.tile_size_px
    poses_a = {s.name: dihedral_scorer(s, tile, score_a) for s, _ in mine}
    poses_b = {s.name: dihedral_scorer(s, tile, score_b) for s, _ in mine}

    def combined(
        f: Callable[[NDArray[np.float32], NDArray[np.float32]], NDArray[np.float32]],
    ) -> dict[str, Poses]:
        return {n: (lambda xy, n=n: f(poses_a[n](xy), poses_b[n](xy))) for n in poses_a}  # type: ignore[misc]

    def lower_mean(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
        """The lower of the two models' pose means, as 8 equal poses."""
        return np.repeat(np.minimum(a.mean(1), b.mean(1))[:, None], 8, axis=1)

    confirmations = {
        "A": poses_a, "B": poses_b, "mean": combined(lambda a, b: (a + b) / 2), "min": combined(lower_mean),
    }  # fmt: skip
    heatmaps = {"A": mine, "average": [(s, (v + theirs[s.name]) / 2) for s, v in mine]}
    for (heatmap, surfaces), (confirm_name, poses) in itertools.product(
        heatmaps.items(), confirmations.items()
    ):
        for seed, confirm in itertools.product(SEEDS, CONFIRMS):
            if confirm is None and confirm_name != "A":
                continue
            rules = DepositRules(card.threshold, max(seed, card.threshold), confirm, size)
            f = summary(run_rules(surfaces, rules, tile, card.stride_px or 32, poses))  # type: ignore[arg-type]
            print(
                f"heatmap {heatmap} confirm {confirm_name} seed {seed} confirm {confirm}: "
                f"false/mm² {f['false_per_mm2']:.3f} ({f['false_deposits']}), "
                f"ITC {f['itc_sensitivity']:.2f}, "
                f"micro {f['micro_sensitivity']:.2f}, 0.15 mm ITC {f['itc_015_as_itc']}/{f['itc_015_n']}, "
                f"candidates/mm² {f['candidates_per_mm2']:.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
